"""Extraction: the media file to 16 kHz mono audio plus probe metadata; then the two model stages.

Its input step fetches the source's file (a local path is read in place; a remote one streams into
the stage's scratch dir, removed after). Its outputs go into the artifact store (``dhgq.artifacts``):
the WAV and the compact copy, recorded with their hashes in the completing transaction, so the model
stages can run on any machine that shares the database and the store.

Reuse: the output is keyed by the file's sha256 and the extraction's version. A source added with its
hash (``dhgq process``) finds an earlier extraction of the same owner when claimed; a requested file's
hash is known once fetched, so the lifecycle looks again then, before ffmpeg. A reused extraction
copies the earlier artifacts as this source's own (hard links in the work dir, or objects copied by
Storage): every source keeps its own files, which ``dhgq gc`` removes alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
from procrastinate import JobContext
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dhgq.app import app
from dhgq.artifacts import Artifact
from dhgq.completion import enqueue
from dhgq.errors import DhgqError
from dhgq.fetch import Fetched, fetch
from dhgq.media.extraction.extract import COMPACT_TYPES, extract_audio
from dhgq.media.types import ExtractionResult
from dhgq.queries import query
from dhgq.settings import Settings
from dhgq.stage import Identity, NotReusable, Origin, Resources, Reuse, Source, StageJob, StageRows, StageSpec
from dhgq.tasks import job_of, run
from dhgq.versions import code_version
from dhgq.waits import held_for_disk

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
    """The extraction's outputs, the artifacts they became, and what fetching the source told of it."""

    result: ExtractionResult
    fetched: Fetched
    artifacts: tuple[Artifact, ...]


@dataclass(frozen=True)
class Copied:
    """A reused extraction's artifacts, copied as this source's own, and what fetching told (when it did)."""

    artifacts: tuple[Artifact, ...]
    fetched: Fetched | None


@contextmanager
def fetched_source(resources: Resources, source: Source, job: StageJob) -> Iterator[Fetched]:
    """The source's file on this machine for the work; fetching tells its content hash."""
    settings = resources.settings
    with fetch(source.path, settings.scratch_dir / source.id, settings) as fetched:
        source.content_hash = fetched.sha256
        yield fetched


def work(resources: Resources, source: Source, job: StageJob, fetched: Fetched) -> Extracted:
    """ffmpeg's WAV and compact copy of the file, put into the artifact store."""
    store, settings = resources.store, resources.settings
    with store.staging(source.id) as out_dir:
        result = extract_audio(fetched.path, out_dir, stem="audio", timeout=settings.stage_timeout(None))
        artifacts = [store.put(source.id, "audio", Path(result.wav_path), "audio/wav")]
        if result.compact_path:
            compact = Path(result.compact_path)
            content_type = COMPACT_TYPES.get(compact.suffix.lstrip("."), "application/octet-stream")
            artifacts.append(store.put(source.id, "compact", compact, content_type))
    return Extracted(result, fetched, tuple(artifacts))


def save(conn: psycopg.Connection, source: Source, extracted: Extracted) -> dict[str, Any]:
    out, fetched = extracted.result, extracted.fetched
    probe = out.probe
    save_fetched(conn, source, fetched)
    wav = save_artifacts(conn, source, extracted.artifacts)
    conn.execute(
        query("save_extraction"),
        {
            "source_id": source.id,
            "wav_uri": wav.uri,
            "duration": probe.duration_seconds,
            "channels": probe.channels,
            "bitrate": probe.bitrate,
            "metrics": Jsonb(out.quality_metrics),
        },
    )
    return {
        "wav_path": wav.uri,
        "compact_path": next((a.uri for a in extracted.artifacts if a.kind == "compact"), None),
        "artifacts": [artifact_summary(a) for a in extracted.artifacts],
        "duration_seconds": probe.duration_seconds,
        "audio_codec": probe.audio_codec,
        "video_codec": probe.video_codec,
        "sample_rate": probe.sample_rate,
    }


def save_artifacts(conn: psycopg.Connection, source: Source, artifacts: tuple[Artifact, ...]) -> Artifact:
    """The source's artifacts, replacing what an earlier extraction recorded; the WAV's."""
    conn.execute(query("delete_artifacts"), {"source_id": source.id})
    for artifact in artifacts:
        conn.execute(query("save_artifact"), artifact.row(source.id))
    return next(a for a in artifacts if a.kind == "audio")


def artifact_summary(artifact: Artifact) -> dict[str, Any]:
    """What the stage row says of an artifact (``dhgq status``): where, how big, made where."""
    return {"kind": artifact.kind, "uri": artifact.uri, "size": artifact.size, "parts": artifact.parts,
            "sha256": artifact.sha256, "host": artifact.host}  # fmt: skip


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


def copy_artifacts(resources: Resources, source: Source, origin: Origin) -> Origin:
    """The origin's artifacts copied as this source's own (outside any transaction); NotReusable when they
    are gone (``dhgq gc``) or the store refuses."""
    with resources.pool.connection() as conn:
        rows = conn.cursor(row_factory=dict_row).execute(query("artifacts_of"), {"source_id": origin.source_id})
        found = [Artifact.from_row(row) for row in rows.fetchall()]
    if not any(a.kind == "audio" for a in found):
        raise NotReusable(f"source {origin.source_id}'s extracted audio is gone")
    try:
        copied = tuple(resources.store.copy(artifact, source.id) for artifact in found)
    except DhgqError as exc:  # gone (ArtifactMissing), or the store refused or is unreachable
        raise NotReusable(f"source {origin.source_id}'s artifacts cannot be copied: {exc.message}") from None
    fetched = origin.context if isinstance(origin.context, Fetched) else None
    return replace(origin, context=Copied(copied, fetched))


def copy(conn: psycopg.Connection, source: Source, origin: Origin) -> dict[str, Any]:
    """The origin's audio columns onto this source, with its own copied artifacts."""
    copied = origin.context
    assert isinstance(copied, Copied), "copy_artifacts prepares every reused extraction"
    if copied.fetched is not None:
        save_fetched(conn, source, copied.fetched)
    wav = save_artifacts(conn, source, copied.artifacts)
    row = conn.execute(
        query("reuse_copy_extraction"),
        {"source_id": source.id, "from_source_id": origin.source_id, "wav_uri": wav.uri},
    ).fetchone()
    if row is None:
        raise NotReusable(f"source {origin.source_id}'s extracted audio was cleared")
    compact = next((a.uri for a in copied.artifacts if a.kind == "compact"), None)
    return origin.result | {
        "wav_path": wav.uri,
        "compact_path": compact,
        "artifacts": [artifact_summary(a) for a in copied.artifacts],
    }


SPEC = StageSpec(
    "extraction",
    fetched_source,
    work,
    save,
    then,
    reuse=Reuse(identity, input_hash, copy, prepare=copy_artifacts),
)


@app.task(name="dhgq.extraction", queue="extraction", pass_context=True)
def extraction(context: JobContext, source_id: str) -> None:
    resources, job = job_of(context, "extraction", source_id)
    if held_for_disk(resources, job):
        return  # the job ends without failing; the stage row waits, and a later job checks again
    run(context, SPEC, source_id)
