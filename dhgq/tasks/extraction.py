"""Extraction: the media file to 16 kHz mono audio plus probe metadata; then the two GPU stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from procrastinate import JobContext
from psycopg.types.json import Jsonb

from dhgq.app import app
from dhgq.fetch import Fetched, fetch
from dhgq.media.extraction.extract import extract_audio
from dhgq.media.types import ExtractionResult
from dhgq.pipeline import Resources, Source, StageJob, StageRows, StageSpec, enqueue
from dhgq.queries import query
from dhgq.tasks import run

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


def work(resources: Resources, source: Source, job: StageJob) -> Extracted:
    """The source's file (a local path, or fetched into the stage's scratch dir and removed after), extracted."""
    settings = resources.settings
    out_dir = settings.work_dir / source.id
    with fetch(source.path, settings.scratch_dir / source.id, settings) as fetched:
        result = extract_audio(fetched.path, out_dir, stem="audio", timeout=settings.stage_timeout(None))
    return Extracted(result, fetched)


def save(conn: psycopg.Connection, source: Source, extracted: Extracted) -> dict[str, Any]:
    out, fetched = extracted.result, extracted.fetched
    probe = out.probe
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


def then(conn: psycopg.Connection, source: Source, rows: StageRows) -> None:
    enqueue(conn, source.id, "transcription", "diarization")  # side by side: a graph, not a chain


SPEC = StageSpec("extraction", work, save, then)


@app.task(name="dhgq.extraction", queue="extraction", pass_context=True)
def extraction(context: JobContext, source_id: str) -> None:
    run(context, SPEC, source_id)
