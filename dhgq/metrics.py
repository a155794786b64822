"""A worker's Prometheus endpoint (prometheus_client), started by ``dhgq worker --metrics-port``.

Two kinds of metric, told apart by their help text:

- this process's own, counted as its jobs run: ``dhgq_jobs_total`` (queue, state), stage durations
  and realtime factors (histograms), failures by error class, waits, and ``dhgq_worker_info``;
  a fleet sums them over its workers.
- the database's, read when scraped (at most every ``DATABASE_EVERY`` seconds, then cached): queue
  depth and the age of the oldest ready job per queue, paused queues, waiting stages, and today's
  paid-call cost from the ledger. Every worker reports the same values: take ``max`` over workers,
  never ``sum``. The queries read only open jobs and today's ledger rows, through indexes
  (``tests/integration/test_query_plans.py``), so a scrape costs the same however long the history.

Each worker process serves its own port: several workers on one machine need one port each.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from procrastinate.exceptions import JobAborted
from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from dhgq.errors import ConfigurationError
from dhgq.queries import query
from dhgq.queues import QUEUES
from dhgq.settings import STAGES

logger = logging.getLogger("dhgq.metrics")

DATABASE_EVERY = 5.0  # seconds a database reading is served from cache (scrapers may be many)
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
REALTIME_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
ERROR_CLASSES = ("transient", "permanent", "cancelled")
JOB_STATES = ("succeeded", "failed", "aborted")


class WorkerMetrics:
    """The metrics of one worker process, in its own registry."""

    def __init__(
        self, pool: ConnectionPool, *, queues: list[str], host: str, worker_id: str, version: str | None
    ) -> None:
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        own = "(this worker process)"
        self.jobs = Counter(
            "dhgq_jobs", f"Jobs run, by queue and outcome {own}", ["queue", "state"], registry=self.registry
        )
        self.durations = Histogram(
            "dhgq_stage_duration_seconds",
            f"A stage's own time from claim to commit, by stage and outcome (computed or reused) {own}",
            ["stage", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.realtime = Histogram(
            "dhgq_stage_realtime_factor",
            f"Audio seconds per second of a computed stage's own time {own}",
            ["stage"],
            buckets=REALTIME_BUCKETS,
            registry=self.registry,
        )
        self.audio = Counter(
            "dhgq_stage_audio_seconds", f"Audio seconds of the stages computed {own}", ["stage"], registry=self.registry
        )
        self.failures = Counter(
            "dhgq_stage_failures",
            f"Stage failures by error class {own}",
            ["stage", "error_class"],
            registry=self.registry,
        )
        self.waits = Counter(
            "dhgq_stage_waits",
            f"Stages held instead of run: for the API (rate limit), for disk space, for the budget {own}",
            ["stage", "waiting_for"],
            registry=self.registry,
        )
        info = Info("dhgq_worker", "This worker process: host, queues, version", registry=self.registry)
        info.info(
            {"host": host, "queues": ",".join(queues), "worker_id": worker_id, "pid": str(os.getpid())}
            | {"version": version or "unknown"}
        )
        for queue in queues:  # zeros from the start, so that rate() and the dashboard see every series
            for state in JOB_STATES:
                self.jobs.labels(queue, state)
        for stage in STAGES:
            for error_class in ERROR_CLASSES:
                self.failures.labels(stage, error_class)
        self.registry.register(DatabaseCollector(pool))

    def stage_completed(self, stage: str, seconds: float, audio_seconds: float | None, *, reused: bool) -> None:
        self.durations.labels(stage, "reused" if reused else "computed").observe(seconds)
        if not reused and audio_seconds and seconds > 0:
            self.realtime.labels(stage).observe(audio_seconds / seconds)
            self.audio.labels(stage).inc(audio_seconds)

    def stage_failed(self, stage: str, error_class: str) -> None:
        self.failures.labels(stage, error_class).inc()

    def stage_waited(self, stage: str, waiting_for: str) -> None:
        self.waits.labels(stage, waiting_for).inc()

    async def count_job(self, call_next: Callable[[], Any], context: Any, worker: Any) -> Any:
        """Procrastinate worker middleware: every job this worker runs, by queue and outcome."""
        queue = context.job.queue
        try:
            result = await call_next()
        except JobAborted:
            self.jobs.labels(queue, "aborted").inc()
            raise
        except BaseException:
            self.jobs.labels(queue, "failed").inc()
            raise
        self.jobs.labels(queue, "succeeded").inc()
        return result


class DatabaseCollector(Collector):
    """Queue depth, paused queues, waiting stages and today's paid calls, read from the database when
    scraped (cached for ``DATABASE_EVERY`` seconds); ``dhgq_database_up`` says whether the read worked."""

    def __init__(self, pool: ConnectionPool, every: float = DATABASE_EVERY) -> None:
        self.pool, self.every = pool, every
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._read_at >= self.every:
                self._families = self._read()
                self._read_at = time.monotonic()
            yield from self._families

    def describe(self) -> Iterator[Metric]:
        return iter(())  # read at scrape time only: registering must not query the database

    def _read(self) -> list[Metric]:
        up = GaugeMetricFamily("dhgq_database_up", "Whether the last read of the database's metrics worked")
        try:
            with self.pool.connection(timeout=2.0) as conn, conn.transaction():
                conn.execute("SET LOCAL statement_timeout = '2s'")
                cur = conn.cursor(row_factory=dict_row)
                depths = cur.execute(query("queue_depths")).fetchall()
                pauses = cur.execute(query("queue_pauses")).fetchall()
                waiting = cur.execute(query("stages_waiting")).fetchall()
                ledger = cur.execute(query("ledger_today")).fetchall()
        except Exception as exc:  # noqa: BLE001 - a scrape reports the database down rather than fail
            logger.warning("could not read the queue metrics: %s", exc)
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *queue_families(depths, pauses), waiting_family(waiting), *ledger_families(ledger)]


def queue_families(depths: list[dict[str, Any]], pauses: list[dict[str, Any]]) -> list[Metric]:
    jobs = GaugeMetricFamily(
        "dhgq_queue_jobs",
        "Open jobs per queue: ready, scheduled (due later), running (the database)",
        labels=["queue", "state"],
    )
    oldest = GaugeMetricFamily(
        "dhgq_queue_oldest_job_age_seconds",
        "How long the oldest ready job of each queue has waited (the database)",
        labels=["queue"],
    )
    paused = GaugeMetricFamily("dhgq_queue_paused", "1 while a queue is paused (the database)", labels=["queue"])
    by_queue = {row["queue_name"]: row for row in depths}
    stopped = {row["queue_name"] for row in pauses}
    for queue in sorted(set(QUEUES) | set(by_queue)):
        row = by_queue.get(queue, {})
        for state in ("ready", "scheduled", "running"):
            jobs.add_metric([queue, state], float(row.get(state, 0)))
        oldest.add_metric([queue], float(row.get("oldest_ready_seconds", 0.0)))
        paused.add_metric([queue], 1.0 if queue in stopped else 0.0)
    return [jobs, oldest, paused]


def waiting_family(rows: list[dict[str, Any]]) -> Metric:
    family = GaugeMetricFamily(
        "dhgq_stages_waiting",
        "Stages held for the API, for disk space or for the budget (the database)",
        labels=["stage", "waiting_for"],
    )
    found = {(row["stage"], row["waiting_for"]): row["stages"] for row in rows}
    for stage in STAGES:
        for reason in ("api", "disk", "budget"):
            family.add_metric([stage, reason], float(found.get((stage, reason), 0)))
    return family


def ledger_families(rows: list[dict[str, Any]]) -> list[Metric]:
    cost = GaugeMetricFamily(
        "dhgq_paid_cost_usd_today",
        "What paid calls (Claude, Modal GPU) cost since 00:00 UTC, from the ledger (the database)",
        labels=["kind", "provider"],
    )
    calls = GaugeMetricFamily(
        "dhgq_paid_calls_today",
        "Paid calls since 00:00 UTC by outcome (the database)",
        labels=["kind", "provider", "status"],
    )
    found = {(row["kind"], row["provider"]): row for row in rows}
    for kind, provider in sorted(set(found) | {("llm", "anthropic"), ("gpu", "modal")}):
        row = found.get((kind, provider), {})
        cost.add_metric([kind, provider], float(row.get("cost_usd", 0.0)))
        calls.add_metric([kind, provider, "succeeded"], float(row.get("calls", 0)))
        calls.add_metric([kind, provider, "failed"], float(row.get("failed_calls", 0)))
    return [cost, calls]


def serve(metrics: WorkerMetrics, addr: str, port: int) -> Callable[[], None]:
    """Serve the registry over HTTP on ``addr:port``; returns what stops it. A port in use says so."""
    try:
        server, thread = start_http_server(port, addr, registry=metrics.registry)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc} (each worker process needs its own "
            "--metrics-port)"
        ) from None
    logger.info("metrics on http://%s:%d/metrics", addr, server.server_port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
