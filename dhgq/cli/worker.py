"""``dhgq worker``: process the stage queues."""

from __future__ import annotations

from typing import Annotated

import typer

from dhgq import logs, migrations
from dhgq.cli.common import settings_of
from dhgq.db import database_url
from dhgq.errors import ConfigurationError
from dhgq.settings import STAGES, Stage


def worker(
    ctx: typer.Context,
    queue: Annotated[list[str] | None, typer.Option("--queue", "-q", help="Only these stage queues.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Override every queue's concurrency.")] = None,
    once: Annotated[bool, typer.Option("--once", help="Work until no job is ready, then exit.")] = False,
) -> None:
    """Run workers for the stage queues (all four by default), each with its own concurrency."""
    from dhgq import worker as worker_module

    settings = settings_of(ctx)
    logs.configure(settings)
    unknown = set(queue or []) - set(STAGES)
    if unknown:
        raise typer.BadParameter(f"unknown queue(s): {', '.join(sorted(unknown))}; choose from {', '.join(STAGES)}")
    queues: list[Stage] = [q for q in STAGES if not queue or q in queue]
    url = database_url(settings)
    if migrations.pending(url):
        raise ConfigurationError("the database schema is not up to date: run `dhgq db migrate` first")
    worker_module.run(settings, url, queues=queues, once=once, concurrency=concurrency, warm=not once)
