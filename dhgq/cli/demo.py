"""``dhgq demo``: one talk through the whole pipeline on this machine, then what came out."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from dhgq import logs, migrations, sample, sources
from dhgq.cli.common import JsonOption, emit_json, fail, seconds, settings_of, stderr, stdout
from dhgq.db import connect, database_url, mask_url
from dhgq.errors import ConfigurationError, DhgqError
from dhgq.media.export import timestamp
from dhgq.settings import Settings
from dhgq.status import SourceDetail, fetch_detail, fetch_sources, next_retry_in

DONE = {"completed", "failed"}


def demo(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(
            help="A recording to use instead of the generated sample.",
            exists=True,
            dir_okay=False,
            resolve_path=True,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the worker's logs.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Start the database, add a talk and process it here: timings, transcript excerpt and summary."""
    settings = settings_of(ctx)
    logs.configure(settings)
    if not verbose:
        logging.getLogger().setLevel(logging.WARNING)
    url = database_url(settings)
    say: Callable[[str], object] = (lambda _: None) if json_output else stderr.print
    say(f"database: {mask_url(url)}")
    applied = migrations.migrate(url)
    say(f"schema: applied {len(applied)} migration(s)" if applied else "schema: up to date")
    options: dict[str, str] = {}
    if path is None:
        say("making a two-speaker sample talk (espeak-ng, sox, ffmpeg)")
        path = sample.two_speaker_talk(settings.home / "samples" / "two-speaker-talk.mp4")
        options["language"] = "en"  # the sample is English; a talk of yours is detected (DHGQ_WHISPER_MODEL=auto)
    with connect(url, autocommit=True, timeout=settings.db_connect_timeout) as conn:
        source_id = _queue(conn, path, say, options)
        started = time.monotonic()
        _run_worker(conn, settings, url, source_id, quiet=json_output)
        detail = fetch_detail(conn, source_id, turns=8)
    if detail is None:
        raise fail(f"source {source_id} disappeared")
    if json_output:
        emit_json(asdict(detail) | {"database": mask_url(url), "wall_seconds": round(time.monotonic() - started, 2)})
    else:
        show(detail, time.monotonic() - started)
    if detail.source.state == "failed":
        raise typer.Exit(1)
    if detail.source.state != "completed":
        raise fail(f"the worker went idle with the pipeline {detail.source.state}: see the log above and `dhgq jobs`")


def _queue(conn: psycopg.Connection, path: Path, say: Callable[[str], object], options: dict[str, str]) -> str:
    """Add the talk; a known one is resumed (failed stages) or shown as it is (completed)."""
    added = sources.add_file(conn, path, origin="dhgq demo", options=options)
    row = fetch_sources(conn, [added.source_id])[0]
    note = "added" if added.created else f"already known ({row.state})"
    if not added.created and row.state == "failed":
        sources.retry(conn, added.source_id)
        note += ", failed stages queued again"
    elif not added.created and row.state == "not started":
        sources.start(conn, added.source_id)
    say(f"source {added.source_id} {note}: {path}")
    return added.source_id


def _run_worker(conn: psycopg.Connection, settings: Settings, url: str, source_id: str, *, quiet: bool) -> None:
    """Drain the queues until the source's pipeline ends, waiting out retry back-offs in between."""
    from dhgq.app import app

    try:  # the stage tasks must be registered before the workers look them up
        app.perform_import_paths()
    except ImportError as exc:
        raise ConfigurationError(f"the pipeline's stage tasks cannot be imported: {exc}") from None
    for _ in range(settings.max_attempts * 4):
        _drain(conn, settings, url, source_id, quiet=quiet)
        if fetch_sources(conn, [source_id])[0].state in DONE:
            return
        wait = next_retry_in(conn, source_id)
        if wait is None:
            return
        if not quiet:
            stderr.print(f"a stage will be retried in {max(wait, 0):.0f}s")
        time.sleep(min(max(wait, 0.0), 120.0) + 0.1)


def _drain(conn: psycopg.Connection, settings: Settings, url: str, source_id: str, *, quiet: bool) -> None:
    """One in-process worker run (until idle) in a thread, while a progress bar follows the source."""
    from dhgq import worker

    errors: list[BaseException] = []

    def work() -> None:
        try:
            worker.run(settings, url, once=True)
        except BaseException as exc:  # shown below, on the main thread
            errors.append(exc)

    thread = threading.Thread(target=work, name="dhgq-demo-worker", daemon=True)
    thread.start()
    columns = (TextColumn("{task.description:<14}"), BarColumn(), TaskProgressColumn())
    with Progress(*columns, console=stderr, transient=True, disable=quiet) as progress:
        bar = progress.add_task("starting", total=100)
        while thread.is_alive():
            row = fetch_sources(conn, [source_id])[0]
            busy = [s for s, state in row.stages.items() if state.status in ("processing", "queued")]
            progress.update(bar, completed=row.progress, description=" + ".join(busy) or row.state)
            thread.join(0.5)
    if errors:
        raise errors[0] if isinstance(errors[0], DhgqError) else DhgqError(f"the worker stopped: {errors[0]}")


def show(detail: SourceDetail, wall: float) -> None:
    table = Table("stage", "status", "attempts", "took", title=f"{detail.source.name}: {detail.source.state}")
    for s in detail.stages:
        table.add_row(s.stage, s.status, str(s.attempts), seconds(s.seconds))
    stdout.print(table)
    stdout.print(f"wall time {seconds(wall)}", highlight=False)
    for s in detail.stages:
        if s.error:
            stdout.print(f"[red]{s.stage} failed ({s.error_class}):[/red] {s.error}", highlight=False)
    if detail.excerpt:
        stdout.print("\n[bold]Transcript (start)[/bold]")
        for line in detail.excerpt:
            speaker = f"{line.speaker}: " if line.speaker else ""
            stdout.print(f"[{timestamp(line.start)}] {speaker}{line.text}", highlight=False, markup=False)
    if detail.summary:
        method = detail.summary.get("method", "")
        label = "extractive, offline: set DHGQ_ANTHROPIC_API_KEY for Claude" if method == "extractive" else method
        stdout.print(f"\n[bold]Summary[/bold] ({label})", highlight=False)
        stdout.print(detail.summary["summary"], highlight=False, markup=False)
        for point in detail.summary.get("key_points", []):
            stdout.print(f"  - {point}", highlight=False, markup=False)
        if detail.summary.get("topics"):
            stdout.print(f"topics: {', '.join(detail.summary['topics'])}", highlight=False, markup=False)
