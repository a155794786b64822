"""``dhgq db ...``: the embedded server and the schema."""

from __future__ import annotations

from typing import Annotated

import typer

from dhgq import migrations
from dhgq.cli.common import emit_json, settings_of, stderr, stdout
from dhgq.db import database_url, mask_url
from dhgq.embedded import EmbeddedServer

app = typer.Typer(no_args_is_help=True, help="The database: embedded server and migrations.")
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _server(ctx: typer.Context) -> EmbeddedServer:
    settings = settings_of(ctx)
    return EmbeddedServer(settings.home, settings.pg_bin_dir)


@app.command()
def start(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Start the embedded PostgreSQL server (a no-op when it runs already)."""
    settings = settings_of(ctx)
    if settings.database_url is not None:
        stderr.print("DHGQ_DATABASE_URL is set: dhgq uses that database and starts no server.")
        return
    info = _server(ctx).start()
    if json_output:
        emit_json({"running": True, "port": info.port, "pid": info.pid, "data_dir": str(info.data_dir)})
    else:
        stdout.print(f"embedded PostgreSQL running on port {info.port} (data in {info.data_dir})")


@app.command()
def stop(ctx: typer.Context) -> None:
    """Stop the embedded PostgreSQL server."""
    stopped = _server(ctx).stop()
    stderr.print("stopped" if stopped else "not running")


@app.command()
def status(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Whether the database is reachable, and where it is (password masked)."""
    settings = settings_of(ctx)
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
        data = {"embedded": False, "url": mask_url(url), "pending_migrations": len(migrations.pending(url))}
    else:
        info = _server(ctx).status()
        data = {
            "embedded": True,
            "running": info is not None,
            "url": mask_url(info.url()) if info else None,
            "data_dir": str(_server(ctx).data_dir),
        }
        if info:
            data["pending_migrations"] = len(migrations.pending(info.url()))
    if json_output:
        emit_json(data)
    else:
        for key, value in data.items():
            stdout.print(f"{key:>20}: {value}")
    if data.get("running") is False:
        raise typer.Exit(1)


@app.command()
def url(ctx: typer.Context) -> None:
    """Print a connection URL that psql accepts (starts the embedded server if needed)."""
    print(database_url(settings_of(ctx)))


@app.command()
def migrate(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Apply pending migrations from supabase/migrations, in order, each in a transaction."""
    target = database_url(settings_of(ctx))
    applied = migrations.migrate(target)
    behind = migrations.procrastinate_behind(target)
    if json_output:
        emit_json({"applied": [f"{m.version}_{m.name}" for m in applied], "procrastinate_behind": behind})
        return
    for m in applied:
        stdout.print(f"applied {m.version}_{m.name}")
    if not applied:
        stdout.print("database is up to date")
    if behind:
        stderr.print(f"[yellow]warning:[/yellow] procrastinate ships newer schema migrations: {', '.join(behind)}")
