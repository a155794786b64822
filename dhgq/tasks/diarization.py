"""Diarization: who spoke when (local CPU diarizer or pyannote on Modal), then the fan-in."""

from __future__ import annotations

from typing import Any

import psycopg
from procrastinate import JobContext
from psycopg.types.json import Jsonb

from dhgq import gpu
from dhgq.app import app
from dhgq.media.serialize import diarization_to_dict
from dhgq.media.types import Diarization, SpeakerCount
from dhgq.pipeline import Resources, Source, StageJob, StageSpec, run_on_extracted_audio
from dhgq.queries import query
from dhgq.tasks import run
from dhgq.tasks.fanin import after_transcription_or_diarization


def work(resources: Resources, source: Source, job: StageJob) -> tuple[Diarization, dict[str, Any]]:
    """The request's speaker count, when it gave one, steers the clustering."""
    speakers = SpeakerCount.from_options(source.options)
    return run_on_extracted_audio(resources, source, job, gpu.diarize, speakers=speakers)


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


SPEC = StageSpec("diarization", work, save, after_transcription_or_diarization, lock_with=("transcription",))


@app.task(name="dhgq.diarization", queue="diarization", pass_context=True)
def diarization(context: JobContext, source_id: str) -> None:
    run(context, SPEC, source_id)
