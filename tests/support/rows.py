"""Source and stage rows written straight into the database, in the states the CLI and the monitor
show (queued, processing, completed with documents, failed), without running a worker."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from dhgq.settings import STAGES

TRANSCRIPT = {
    "text": "Hello and welcome. Thanks for having me. Let us begin.",
    "language": "en",
    "model": "tiny.en",
    "engine": "faster-whisper",
    "duration_seconds": 6.0,
    "segments": [
        {
            "start": 0.0,
            "end": 2.0,
            "text": " Hello and welcome.",
            "confidence": 0.9,
            "words": [],
            "speaker": "SPEAKER_1",
        },
        {
            "start": 2.2,
            "end": 4.0,
            "text": " Thanks for having me.",
            "confidence": 0.9,
            "words": [],
            "speaker": "SPEAKER_2",
        },
        {
            "start": 4.1,
            "end": 6.0,
            "text": " Let us begin.",
            "confidence": 0.9,
            "words": [],
            "speaker": "SPEAKER_1",
        },
    ],
}
DIARIZATION = {
    "turns": [
        {"start": 0.0, "end": 2.0, "speaker": "SPEAKER_1"},
        {"start": 2.2, "end": 4.0, "speaker": "SPEAKER_2"},
        {"start": 4.1, "end": 6.0, "speaker": "SPEAKER_1"},
    ],
    "speakers": ["SPEAKER_1", "SPEAKER_2"],
    "embeddings": {},
    "engine": "local",
}
SUMMARY = {
    "summary": "A short welcome.",
    "key_points": ["welcome"],
    "topics": ["greetings"],
    "document_type": "talk",
    "method": "extractive",
    "details": {},
}


def add_source(conn: psycopg.Connection, name: str, mime_type: str = "video/mp4") -> str:
    """A media source: the table's trigger queues its extraction."""
    return str(
        conn.execute(
            "INSERT INTO sources_google (name, path, mime_type) VALUES (%s, %s, %s) RETURNING id",
            (name, f"/talks/{name}", mime_type),
        ).fetchone()[0]
    )


def set_stage(conn: psycopg.Connection, source_id: str, stage: str, status: str, **columns: Any) -> None:
    """Put a stage row in a state by hand (queueing it first so it has a real job)."""
    conn.execute("SELECT dhgq.enqueue_stage_v1(%s, %s)", (source_id, stage))
    values = {"status": status, **columns}
    if status in ("processing", "completed", "failed"):
        values.setdefault("started_at", "2026-01-01T10:00:00Z")
    if status in ("completed", "failed"):
        values.setdefault("completed_at", "2026-01-01T10:00:12.5Z")
    assignments = ", ".join(f"{column} = %s" for column in values)
    conn.execute(
        f"UPDATE dhgq.audio_processing_stages SET {assignments} WHERE source_id = %s AND stage = %s",
        (*values.values(), source_id, stage),
    )
    job_status = {"processing": "doing", "completed": "succeeded", "failed": "failed"}.get(status)
    if job_status:  # the job as a worker would have left it
        conn.execute(
            """UPDATE dhgq.procrastinate_jobs SET status = %s::dhgq.procrastinate_job_status WHERE id =
                        (SELECT job_id::bigint FROM dhgq.audio_processing_stages
                          WHERE source_id = %s AND stage = %s)""",
            (job_status, source_id, stage),
        )


def finished_source(conn: psycopg.Connection, name: str = "finished.mp4") -> str:
    """A source with all four stages completed and its documents, as the pipeline leaves it."""
    source_id = add_source(conn, name)
    for stage in STAGES:
        result = {"diarization": DIARIZATION} if stage == "diarization" else {}
        set_stage(conn, source_id, stage, "completed", progress=100, attempts=1, result=Jsonb(result))
    for content_type, content in (("transcript", TRANSCRIPT), ("summary", SUMMARY)):
        conn.execute(
            "INSERT INTO expert_documents (source_id, content_type, processed_content, processing_status)"
            " VALUES (%s, %s, %s, 'completed')",
            (source_id, content_type, Jsonb(content)),
        )
    return source_id


def failed_source(conn: psycopg.Connection, name: str = "broken.mp4") -> str:
    source_id = add_source(conn, name)
    set_stage(
        conn,
        source_id,
        "extraction",
        "failed",
        attempts=1,
        error_class="permanent",
        error="/talks/broken.mp4: no audio stream",
    )
    return source_id
