"""Two contenders on Procrastinate: dhgq's real stage plumbing with stages that do nothing, and
plain Procrastinate (no stage rows) with the same jobs chained by deferring inside the task.

Both run the way ``dhgq worker`` runs them: one Procrastinate ``Worker`` per stage queue in one
process, sync tasks in threads, dhgq's connector settings, a psycopg pool for the tasks' own
transactions.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import procrastinate
import psycopg
from procrastinate import JobContext
from procrastinate.worker import Worker
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from pydantic import SecretStr

from bench.tracker import Tracker
from dhgq.app import connector_for
from dhgq.completion import enqueue
from dhgq.db import task_pool as dhgq_task_pool
from dhgq.db import with_search_path
from dhgq.pipeline import run_stage
from dhgq.settings import STAGES, Settings, Stage
from dhgq.stage import Resources, Source, StageJob, StageRows, StageSpec, no_input
from dhgq.tasks import job_of

# Without stage rows there is nothing to join on: the baselines queue summarization after
# transcription, so a pipeline ends when both summarization and diarization have completed.
CHAIN: dict[str, tuple[str, ...]] = {
    "extraction": ("transcription", "diarization"),
    "transcription": ("summarization",),
    "diarization": (),
    "summarization": (),
}
CHAIN_TERMINAL: tuple[str, ...] = ("diarization", "summarization")
LAUNCHERS = 4  # connections the driver starts pipelines on
REPO = Path(__file__).resolve().parents[1]
INSERT_SOURCE = "INSERT INTO sources_google (id, name, path, mime_type) VALUES (%s, %s, %s, 'video/mp4')"


def default_concurrency() -> dict[str, int]:
    """The seeds' MAX_CONCURRENT_* per queue (dhgq's defaults when the model stages run on Modal).

    The stages here do nothing, so the CPU-sized defaults of local model stages do not apply.
    """
    settings = Settings(database_url=SecretStr("postgresql://unused/none"), gpu_backend="modal")
    return {stage: settings.concurrency(stage) for stage in STAGES}


class SourceInserter:
    """Inserts each pipeline's source row, on LAUNCHERS autocommit connections of its own."""

    def __init__(self, url: str) -> None:
        self._pool = AsyncConnectionPool(
            url, min_size=LAUNCHERS, max_size=LAUNCHERS, open=False, kwargs={"autocommit": True}
        )

    async def open(self) -> None:
        await self._pool.open(wait=True)

    async def insert(self, key: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(INSERT_SOURCE, (key, f"{key}.mp4", f"/bench/{key}.mp4"))

    async def close(self) -> None:
        await self._pool.close()


def task_pool(url: str, concurrency: dict[str, int]) -> ConnectionPool:
    """The tasks' pool, sized as ``dhgq worker`` sizes it (never below one connection per slot)."""
    return dhgq_task_pool(url, max_size=max(4 + 2 * len(concurrency), sum(concurrency.values()) + 1))


@asynccontextmanager
async def serving(app: procrastinate.App, concurrency: dict[str, int], context: dict[str, Any]) -> AsyncIterator[None]:
    """One Worker per queue, configured as ``dhgq.worker`` configures them; stopped on exit.

    The loop's default executor gets one thread per job slot: Procrastinate runs sync tasks there,
    and asyncio's default (cpu count + 4 threads) would otherwise cap the concurrency asked for.
    """
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=sum(concurrency.values()) + 2))
    async with app.open_async():
        workers = [
            Worker(
                app,
                queues=[queue],
                name=f"bench-{queue}",
                concurrency=slots,
                wait=True,
                additional_context=context,
                install_signal_handlers=False,
                update_heartbeat_interval=7.5,
                stalled_worker_timeout=30.0,
                fetch_job_polling_interval=5.0,
                shutdown_graceful_timeout=None,
            )
            for queue, slots in concurrency.items()
        ]
        runs = [asyncio.create_task(worker.run()) for worker in workers]
        await asyncio.sleep(0.2)  # let every worker register and LISTEN before the first job
        try:
            yield
        finally:
            for worker in workers:
                worker.stop()
            await asyncio.gather(*runs, return_exceptions=True)


# --- dhgq's plumbing, stages that do nothing ------------------------------------------------------


def _nothing(resources: Resources, source: Source, job: StageJob, given: None) -> None:
    return None


def _save_nothing(conn: psycopg.Connection, source: Source, output: None) -> dict[str, Any]:
    return {}


def _after_extraction(conn: psycopg.Connection, source: Source, rows: StageRows) -> None:
    enqueue(conn, source.id, "transcription", "diarization")


def _fan_in(conn: psycopg.Connection, source: Source, rows: StageRows) -> None:
    """dhgq.tasks.fanin's decision (on both stage rows, locked by run_stage), without merging speakers."""
    if all(rows.get(stage, {}).get("status") == "completed" for stage in ("transcription", "diarization")):
        enqueue(conn, source.id, "summarization")


def _last(conn: psycopg.Connection, source: Source, rows: StageRows) -> None:
    return None


NOOP_SPECS: dict[Stage, StageSpec[None, None]] = {
    "extraction": StageSpec("extraction", no_input, _nothing, _save_nothing, _after_extraction),
    "transcription": StageSpec("transcription", no_input, _nothing, _save_nothing, _fan_in, lock_with=("diarization",)),
    "diarization": StageSpec("diarization", no_input, _nothing, _save_nothing, _fan_in, lock_with=("transcription",)),
    "summarization": StageSpec("summarization", no_input, _nothing, _save_nothing, _last),
}


def dhgq_task(stage: Stage, tracker: Tracker) -> Callable[..., None]:
    spec = NOOP_SPECS[stage]

    def task(context: JobContext, source_id: str) -> None:
        tracker.entered(source_id, stage)
        resources, job = job_of(context, stage, source_id)
        run_stage(resources, spec, job)
        tracker.completed(source_id, stage)

    return task


class DhgqContender:
    """Pipelines started by INSERT into sources_google, through dhgq's triggers and stage rows."""

    name = "dhgq (stage rows, triggers, fan-in)"
    key = "dhgq"
    terminal: tuple[str, ...] = ("summarization",)

    def __init__(self, url: str, home: Path, concurrency: dict[str, int]) -> None:
        self.url = url
        self.home = home
        self.concurrency = concurrency

    @asynccontextmanager
    async def running(self, tracker: Tracker) -> AsyncIterator[Callable[[str], Any]]:
        await asyncio.to_thread(self.prepare)
        app = procrastinate.App(connector=connector_for(self.url))
        for stage in STAGES:
            app.task(name=f"dhgq.{stage}", queue=stage, pass_context=True)(dhgq_task(stage, tracker))
        settings = Settings(database_url=SecretStr(self.url), home=self.home)
        resources = Resources(settings, task_pool(self.url, self.concurrency))
        sources = SourceInserter(self.url)
        await sources.open()
        try:
            async with serving(app, self.concurrency, {"dhgq": resources}):
                yield sources.insert  # the INSERT's trigger starts the pipeline
        finally:
            await sources.close()
            await asyncio.to_thread(resources.close)

    def prepare(self) -> None:
        """Nothing to change: the database is dhgq's, as migrated."""


class ListenedDhgqContender(DhgqContender):
    """A diagnostic: dhgq as above while a monitor listens, so the stage trigger NOTIFYs.

    In PostgreSQL a committing transaction that has sent a NOTIFY takes a server-wide lock until
    its commit is flushed, so such commits queue behind each other. dhgq's trigger notifies only
    while someone listens (dhgq.listen_stages_v1); this round measures what an open monitor costs.
    """

    name = "dhgq, diagnostic: with a monitor listening (stage NOTIFYs on)"
    key = "dhgq-listened"

    @asynccontextmanager
    async def running(self, tracker: Tracker) -> AsyncIterator[Callable[[str], Any]]:
        listener = subprocess.Popen([sys.executable, "-m", "bench.listener", self.url], cwd=REPO)
        try:
            await asyncio.to_thread(_wait_for_listener, self.url)
            async with super().running(tracker) as launch:
                yield launch
        finally:
            listener.terminate()
            listener.wait(timeout=10)


def _wait_for_listener(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT count(*) FROM dhgq.stage_listeners").fetchone() != (0,):
                return
            time.sleep(0.1)
    raise RuntimeError("the stand-in monitor did not start listening")


# --- plain Procrastinate ----------------------------------------------------------------------------


def plain_task(stage: str, tracker: Tracker, pool: ConnectionPool, deferrer: procrastinate.App) -> Callable[..., None]:
    following = CHAIN[stage]

    def task(source_id: str) -> None:
        tracker.entered(source_id, stage)
        if following:
            with pool.connection() as conn, conn.transaction():
                for stage_next in following:
                    deferrer.configure_task(f"plain.{stage_next}", queue=stage_next, connection=conn).defer(
                        source_id=source_id
                    )
        tracker.completed(source_id, stage)

    return task


class PlainContender:
    """The same four no-op jobs per pipeline, no stage rows, next jobs deferred inside the task."""

    name = "plain Procrastinate (no stage rows)"
    key = "plain"
    terminal: tuple[str, ...] = CHAIN_TERMINAL

    def __init__(self, url: str, concurrency: dict[str, int]) -> None:
        self.url = url
        self.concurrency = concurrency

    @asynccontextmanager
    async def running(self, tracker: Tracker) -> AsyncIterator[Callable[[str], Any]]:
        app = procrastinate.App(connector=connector_for(self.url))
        # Defers on the task's own connection go through a sync connector (Procrastinate >= 3.8).
        deferrer = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=with_search_path(self.url)))
        pool = task_pool(self.url, self.concurrency)
        for stage in STAGES:
            app.task(name=f"plain.{stage}", queue=stage)(plain_task(stage, tracker, pool, deferrer))
        # Starts go through their own pool, as dhgq's INSERTs do, not the workers' one.
        launcher = procrastinate.App(
            connector=procrastinate.PsycopgConnector(
                conninfo=with_search_path(self.url), min_size=LAUNCHERS, max_size=LAUNCHERS
            )
        )
        first = launcher.configure_task("plain.extraction", queue="extraction")

        async def launch(key: str) -> None:
            await first.defer_async(source_id=key)

        try:
            async with launcher.open_async(), serving(app, self.concurrency, {}):
                yield launch
        finally:
            await asyncio.to_thread(pool.close)
