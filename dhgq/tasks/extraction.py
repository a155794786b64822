"""Extraction: the media file to 16 kHz mono audio plus probe metadata; then the two GPU stages.

Reuse: the output is keyed by the file's sha256 and the extraction's version. A source added
with its hash (``dhgq process``) finds an earlier extraction of the same owner when claimed; a
requested file's hash is known once fetched, so the work looks again then, before ffmpeg. A reused
extraction links (or, across file systems, copies) the earlier WAV and compact copy into the
source's own work directory: every source keeps its own files, which ``dhgq gc`` removes alone.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
from procrastinate import JobContext
from psycopg.types.json import Jsonb

from dhgq.app import app
from dhgq.fetch import Fetched, fetch
from dhgq.media.extraction.extract import extract_audio
from dhgq.media.types import ExtractionResult
from dhgq.pipeline import (
    Identity,
    NotReusable,
    Origin,
    Resources,
    Reuse,
    Source,
    StageJob,
    StageRows,
    StageSpec,
    enqueue,
    find_origin,
    output_key,
)
from dhgq.queries import query
from dhgq.reuse import code_version
from dhgq.settings import Settings
from dhgq.tasks import run

# Bump when what extraction writes changes in a way the hash of dhgq/media/extraction would not show
# (an ffmpeg upgrade that changes the WAV, say): earlier extractions are then neither reused nor current.
EXTRACTION_VERSION = "1"

# Drive metadata a gdrive:// fetch returns, under sources_google's column names
DRIVE_COLUMNS = (
    "drive_id",
    "root_drive_id",
    "parent_folder_id",
    "web_view_link",
    "thumbnail_link",
    "modified_time",
    "md5_checksum",
)


@dataclass(frozen=True)
class Extracted:
    """The extraction's outputs, and what fetching the source told of it."""

    result: ExtractionResult
    fetched: Fetched


@dataclass(frozen=True)
class Linked:
    """A reused extraction's files, linked into this source's work directory, and what fetching told."""

    wav_path: str
    compact_path: str | None
    fetched: Fetched | None


def work(resources: Resources, source: Source, job: StageJob) -> Extracted | Origin:
    """The source's file (a local path, or fetched into the stage's scratch dir and removed after), extracted;
    or, when fetching told a content hash the claim did not know, an earlier extraction of it to reuse."""
    settings = resources.settings
    out_dir = settings.work_dir / source.id
    with fetch(source.path, settings.scratch_dir / source.id, settings) as fetched:
        looked_for = source.content_hash
        source.content_hash = fetched.sha256
        if looked_for != fetched.sha256:
            origin = find_origin(resources, SPEC, source, output_key(resources, SPEC, source))
            if origin is not None:
                return replace(origin, context=fetched)
        result = extract_audio(fetched.path, out_dir, stem="audio", timeout=settings.stage_timeout(None))
    return Extracted(result, fetched)


def save(conn: psycopg.Connection, source: Source, extracted: Extracted) -> dict[str, Any]:
    out, fetched = extracted.result, extracted.fetched
    probe = out.probe
    save_fetched(conn, source, fetched)
    conn.execute(
        query("save_extraction"),
        {
            "source_id": source.id,
            "wav_path": out.wav_path,
            "duration": probe.duration_seconds,
            "channels": probe.channels,
            "bitrate": probe.bitrate,
            "metrics": Jsonb(out.quality_metrics),
        },
    )
    return {
        "wav_path": out.wav_path,
        "compact_path": out.compact_path,
        "duration_seconds": probe.duration_seconds,
        "audio_codec": probe.audio_codec,
        "video_codec": probe.video_codec,
        "sample_rate": probe.sample_rate,
    }


def save_fetched(conn: psycopg.Connection, source: Source, fetched: Fetched) -> None:
    """What fetching told of the source: its content hash, its size, a Drive file's metadata."""
    drive = fetched.metadata
    conn.execute(
        query("save_fetched_source"),
        {
            "source_id": source.id,
            "sha256": fetched.sha256,
            "size": fetched.size,
            **{column: drive.get(column) for column in DRIVE_COLUMNS},
            "fetched": Jsonb({"fetched": {"remote": fetched.remote, "size": fetched.size} | drive}),
        },
    )


def then(conn: psycopg.Connection, source: Source, rows: StageRows) -> None:
    enqueue(conn, source.id, "transcription", "diarization")  # side by side: a graph, not a chain


# -- reuse ------------------------------------------------------------------------------------------


def identity(settings: Settings, source: Source) -> Identity:
    """ffmpeg's 16 kHz mono WAV and compact copy, as dhgq's extraction code and version make them."""
    return Identity("ffmpeg", code_version("media/extraction"), "wav-16k-mono", EXTRACTION_VERSION)


def input_hash(resources: Resources, source: Source) -> str | None:
    return source.content_hash


def link_files(resources: Resources, source: Source, origin: Origin) -> Origin:
    """The origin's WAV and compact copy, linked into this source's own work directory (outside any
    transaction); NotReusable when they are gone (``dhgq gc``) or lie outside the work dir."""
    work_dir = resources.settings.work_dir.resolve()
    wav, compact = origin.result.get("wav_path"), origin.result.get("compact_path")
    if not wav or not Path(wav).is_file() or not Path(wav).resolve().is_relative_to(work_dir):
        raise NotReusable(f"source {origin.source_id}'s extracted audio is gone")
    out_dir = resources.settings.work_dir / source.id
    linked_wav = _link(Path(wav), out_dir / Path(wav).name)
    linked_compact = None
    if compact and Path(compact).is_file() and Path(compact).resolve().is_relative_to(work_dir):
        linked_compact = _link(Path(compact), out_dir / Path(compact).name)
    fetched = origin.context if isinstance(origin.context, Fetched) else None
    compact_path = str(linked_compact) if linked_compact is not None else None
    return replace(origin, context=Linked(str(linked_wav), compact_path, fetched))


def _link(existing: Path, target: Path) -> Path:
    """``target`` names the same bytes as ``existing``: a hard link (a copy across file systems), put in
    place atomically. Extraction replaces its files rather than writing into them, so neither source's
    later extraction can change the other's audio."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.reused")
    temporary.unlink(missing_ok=True)
    try:
        os.link(existing, temporary)
    except OSError:
        shutil.copyfile(existing, temporary)
    temporary.replace(target)
    return target


def copy(conn: psycopg.Connection, source: Source, origin: Origin) -> dict[str, Any]:
    """The origin's audio columns onto this source, with its own linked files."""
    linked = origin.context
    assert isinstance(linked, Linked), "link_files prepares every reused extraction"
    if linked.fetched is not None:
        save_fetched(conn, source, linked.fetched)
    copied = conn.execute(
        query("reuse_copy_extraction"),
        {"source_id": source.id, "from_source_id": origin.source_id, "wav_path": linked.wav_path},
    ).fetchone()
    if copied is None:
        raise NotReusable(f"source {origin.source_id}'s extracted audio was cleared")
    return origin.result | {"wav_path": linked.wav_path, "compact_path": linked.compact_path}


SPEC = StageSpec("extraction", work, save, then, reuse=Reuse(identity, input_hash, copy, prepare=link_files))


@app.task(name="dhgq.extraction", queue="extraction", pass_context=True)
def extraction(context: JobContext, source_id: str) -> None:
    run(context, SPEC, source_id)
