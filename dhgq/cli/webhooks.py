"""``dhgq webhooks``: the requests' webhook deliveries, and sending one again (the operator's side of
``dhgq_redeliver_webhook_v1``)."""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
import typer
from psycopg.rows import dict_row

from dhgq.cli.common import JsonOption, connected, emit_json, fail, stderr, stdout, when
from dhgq.queries import query

app = typer.Typer(no_args_is_help=True, help="Webhook deliveries: list them, send them again.")


@app.command("list")
def list_deliveries(
    ctx: typer.Context,
    failed: Annotated[bool, typer.Option("--failed", help="Only deliveries that failed for good.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many, newest first.")] = 50,
    json_output: JsonOption = False,
) -> None:
    """The latest webhook deliveries: status, attempts, the receiver's answer, the next attempt."""
    with connected(ctx) as conn:
        rows = conn.cursor(row_factory=dict_row).execute(query("cli_webhooks"), {"failed": failed, "limit": limit})
        deliveries = rows.fetchall()
    if json_output:
        return emit_json({"deliveries": deliveries})
    for d in deliveries:
        status = f"{d['status']} (HTTP {d['response_status']})" if d["response_status"] else d["status"]
        later = f", next {when(d['next_attempt_at'])}" if d["next_attempt_at"] else ""
        error = f"  {d['last_error']}" if d["last_error"] and d["status"] != "delivered" else ""
        stdout.print(
            f"{d['request_id']}  {d['outcome']:<9} {status}, {d['attempts']} attempt(s){later}{error}",
            highlight=False,
            soft_wrap=True,
        )
    if not deliveries:
        stderr.print("no webhook deliveries")


@app.command()
def redeliver(
    ctx: typer.Context,
    request_ids: Annotated[
        list[str] | None, typer.Argument(help="Requests whose latest delivery to send again.")
    ] = None,
    outcome: Annotated[
        str | None, typer.Option("--outcome", help="That outcome's delivery (completed, failed, cancelled).")
    ] = None,
    all_failed: Annotated[bool, typer.Option("--failed", help="Every delivery that failed for good.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Send delivered or failed webhooks again: the same webhook-id, a fresh signature and set of attempts."""
    if bool(request_ids) == all_failed:
        raise typer.BadParameter("give REQUEST_ID... or --failed")
    results: list[dict[str, Any]] = []
    with connected(ctx) as conn:
        targets = (
            [tuple(row) for row in conn.execute(query("cli_webhooks_failed"))]
            if all_failed
            else [(request_id, outcome) for request_id in request_ids or []]
        )
        for request_id, which in targets:
            try:
                row = conn.execute(query("cli_webhook_redeliver"), {"request_id": request_id, "outcome": which})
                results.append({"request_id": request_id, "outcome": row.fetchone()[0], "queued": True})  # type: ignore[index]
            except psycopg.Error as exc:
                message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                results.append({"request_id": request_id, "outcome": which, "queued": False, "error": message})
    if json_output:
        emit_json({"redeliveries": results})
    else:
        for r in results:
            line = f"{r['request_id']}  {r['outcome'] or '-'}  " + ("queued again" if r["queued"] else r["error"])
            stdout.print(line, highlight=False, soft_wrap=True)
        stderr.print(f"{sum(r['queued'] for r in results)} of {len(results)} delivery(ies) queued again")
    if not all(r["queued"] for r in results):
        raise fail("some deliveries were not queued again") if not json_output else typer.Exit(1)
