"""``dhgq process | status | jobs | retry | cancel | export | dead-letter``: the pipeline's sources."""

from __future__ import annotations

import time
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from rich import box
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from dhgq import budget, sources
from dhgq.cli.common import JsonOption, connected, emit_json, fail, seconds, settings_of, stderr, stdout, when
from dhgq.db import database_url
from dhgq.errors import PermanentError
from dhgq.media.export import FORMATS, render
from dhgq.settings import STAGES, Settings
from dhgq.status import (
    QueueSnapshot,
    SourceDetail,
    SourceRow,
    dead_letter_sources,
    fetch_dead_letter,
    fetch_detail,
    fetch_documents,
    fetch_jobs,
    fetch_snapshot,
    fetch_sources,
    follow_stages,
    live_workers,
)
from dhgq.status_text import stage_cell, state_text


class StatusChoice(StrEnum):
    queued = "queued"
    processing = "processing"
    completed = "completed"
    failed = "failed"


class StageChoice(StrEnum):
    extraction = "extraction"
    transcription = "transcription"
    diarization = "diarization"
    summarization = "summarization"


class FormatChoice(StrEnum):
    txt = "txt"
    srt = "srt"
    vtt = "vtt"
    json = "json"
    md = "md"
    rttm = "rttm"


assert [c.value for c in StageChoice] == list(STAGES) and [c.value for c in FormatChoice] == list(FORMATS)
DONE = {"completed", "failed"}
SourceArgument = Annotated[str, typer.Argument(help="A source id, a unique id prefix, or a source name.")]


def process(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(help="Media files or directories (searched recursively).", exists=True, resolve_path=True),
    ],
    wait: Annotated[bool, typer.Option("--wait", help="Follow the sources until their pipelines end.")] = False,
    timeout: Annotated[float | None, typer.Option(help="With --wait: give up after this many seconds.")] = None,
    speakers: Annotated[
        int | None, typer.Option("--speakers", help="How many people speak (steers the diarization).")
    ] = None,
    language: Annotated[
        str | None, typer.Option("--language", help="Spoken language, an ISO 639 code such as en (default: detect).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Whisper model for these files (default: DHGQ_WHISPER_MODEL).")
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(
            "--priority", min=-100, max=100, help="Run these files before lower priorities (-100 to 100, default 0)."
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Add media files as sources (skipping content already known); their pipelines start at once."""
    files = sources.media_files(paths)
    if not files:
        raise PermanentError(f"no media files ({', '.join(sorted(sources.MEDIA_TYPES))}) under the given paths")
    options = {
        key: value
        for key, value in {"num_speakers": speakers, "language": language, "model": model, "priority": priority}.items()
        if value is not None
    }
    with connected(ctx) as conn:
        batch_name = str(paths[0]) if len(paths) == 1 and paths[0].is_dir() else f"{len(files)} file(s)"
        batch_id: str | None = budget.new_batch(conn, batch_name, len(files), {"options": options})
        try:
            added = _add_with_progress(conn, files, options, quiet=json_output, batch_id=batch_id)
        finally:
            if budget.discard_empty_batch(conn, batch_id):  # nothing new (known files, refused options)
                batch_id = None
        ids = list(dict.fromkeys(a.source_id for a in added))
        rows = follow(ctx, conn, ids, timeout=timeout, quiet=json_output) if wait else fetch_sources(conn, ids)
    states = {row.source_id: row for row in rows}
    if json_output:
        emit_json(
            {
                "batch_id": batch_id,
                "sources": [
                    {
                        "path": str(a.path),
                        "source_id": a.source_id,
                        "created": a.created,
                        "state": _state(states.get(a.source_id)),
                        "progress": states[a.source_id].progress if a.source_id in states else None,
                    }
                    for a in added
                ],
            }
        )
    else:
        new = sum(a.created for a in added)
        stderr.print(f"{new} new source(s), {len(added) - new} already known")
        for a in added:
            stdout.print(f"{a.source_id}  {_state(states.get(a.source_id)):<12} {a.path}", highlight=False)
    if wait and any(row.state == "failed" for row in rows):
        raise typer.Exit(1)


def _state(row: SourceRow | None) -> str:
    return row.state if row else "unknown"


def _add_with_progress(
    conn: psycopg.Connection, files: list[Path], options: dict[str, Any], *, quiet: bool, batch_id: str | None = None
) -> list[sources.Added]:
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
    with Progress(*columns, console=stderr, transient=True, disable=quiet) as progress:
        task = progress.add_task("adding", total=len(files))
        added = []
        for path in files:
            progress.update(task, description=f"hashing {path.name}")
            added.append(sources.add_file(conn, path, origin="dhgq process", options=options, batch_id=batch_id))
            progress.advance(task)
    return added


def follow(
    ctx: typer.Context,
    conn: psycopg.Connection,
    ids: list[str],
    *,
    timeout: float | None = None,
    quiet: bool = False,
) -> list[SourceRow]:
    """Show each source's progress until every pipeline has ended; woken by NOTIFY, polling as fallback."""
    settings = settings_of(ctx)
    deadline = time.monotonic() + timeout if timeout else None
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[state]}"),
    )
    _warn_without_workers(conn, settings.stalled_after, quiet)
    url = database_url(settings)
    with (
        follow_stages(url, timeout=settings.db_connect_timeout) as changes,
        Progress(*columns, console=stderr, disable=quiet) as progress,
    ):
        tasks = {i: progress.add_task(i[:8], total=100, state="") for i in ids}
        while True:
            rows = fetch_sources(conn, ids)
            for row in rows:
                progress.update(
                    tasks[row.source_id], completed=row.progress, state=_stage_label(row), description=row.name[:30]
                )
            if all(row.state in DONE for row in rows) or (deadline and time.monotonic() > deadline):
                break
            changes.wait(2.0)  # woken by a stage change; reads again after 2 s without one
    if deadline and not all(row.state in DONE for row in rows):
        raise fail(f"timed out after {timeout:.0f}s; the sources keep going (dhgq status)")
    return rows


def _warn_without_workers(conn: psycopg.Connection, stalled_after: float, quiet: bool) -> None:
    if not quiet and not live_workers(conn, stalled_after):
        stderr.print("[yellow]no live worker:[/yellow] start one with `dhgq worker` (waiting)")


def _stage_label(row: SourceRow) -> str:
    if row.state in DONE | {"not started"}:
        return row.state
    busy = [
        f"{stage} {state.progress:.0f}%" + (f" ({state.media.describe()})" if state.media else "")
        for stage, state in row.stages.items()
        if state.status == "processing"
    ]
    waiting = [stage for stage, state in row.stages.items() if state.status == "queued"]
    return ", ".join(busy) or (f"{', '.join(waiting)} queued" if waiting else row.state)


def status(
    ctx: typer.Context,
    source: Annotated[str | None, typer.Argument(help="One source: its stage rows in detail.")] = None,
    limit: Annotated[int, typer.Option(help="How many recent sources the overview lists.")] = 20,
    json_output: JsonOption = False,
) -> None:
    """Stage counts and recent sources; with SOURCE, its stages with attempts, durations and errors."""
    settings = settings_of(ctx)
    with connected(ctx) as conn:
        if source is None:
            snapshot = fetch_snapshot(conn, limit=limit, stalled_after=settings.stalled_after)
            return _emit_overview(snapshot, json_output)
        found = sources.resolve(conn, source)
        detail = fetch_detail(conn, str(found["id"]))
    if detail is None:
        raise fail(f"source {found['id']} disappeared")
    if json_output:
        return emit_json(asdict(detail))
    print_detail(detail)


def _emit_overview(snapshot: QueueSnapshot, json_output: bool) -> None:
    if json_output:
        return emit_json(asdict(snapshot))
    table = Table("stage", "queued", "processing", "completed", "failed", "done 5 min", title="Stages")
    for s in snapshot.stages:
        table.add_row(
            s.stage,
            *(str(v) for v in (s.queued, s.processing, s.completed, s.failed, s.completed_last_5_min)),
        )
    stdout.print(table)
    hosts = f" on {len(snapshot.hosts)} host{'s' if len(snapshot.hosts) != 1 else ''}" if snapshot.hosts else ""
    stdout.print(
        f"live workers: {snapshot.workers}{hosts}   jobs finished in the last minute: {snapshot.jobs_last_minute}"
    )
    for pause in snapshot.paused:
        stdout.print(f"[yellow]paused:[/yellow] {escape(pause.describe())}", highlight=False)
    _print_fleet(snapshot)
    recent = listing("id", "state", "progress", "extract", "transcr", "diarize", "summary", title="Recent sources")
    for row in snapshot.sources:
        recent.add_row(
            row.source_id[:8],
            state_text(row.state),
            f"{row.progress:.0f}%",
            *(stage_cell(row.stages.get(s)) for s in STAGES),
            row.name,
        )
    stdout.print(recent)


def _print_fleet(snapshot: QueueSnapshot) -> None:
    """The worker processes by host: what each serves, which artifact store, what it holds now."""
    if not snapshot.fleet:
        return
    table = Table("host", "pid", "state", "queues", "store", "stages", "seen", title="Workers", box=box.SIMPLE_HEAD)
    for w in snapshot.fleet:
        table.add_row(
            w.host,
            str(w.pid),
            "[green]alive[/green]" if w.alive else "[dim]gone[/dim]",
            ",".join(w.queues),
            w.artifact_store or "",
            str(w.stages_in_hand),
            when(w.seen_at),
        )
    stdout.print(table)


def listing(*columns: str, error: bool = False, title: str | None = None) -> Table:
    """Short columns that never wrap, then the name (cut when narrow) and the error (wrapped)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for column in columns:
        table.add_column(column, no_wrap=True)
    table.add_column("name", no_wrap=True, overflow="ellipsis", min_width=8, max_width=20 if error else 28)
    if error:
        table.add_column("error", overflow="fold", min_width=12, ratio=1)
    return table


def print_detail(detail: SourceDetail) -> None:
    row = detail.source
    stdout.print(f"[bold]{row.name}[/bold]  {row.source_id}", highlight=False)
    stdout.print(f"{row.path}\nstate: {row.state}  progress: {row.progress:.0f}%", highlight=False)
    table = Table(
        "stage", "status", "progress", "attempts", "host", "started", "took", "error class", "reuse, staleness, cost"
    )
    for s in detail.stages:
        table.add_row(
            s.stage,
            s.status,
            f"{s.progress:.0f}%",
            str(s.attempts),
            s.host or "",
            when(s.started_at),
            seconds(s.seconds),
            s.error_class or "",
            s.notes(),
        )
    stdout.print(table)
    for s in detail.stages:
        if s.media is not None:
            stdout.print(f"{s.stage}: {s.media.describe()}", highlight=False)
    for s in detail.stages:
        if s.error:
            stdout.print(f"[red]{s.stage}:[/red] {escape(s.error)}", highlight=False, soft_wrap=True)


def jobs(
    ctx: typer.Context,
    status: Annotated[StatusChoice | None, typer.Option("--status", help="Only stage rows in this status.")] = None,
    stage: Annotated[StageChoice | None, typer.Option("--stage", help="Only this stage.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows, newest first.")] = 50,
    json_output: JsonOption = False,
) -> None:
    """Stage jobs across sources, with attempts, durations and errors."""
    with connected(ctx) as conn:
        rows = fetch_jobs(
            conn, status=status.value if status else None, stage=stage.value if stage else None, limit=limit
        )
    if json_output:
        return emit_json([_plain(r) for r in rows])
    table = listing("source", "stage", "status", "tries", "job", "took", error=True)
    for r in rows:
        error = f"{r['error_class']}: {r['error']}" if r["error"] else ""
        table.add_row(
            str(r["source_id"])[:8],
            r["stage"],
            r["status"],
            str(r["attempts"] or 0),
            r["job_id"] or "",
            seconds(r["seconds"]),
            r["name"],
            error,
        )
    stdout.print(table)


def dead_letter(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """What failed for good (permanent errors, or retries used up), with why."""
    with connected(ctx) as conn:
        rows = fetch_dead_letter(conn)
    if json_output:
        return emit_json([_plain(r) for r in rows])
    if not rows:
        stderr.print("nothing in the dead letter")
        return
    table = listing("source", "stage", "class", "tries", "failed at", error=True)
    for r in rows:
        table.add_row(
            str(r["source_id"])[:8],
            r["stage"],
            r["error_class"] or "",
            str(r["attempts"] or 0),
            when(r["failed_at"]),
            r["source_name"],
            r["error"] or "",
        )
    stdout.print(table)


def retry(
    ctx: typer.Context,
    source: Annotated[str | None, typer.Argument(help="A source id, id prefix or name.")] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="Every source in the dead letter.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Queue a source's failed stages again (the pipeline resumes there, not from scratch)."""
    if (source is None) == (not all_failed):
        raise typer.BadParameter("give a SOURCE or --all-failed (not both)")
    with connected(ctx) as conn:
        if all_failed:
            ids = dead_letter_sources(conn)
        else:
            ids = [str(sources.resolve(conn, source or "")["id"])]
        queued = {i: sources.retry(conn, i) for i in ids}
    _report("retried", queued, json_output, "queued {n} stage(s) again for {id}", "nothing failed for {id}")


def cancel(ctx: typer.Context, source: SourceArgument, json_output: JsonOption = False) -> None:
    """Cancel a source's queued and running stages (running ones are asked to abort)."""
    with connected(ctx) as conn:
        found = str(sources.resolve(conn, source)["id"])
        cancelled = {found: sources.cancel(conn, found)}
    _cancel_modal_calls(settings_of(ctx), found)
    _report("cancelled", cancelled, json_output, "cancelled {n} stage(s) of {id}", "nothing to cancel for {id}")


def _cancel_modal_calls(settings: Settings, source_id: str) -> None:
    """The source's Modal calls left open by a worker that stopped (a live worker cancels its own)."""
    from dhgq import gpu

    if gpu.modal_credentials() is None:
        return
    cancelled = gpu.cancel_open_calls(settings, source_id)
    if cancelled:
        stderr.print(f"cancelled {cancelled} Modal call(s) left running for {source_id}")


def _report(key: str, counts: dict[str, int], json_output: bool, done: str, nothing: str) -> None:
    if json_output:
        return emit_json({key: counts, "total": sum(counts.values())})
    if not counts:
        stderr.print("no source to act on")
    for source_id, n in counts.items():
        stderr.print((done if n else nothing).format(n=n, id=source_id))


def export(
    ctx: typer.Context,
    source: SourceArgument,
    fmt: Annotated[FormatChoice, typer.Option("--format", "-f", help="Output format.")] = FormatChoice.txt,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write here instead of stdout.", dir_okay=False, writable=True),
    ] = None,
) -> None:
    """A source's speaker-labelled transcript as txt, srt, vtt, json, md or rttm."""
    with connected(ctx) as conn:
        found = sources.resolve(conn, source)
        documents = fetch_documents(conn, str(found["id"]))
    if documents.transcript is None:
        raise PermanentError(f"{found['name']} has no transcript yet (dhgq status {str(found['id'])[:8]})")
    title = Path(found["name"]).stem
    text = render(documents.transcript, documents.diarization, fmt.value, title=title, summary=documents.summary)
    if output is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    output.write_text(text, encoding="utf-8")
    stderr.print(f"wrote {output}")


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if k in ("source_id", "stage_id") else v for k, v in row.items()}
