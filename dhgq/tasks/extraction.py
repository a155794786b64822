"""Extraction: the media file to 16 kHz mono audio plus probe metadata; then the two GPU stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from procrastinate import JobContext
from psycopg.types.json import Jsonb

from dhgq.app import app
from dhgq.errors import PermanentError
from dhgq.media.extraction.extract import extract_audio
from dhgq.media.types import ExtractionResult
from dhgq.pipeline import Resources, Source, StageJob, StageRows, StageSpec, enqueue, run_stage
from dhgq.queries import query
from dhgq.tasks import job_of


def work(resources: Resources, source: Source, job: StageJob) -> ExtractionResult:
    if "://" in source.path:  # storage://, gdrive://, https:// (a user's request names a storage key)
        raise PermanentError(
            f"{source.path}: this worker reads local files only; sources in Supabase Storage, "
            "Google Drive or on the web cannot be fetched yet",
            file=source.path,
        )
    path = Path(source.path)
    root = resources.settings.storage_root
    if root is not None and not path.resolve().is_relative_to(root.resolve()):
        raise PermanentError(f"{source.path} is outside the allowed storage root {root}", file=source.path)
    out_dir = resources.settings.work_dir / source.id
    return extract_audio(path, out_dir, stem="audio", timeout=resources.settings.stage_timeout(None))


def save(conn: psycopg.Connection, source: Source, out: ExtractionResult) -> dict[str, Any]:
    probe = out.probe
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
    resources, job = job_of(context, "extraction", source_id)
    run_stage(resources, SPEC, job)
