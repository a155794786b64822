"""Summarization: Claude when a key is configured, else an offline extractive summary."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import psycopg
from procrastinate import JobContext
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dhgq.app import app
from dhgq.errors import PermanentError
from dhgq.media.serialize import transcript_from_dict
from dhgq.media.summarization.extractive import summarize_extractive
from dhgq.media.summarization.summarize import summarize
from dhgq.media.types import Summary
from dhgq.pipeline import Resources, Source, StageJob, StageRows, StageSpec, run_stage
from dhgq.queries import query
from dhgq.tasks import job_of


def work(resources: Resources, source: Source, job: StageJob) -> Summary:
    with resources.pool.connection() as conn:
        document = (
            conn.cursor(row_factory=dict_row)
            .execute(query("document"), {"source_id": source.id, "content_type": "transcript"})
            .fetchone()
        )
    if document is None:
        raise PermanentError("no transcript to summarize", file=source.path)
    transcript = transcript_from_dict(document["processed_content"])
    settings = resources.settings
    if settings.anthropic_api_key is None:
        return summarize_extractive(transcript)
    return summarize(
        transcript,
        api_key=settings.anthropic_api_key.get_secret_value(),
        model=settings.anthropic_model,
        base_url=settings.anthropic_base_url,
    )


def save(conn: psycopg.Connection, source: Source, summary: Summary) -> dict[str, Any]:
    content = asdict(summary)
    conn.execute(
        query("upsert_document"),
        {
            "source_id": source.id,
            "content_type": "summary",
            "raw_content": summary.summary,
            "processed_content": Jsonb(content),
            "word_count": len(summary.summary.split()),
            "language": None,
            "whisper_model_used": None,
            "ai_processing_details": Jsonb(summary.details | {"method": summary.method}),
        },
    )
    return {
        "method": summary.method,
        "document_type": summary.document_type,
        "model": summary.details.get("model"),
        "input_tokens": summary.details.get("input_tokens"),
        "output_tokens": summary.details.get("output_tokens"),
    }


def then(conn: psycopg.Connection, source: Source, rows: StageRows) -> None:
    """The last stage: nothing follows."""


SPEC = StageSpec("summarization", work, save, then)


@app.task(name="dhgq.summarization", queue="summarization", pass_context=True)
def summarization(context: JobContext, source_id: str) -> None:
    resources, job = job_of(context, "summarization", source_id)
    run_stage(resources, SPEC, job)
