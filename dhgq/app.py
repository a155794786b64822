"""The Procrastinate app: wiring only. Tasks live in ``dhgq/tasks/``, one module per stage."""

from __future__ import annotations

import asyncio
from typing import Any

import procrastinate

from dhgq.db import with_search_path
from dhgq.errors import TransientError
from dhgq.settings import Settings, get_settings

STAGE_MODULES = [
    "dhgq.tasks.extraction",
    "dhgq.tasks.transcription",
    "dhgq.tasks.diarization",
    "dhgq.tasks.summarization",
]
# Not stages: requests' webhooks, the daily gc and the Drive folders' watch (the worker serves them with the stages).
TASK_MODULES = [*STAGE_MODULES, "dhgq.tasks.webhook", "dhgq.tasks.gc", "dhgq.tasks.drive_watch"]


def retry_strategy(settings: Settings) -> procrastinate.RetryStrategy:
    """Exponential backoff for transient errors only; permanent ones fail at once."""
    return procrastinate.RetryStrategy(
        max_attempts=settings.max_attempts - 1,  # Procrastinate counts retries, not runs
        exponential_wait=settings.retry_base_delay,
        retry_exceptions={TransientError},
    )


def configure_retries(bound: procrastinate.App, settings: Settings) -> None:
    """Give every stage task the retry strategy of the worker's settings (the tasks import none)."""
    strategy = retry_strategy(settings)
    for name, task in bound.tasks.items():
        if name.startswith("dhgq."):
            task.retry_strategy = strategy


class DhgqConnector(procrastinate.PsycopgConnector):
    """Procrastinate's psycopg connector on dhgq's database, with dhgq's search_path.

    Without a URL it finds the database when first opened, as the dhgq command does
    (``DHGQ_DATABASE_URL``, else the embedded server, started if needed): so Procrastinate's
    own tools work on this app, ``procrastinate --app dhgq.app.app healthchecks`` or ``shell``.
    """

    def __init__(self, url: str | None = None) -> None:
        super().__init__(kwargs={"connect_timeout": 10})
        if url is not None:
            self._pool_args["conninfo"] = with_search_path(url)

    def _find_database(self) -> None:
        if "conninfo" not in self._pool_args:
            from dhgq.db import database_url

            self._pool_args["conninfo"] = with_search_path(database_url(get_settings()))

    async def open_async(self, pool: Any = None) -> None:
        if pool is None:
            await asyncio.to_thread(self._find_database)
        await super().open_async(pool)

    def get_sync_connector(self) -> Any:
        self._find_database()
        return super().get_sync_connector()


app = procrastinate.App(connector=DhgqConnector(), import_paths=TASK_MODULES)


def connector_for(url: str) -> procrastinate.PsycopgConnector:
    return DhgqConnector(url)
