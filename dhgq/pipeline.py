"""The life of one stage job: claim the stage row, do the work outside any transaction, then
commit the outputs, the completed row and the next stages' jobs in one transaction.

Tasks in ``dhgq/tasks/`` only say what their stage computes, saves and queues next; everything
that must be the same for every stage (the lifecycle, error classes, retries, idempotency,
cancellation) lives here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from dhgq.errors import DhgqError, PermanentError, TransientError, classify
from dhgq.queries import query
from dhgq.runner import HostFunction, ModelPool
from dhgq.settings import Settings, Stage

logger = logging.getLogger("dhgq.pipeline")
Output = TypeVar("Output")


@dataclass
class Source:
    """The row a stage works on."""

    id: str
    name: str
    path: str
    mime_type: str | None
    wav_path: str | None
    duration: float | None
    options: dict[str, Any] = field(default_factory=dict)  # the request's, checked by the database

    def extracted_audio(self) -> str:
        """The 16 kHz WAV the GPU stages work on; extraction must have produced it."""
        if not self.wav_path:
            raise PermanentError("no extracted audio: extraction has not completed", file=self.path)
        return self.wav_path


@dataclass
class Resources:
    """What a worker process shares between its jobs: settings, a connection pool, model hosts."""

    settings: Settings
    pool: ConnectionPool
    hosts: dict[str, ModelPool] = field(default_factory=dict)

    def host(self, stage: Stage) -> ModelPool:
        if stage not in self.hosts:
            self.hosts[stage] = ModelPool(stage, self.settings.concurrency(stage), self.settings)
        return self.hosts[stage]

    def close(self) -> None:
        for host in self.hosts.values():
            host.close()
        self.pool.close()


@dataclass
class StageJob:
    stage: Stage
    source_id: str
    job_id: int
    attempt: int  # 1 for the first run
    should_stop: Callable[[], bool] = field(default=lambda: False, repr=False)  # true once cancelled

    @property
    def log(self) -> dict[str, Any]:
        return {"stage": self.stage, "source_id": self.source_id, "job_id": self.job_id, "attempt": self.attempt}


StageRows = dict[str, dict[str, Any]]  # stage -> its row (stage, status, job_id, result), locked


@dataclass
class StageSpec(Generic[Output]):
    """What one stage does. ``save`` runs inside the completing transaction and returns the
    stage row's ``result``; ``then`` queues what follows, in that same transaction, given the
    rows of this stage and of ``lock_with``, locked, with this stage's already completed."""

    stage: Stage
    work: Callable[[Resources, Source, StageJob], Output]
    save: Callable[[psycopg.Connection, Source, Output], dict[str, Any]]
    then: Callable[[psycopg.Connection, Source, StageRows], None]
    lock_with: Sequence[Stage] = ()


def run_stage(resources: Resources, spec: StageSpec[Output], job: StageJob) -> None:
    """Run one stage job from claim to commit; raise to let Procrastinate retry or fail it."""
    source = _claim(resources, job)
    if source is None:
        return
    started = time.monotonic()
    try:
        output = spec.work(resources, source, job)
        # Pipeline mode: statements whose results nobody reads go out together, so the commit
        # costs a round trip for the lock (which must be read), one for what save() reads, and
        # one for the rest with the COMMIT, instead of one per statement.
        with resources.pool.connection() as conn, conn.pipeline(), conn.transaction():
            rows = _lock(conn, job, (job.stage, *spec.lock_with))
            mine = rows.get(job.stage)
            if mine is None or mine["status"] != "processing" or mine["job_id"] != str(job.job_id):
                logger.info("stage result discarded: cancelled or superseded", extra=job.log)
                return
            result = spec.save(conn, source, output)
            result["stage_seconds"] = round(time.monotonic() - started, 3)
            conn.execute(
                query("complete_stage"),
                {"source_id": job.source_id, "stage": job.stage, "job_id": str(job.job_id), "result": Jsonb(result)},
            )
            mine.update(status="completed", result=result)  # as the row now is, for then()
            spec.then(conn, source, rows)
        logger.info("stage completed in %.2f s", time.monotonic() - started, extra=job.log)
    except Exception as exc:
        _record_failure(resources, job, exc, source)


def _claim(resources: Resources, job: StageJob) -> Source | None:
    """Mark the stage processing, or say why this job has nothing to do."""
    params = {"source_id": job.source_id, "stage": job.stage, "job_id": str(job.job_id), "attempt": job.attempt}
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
        row["audio_extraction_path"],
        float(duration) if duration is not None else None,
        row["options"] or {},
    )


def _lock(conn: psycopg.Connection, job: StageJob, stages: Sequence[str]) -> dict[str, dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(query("lock_stages"), {"source_id": job.source_id, "stages": list(stages)}).fetchall()
    return {row["stage"]: row for row in rows}


def _record_failure(resources: Resources, job: StageJob, exc: Exception, source: Source) -> None:
    """Write the failure to the stage row, then re-raise in the form Procrastinate acts on."""
    error_class = classify(exc)
    will_retry = error_class == "transient" and job.attempt < resources.settings.max_attempts
    error = (
        exc
        if isinstance(exc, DhgqError)
        else (TransientError if error_class == "transient" else DhgqError)(f"{type(exc).__name__}: {exc}")
    )
    error.with_context(source_id=job.source_id, stage=job.stage, file=source.path)
    message = error.message if error.file is None or error.file in error.message else f"{error.file}: {error.message}"
    try:
        with resources.pool.connection() as conn:
            conn.execute(
                query("fail_stage"),
                {
                    "source_id": job.source_id,
                    "stage": job.stage,
                    "job_id": str(job.job_id),
                    "will_retry": will_retry,
                    "error": message,
                    "error_class": error_class,
                },
            )
    except psycopg.Error as db_exc:
        logger.warning("could not record the failure: %s", db_exc, extra=job.log)
    logger.warning("stage failed (%s%s): %s", error_class, ", will retry" if will_retry else "", message, extra=job.log)
    if error_class == "transient":
        raise error if isinstance(error, TransientError) else TransientError(message) from exc
    raise error from exc


def enqueue(conn: psycopg.Connection, source_id: str, *stages: Stage) -> None:
    """Queue the next stages in the caller's transaction (the same SQL path as the triggers)."""
    conn.execute(query("enqueue_stages"), {"source_id": source_id, "stages": list(stages)})


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


def run_on_extracted_audio(
    resources: Resources, source: Source, job: StageJob, function: HostFunction[Output], **options: Any
) -> Output:
    """A GPU stage's work: the extracted audio, in the stage's model host, under its time limit.

    The audio must lie in this worker's work dir (the path comes from a database row); the host is
    stopped within a second when the job is cancelled, and its progress reaches the stage row.
    """
    wav_path = source.extracted_audio()
    work_dir = resources.settings.work_dir.resolve()
    if not Path(wav_path).resolve().is_relative_to(work_dir):
        raise PermanentError(f"extracted audio {wav_path} lies outside the work dir {work_dir}: refused", file=wav_path)
    report_progress(resources, job, MediaProgress.START)
    return resources.host(job.stage).call(
        function,
        resources.settings.stage_timeout(source.duration),
        should_stop=job.should_stop,
        on_progress=MediaProgress(resources, job),
        wav_path=wav_path,
        **options,
    )
