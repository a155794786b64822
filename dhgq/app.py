"""The Procrastinate app: wiring only. Tasks live in ``dhgq/tasks/``, one module per stage."""

from __future__ import annotations

import procrastinate

from dhgq.settings import get_settings

STAGE_MODULES = [
    "dhgq.tasks.extraction",
    "dhgq.tasks.transcription",
    "dhgq.tasks.diarization",
    "dhgq.tasks.summarization",
]


def retry_strategy() -> procrastinate.RetryStrategy:
    """Exponential backoff for transient errors only; permanent ones fail at once."""
    from dhgq.errors import TransientError

    settings = get_settings()
    return procrastinate.RetryStrategy(
        max_attempts=settings.max_attempts - 1,  # Procrastinate counts retries, not runs
        exponential_wait=settings.retry_base_delay,
        retry_exceptions={TransientError},
    )


app = procrastinate.App(connector=procrastinate.PsycopgConnector(), import_paths=STAGE_MODULES)


def connector_for(url: str) -> procrastinate.PsycopgConnector:
    return procrastinate.PsycopgConnector(conninfo=url, kwargs={"connect_timeout": 10})
