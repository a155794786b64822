"""``dhgq worker``: one Procrastinate worker per stage queue in one process, each with its stage's
concurrency, sharing a connection pool and model hosts; plus the recovery of stalled jobs. A
worker that serves every stage also serves the ``webhooks`` queue (requests' callbacks), so that
the default ``dhgq worker`` delivers them and one started for some stages only does not.

Procrastinate 3 notices dead workers (their heartbeats stop) but does not re-run their jobs by
itself, so every worker process also runs a small periodic loop that finds jobs of stalled
workers, puts them back in their queue and NOTIFYs, so idle workers pick them up at once: a job
of a machine that was lost runs again on another machine (its input comes from the artifact
store, not from the lost machine's disk).

Each worker process registers in ``dhgq.workers`` (host, pid, queues, artifact store), renews
``seen_at`` in that same loop and says ``stopped_at`` when it stops: ``dhgq status`` and the
monitor show the fleet from there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import procrastinate
from procrastinate.worker import Worker

from dhgq import gpu
from dhgq.app import app, configure_retries, connector_for
from dhgq.db import task_pool
from dhgq.queries import query
from dhgq.queues import pause_aware
from dhgq.settings import STAGES, Settings, Stage
from dhgq.stage import Resources
from dhgq.tasks import gc as gc_task
from dhgq.tasks import webhook
from dhgq.telemetry import Telemetry
from dhgq.versions import package_version

logger = logging.getLogger("dhgq.worker")
Queue = Stage | Literal["webhooks", "maintenance"]


def run(
    settings: Settings,
    url: str,
    *,
    queues: Sequence[Queue] = STAGES,
    once: bool = False,
    concurrency: int | None = None,
    warm: bool = False,
) -> None:
    """Run until stopped (SIGTERM/SIGINT finish the jobs in hand), or with ``once`` until idle."""
    asyncio.run(_run(settings, url, served_queues(queues), once, concurrency, warm))


def served_queues(queues: Sequence[Queue]) -> list[Queue]:
    """The queues asked for, plus ``webhooks`` and ``maintenance`` (the daily gc) when they are every stage's
    (what ``dhgq worker`` asks by default)."""
    served = list(queues)
    if set(STAGES) <= set(served):
        served += [extra for extra in (webhook.QUEUE, gc_task.QUEUE) if extra not in served]
    return served


def queue_concurrency(settings: Settings, queue: Queue, override: int | None) -> int:
    if override:
        return override
    if queue == webhook.QUEUE:
        return webhook.CONCURRENCY
    if queue == gc_task.QUEUE:
        return gc_task.CONCURRENCY
    return settings.concurrency(queue)


async def _run(
    settings: Settings, url: str, queues: list[Queue], once: bool, concurrency: int | None, warm: bool
) -> None:
    # Procrastinate runs sync tasks in the loop's default executor, which asyncio caps at cores + 4
    # threads: fewer than the job slots of four queues, so size it to the slots.
    slots = sum(queue_concurrency(settings, queue, concurrency) for queue in queues)
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(slots + 2, thread_name_prefix="dhgq-job"))
    pool = task_pool(url, max_size=max(4 + 2 * len(queues), slots + 1))
    resources = Resources(settings, pool)
    try:
        resources.telemetry = Telemetry.start(
            settings, pool, queues=list(queues), worker_id=resources.worker_id, version=package_version("dhgq")
        )
    except BaseException:
        pool.close()
        raise
    await asyncio.to_thread(_register, resources, queues)
    try:
        with app.replace_connector(connector_for(url)) as bound, pause_aware(bound):
            bound.perform_import_paths()
            configure_retries(bound, settings)
            webhook.configure_retries(bound, settings)  # after: configure_retries gives every task the stages'
            async with bound.open_async():
                if warm:
                    asyncio.get_running_loop().run_in_executor(None, _warm, resources, queues)
                await _serve(bound, resources, queues, once, concurrency)
    finally:
        await asyncio.to_thread(_unregister, resources)
        await asyncio.to_thread(resources.close)


async def _serve(
    bound: procrastinate.App, resources: Resources, queues: list[Queue], once: bool, concurrency: int | None
) -> None:
    settings = resources.settings

    def make_workers() -> list[Worker]:
        return [
            Worker(
                bound,
                queues=[queue],
                name=f"dhgq-{queue}",
                concurrency=queue_concurrency(settings, queue, concurrency),
                wait=not once,
                additional_context={"dhgq": resources},
                install_signal_handlers=False,
                update_heartbeat_interval=max(1.0, settings.stalled_after / 4),
                stalled_worker_timeout=settings.stalled_after,
                fetch_job_polling_interval=5.0,
                shutdown_graceful_timeout=None,
                worker_middleware=resources.telemetry.worker_middleware(),
            )
            for queue in queues
        ]

    if not once:
        await _serve_until_stopped(bound, resources, make_workers, queues)
        return
    # --once: drain the queues; a finished stage may have queued the next, so go round until idle.
    while True:
        await recover_stalled_jobs(bound, resources)
        await asyncio.gather(*(w.run() for w in make_workers()))
        if not await asyncio.to_thread(_jobs_ready, resources, queues):
            return
        await asyncio.sleep(0.5)  # e.g. a dead worker's job, not yet stalled: wait for it


async def _serve_until_stopped(
    bound: procrastinate.App, resources: Resources, make_workers: Callable[[], list[Worker]], queues: list[Queue]
) -> None:
    """Serve until a signal says stop; workers that stop by themselves are started again.

    Procrastinate stops a worker when one of its side tasks fails, and its LISTEN connection fails
    when the database restarts: without this, a restart of the database would end ``dhgq worker``.
    Jobs in hand finish first; the jobs of the restart window are found again by their queue.
    """
    workers: list[Worker] = []
    stop = _stop_on_signals(lambda: workers)
    recovery = asyncio.create_task(_recover_forever(bound, resources, stop, queues))
    delay = 1.0
    while not stop.is_set():
        workers[:] = make_workers()
        started = time.monotonic()
        await asyncio.gather(*(w.run() for w in workers), return_exceptions=True)
        if stop.is_set():
            break
        delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, 30.0)
        logger.warning("the queue workers stopped (is the database restarting?): starting them again in %.0f s", delay)
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass
    recovery.cancel()


def _stop_on_signals(workers: Callable[[], list[Worker]]) -> asyncio.Event:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stop() -> None:
        logger.info("stopping: the jobs in hand finish first")
        stopped.set()
        for worker in workers():
            worker.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    return stopped


async def _recover_forever(
    bound: procrastinate.App, resources: Resources, stop: asyncio.Event, queues: list[Queue]
) -> None:
    interval = max(1.0, resources.settings.stalled_after / 3)
    reap = _uses_modal(resources, queues)
    rounds = 0
    while not stop.is_set():
        try:
            await asyncio.to_thread(_seen, resources)
            await recover_stalled_jobs(bound, resources)
            if reap and rounds % REAP_EVERY_ROUNDS == 0:  # Modal calls whose stage nobody runs any more
                await asyncio.to_thread(gpu.cancel_open_calls, resources.settings, None)
        except Exception as exc:  # the database may be restarting; try again next round
            logger.warning("stalled-job recovery failed: %s", exc)
        rounds += 1
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass


async def recover_stalled_jobs(bound: procrastinate.App, resources: Resources) -> int:
    """Put the jobs of workers whose heartbeat stopped back in their queue, and wake the workers."""
    stalled = await bound.job_manager.get_stalled_jobs(seconds_since_heartbeat=resources.settings.stalled_after)
    count = 0
    for job in stalled:
        await bound.job_manager.retry_job(job)
        await asyncio.to_thread(_notify, resources, job.queue, job.id)
        logger.warning(
            "re-queued stalled job",
            extra={"job_id": job.id, "queue": job.queue, "source_id": job.task_kwargs.get("source_id")},
        )
        count += 1
    await bound.job_manager.prune_stalled_workers(resources.settings.stalled_after)
    return count


REAP_EVERY_ROUNDS = 6  # the recovery round runs every stalled_after / 3 s: orphaned Modal calls every ~minute


def _uses_modal(resources: Resources, queues: list[Queue]) -> bool:
    """Whether this worker's model stages run on Modal (then it also cancels Modal calls left open)."""
    if not {"transcription", "diarization"} & set(queues):
        return False
    try:
        return gpu.select_backend(resources.settings)[0].name == "modal"
    except Exception:  # noqa: BLE001 - not configured: the stages themselves will say so
        return False


def _register(resources: Resources, queues: list[Queue]) -> None:
    """This process in dhgq.workers: where it runs, what it serves, which artifact store it uses."""
    settings = resources.settings
    params = {
        "id": resources.worker_id,
        "host": settings.host_name,
        "pid": os.getpid(),
        "queues": list(queues),
        "version": package_version("dhgq"),
        "artifact_store": settings.artifact_backend(),
    }
    with resources.pool.connection() as conn:
        conn.execute(query("register_worker"), params)
    logger.info(
        "worker %s on %s serves %s (artifact store: %s)",
        resources.worker_id,
        settings.host_name,
        ", ".join(queues),
        settings.artifact_backend(),
    )


def _seen(resources: Resources) -> None:
    with resources.pool.connection() as conn:
        conn.execute(query("worker_seen"), {"id": resources.worker_id})


def _unregister(resources: Resources) -> None:
    try:
        with resources.pool.connection() as conn:
            conn.execute(query("worker_stopped"), {"id": resources.worker_id})
    except Exception as exc:  # noqa: BLE001 - the database may be gone; the row then just ages
        logger.warning("could not record this worker's stop: %s", exc)


def _notify(resources: Resources, queue: str, job_id: int | None) -> None:
    with resources.pool.connection() as conn:
        conn.execute(query("notify_workers"), {"queue": queue, "job_id": job_id})


def _jobs_ready(resources: Resources, queues: list[Queue]) -> bool:
    with resources.pool.connection() as conn:
        row = conn.execute(query("ready_jobs"), {"queues": list(queues)}).fetchone()
    return bool(row and row[0])


def _warm(resources: Resources, queues: list[Queue]) -> None:
    for stage in ("transcription", "diarization"):
        if stage in queues:
            resources.host(stage).warm(gpu.warm, stage=stage)
