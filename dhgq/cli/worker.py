"""``dhgq worker``: process the stage queues (and the webhooks queue)."""

from __future__ import annotations

from typing import Annotated

import typer

from dhgq import logs, migrations
from dhgq.cli.common import settings_of
from dhgq.db import database_url
from dhgq.errors import ConfigurationError
from dhgq.settings import STAGES

QUEUES = (*STAGES, "webhooks", "maintenance")


def worker(
    ctx: typer.Context,
    queue: Annotated[
        list[str] | None, typer.Option("--queue", "-q", help="Only these queues (a stage's, or webhooks).")
    ] = None,
    concurrency: Annotated[int | None, typer.Option(help="Override every queue's concurrency.")] = None,
    once: Annotated[bool, typer.Option("--once", help="Work until no job is ready, then exit.")] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve Prometheus metrics on this port (DHGQ_METRICS_PORT; one port per worker process).",
        ),
    ] = None,
) -> None:
    """Run workers for the queues (the four stages and the webhooks by default), each with its own concurrency."""
    from dhgq import worker as worker_module

    settings = settings_of(ctx)
    if metrics_port is not None:
        settings = settings.model_copy(update={"metrics_port": metrics_port})
    logs.configure(settings)
    unknown = set(queue or []) - set(QUEUES)
    if unknown:
        raise typer.BadParameter(f"unknown queue(s): {', '.join(sorted(unknown))}; choose from {', '.join(QUEUES)}")
    queues: list[worker_module.Queue] = [q for q in QUEUES if not queue or q in queue]  # type: ignore[misc]
    url = database_url(settings)
    if migrations.pending(url):
        raise ConfigurationError("the database schema is not up to date: run `dhgq db migrate` first")
    worker_module.run(settings, url, queues=queues, once=once, concurrency=concurrency, warm=not once)
