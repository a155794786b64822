"""Sources: media files added to the pipeline, finding a source again by id, prefix or name, and
starting, retrying or cancelling its pipeline (the same SQL functions the triggers use).

Adding a file is one INSERT through the named query ``insert_source``: the table's trigger queues
extraction in the same transaction, exactly as when a psql or supabase-py user inserts the row.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dhgq.db import one
from dhgq.errors import PermanentError
from dhgq.queries import query

MEDIA_TYPES: dict[str, str] = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
    ".m4a": "audio/mp4",
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
}
CHUNK = 1 << 20


class SourceNotFound(PermanentError):
    """No source matches."""


class AmbiguousSource(PermanentError):
    """Several sources match: give more of the id."""


@dataclass
class Added:
    """One file handed to ``add_file`` (or URI to ``add_uri``): the new source, or the one that already had it."""

    path: Path | str
    source_id: str
    created: bool
    size: int | None
    note: str = ""  # for a known source given options: what became of them


# Which stage an option changes the output of: a known source given new options runs again from there.
OPTION_STAGES = {
    "model": "transcription",
    "language": "transcription",
    "initial_prompt": "transcription",
    "vocabulary": "transcription",
    "num_speakers": "diarization",
    "min_speakers": "diarization",
    "max_speakers": "diarization",
}


def is_media(path: Path) -> bool:
    return path.suffix.lower() in MEDIA_TYPES


def media_files(paths: Iterable[Path]) -> list[Path]:
    """The media files among ``paths``, directories walked recursively, each file once, in order."""
    found: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            found.update(dict.fromkeys(sorted(p for p in path.rglob("*") if p.is_file() and is_media(p))))
        elif path.is_file() and is_media(path):
            found[path] = None
        elif path.is_file():
            raise PermanentError(f"{path}: not a media file ({', '.join(sorted(MEDIA_TYPES))})")
        else:
            raise PermanentError(f"{path}: no such file or directory")
    return [p.resolve() for p in found]


def content_hash(path: Path) -> str:
    """sha256 of the file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def add_file(
    conn: psycopg.Connection,
    path: Path,
    *,
    origin: str = "dhgq",
    options: dict[str, Any] | None = None,
    batch_id: str | None = None,
) -> Added:
    """Insert a source for the file unless one has the same content; the trigger queues it.

    ``options`` (model, language, num_speakers, ...) pass the same checks as a user's request's.
    A new source joins ``batch_id`` (costs add up per batch, and a batch budget caps them); a file
    already known keeps the batch it came with.
    """
    digest = content_hash(path)
    size = path.stat().st_size
    with conn.transaction():
        conn.execute(query("lock_content_hash"), {"content_hash": digest})
        known = conn.execute(query("source_by_hash"), {"content_hash": digest}).fetchone()
        if known is not None:
            return Added(path, str(known[0]), False, size)
        row = one(
            conn.execute(
                query("insert_source"),
                {
                    "name": path.name,
                    "path": str(path),
                    "size": size,
                    "content_hash": digest,
                    "batch_id": batch_id,
                    "mime_type": MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"),
                    "metadata": Jsonb({"added_by": origin}),
                    "options": Jsonb(options or {}),
                },
            )
        )
    return Added(path, str(row[0]), True, size)


def add_uri(
    conn: psycopg.Connection,
    uri: str,
    *,
    origin: str = "dhgq",
    options: dict[str, Any] | None = None,
    batch_id: str | None = None,
) -> Added:
    """A source for a ``storage://``, ``gdrive://`` or ``https://`` URI, unless one names it already; the URI is
    checked here as the worker will read it (PermanentError, naming it, when it cannot be)."""
    name = check_uri(uri)
    with conn.transaction():
        conn.execute(query("lock_content_hash"), {"content_hash": uri})  # the same lock, keyed by the URI
        known = conn.execute(query("source_by_path"), {"path": uri}).fetchone()
        if known is not None:
            return Added(uri, str(known[0]), False, None)
        row = one(
            conn.execute(
                query("insert_source"),
                {
                    "name": name,
                    "path": uri,
                    "size": None,
                    "content_hash": None,
                    "batch_id": batch_id,
                    "mime_type": MEDIA_TYPES.get(Path(name).suffix.lower(), "application/octet-stream"),
                    "metadata": Jsonb({"added_by": origin}),
                    "options": Jsonb(options or {}),
                },
            )
        )
        start(conn, str(row[0]))  # a name without a media extension (a Drive id): extraction tells what it is
    return Added(uri, str(row[0]), True, None)


def check_uri(uri: str) -> str:
    """The name a source URI gets (its last part), once it is one the worker can fetch."""
    from urllib.parse import urlsplit

    from dhgq.fetch.gdrive import parse_drive_uri
    from dhgq.fetch.keys import parse_storage_uri

    scheme = uri.partition("://")[0].lower()
    if scheme == "storage":
        return parse_storage_uri(uri)[1].rsplit("/", 1)[-1]
    if scheme == "gdrive":
        return parse_drive_uri(uri)
    if scheme in ("https", "http"):
        parts = urlsplit(uri)
        if not parts.hostname:
            raise PermanentError(f"{uri}: not a URL with a host", file=uri)
        return parts.path.rstrip("/").rsplit("/", 1)[-1] or parts.hostname
    raise PermanentError(f"{uri}: not a media file, nor a storage://, gdrive:// or https:// URI", file=uri)


def apply_options(conn: psycopg.Connection, source_id: str, options: dict[str, Any]) -> str:
    """A known source given options: nothing when it has them already; else they replace its own and the
    stages they change run again (then the fan-in and summary), or PermanentError while a run is in flight
    (the options would apply to half of it)."""
    current = one(conn.execute(query("source_options"), {"source_id": source_id}))[0] or {}
    changed = sorted(key for key, value in options.items() if current.get(key) != value)
    if not changed:
        return ""
    stages = sorted({OPTION_STAGES.get(key, "extraction") for key in changed})
    try:
        queued = _rerun_with(conn, source_id, stages, options)
    except psycopg.errors.ObjectNotInPrerequisiteState:  # never got that far: everything again
        queued = _rerun_with(conn, source_id, ["extraction"], options)
    if queued is None:
        raise PermanentError(
            f"source {source_id} is being processed with its earlier options, so {', '.join(changed)} "
            f"{'was' if len(changed) == 1 else 'were'} not applied: give them again once it has finished "
            f"(dhgq status {source_id[:8]})"
        )
    return f"new {', '.join(changed)}: {', '.join(queued)} queued again"


def _rerun_with(conn: psycopg.Connection, source_id: str, stages: list[str], options: dict[str, Any]) -> Any:
    params = {"source_id": source_id, "stages": stages, "fresh": False, "reason": "manual", "options": Jsonb(options)}
    with conn.transaction():
        return one(conn.execute(query("rerun_source"), params))[0]


def start(conn: psycopg.Connection, source_id: str) -> None:
    """Start the source's pipeline from the top (a no-op while a run is in flight)."""
    conn.execute(query("start_pipeline"), {"source_id": source_id})


def retry(conn: psycopg.Connection, source_id: str) -> int:
    """Queue the source's failed stages again; how many were queued."""
    return int(one(conn.execute(query("retry_source"), {"source_id": source_id}))[0] or 0)


def cancel(conn: psycopg.Connection, source_id: str) -> int:
    """Cancel the source's queued and running stages; how many."""
    return int(one(conn.execute(query("cancel_source"), {"source_id": source_id}))[0] or 0)


def resolve(conn: psycopg.Connection, ref: str) -> dict[str, Any]:
    """The source a user means: a uuid, a unique id prefix or a source name."""
    ref = ref.strip()
    if not ref:
        raise SourceNotFound("an empty source reference matches nothing")
    prefix = ref.lower().replace("\\", "").replace("%", "").replace("_", "\\_") + "%"
    rows = (
        conn.cursor(row_factory=dict_row).execute(query("cli_find_source"), {"ref": ref, "prefix": prefix}).fetchall()
    )
    if rows and _is_uuid(ref) and str(rows[0]["id"]) == ref.lower():
        return rows[0]
    if len(rows) == 1:
        return rows[0]
    if not rows:
        raise SourceNotFound(f"no source matches {ref!r} (give a source id, an id prefix or a name)")
    shown = ", ".join(f"{str(r['id'])[:8]} {r['name']}" for r in rows[:5])
    raise AmbiguousSource(f"{ref!r} matches several sources ({shown}): give more of the id")


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
