"""``dhgq gc``: remove what retention lets go (see dhgq/gc.py and the README's "Retention")."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table

from dhgq import gc as retention
from dhgq.cli.common import JsonOption, connected, emit_json, settings_of, stderr, stdout, when

DryRunOption = Annotated[bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")]


def gc(ctx: typer.Context, dry_run: DryRunOption = False, json_output: JsonOption = False) -> None:
    """Remove finished sources' extracted audio, files no row references, scratch leftovers and old finished jobs."""
    settings = settings_of(ctx)
    with connected(ctx) as conn:
        report = retention.collect(conn, settings, dry_run=dry_run)
    if json_output:
        return emit_json(report.as_dict(settings))
    _print(report)


def _print(report: retention.Report) -> None:
    if report.removals:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
        for column in ("reason", "files", "size"):
            table.add_column(column, no_wrap=True)
        table.add_column("path", overflow="fold")
        for removal in report.removals:
            table.add_row(removal.reason, str(len(removal.files)), retention.human_bytes(removal.bytes), removal.path)
        stdout.print(table)
    for source in report.sources:
        stdout.print(
            f"audio cleared: {source.source_id}  {source.outcome} {when(source.finished_at)}  {source.name}",
            highlight=False,
        )
    if report.jobs:
        by_status: dict[str, int] = {}
        for job in report.jobs:
            by_status[job.status] = by_status.get(job.status, 0) + 1
        counts = ", ".join(f"{n} {status}" for status, n in sorted(by_status.items()))
        stdout.print(f"jobs: {counts}", highlight=False)
    for error in report.errors:
        stderr.print(f"[yellow]not removed:[/yellow] {error}", highlight=False, soft_wrap=True)
    stderr.print(report.summary(), highlight=False)
