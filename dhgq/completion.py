"""The completing transaction every stage ends with, computed or reused.

It locks the stage's row and those of ``lock_with`` (a fixed order, so concurrent completions of the
fan-in serialise without deadlock), checks the row is still this job's (a cancel or a re-queue
discards the result), keeps the rows the new output replaces (``dhgq.output_history``), lets the
stage write its output, completes the row, records the output's reuse key and queues what follows:
all of it commits together, or none of it does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dhgq.queries import query
from dhgq.stage import Origin, Resources, ReuseKey, Source, StageJob, StageRows, StageSpec

logger = logging.getLogger("dhgq.pipeline")

Write = Callable[[psycopg.Connection], dict[str, Any]]  # writes the output's rows; the stage row's result


def complete(
    resources: Resources,
    spec: StageSpec[Any, Any],
    job: StageJob,
    source: Source,
    write: Write,
    key: ReuseKey | None,
    origin: Origin | None = None,
    before: Callable[[psycopg.Connection], None] | None = None,
) -> bool:
    """Commit the stage: ``write`` its rows, complete its row, record ``key``, queue what follows.
    False (nothing written) when the row is no longer this job's. ``before`` runs first, under the
    locks (reuse checks there that its origin still exists)."""
    # Pipeline mode: statements whose results nobody reads go out together, so the commit
    # costs a round trip for the lock (which must be read), one for what write() reads, and
    # one for the rest with the COMMIT, instead of one per statement.
    with resources.pool.connection() as conn, conn.pipeline(), conn.transaction():
        rows = lock(conn, job, (job.stage, *spec.lock_with))
        mine = rows.get(job.stage)
        if not still_mine(mine, job):
            return False
        assert mine is not None
        if before is not None:
            before(conn)
        conn.execute(query("reuse_snapshot_outputs"), {"source_id": source.id, "stage": job.stage})
        result = write(conn)
        conn.execute(
            query("complete_stage"),
            {"source_id": job.source_id, "stage": job.stage, "job_id": str(job.job_id), "result": Jsonb(result)},
        )
        if key is not None:
            record_output(conn, source, key, result, origin)
        mine.update(status="completed", result=result)  # as the row now is, for then()
        spec.then(conn, source, rows)
    return True


def lock(conn: psycopg.Connection, job: StageJob, stages: Sequence[str]) -> StageRows:
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(query("lock_stages"), {"source_id": job.source_id, "stages": list(stages)}).fetchall()
    return {row["stage"]: row for row in rows}


def still_mine(mine: dict[str, Any] | None, job: StageJob) -> bool:
    if mine is None or mine["status"] != "processing" or mine["job_id"] != str(job.job_id):
        logger.info("stage result discarded: cancelled or superseded", extra=job.log)
        return False
    return True


def record_output(
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


def enqueue(conn: psycopg.Connection, source_id: str, *stages: str) -> None:
    """Queue the next stages in the caller's transaction (the same SQL path as the triggers)."""
    conn.execute(query("enqueue_stages"), {"source_id": source_id, "stages": list(stages)})
