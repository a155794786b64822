"""``dhgq drive watch | unwatch | list | check``: Google Drive folders whose new media files become sources."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dhgq import drive_watch
from dhgq.cli.common import JsonOption, connected, emit_json, fail, settings_of, stderr, stdout, when
from dhgq.cli.pipeline import check_model

app = typer.Typer(
    no_args_is_help=True,
    help="Watch Google Drive folders: their media files become sources, new ones as they arrive "
    "(checked by the workers' maintenance queue every DHGQ_DRIVE_WATCH_SECONDS).",
)
FolderArgument = Annotated[
    str, typer.Argument(help="The folder's id (or its URL, https://drive.google.com/.../folders/ID).")
]


@app.command("watch")
def watch(
    ctx: typer.Context,
    folder: FolderArgument,
    new_only: Annotated[
        bool, typer.Option("--new-only", help="Only files that arrive from now on, not those already there.")
    ] = False,
    speakers: Annotated[
        int | None,
        typer.Option("--speakers", help="How many people speak in these talks (who talk for more than a few seconds)."),
    ] = None,
    language: Annotated[str | None, typer.Option("--language", help="Their language, an ISO 639 code.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="The Whisper model for them.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Watch a Drive folder (shared with dhgq's Google account): its media files become sources."""
    folder_id = drive_watch.check_folder_id(folder)
    options = {k: v for k, v in {"num_speakers": speakers, "language": language, "model": model}.items() if v}
    settings = settings_of(ctx)
    if model is not None:
        check_model(settings, model)
    with connected(ctx) as conn:
        described, result = drive_watch.watch(conn, settings, folder_id, options=options, existing=not new_only)
    if json_output:
        return emit_json({"folder_id": folder_id, "name": described.name, "sources": result.added})
    stderr.print(
        f"watching {described.name!r} ({folder_id}): {len(result.added)} media file(s) added as sources; "
        f"new ones are added within {settings.drive_watch_seconds} s of arriving while a worker serves the "
        "maintenance queue",
        highlight=False,
    )
    for source_id in result.added:
        stdout.print(source_id, highlight=False)


@app.command("unwatch")
def unwatch(ctx: typer.Context, folder: FolderArgument) -> None:
    """Stop watching a folder (its sources stay)."""
    folder_id = drive_watch.check_folder_id(folder)
    with connected(ctx) as conn:
        if not drive_watch.unwatch(conn, folder_id):
            raise fail(f"folder {folder_id} is not watched (dhgq drive list)")
    stderr.print(f"no longer watching {folder_id}")


@app.command("list")
def list_watches(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """The watched folders: when each was checked, the sources it added, its last error."""
    with connected(ctx) as conn:
        rows = drive_watch.watches(conn)
    if json_output:
        return emit_json({"watches": rows})
    if not rows:
        stderr.print("no Drive folder is watched (dhgq drive watch FOLDER_ID)")
    for row in rows:
        error = f"\n  [red]failing:[/red] {row['last_error']}" if row["last_error"] else ""
        stdout.print(
            f"{row['folder_id']}  {row['folder_name'] or ''}\n  checked {when(row['checked_at'])}, "
            f"{row['sources_added']} source(s) added{_options(row['options'])}{error}",
            highlight=False,
            soft_wrap=True,
        )


@app.command("check")
def check(ctx: typer.Context, folder: FolderArgument, json_output: JsonOption = False) -> None:
    """Check a watched folder now, without waiting for the workers' next round."""
    folder_id = drive_watch.check_folder_id(folder)
    with connected(ctx) as conn:
        results = drive_watch.check_due(conn, settings_of(ctx), folder_id)
    if not results:
        raise fail(f"folder {folder_id} is not watched, or a worker is checking it right now")
    [result] = results
    if json_output:
        return emit_json({"folder_id": folder_id, "added": result.added, "changed": result.changed})
    if result.error:
        raise fail(result.error)
    stderr.print(f"{len(result.added)} new source(s), {len(result.changed)} changed file(s) started again")
    for source_id in result.added:
        stdout.print(source_id, highlight=False)


def _options(options: dict[str, Any] | None) -> str:
    return f", options {options}" if options else ""
