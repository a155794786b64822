"""Transcription: Whisper on the extracted audio (local engine or Modal), then the fan-in.

Reuse: the output is keyed by the file's sha256, the extraction's version, the engine (faster-whisper,
openai-whisper, or the Modal app) with its version, the model with its version (the packages that
ship it, a fingerprint of its directory, or the Modal app's pins; ``auto`` counts as the model it picks),
the language asked for, the user's hints (initial_prompt, vocabulary) and the compute type. A reused
transcription copies the transcript document and its segment rows.
"""

from __future__ import annotations

from typing import Any

import psycopg
from procrastinate import JobContext
from psycopg.types.json import Jsonb

from dhgq import gpu
from dhgq.app import app
from dhgq.gpu import AudioInput
from dhgq.media.serialize import transcript_to_dict
from dhgq.media.transcription.engines import Prompt
from dhgq.media.types import Transcript
from dhgq.queries import query
from dhgq.reuse import copy_document, copy_segments
from dhgq.settings import Settings
from dhgq.stage import Identity, Origin, Resources, Reuse, Source, StageJob, StageSpec
from dhgq.tasks import extraction, job_of, run
from dhgq.tasks.audio import extracted_audio, held_for_gpu_budget, run_model
from dhgq.tasks.fanin import after_transcription_or_diarization
from dhgq.tasks.segments import replace_segments
from dhgq.versions import backend_name, code_version, modal_app_version, packages, whisper_model_version


def work(resources: Resources, source: Source, job: StageJob, audio: AudioInput) -> tuple[Transcript, dict[str, Any]]:
    """The request's model, language and hints (initial_prompt, vocabulary) when it gave them, else the settings'."""
    return run_model(
        resources,
        source,
        job,
        gpu.transcribe,
        audio,
        model=source.options.get("model"),
        language=source.options.get("language"),
        prompt=Prompt.from_options(source.options),
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


def identity(settings: Settings, source: Source) -> Identity | None:
    """What would transcribe this source now; None when a version cannot be told (then it computes)."""
    backend = backend_name(settings)
    language = source.options.get("language") or settings.whisper_language
    options: dict[str, Any] = {"language": language, "audio": extraction.identity(settings, source).versions()}
    prompt = Prompt.from_options(source.options)
    if prompt is not None:  # the hints change the words: part of the key
        options["prompt"] = {"initial_prompt": prompt.text, "vocabulary": list(prompt.vocabulary)}
    if backend == "modal":
        app_version = modal_app_version()
        model = source.options.get("model") or settings.modal_whisper_model
        return Identity("modal/openai-whisper", app_version, model, app_version, options)
    if backend != "local":
        return None
    engine = settings.whisper_engine
    model = gpu.LocalBackend(settings).model_for(source.options.get("model"), language).model
    libraries = packages("faster-whisper", "ctranslate2") if engine == "faster-whisper" else packages("openai-whisper")
    model_version = whisper_model_version(model)
    if libraries is None or model_version is None:
        return None
    engine_version = f"{libraries}; {code_version('media/transcription')}"
    return Identity(engine, engine_version, model, model_version, options | {"compute": settings.whisper_compute_type})


def input_hash(resources: Resources, source: Source) -> str | None:
    return source.content_hash


def copy(conn: psycopg.Connection, source: Source, origin: Origin) -> dict[str, Any]:
    """The origin's transcript and its segments as this source's own; the fan-in links the speakers."""
    document_id = copy_document(conn, source, origin, "transcript")
    copy_segments(conn, document_id, origin, "transcript")
    return origin.result | {"document_id": document_id}


SPEC = StageSpec(
    "transcription",
    extracted_audio,
    work,
    save,
    after_transcription_or_diarization,
    lock_with=("diarization",),
    reuse=Reuse(identity, input_hash, copy),
)


@app.task(name="dhgq.transcription", queue="transcription", pass_context=True)
def transcription(context: JobContext, source_id: str) -> None:
    resources, job = job_of(context, "transcription", source_id)
    if held_for_gpu_budget(resources, job):
        return  # the job ends without failing; the stage row waits, and a later job checks again
    run(context, SPEC, source_id)
