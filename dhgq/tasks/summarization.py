"""Summarization: Claude when a key is configured, else an offline extractive summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from procrastinate import JobContext
from psycopg.types.json import Jsonb

from dhgq.app import app
from dhgq.errors import PermanentError
from dhgq.fetch import scheme_of
from dhgq.media.summarization.extractive import summarize_extractive
from dhgq.media.summarization.summarize import summarize
from dhgq.media.types import Summary, Transcript
from dhgq.outputs import upload_exports
from dhgq.pipeline import Resources, Source, StageJob, StageRows, StageSpec
from dhgq.queries import query
from dhgq.settings import Settings
from dhgq.status import fetch_documents
from dhgq.tasks import run


@dataclass(frozen=True)
class Summarized:
    """The summary, and where the exports went when they were uploaded to Storage."""

    summary: Summary
    outputs: dict[str, str]


def work(resources: Resources, source: Source, job: StageJob) -> Summarized:
    with resources.pool.connection() as conn:
        documents = fetch_documents(conn, source.id)
    if documents.transcript is None:
        raise PermanentError("no transcript to summarize", file=source.path)
    summary = _summarize(resources.settings, documents.transcript)
    outputs: dict[str, str] = {}
    if resources.settings.upload_outputs and scheme_of(source.path) == "storage":
        outputs = upload_exports(resources.settings, source.path, documents.transcript, documents.diarization, summary)
    return Summarized(summary, outputs)


def _summarize(settings: Settings, transcript: Transcript) -> Summary:
    """Claude when a key is configured, else the offline extractive summary."""
    if settings.anthropic_api_key is None:
        return summarize_extractive(transcript)
    return summarize(
        transcript,
        api_key=settings.anthropic_api_key.get_secret_value(),
        model=settings.anthropic_model,
        base_url=settings.anthropic_base_url,
    )


def save(conn: psycopg.Connection, source: Source, summarized: Summarized) -> dict[str, Any]:
    summary = summarized.summary
    content = asdict(summary)
    if summarized.outputs:
        conn.execute(query("record_outputs"), {"source_id": source.id, "outputs": Jsonb(summarized.outputs)})
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
        "outputs": summarized.outputs,
    }


def then(conn: psycopg.Connection, source: Source, rows: StageRows) -> None:
    """The last stage: nothing follows."""


SPEC = StageSpec("summarization", work, save, then)


@app.task(name="dhgq.summarization", queue="summarization", pass_context=True)
def summarization(context: JobContext, source_id: str) -> None:
    run(context, SPEC, source_id)
