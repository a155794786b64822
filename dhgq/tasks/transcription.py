"""Transcription: Whisper on the extracted audio (local engine or Modal), then the fan-in."""

from __future__ import annotations

from typing import Any

import psycopg
from procrastinate import JobContext
from psycopg.types.json import Jsonb

from dhgq import gpu
from dhgq.app import app
from dhgq.media.serialize import transcript_to_dict
from dhgq.media.types import Transcript
from dhgq.pipeline import Resources, Source, StageJob, StageSpec, run_on_extracted_audio
from dhgq.queries import query
from dhgq.tasks import run
from dhgq.tasks.fanin import after_transcription_or_diarization
from dhgq.tasks.segments import replace_segments


def work(resources: Resources, source: Source, job: StageJob) -> tuple[Transcript, dict[str, Any]]:
    """The request's model and language when it gave them, else the worker's settings."""
    return run_on_extracted_audio(
        resources,
        source,
        job,
        gpu.transcribe,
        model=source.options.get("model"),
        language=source.options.get("language"),
    )


def save(conn: psycopg.Connection, source: Source, output: tuple[Transcript, dict[str, Any]]) -> dict[str, Any]:
    transcript, run = output
    content = transcript_to_dict(transcript)
    document_id = _one(
        conn,
        query("upsert_document"),
        {
            "source_id": source.id,
            "content_type": "transcript",
            "raw_content": transcript.text,
            "processed_content": Jsonb(content),
            "word_count": len(transcript.text.split()),
            "language": transcript.language,
            "whisper_model_used": transcript.model,
            "ai_processing_details": Jsonb({"engine": transcript.engine, **run}),
        },
    )
    replace_segments(conn, document_id, transcript.segments)
    return {
        "document_id": str(document_id),
        "segments": len(transcript.segments),
        "words": len(transcript.text.split()),
        "language": transcript.language,
        **run,
    }


def _one(conn: psycopg.Connection, sql: str, params: dict[str, Any]) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None, "an upsert with RETURNING returns its row"
    return row[0]


SPEC = StageSpec("transcription", work, save, after_transcription_or_diarization, lock_with=("diarization",))


@app.task(name="dhgq.transcription", queue="transcription", pass_context=True)
def transcription(context: JobContext, source_id: str) -> None:
    run(context, SPEC, source_id)
