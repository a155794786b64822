"""The ``dhgq`` command: wiring of the command groups only."""

from __future__ import annotations

import typer

from dhgq.cli import db
from dhgq.cli.worker import worker
from dhgq.cli.common import fail
from dhgq.errors import DhgqError
from dhgq.settings import Settings

app = typer.Typer(
    name="dhgq",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Turn recorded talks into searchable, speaker-labelled transcripts and summaries.",
)
app.add_typer(db.app, name="db")
app.command()(worker)


@app.callback()
def root(ctx: typer.Context) -> None:
    """Build the settings once; every command reads them from the context."""
    ctx.obj = Settings()


def main() -> None:
    """Console entry point: dhgq's own errors become one line on stderr and exit 1."""
    try:
        app(standalone_mode=True)
    except DhgqError as exc:
        raise SystemExit(fail(str(exc)).exit_code) from None
