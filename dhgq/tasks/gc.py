"""Retention, daily: ``dhgq gc`` as a periodic Procrastinate task on queue ``maintenance``.

Every Procrastinate worker runs a periodic deferrer for the app's periodic tasks; the database
defers each tick once however many workers see it (``procrastinate_periodic_defers``), and the
queueing lock keeps at most one run waiting, so ticks that nobody serves do not pile up. The job
runs where a worker serves the ``maintenance`` queue. ``DHGQ_GC_PERIODIC=false`` makes it do
nothing (``dhgq gc`` still works); a run that finds another collection in progress skips.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from procrastinate import JobContext

from dhgq import gc as retention
from dhgq.app import app
from dhgq.db import connect, database_url
from dhgq.settings import Settings, get_settings

logger = logging.getLogger("dhgq.gc")

QUEUE: Final = "maintenance"
TASK: Final = "dhgq.gc"
CRON: Final = "17 3 * * *"  # daily at 03:17 UTC: off the hour, when talks are rarely being processed
CONCURRENCY = 1  # one collection at a time anyway (an advisory lock)


@app.periodic(cron=CRON, periodic_id="daily")
@app.task(name=TASK, queue=QUEUE, pass_context=True, queueing_lock=TASK, lock=TASK)
def gc(context: JobContext, timestamp: int) -> None:
    """One collection, as ``dhgq gc`` does it, with the worker's settings and connections."""
    resources: Any = context.additional_context.get("dhgq")
    settings: Settings = resources.settings if resources is not None else get_settings()
    if not settings.gc_periodic:
        logger.info("gc: the periodic collection is off (DHGQ_GC_PERIODIC=false)")
        return
    try:
        if resources is not None:
            with resources.pool.connection() as conn:
                report = retention.collect(conn, settings)
        else:  # Procrastinate's own worker: no dhgq resources in its context
            with connect(database_url(settings), autocommit=True, timeout=settings.db_connect_timeout) as conn:
                report = retention.collect(conn, settings)
    except retention.GcRunning as exc:
        logger.info("gc: skipped: %s", exc.message)
        return
    logger.info("gc: %s", report.summary(), extra={"scheduled_for": timestamp})
