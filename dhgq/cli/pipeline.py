"""``dhgq process | status | jobs | retry | cancel | export | dead-letter``: the pipeline's sources."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from rich import box
from rich.markup import escape
from rich.padding import Padding
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

from dhgq import budget, sources
from dhgq.cli.common import JsonOption, connected, emit_json, fail, seconds, settings_of, stderr, stdout, when
from dhgq.db import database_url
from dhgq.errors import PermanentError
from dhgq.fetch import is_remote
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
    fetch_fleet,
    fetch_jobs,
    fetch_snapshot,
    fetch_sources,
    follow_stages,
)
from dhgq.status_text import state_text


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
        list[str],
        typer.Argument(
            help="Media files or directories (searched recursively), or storage://BUCKET/KEY, gdrive://FILE_ID "
            "and https:// URIs.",
            show_default=False,
        ),
    ],
    wait: Annotated[bool, typer.Option("--wait", help="Follow the sources until their pipelines end.")] = False,
    timeout: Annotated[float | None, typer.Option(help="With --wait: give up after this many seconds.")] = None,
    speakers: Annotated[
        int | None,
        typer.Option(
            "--speakers",
            help="How many people speak (steers the diarization): count who talks for more than a few seconds.",
        ),
    ] = None,
    language: Annotated[
        str | None, typer.Option("--language", help="Spoken language, an ISO 639 code such as en (default: detect).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Whisper model for these files (default: DHGQ_WHISPER_MODEL, auto); one the workers can run.",
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt", help="Text that steers the transcript's spelling and style (Whisper's initial prompt)."
        ),
    ] = None,
    vocabulary: Annotated[
        list[str] | None,
        typer.Option("--vocabulary", "-V", help="A name or term the talk uses (repeat the option for more)."),
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(
            "--priority", min=-100, max=100, help="Run these files before lower priorities (-100 to 100, default 0)."
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Add media files or URIs as sources (skipping what is already known); their pipelines start at once.

    Options given for a file that is known already are applied: the stages they change run again (or the
    file is refused, with why, while its pipeline is running)."""
    settings = settings_of(ctx)
    if model is not None:
        check_model(settings, model)
    uris = [p for p in paths if is_remote(p)]
    files = sources.media_files([Path(p) for p in paths if not is_remote(p)]) if len(uris) < len(paths) else []
    if not files and not uris:
        raise PermanentError(f"no media files ({', '.join(sorted(sources.MEDIA_TYPES))}) under the given paths")
    given = {
        "num_speakers": speakers,
        "language": language,
        "model": model,
        "initial_prompt": prompt,
        "priority": priority,
    }
    options: dict[str, Any] = {key: value for key, value in given.items() if value is not None}
    if vocabulary:
        options["vocabulary"] = vocabulary
    refused: list[str] = []
    with connected(ctx) as conn:
        single_dir = len(paths) == 1 and not uris and Path(paths[0]).is_dir()
        batch_name = paths[0] if single_dir else f"{len(files) + len(uris)} file(s)"
        batch_id: str | None = budget.new_batch(conn, batch_name, len(files) + len(uris), {"options": options})
        try:
            added = _add_with_progress(conn, files, uris, options, quiet=json_output, batch_id=batch_id)
        finally:
            if budget.discard_empty_batch(conn, batch_id):  # nothing new (known files, refused options)
                batch_id = None
        for a in added:
            if not a.created and options:
                try:
                    a.note = sources.apply_options(conn, a.source_id, options)
                except PermanentError as exc:
                    a.note = f"refused: {exc.message}"
                    refused.append(exc.message)
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
                        "options": a.note or None,
                    }
                    for a in added
                ],
            }
        )
    else:
        new = sum(a.created for a in added)
        stderr.print(f"{new} new source(s), {len(added) - new} already known")
        for a in added:
            line = f"{a.source_id}  {_state(states.get(a.source_id)):<12} {a.path}"
            stdout.print(line, highlight=False, soft_wrap=True)  # one line per source, whatever the width
            if a.note:
                (stderr if a.note.startswith("refused") else stdout).print(f"  {a.note}", highlight=False)
    if refused or (wait and any(row.state == "failed" for row in rows)):
        raise typer.Exit(1)


def check_model(settings: Settings, model: str) -> None:
    """A --model the workers can run: an installed packaged model (or a model directory) locally, one of the
    Modal app's when the model stages run on Modal; PermanentError listing those otherwise."""
    from dhgq import gpu
    from dhgq.media.transcription.models import AUTO, installed_models, is_installed
    from dhgq.versions import backend_name

    if backend_name(settings) == "modal":
        if model not in gpu.MODAL_WHISPER_MODELS:
            known = ", ".join(sorted(gpu.MODAL_WHISPER_MODELS))
            raise PermanentError(f"--model {model}: the Modal app runs {known}")
        return
    if model != AUTO and not is_installed(model):
        installed = ", ".join([AUTO, *installed_models()])
        raise PermanentError(
            f"--model {model}: not a model this machine's workers can run (installed: {installed}, or a directory "
            "holding a CTranslate2 model.bin; others run on Modal, DHGQ_GPU_BACKEND=modal)"
        )


def _state(row: SourceRow | None) -> str:
    return row.state if row else "unknown"


def _add_with_progress(
    conn: psycopg.Connection,
    files: list[Path],
    uris: list[str],
    options: dict[str, Any],
    *,
    quiet: bool,
    batch_id: str | None = None,
) -> list[sources.Added]:
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
    with Progress(*columns, console=stderr, transient=True, disable=quiet) as progress:
        task = progress.add_task("adding", total=len(files) + len(uris))
        added = []
        for path in files:
            progress.update(task, description=f"hashing {path.name}")
            added.append(sources.add_file(conn, path, origin="dhgq process", options=options, batch_id=batch_id))
            progress.advance(task)
        for uri in uris:
            added.append(sources.add_uri(conn, uri, origin="dhgq process", options=options, batch_id=batch_id))
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
    warned, checked = "", float("-inf")
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
            if time.monotonic() - checked > WORKER_CHECK_SECONDS:  # at the start, then now and then: workers stop
                checked, warning = time.monotonic(), unserved(conn, rows, settings.stalled_after)
                if warning and warning != warned:
                    progress.console.print(f"[yellow]{escape(warning)}[/yellow]", highlight=False)
                warned = warning
            changes.wait(2.0)  # woken by a stage change; reads again after 2 s without one
    if deadline and not all(row.state in DONE for row in rows):
        raise fail(f"timed out after {timeout:.0f}s; the sources keep going (dhgq status)")
    return rows


WORKER_CHECK_SECONDS = 10.0


def unserved(conn: psycopg.Connection, rows: list[SourceRow], stalled_after: float) -> str:
    """What no live worker (dhgq.workers) will run: none at all, or the queues of waiting stages that no live
    worker serves; empty when every waiting stage has a worker."""
    alive = [w for w in fetch_fleet(conn, stalled_after) if w.alive]
    if not alive:
        return "no worker is running: start one with `dhgq worker` (waiting for one)"
    served = {queue for w in alive for queue in w.queues}
    waiting = sorted(
        {stage for row in rows for stage, state in row.stages.items() if state.status == "queued"} - served,
        key=STAGES.index,
    )
    if not waiting:
        return ""
    flags = " ".join(f"-q {stage}" for stage in waiting)
    return f"no live worker serves the {', '.join(waiting)} queue(s): start one with `dhgq worker {flags}` (waiting)"


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
    recent = listing("id", "state", "done", "e t d s", title="Recent sources")
    for row in snapshot.sources:
        recent.add_row(row.source_id[:8], state_text(row.state), f"{row.progress:.0f}%", stage_marks(row), row.name)
    stdout.print(recent)
    if snapshot.sources:
        stderr.print("[dim]e t d s: the four stages; ✔ done ▶ running … waiting ✖ failed[/dim]", highlight=False)


MARKS = {"completed": ("✔", "green"), "processing": ("▶", "yellow"), "failed": ("✖", "bold red")}


def stage_marks(row: SourceRow) -> Text:
    """The four stages of a source in seven columns: ✔ done, ▶ running, … waiting, ✖ failed, · not yet."""
    marks = Text()
    for index, stage in enumerate(STAGES):
        state = row.stages.get(stage)
        mark, style = ("·", "dim") if state is None else MARKS.get(state.status, ("…", "cyan"))
        marks.append(("" if index == 0 else " ") + mark, style=style)
    return marks


def _print_fleet(snapshot: QueueSnapshot) -> None:
    """The worker processes by host: what each serves, which artifact store, what it holds now."""
    if not snapshot.fleet:
        return
    table = Table(title="Workers", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for column in ("host", "pid", "state", "store", "busy", "seen"):
        table.add_column(column, no_wrap=True)
    table.add_column("queues", overflow="fold", ratio=1)
    today = datetime.now().astimezone().date()
    for w in snapshot.fleet:
        seen = w.seen_at.astimezone() if w.seen_at else None
        table.add_row(
            w.host,
            str(w.pid),
            "[green]alive[/green]" if w.alive else "[dim]gone[/dim]",
            w.artifact_store or "",
            str(w.stages_in_hand),
            "-" if seen is None else seen.strftime("%H:%M:%S" if seen.date() == today else "%Y-%m-%d"),
            "all" if set(STAGES) <= set(w.queues) else ",".join(w.queues),
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
    for r in rows:  # the source, the facts, the reason, each on its lines: readable at any width, 80 included
        tries = r["attempts"] or 0
        stdout.print(
            f"[bold]{str(r['source_id'])[:8]}[/bold]  {escape(r['source_name'] or '')}",
            highlight=False,
            overflow="ellipsis",
            no_wrap=True,
        )
        facts = f"{r['stage']}, {r['error_class'] or 'unclassified'}, {tries} tr{'y' if tries == 1 else 'ies'}"
        stdout.print(f"  [dim]{facts}, failed {when(r['failed_at'])}[/dim]", highlight=False)
        stdout.print(Padding(Text(r["error"] or "(no reason recorded)", style="red"), (0, 0, 1, 2)))


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
