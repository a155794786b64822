"""The model stages' input step and their work: the extracted audio, from the artifact store, in the
stage's model host (``dhgq.runner``), under the stage's time limit.

Transcription and diarization run on whichever machine took the job: the audio comes from the
artifact store, never from a path on the extraction machine's disk. Locally the engines read a file,
so it is fetched into this machine's cache (checked by hash; a second stage on the same machine finds
it there) and kept there while the engine runs. On Modal the GPU function fetches it itself, by
signed URLs made now and valid for the stage's whole time limit (a call may wait in Modal's queue).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from dhgq import budget
from dhgq.gpu import AudioInput
from dhgq.ledger import gpu_estimate_usd
from dhgq.pipeline import MediaProgress, report_progress
from dhgq.queries import query
from dhgq.runner import HostFunction
from dhgq.stage import Resources, Source, StageJob
from dhgq.versions import backend_name

logger = logging.getLogger("dhgq.tasks")
Output = TypeVar("Output")
SIGNED_URL_MARGIN_SECONDS = 600  # beyond the stage's time limit: a retry of the call inside it still finds the audio


@contextmanager
def extracted_audio(resources: Resources, source: Source, job: StageJob) -> Iterator[AudioInput]:
    """The source's extracted audio, as the stage's engine will read it, for the duration of the work."""
    store = resources.store
    if backend_name(resources.settings) == "modal":
        compact = source.artifacts.get("compact") or source.artifact("audio")
        seconds = int(resources.settings.stage_timeout(source.duration)) + SIGNED_URL_MARGIN_SECONDS
        urls = store.signed_urls(compact, seconds)
        if urls is not None:
            yield AudioInput(source.id, source.duration, urls=tuple(urls))
            return
        with store.local_file(compact) as path:  # the local store: its bytes travel (one machine only)
            yield AudioInput(source.id, source.duration, path=str(path))
        return
    with store.local_file(source.artifact("audio")) as path:
        yield AudioInput(source.id, source.duration, path=str(path))


def run_model(
    resources: Resources,
    source: Source,
    job: StageJob,
    function: HostFunction[Output],
    audio: AudioInput,
    **options: Any,
) -> Output:
    """``function(settings, audio=..., **options)`` in the stage's model host: stopped within a second
    when the job is cancelled or runs past its time limit; its progress reaches the stage row."""
    report_progress(resources, job, MediaProgress.START)
    logger.info("model host runs %s", function.__name__, extra=job.log)  # what a reused stage never logs
    return resources.host(job.stage).call(
        function,
        resources.settings.stage_timeout(source.duration),
        should_stop=job.should_stop,
        on_progress=MediaProgress(resources, job),
        audio=audio,
        **options,
    )


def held_for_gpu_budget(resources: Resources, job: StageJob) -> bool:
    """Whether the budget holds this model stage back: only on Modal, where it is a paid GPU call (its row
    then says ``waiting_budget``, and why). The estimate is the audio's length times the GPU seconds per
    audio second of the stage's recent calls in the ledger (a generous default before there are any)."""
    settings = resources.settings
    if backend_name(settings) != "modal":
        return False
    with resources.pool.connection() as conn:
        row = conn.execute(query("gpu_budget_basis"), {"source_id": job.source_id, "stage": job.stage}).fetchone()
    duration, rate = row if row is not None else (None, None)
    estimate = gpu_estimate_usd(settings, job.stage, float(duration or 0), float(rate) if rate else None)
    reason = budget.gate(
        resources.pool,
        source_id=job.source_id,
        stage=job.stage,
        job_id=job.job_id,
        estimate_usd=estimate,
        what=f"this {job.stage} on Modal",
        recheck_seconds=settings.budget_recheck_seconds,
    )
    if reason is not None:
        resources.telemetry.waited(job, "budget")
        logger.info("waiting for budget: %s", reason, extra=job.log)
    return reason is not None
