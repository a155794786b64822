"""The ``dhgq`` command: wiring of the command groups only."""

from __future__ import annotations

import typer
from pydantic import ValidationError

from dhgq.cli import cost, db, drive, modal, models, pipeline, queue, webhooks
from dhgq.cli.common import DhgqGroup, fail
from dhgq.cli.demo import demo
from dhgq.cli.eval import evaluate
from dhgq.cli.gc import gc
from dhgq.cli.monitor import monitor
from dhgq.cli.rerun import rerun
from dhgq.cli.worker import worker
from dhgq.errors import ConfigurationError, DhgqError
from dhgq.settings import Settings

app = typer.Typer(
    name="dhgq",
    cls=DhgqGroup,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Turn recorded talks into searchable, speaker-labelled transcripts and summaries.",
)
app.command()(demo)
app.command()(pipeline.process)
app.command()(pipeline.status)
app.command()(pipeline.jobs)
app.command()(pipeline.retry)
app.command()(pipeline.cancel)
app.command()(rerun)
app.command()(pipeline.export)
app.command("dead-letter")(pipeline.dead_letter)
app.command()(monitor)
app.command()(worker)
app.command("eval")(evaluate)
app.command()(gc)
app.add_typer(db.app, name="db")
app.add_typer(models.app, name="models")
app.add_typer(modal.app, name="modal")
app.add_typer(webhooks.app, name="webhooks")
app.add_typer(queue.app, name="queue")
app.add_typer(drive.app, name="drive")
cost.register(app)  # dhgq cost, dhgq budget


@app.callback()
def root(ctx: typer.Context) -> None:
    """Build the settings once; every command reads them from the context."""
    try:
        ctx.obj = Settings()
    except ValidationError as exc:  # a DHGQ_* variable with a bad value: say which, in one line each
        raise ConfigurationError(settings_errors(exc)) from None


def settings_errors(exc: ValidationError) -> str:
    """Pydantic's errors as ``DHGQ_NAME: what is wrong`` (the value is not repeated: it may be a secret)."""
    said = [f"DHGQ_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}" for error in exc.errors()]
    return "invalid setting" + ("s" if len(said) > 1 else "") + ": " + "; ".join(said)


def main() -> None:
    """Console entry point: dhgq's own errors become one line on stderr and exit 1."""
    try:
        app(standalone_mode=True)
    except DhgqError as exc:
        raise SystemExit(fail(str(exc)).exit_code) from None
