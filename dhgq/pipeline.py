"""The life of one stage job: claim the stage row, get the input, do the work outside any transaction,
then commit the outputs, the completed row and the next stages' jobs in one transaction.

Tasks in ``dhgq/tasks/`` only fill in a ``StageSpec`` (``dhgq/stage.py``): what their stage takes as
input, computes, saves and queues next. Everything that must be the same for every stage lives here:
the lifecycle, error classes, retries, idempotency and cancellation. Reuse by content is asked at two
points (``dhgq/reuse.py``): at the claim, and once the input step has learnt a content hash the claim
did not know; the work runs at most once per job.

    claim ─► reuse? ─► input ─► reuse? (a new content hash) ─► work ─► complete
                 └────────────────────┴──► complete by copy
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dhgq import reuse, waits
from dhgq.artifacts import Artifact
from dhgq.completion import complete
from dhgq.errors import ApiBusy, ArtifactMissing, DhgqError, TransientError, classify
from dhgq.queries import query
from dhgq.stage import Resources, Source, StageJob, StageSpec

logger = logging.getLogger("dhgq.pipeline")


def run_stage(resources: Resources, spec: StageSpec[Any, Any], job: StageJob) -> None:
    """Run one stage job from claim to commit; raise to let Procrastinate retry or fail it."""
    telemetry = resources.telemetry
    with telemetry.phase("claim"):
        source = _claim(resources, job)
    if source is None:
        return
    started = time.monotonic()
    audio_seconds = source.duration
    try:
        reuse.load_source_facts(resources, spec, job, source)
        if reuse.attempt(resources, spec, job, source):
            telemetry.completed(job, time.monotonic() - started, None, reused=True)
            return
        known_hash = source.content_hash
        with ExitStack() as held:  # the input lasts until the work is done; its span only while it is made
            with telemetry.phase("input"):
                given = held.enter_context(spec.inputs(resources, source, job))
            if source.content_hash != known_hash and reuse.attempt(resources, spec, job, source, given):
                telemetry.completed(job, time.monotonic() - started, None, reused=True)
                return  # the input step learnt the content hash, and an equal output exists
            with telemetry.phase("work"):
                output = spec.work(resources, source, job, given)
        key = reuse.output_key(resources, spec, source)  # extraction's input hash is known only now

        def write(conn: psycopg.Connection) -> dict[str, Any]:
            nonlocal audio_seconds
            result = spec.save(conn, source, output)
            result["stage_seconds"] = round(time.monotonic() - started, 3)
            audio_seconds = audio_seconds or result.get("duration_seconds")  # extraction learns it
            return result

        with telemetry.phase("complete"):
            completed = complete(resources, spec, job, source, write, key)
        if completed:
            logger.info("stage completed in %.2f s", time.monotonic() - started, extra=job.log)
            telemetry.completed(job, time.monotonic() - started, audio_seconds)
    except Exception as exc:
        if isinstance(exc, ApiBusy) and waits.wait_for_api(resources, job, exc):
            return  # held until the API's time, its queue paused: not a failure, not an attempt
        _record_failure(resources, job, exc, source)


def _claim(resources: Resources, job: StageJob) -> Source | None:
    """Mark the stage processing (by this worker, on this host), or say why this job has nothing to do."""
    params = {
        "source_id": job.source_id,
        "stage": job.stage,
        "job_id": str(job.job_id),
        "attempt": job.attempt,
        "host": resources.settings.host_name,
        "worker_id": resources.worker_id,
    }
    try:
        with resources.pool.connection() as conn:
            row = conn.cursor(row_factory=dict_row).execute(query("begin_stage"), params).fetchone()
    except psycopg.OperationalError as exc:
        raise TransientError(f"database unavailable: {exc}", source_id=job.source_id, stage=job.stage) from None
    if row is None:
        logger.info("nothing to do: the stage is done, cancelled or queued again", extra=job.log)
        return None
    duration = row["audio_duration_seconds"]
    return Source(
        str(row["id"]),
        row["name"],
        row["path"],
        row["mime_type"],
        float(duration) if duration is not None else None,
        row["options"] or {},
        {kind: Artifact.from_row(artifact) for kind, artifact in (row["artifacts"] or {}).items()},
    )


def _record_failure(resources: Resources, job: StageJob, exc: Exception, source: Source) -> None:
    """Write the failure to the stage row, then re-raise in the form Procrastinate acts on.

    A missing or corrupt artifact also clears the source's extracted audio in the same transaction,
    so that a retry runs extraction again instead of failing on the same artifact."""
    error_class = classify(exc)
    will_retry = error_class == "transient" and job.attempt < resources.settings.max_attempts
    error = (
        exc
        if isinstance(exc, DhgqError)
        else (TransientError if error_class == "transient" else DhgqError)(f"{type(exc).__name__}: {exc}")
    )
    error.with_context(source_id=job.source_id, stage=job.stage, file=source.path)
    message = error.message if error.file is None or error.file in error.message else f"{error.file}: {error.message}"
    params = {
        "source_id": job.source_id,
        "stage": job.stage,
        "job_id": str(job.job_id),
        "will_retry": will_retry,
        "error": message,
        "error_class": error_class,
    }
    try:
        with resources.pool.connection() as conn, conn.transaction():
            conn.execute(query("fail_stage"), params)
            if isinstance(exc, ArtifactMissing) and job.stage != "extraction":
                conn.execute(query("forget_extracted_audio"), {"source_id": job.source_id})
    except psycopg.Error as db_exc:
        logger.warning("could not record the failure: %s", db_exc, extra=job.log)
    logger.warning("stage failed (%s%s): %s", error_class, ", will retry" if will_retry else "", message, extra=job.log)
    resources.telemetry.failed(job, error_class, will_retry)
    if error_class == "transient":
        raise error if isinstance(error, TransientError) else TransientError(message) from exc
    raise error from exc


def report_progress(
    resources: Resources, job: StageJob, percent: float, detail: dict[str, float | None] | None = None
) -> None:
    """Best-effort progress on the stage row (its trigger NOTIFYs the monitor)."""
    try:
        with resources.pool.connection() as conn:
            conn.execute(
                query("set_progress"),
                {
                    "source_id": job.source_id,
                    "stage": job.stage,
                    "job_id": str(job.job_id),
                    "progress": round(percent, 1),
                    "detail": Jsonb(detail) if detail is not None else None,
                },
            )
    except psycopg.Error:
        pass


class MediaProgress:
    """A model stage's progress in audio seconds, turned into a percentage, a realtime factor and an
    ETA on the stage row, at most every ``progress_every`` seconds (a long talk reports often, cheaply)."""

    START, END = 5.0, 95.0  # what the stage row shows before the model starts and when it reports all

    def __init__(self, resources: Resources, job: StageJob) -> None:
        self.resources, self.job, self.every = resources, job, resources.settings.progress_every
        self.started = time.monotonic()
        self._last = float("-inf")

    def __call__(self, done: float, total: float) -> None:
        now = time.monotonic()
        if now - self._last < self.every or total <= 0:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        fraction = min(max(done / total, 0.0), 1.0)
        speed = done / elapsed  # audio seconds per second: the realtime factor
        detail = {
            "audio_seconds_done": round(done, 1),
            "audio_seconds": round(total, 1),
            "realtime_factor": round(speed, 2),
            "eta_seconds": round((total - done) / speed, 1) if speed > 0 else None,
        }
        report_progress(self.resources, self.job, self.START + (self.END - self.START) * fraction, detail)
