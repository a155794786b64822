"""``dhgq queue pause | resume | list``: stop and start a queue for every worker, without a restart.

The pause is a row of ``dhgq.queue_pauses`` (``dhgq/queues.py``): every worker on every machine
stops fetching that queue's jobs at its next fetch, the jobs in hand finish, and the queue's jobs
stay todo until it is resumed.
"""

from __future__ import annotations

import getpass
from enum import StrEnum
from typing import Annotated, Any

import typer
from psycopg.rows import dict_row
from rich import box
from rich.table import Table

from dhgq import queues
from dhgq.cli.common import JsonOption, connected, emit_json, settings_of, stderr, stdout, when
from dhgq.queries import query

app = typer.Typer(no_args_is_help=True, help="Pause, resume and list the queues (every worker obeys at once).")

QueueChoice = StrEnum("QueueChoice", {name: name for name in queues.QUEUES})  # type: ignore[misc]
QueueArgument = Annotated[QueueChoice, typer.Argument(help="A stage's queue, webhooks or maintenance.")]


@app.command()
def pause(
    ctx: typer.Context,
    queue: QueueArgument,
    reason: Annotated[str | None, typer.Option(help="Why: shown by dhgq status and the monitor.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Stop every worker from starting jobs of QUEUE (jobs in hand finish; its jobs wait, todo)."""
    who = f"{getpass.getuser()}@{settings_of(ctx).host_name}"
    with connected(ctx) as conn:
        queues.pause(conn, queue.value, reason or f"paused by {who}", who)
    if json_output:
        return emit_json({"queue": queue.value, "paused": True})
    stderr.print(f"{queue.value} paused: its jobs wait until `dhgq queue resume {queue.value}`")


@app.command()
def resume(ctx: typer.Context, queue: QueueArgument, json_output: JsonOption = False) -> None:
    """Let the workers take QUEUE's jobs again (idle workers are woken at once)."""
    with connected(ctx) as conn:
        was_paused = queues.resume(conn, queue.value)
    if json_output:
        return emit_json({"queue": queue.value, "resumed": was_paused})
    stderr.print(f"{queue.value} resumed" if was_paused else f"{queue.value} was not paused")


@app.command("list")
def list_queues(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Every queue: paused or not (why, until when), and its jobs ready, scheduled and running."""
    with connected(ctx) as conn:
        pauses = {p.queue: p for p in queues.paused(conn)}
        depths = {row["queue_name"]: row for row in conn.cursor(row_factory=dict_row).execute(query("queue_depths"))}
    rows = [_row(queue, depths.get(queue, {}), pauses.get(queue)) for queue in queues.QUEUES]
    if json_output:
        return emit_json(rows)
    table = Table("queue", "state", "ready", "scheduled", "running", "oldest", "why", box=box.SIMPLE_HEAD)
    for row in rows:
        state = "[yellow]paused[/yellow]" if row["paused"] else "[green]running[/green]"
        until = f" until {when(row['resume_at'])}" if row["resume_at"] else ""
        table.add_row(
            row["queue"],
            state + until,
            str(row["ready"]),
            str(row["scheduled"]),
            str(row["running"]),
            f"{row['oldest_ready_seconds']:.0f}s" if row["ready"] else "-",
            row["reason"] or "",
        )
    stdout.print(table)


def _row(queue: str, depth: dict[str, Any], pause: queues.Pause | None) -> dict[str, Any]:
    return {
        "queue": queue,
        "paused": pause is not None,
        "reason": pause.reason if pause else None,
        "paused_by": pause.paused_by if pause else None,
        "paused_at": pause.paused_at if pause else None,
        "resume_at": pause.resume_at if pause else None,
        "ready": int(depth.get("ready", 0)),
        "scheduled": int(depth.get("scheduled", 0)),
        "running": int(depth.get("running", 0)),
        "oldest_ready_seconds": float(depth.get("oldest_ready_seconds", 0.0)),
    }
