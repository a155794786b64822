"""``dhgq cost`` and ``dhgq budget show | set``: what the paid calls cost, and caps on it.

Both read the ledger (``dhgq/ledger.py``) and the caps in ``dhgq.config`` (``dhgq/budget.py``);
setting a cap is one row of ``dhgq.config``, whose trigger re-queues the stages waiting for
budget, so no worker needs a restart.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, Any

import psycopg
import typer
from psycopg.rows import dict_row
from rich import box
from rich.table import Table

from dhgq import budget
from dhgq.cli.common import JsonOption, connected, emit_json, stderr, stdout, when
from dhgq.queries import query


class ByChoice(StrEnum):
    source = "source"
    batch = "batch"
    day = "day"


COLUMNS = ("calls", "failed_calls", "input_tokens", "output_tokens", "gpu_seconds", "wall_seconds", "cost_usd")


def cost(
    ctx: typer.Context,
    by: Annotated[ByChoice, typer.Option("--by", help="Totals per source, per batch or per UTC day.")] = ByChoice.day,
    since: Annotated[
        str | None, typer.Option("--since", help="Only from this UTC date on (YYYY-MM-DD).", metavar="DATE")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """What the paid calls (Claude, Modal GPU) cost: totals per source, batch or day, from the ledger."""
    start = _date(since)
    with connected(ctx) as conn:
        rows = totals(conn, by.value, start)
    total = {column: sum(row[column] for row in rows) for column in COLUMNS}
    if json_output:
        return emit_json({"by": by.value, "since": start.isoformat() if start else None, "rows": rows, "total": total})
    _print_totals(by.value, rows, total)


def totals(conn: psycopg.Connection, by: str, since: date | None) -> list[dict[str, Any]]:
    """One row per source, batch or day: calls, tokens, GPU and wall seconds, dollars."""
    cur = conn.cursor(row_factory=dict_row)
    found = cur.execute(query("cost_totals"), {"by": by, "since": since}).fetchall()
    return [{key: _plain(value) for key, value in row.items()} for row in found]


def _plain(value: Any) -> Any:
    """Numbers as JSON numbers (the ledger's sums come back as Decimal)."""
    if value is None or isinstance(value, str | int):
        return value
    return round(float(value), 6)


def _date(text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date like 2026-01-31", param_hint="--since") from None


def _print_totals(by: str, rows: list[dict[str, Any]], total: dict[str, Any]) -> None:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, show_footer=True)
    table.add_column(by, footer="total", no_wrap=True)
    if by != "day":
        table.add_column("name", overflow="ellipsis", max_width=32)
    for column, title in (("calls", "calls"), ("input_tokens", "tokens in"), ("output_tokens", "tokens out")):
        table.add_column(title, footer=str(int(total[column])), justify="right")
    table.add_column("GPU s", footer=f"{total['gpu_seconds']:.1f}", justify="right")
    table.add_column("wall s", footer=f"{total['wall_seconds']:.1f}", justify="right")
    table.add_column("cost", footer=f"${total['cost_usd']:.4f}", justify="right")
    for row in rows:
        key = row["key"] if by == "day" or row["key"] == "-" else row["key"][:8]
        names = [row["name"] or ("(none)" if row["key"] == "-" else "")] if by != "day" else []
        table.add_row(
            key,
            *names,
            str(int(row["calls"])),
            str(int(row["input_tokens"])),
            str(int(row["output_tokens"])),
            f"{row['gpu_seconds']:.1f}",
            f"{row['wall_seconds']:.1f}",
            f"${row['cost_usd']:.4f}",
        )
    stdout.print(table)


# --- dhgq budget ------------------------------------------------------------------------------------

budget_app = typer.Typer(
    no_args_is_help=True, help="Caps in dollars on what paid calls may cost, per day and per batch."
)


@budget_app.command("show")
def show(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """The caps, what today has spent, and the stages waiting for budget."""
    with connected(ctx) as conn:
        caps = budget.read_caps(conn)
        today = budget.spent_today(conn)
        waiting = budget.waiting(conn)
    if json_output:
        return emit_json(
            {
                "daily_usd": caps.daily_usd,
                "batch_usd": caps.batch_usd,
                "spent_today_usd": round(today, 6),
                "waiting": [{**row, "source_id": str(row["source_id"])} for row in waiting],
            }
        )
    stdout.print(f"daily cap: {_cap(caps.daily_usd)}   spent today (UTC): ${today:.4f}", highlight=False)
    stdout.print(f"batch cap: {_cap(caps.batch_usd)}", highlight=False)
    for row in waiting:
        stdout.print(
            f"waiting: {str(row['source_id'])[:8]} {row['stage']}  next check {when(row['next_check'])}  "
            f"{row['name']}: {row['reason']}",
            highlight=False,
            soft_wrap=True,
        )


def _cap(usd: float | None) -> str:
    return "none" if usd is None else f"${usd:.2f}"


CapOption = Annotated[str | None, typer.Option(help="Dollars, or 'none' to remove the cap.", metavar="USD")]


@budget_app.command("set")
def set_caps(
    ctx: typer.Context, daily: CapOption = None, batch: CapOption = None, json_output: JsonOption = False
) -> None:
    """Set the caps (--daily 5 --batch 2, or none); stages waiting for budget are queued again at once."""
    changes = {
        key: _usd(value, flag)
        for key, value, flag in ((budget.DAILY, daily, "--daily"), (budget.BATCH, batch, "--batch"))
        if value is not None
    }
    if not changes:
        raise typer.BadParameter("give --daily and/or --batch")
    with connected(ctx) as conn, conn.transaction():
        for key, usd in changes.items():
            budget.set_cap(conn, key, usd)
        caps = budget.read_caps(conn)
    if json_output:
        return emit_json({"daily_usd": caps.daily_usd, "batch_usd": caps.batch_usd})
    stderr.print(f"daily cap: {_cap(caps.daily_usd)}   batch cap: {_cap(caps.batch_usd)}", highlight=False)


def _usd(text: str, flag: str) -> float | None:
    if text.strip().lower() in ("none", "off", "unset"):
        return None
    try:
        usd = float(text.strip().lstrip("$"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number of dollars (or 'none')", param_hint=flag) from None
    if usd < 0 or usd != usd:
        raise typer.BadParameter("a cap is 0 dollars or more", param_hint=flag)
    return usd


def register(app: typer.Typer) -> None:
    """Wire ``dhgq cost`` and ``dhgq budget`` into the command."""
    app.command("cost")(cost)
    app.add_typer(budget_app, name="budget")
