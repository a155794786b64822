"""The life of one stage job: claim the stage row, do the work outside any transaction, then
commit the outputs, the completed row and the next stages' jobs in one transaction.

Tasks in ``dhgq/tasks/`` only say what their stage computes, saves and queues next; everything
that must be the same for every stage (the lifecycle, error classes, retries, idempotency,
cancellation, reuse by content) lives here.

Reuse by content: a stage with a ``Reuse`` policy says what would produce its output now (an
``Identity``: engine, model, their versions, the options that change the output) and what its
input is (a content hash). Together they are the output's ``ReuseKey``. When the stage is claimed
and another source of the same owner has a current output under that key, its rows are copied
(``Reuse.copy``) in the completing transaction instead of computed, and the stage completes
exactly as a computed one does: same row, same ``then``, with ``result.reused_from`` saying
where from. Every completion records its key in ``dhgq.stage_outputs`` and first copies the rows
it replaces into ``dhgq.output_history``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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
    content_hash: str | None = None  # sha256 of the source file once known: reuse keys start from it
    fresh: bool = False  # this run must compute, not reuse (an explicit `dhgq rerun`, or a reuse that failed)

    @classmethod
    def defaults(cls) -> Source:
        """No source in particular: what a stage's identity is for a request that sets no options."""
        return cls("", "", "", None, None, None)

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
    published: set[str] = field(default_factory=set)  # stages whose current versions this process recorded

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


@dataclass(frozen=True)
class Identity:
    """What produces a stage's output, as far as the output depends on it: the parts of a reuse key
    other than the input. ``options`` holds only options that change the output."""

    engine: str
    engine_version: str | None
    model: str
    model_version: str | None
    options: Mapping[str, Any] = field(default_factory=dict)
    prompt_version: str | None = None
    reusable: bool = True  # False: recorded (staleness, history) but never copied to another source

    def versions(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "engine_version": self.engine_version,
            "model": self.model,
            "model_version": self.model_version,
            "prompt_version": self.prompt_version,
        }


@dataclass(frozen=True)
class ReuseKey:
    """A stage output's key: equal keys mean equal outputs, so one may stand for the other."""

    stage: Stage
    input_hash: str
    identity: Identity

    @property
    def digest(self) -> str:
        """sha256 of every part, canonical JSON: what ``dhgq.stage_outputs.key`` holds and lookups match."""
        parts = {
            "stage": self.stage,
            "input_hash": self.input_hash,
            **self.identity.versions(),
            "options": dict(self.identity.options),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Origin:
    """A current output under the same key, of another source of the same owner: what a stage copies.
    ``context`` is the policy's own (what ``prepare`` or the work learnt on the way, e.g. linked files)."""

    output_id: int
    source_id: str
    stage: Stage
    stage_id: str
    result: dict[str, Any]
    created_at: datetime
    context: Any = None

    def reference(self) -> dict[str, Any]:
        """``result.reused_from``: where the output came from."""
        return {
            "source_id": self.source_id,
            "stage": self.stage,
            "stage_id": self.stage_id,
            "output_id": self.output_id,
            "output_created_at": self.created_at.isoformat(),
        }


class NotReusable(Exception):
    """An output found a moment ago cannot be copied after all (its files or rows went): compute instead."""


@dataclass(frozen=True)
class Reuse:
    """How a stage's output is found again by content and copied onto another source of the same owner.

    ``identity`` says what would produce the output for this source now, from settings only (no
    model is loaded); ``input_hash`` what it is made from (None: not known yet, so no reuse);
    ``copy`` writes the origin's rows as the source's own, in the completing transaction, and
    returns the stage row's result; ``prepare`` (optional) does what must not happen inside a
    transaction first (linking files) and returns the origin with its context. Either raises
    ``NotReusable`` to have the stage computed after all.
    """

    identity: Callable[[Settings, Source], Identity | None]
    input_hash: Callable[[Resources, Source], str | None]
    copy: Callable[[psycopg.Connection, Source, Origin], dict[str, Any]]
    prepare: Callable[[Resources, Source, Origin], Origin] | None = None


@dataclass
class StageSpec(Generic[Output]):
    """What one stage does. ``save`` runs inside the completing transaction and returns the
    stage row's ``result``; ``then`` queues what follows, in that same transaction, given the
    rows of this stage and of ``lock_with``, locked, with this stage's already completed.

    ``work`` may return an ``Origin`` instead of its output when it found one on the way (extraction
    learns the content hash of a requested file only by fetching it). ``reuse`` is the stage's reuse
    policy, None for a stage that always computes."""

    stage: Stage
    work: Callable[[Resources, Source, StageJob], Output | Origin]
    save: Callable[[psycopg.Connection, Source, Output], dict[str, Any]]
    then: Callable[[psycopg.Connection, Source, StageRows], None]
    lock_with: Sequence[Stage] = ()
    reuse: Reuse | None = None


def run_stage(resources: Resources, spec: StageSpec[Output], job: StageJob) -> None:
    """Run one stage job from claim to commit; raise to let Procrastinate retry or fail it."""
    source = _claim(resources, job)
    if source is None:
        return
    started = time.monotonic()
    try:
        key = _prepare_reuse(resources, spec, job, source)
        if _reused(resources, spec, job, source, find_origin(resources, spec, source, key), key):
            return
        output = spec.work(resources, source, job)
        if isinstance(output, Origin):  # the work learnt the input's hash on the way, and its output exists
            if _reused(resources, spec, job, source, output, output_key(resources, spec, source)):
                return
            output = spec.work(resources, source, job)  # source.fresh now: it computes
            if isinstance(output, Origin):
                raise PermanentError(f"{spec.stage} found an output to reuse although told to compute")
        key = output_key(resources, spec, source)  # extraction's input hash is known only now
        _complete(resources, spec, job, source, output, key, started)
    except Exception as exc:
        _record_failure(resources, job, exc, source)


def _reused(
    resources: Resources,
    spec: StageSpec[Output],
    job: StageJob,
    source: Source,
    origin: Origin | None,
    key: ReuseKey | None,
) -> bool:
    """Whether the stage completed by copying ``origin``; after a failed attempt the source computes."""
    if origin is None or key is None:
        return False
    if _complete_by_reuse(resources, spec, job, source, origin, key):
        return True
    source.fresh = True  # that output cannot be copied: compute, and look no further
    return False


def _complete(
    resources: Resources,
    spec: StageSpec[Output],
    job: StageJob,
    source: Source,
    output: Output,
    key: ReuseKey | None,
    started: float,
) -> None:
    """Save the computed output, complete the row, record the output's key and queue what follows."""
    # Pipeline mode: statements whose results nobody reads go out together, so the commit
    # costs a round trip for the lock (which must be read), one for what save() reads, and
    # one for the rest with the COMMIT, instead of one per statement.
    with resources.pool.connection() as conn, conn.pipeline(), conn.transaction():
        rows = _lock(conn, job, (job.stage, *spec.lock_with))
        mine = rows.get(job.stage)
        if not _still_mine(mine, job):
            return
        assert mine is not None
        _snapshot(conn, source, job.stage)
        result = spec.save(conn, source, output)
        result["stage_seconds"] = round(time.monotonic() - started, 3)
        _finish(conn, spec, job, source, rows, mine, result, key, None)
    logger.info("stage completed in %.2f s", time.monotonic() - started, extra=job.log)


def _complete_by_reuse(
    resources: Resources, spec: StageSpec[Output], job: StageJob, source: Source, origin: Origin, key: ReuseKey
) -> bool:
    """Copy the origin's output as this source's own and complete as a computed output would;
    False (nothing written) when it turns out not to be reusable after all."""
    assert spec.reuse is not None
    started = time.monotonic()
    try:
        if spec.reuse.prepare is not None:
            origin = spec.reuse.prepare(resources, source, origin)
        with resources.pool.connection() as conn, conn.pipeline(), conn.transaction():
            rows = _lock(conn, job, (job.stage, *spec.lock_with))
            mine = rows.get(job.stage)
            if not _still_mine(mine, job):
                return True
            assert mine is not None
            if conn.execute(query("reuse_hold_origin"), {"output_id": origin.output_id}).fetchone() is None:
                raise NotReusable("the output was replaced or its source deleted meanwhile")
            _snapshot(conn, source, job.stage)
            result = spec.reuse.copy(conn, source, origin)
            result["reused_from"] = origin.reference()
            result["stage_seconds"] = round(time.monotonic() - started, 3)
            _finish(conn, spec, job, source, rows, mine, result, key, origin)
    except NotReusable as exc:
        logger.info("reuse of source %s's output abandoned (%s): computing", origin.source_id, exc, extra=job.log)
        return False
    logger.info(
        "stage completed in %.3f s by reuse of source %s's output",
        time.monotonic() - started,
        origin.source_id,
        extra=job.log | {"reused_from": origin.source_id},
    )
    return True


def _still_mine(mine: dict[str, Any] | None, job: StageJob) -> bool:
    if mine is None or mine["status"] != "processing" or mine["job_id"] != str(job.job_id):
        logger.info("stage result discarded: cancelled or superseded", extra=job.log)
        return False
    return True


def _finish(
    conn: psycopg.Connection,
    spec: StageSpec[Output],
    job: StageJob,
    source: Source,
    rows: StageRows,
    mine: dict[str, Any],
    result: dict[str, Any],
    key: ReuseKey | None,
    origin: Origin | None,
) -> None:
    """What every completion does after its rows are written: the row, the output's key, what follows."""
    conn.execute(
        query("complete_stage"),
        {"source_id": job.source_id, "stage": job.stage, "job_id": str(job.job_id), "result": Jsonb(result)},
    )
    if key is not None:
        _record_output(conn, source, key, result, origin)
    mine.update(status="completed", result=result)  # as the row now is, for then()
    spec.then(conn, source, rows)


def _snapshot(conn: psycopg.Connection, source: Source, stage: Stage) -> None:
    """Keep the rows the new output replaces (``dhgq.output_history``; ``dhgq gc`` removes them later)."""
    conn.execute(query("reuse_snapshot_outputs"), {"source_id": source.id, "stage": stage})


def _record_output(
    conn: psycopg.Connection, source: Source, key: ReuseKey, result: dict[str, Any], origin: Origin | None
) -> None:
    params = {"source_id": source.id, "stage": key.stage}
    conn.execute(query("reuse_supersede_output"), params)
    conn.execute(
        query("reuse_record_output"),
        params
        | key.identity.versions()
        | {
            "key": key.digest,
            "input_hash": key.input_hash,
            "options": Jsonb(dict(key.identity.options)),
            "reusable": key.identity.reusable,
            "result": Jsonb(result),
            "reused_from": Jsonb(origin.reference()) if origin is not None else None,
        },
    )


# -- reuse by content ---------------------------------------------------------------------------------


def _prepare_reuse(resources: Resources, spec: StageSpec[Any], job: StageJob, source: Source) -> ReuseKey | None:
    """For a stage with a reuse policy: what the source's row says about reuse, and this output's key now."""
    if spec.reuse is None:
        return None
    publish_versions(resources, [spec], once=True)
    params = {"source_id": job.source_id, "stage": job.stage, "job_id": job.job_id}
    with resources.pool.connection() as conn:
        row = conn.execute(query("reuse_source_facts"), params).fetchone()
    if row is not None:
        source.content_hash, source.fresh = row[0], bool(row[1])
    return output_key(resources, spec, source)


def output_key(resources: Resources, spec: StageSpec[Any], source: Source) -> ReuseKey | None:
    """The key of the output this stage makes of this source now; None when it cannot tell.

    A reuse policy that fails is a missed reuse, never a failed stage: it is logged and the stage computes.
    """
    if spec.reuse is None:
        return None
    try:
        identity = spec.reuse.identity(resources.settings, source)
        input_hash = spec.reuse.input_hash(resources, source) if identity is not None else None
    except Exception as exc:  # noqa: BLE001 - see the docstring
        logger.warning(
            "no reuse key for %s: %s: %s", spec.stage, type(exc).__name__, exc, extra={"source_id": source.id}
        )
        return None
    if identity is None or input_hash is None:
        return None
    return ReuseKey(spec.stage, input_hash, identity)


def find_origin(resources: Resources, spec: StageSpec[Any], source: Source, key: ReuseKey | None) -> Origin | None:
    """A current output under ``key`` of another source of the same owner, unless this run must compute."""
    if key is None or source.fresh or not key.identity.reusable or spec.reuse is None:
        return None
    with resources.pool.connection() as conn:
        row = (
            conn.cursor(row_factory=dict_row)
            .execute(query("reuse_find"), {"source_id": source.id, "key": key.digest})
            .fetchone()
        )
    if row is None:
        return None
    return Origin(
        row["output_id"], row["source_id"], row["stage"], row["stage_id"], row["result"] or {}, row["created_at"]
    )


def publish_versions(resources: Resources, specs: Iterable[StageSpec[Any]], *, once: bool = False) -> None:
    """Record the versions these stages use now (their defaults) as the current ones, which
    ``dhgq.stale_outputs`` compares outputs with. ``once``: only the first time in this process."""
    for spec in specs:
        if spec.reuse is None or (once and spec.stage in resources.published):
            continue
        resources.published.add(spec.stage)
        try:
            identity = spec.reuse.identity(resources.settings, Source.defaults())
            if identity is None:
                continue
            with resources.pool.connection() as conn:
                conn.execute(query("reuse_publish_version"), {"stage": spec.stage} | identity.versions())
        except Exception as exc:  # noqa: BLE001 - staleness is a report; the stage runs regardless
            logger.warning("could not record the current versions of %s: %s", spec.stage, exc)


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
    logger.info("model host runs %s", function.__name__, extra=job.log)  # what a reused stage never logs
    return resources.host(job.stage).call(
        function,
        resources.settings.stage_timeout(source.duration),
        should_stop=job.should_stop,
        on_progress=MediaProgress(resources, job),
        wav_path=wav_path,
        **options,
    )
