"""Watched Drive folders, every minute: ``dhgq.drive_watch``, a periodic Procrastinate task on queue ``maintenance``.

As for the daily gc (``dhgq/tasks/gc.py``): the database defers each tick once however many workers
see it, and the queueing lock keeps at most one run waiting. Each run checks the watches whose last
check is ``DHGQ_DRIVE_WATCH_SECONDS`` old or more (each row locked while it is checked, so two
workers never check one folder at once); a folder that fails says why in ``dhgq drive list``.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from procrastinate import JobContext

from dhgq import drive_watch
from dhgq.app import app
from dhgq.db import connect, database_url
from dhgq.settings import Settings, get_settings

logger = logging.getLogger("dhgq.drive")

QUEUE: Final = "maintenance"
TASK: Final = "dhgq.drive_watch"
CRON: Final = "* * * * *"  # every minute; a watch is checked when DHGQ_DRIVE_WATCH_SECONDS have passed


@app.periodic(cron=CRON, periodic_id="drive")
@app.task(name=TASK, queue=QUEUE, pass_context=True, queueing_lock=TASK)
def drive_watch_task(context: JobContext, timestamp: int) -> None:
    """Check the watched folders that are due, with the worker's settings and connections."""
    resources: Any = context.additional_context.get("dhgq")
    settings: Settings = resources.settings if resources is not None else get_settings()
    if resources is not None:
        with resources.pool.connection() as conn:
            results = drive_watch.check_due(conn, settings)
    else:  # Procrastinate's own worker: no dhgq resources in its context
        with connect(database_url(settings), autocommit=True, timeout=settings.db_connect_timeout) as conn:
            results = drive_watch.check_due(conn, settings)
    added = sum(len(r.added) for r in results)
    if results:
        logger.info("drive watch: %d folder(s) checked, %d new source(s)", len(results), added)
