"""``dhgq monitor``: the live terminal view of the pipeline."""

from __future__ import annotations

from typing import Annotated

import typer

from dhgq.cli.common import settings_of
from dhgq.db import database_url


def monitor(
    ctx: typer.Context,
    refresh: Annotated[float, typer.Option(help="Seconds between polls (changes show at once anyway).", min=0.5)] = 3.0,
) -> None:
    """Watch sources move through the stages; retry (r), cancel (c), filter (f, s, /), details (enter)."""
    from dhgq.tui.app import create_app

    settings = settings_of(ctx)
    create_app(settings, database_url(settings), poll_interval=refresh).run()
