"""What a worker tells the outside about its jobs: Prometheus metrics and OpenTelemetry spans.

Both are off unless configured: metrics with ``dhgq worker --metrics-port`` (``DHGQ_METRICS_PORT``),
spans where a collector is named by OpenTelemetry's own ``OTEL_EXPORTER_OTLP_ENDPOINT``. Off costs
nothing on the hot path: ``Telemetry()`` holds neither, its hooks return at once, and neither
prometheus_client nor the OpenTelemetry SDK is imported (``dhgq/metrics.py`` and ``dhgq/tracing.py``
are imported by ``start`` only when asked for).

The lifecycle calls the hooks: ``job`` around a stage job (its span, with the source, stage, job
id, attempt and host), ``phase`` around claim, input, work and complete, and ``completed`` /
``failed`` / ``waited`` with what happened; the worker adds ``worker_middleware`` to every
Procrastinate worker, which counts jobs by queue and outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from dhgq.metrics import WorkerMetrics
    from dhgq.settings import Settings
    from dhgq.stage import StageJob

logger = logging.getLogger("dhgq.telemetry")


class Telemetry:
    """A worker's metrics and tracer; either may be None (off)."""

    def __init__(self, metrics: WorkerMetrics | None = None, tracer: Any = None, shutdown: Any = None) -> None:
        self.metrics = metrics
        self.tracer = tracer
        self._shutdown = shutdown  # flushes and stops what start() started

    @classmethod
    def start(
        cls, settings: Settings, pool: ConnectionPool, *, queues: list[str], worker_id: str, version: str | None
    ) -> Telemetry:
        """The metrics endpoint and the tracer the settings ask for (each may be off)."""
        metrics = tracer = None
        stops: list[Any] = []
        if settings.metrics_port is not None:
            from dhgq.metrics import WorkerMetrics, serve

            metrics = WorkerMetrics(pool, queues=queues, host=settings.host_name, worker_id=worker_id, version=version)
            stops.append(serve(metrics, settings.metrics_addr, settings.metrics_port))
        endpoint = settings.traces_endpoint()
        if endpoint is not None:
            from dhgq.tracing import start_tracer

            tracer, stop = start_tracer(
                endpoint,
                service=settings.otel_service_name,
                host=settings.host_name,
                worker_id=worker_id,
                version=version,
            )
            stops.append(stop)
        return cls(metrics, tracer, lambda: [stop() for stop in stops])

    def close(self) -> None:
        if self._shutdown is not None:
            try:
                self._shutdown()
            except Exception as exc:  # noqa: BLE001 - a collector gone at exit must not fail the worker's stop
                logger.warning("telemetry did not stop cleanly: %s", exc)
            self._shutdown = None

    # -- spans -----------------------------------------------------------------------------------------

    @contextmanager
    def job(self, job: StageJob, host: str) -> Iterator[None]:
        """The span of one stage job; an exception leaving it is recorded with its error class."""
        if self.tracer is None:
            yield
            return
        attributes = {
            "dhgq.source_id": job.source_id,
            "dhgq.stage": job.stage,
            "dhgq.job_id": job.job_id,
            "dhgq.attempt": job.attempt,
            "host.name": host,
        }
        with self.tracer.start_as_current_span(f"stage {job.stage}", attributes=attributes) as span:
            try:
                yield
            except BaseException as exc:
                from dhgq.errors import classify

                span.set_attribute("dhgq.error_class", classify(exc))
                raise

    def phase(self, name: str) -> Any:
        """A child span of the job's: claim, input, work or complete."""
        if self.tracer is None:
            return nullcontext()
        return self.tracer.start_as_current_span(name)

    def _annotate(self, **attributes: Any) -> None:
        if self.tracer is not None:
            from opentelemetry import trace

            trace.get_current_span().set_attributes(attributes)

    # -- what happened ---------------------------------------------------------------------------------

    def completed(self, job: StageJob, seconds: float, audio_seconds: float | None, *, reused: bool = False) -> None:
        if self.metrics is not None:
            self.metrics.stage_completed(job.stage, seconds, audio_seconds, reused=reused)
        self._annotate(**{"dhgq.outcome": "reused" if reused else "completed"})

    def failed(self, job: StageJob, error_class: str, will_retry: bool) -> None:
        if self.metrics is not None:
            self.metrics.stage_failed(job.stage, error_class)
        self._annotate(**{"dhgq.error_class": error_class, "dhgq.will_retry": will_retry})

    def waited(self, job: StageJob, waiting_for: str) -> None:
        if self.metrics is not None:
            self.metrics.stage_waited(job.stage, waiting_for)
        self._annotate(**{"dhgq.outcome": "waiting", "dhgq.waiting_for": waiting_for})

    def worker_middleware(self) -> list[Any]:
        """Procrastinate worker middleware: jobs counted by queue and outcome (none when metrics are off)."""
        return [self.metrics.count_job] if self.metrics is not None else []
