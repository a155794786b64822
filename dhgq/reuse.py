"""Reuse by content: an equal output of another source of the same owner, copied instead of computed.

A stage with a ``Reuse`` policy says what would produce its output now (an ``Identity``: engine,
model, their versions, the options that change the output) and what its input is (a content hash).
Together they are the output's ``ReuseKey``. When the stage is claimed, and again once its input
step has learnt a content hash the claim did not know (extraction, by fetching the file), the
lifecycle asks ``attempt``: if another source of the same owner has a current output under that
key, its rows are copied in the completing transaction, and the stage completes exactly as a
computed one does (same row, same ``then``) with ``result.reused_from`` saying where from. A reuse
that fails half-way (the origin's rows or artifacts went) marks the source ``fresh``: it computes,
and looks no further. Every completion records its key in ``dhgq.stage_outputs``.

Outputs are never reused across owners, not even as copies (the SQL ``reuse_find`` matches owners).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import psycopg
from psycopg.rows import dict_row

from dhgq.completion import complete
from dhgq.queries import query
from dhgq.stage import NotReusable, Origin, Resources, ReuseKey, Source, StageJob, StageSpec

logger = logging.getLogger("dhgq.pipeline")


def attempt(resources: Resources, spec: StageSpec[Any, Any], job: StageJob, source: Source, given: Any = None) -> bool:
    """Whether the stage completed by copying an equal output; after a failed copy the source computes.
    ``given`` is the stage's input when it is at hand (the origin's ``context`` for ``prepare``)."""
    key = output_key(resources, spec, source)
    origin = find_origin(resources, spec, source, key)
    if origin is None or key is None:
        return False
    if _complete_by_reuse(resources, spec, job, source, replace(origin, context=given), key):
        return True
    source.fresh = True  # that output cannot be copied: compute, and look no further
    return False


def load_source_facts(resources: Resources, spec: StageSpec[Any, Any], job: StageJob, source: Source) -> None:
    """What the source's row says about reuse: its content hash, and whether this run must compute."""
    if spec.reuse is None:
        return
    publish_versions(resources, [spec], once=True)
    params = {"source_id": job.source_id, "stage": job.stage, "job_id": job.job_id}
    with resources.pool.connection() as conn:
        row = conn.execute(query("reuse_source_facts"), params).fetchone()
    if row is not None:
        source.content_hash, source.fresh = row[0], bool(row[1])


def output_key(resources: Resources, spec: StageSpec[Any, Any], source: Source) -> ReuseKey | None:
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


def find_origin(resources: Resources, spec: StageSpec[Any, Any], source: Source, key: ReuseKey | None) -> Origin | None:
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


def publish_versions(resources: Resources, specs: Iterable[StageSpec[Any, Any]], *, once: bool = False) -> None:
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


def _complete_by_reuse(
    resources: Resources, spec: StageSpec[Any, Any], job: StageJob, source: Source, origin: Origin, key: ReuseKey
) -> bool:
    """Copy the origin's output as this source's own and complete as a computed output would;
    False (nothing written) when it turns out not to be reusable after all."""
    policy = spec.reuse
    assert policy is not None
    started = time.monotonic()

    def hold_origin(conn: psycopg.Connection) -> None:
        if conn.execute(query("reuse_hold_origin"), {"output_id": origin.output_id}).fetchone() is None:
            raise NotReusable("the output was replaced or its source deleted meanwhile")

    def write(conn: psycopg.Connection) -> dict[str, Any]:
        result = policy.copy(conn, source, origin)
        result["reused_from"] = origin.reference()
        result["stage_seconds"] = round(time.monotonic() - started, 3)
        return result

    try:
        if policy.prepare is not None:
            origin = policy.prepare(resources, source, origin)
        complete(resources, spec, job, source, write, key, origin, before=hold_origin)
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


# -- copies the stages' policies make ------------------------------------------------------------------


def copy_document(conn: psycopg.Connection, source: Source, origin: Origin, content_type: str) -> str:
    """The origin's document of this type as the source's own; its id. NotReusable when it is gone."""
    row = conn.execute(
        query("reuse_copy_document"),
        {
            "source_id": source.id,
            "from_source_id": origin.source_id,
            "content_type": content_type,
            "reused_from": json.dumps(origin.reference()),
        },
    ).fetchone()
    if row is None:
        raise NotReusable(f"source {origin.source_id} has no {content_type} any more")
    return str(row[0])


def copy_segments(conn: psycopg.Connection, document_id: str, origin: Origin, content_type: str) -> None:
    """The origin document's segment rows under ``document_id`` (replacing what it had)."""
    conn.execute(query("delete_segments"), {"document_id": document_id})
    conn.execute(
        query("reuse_copy_segments"),
        {"document_id": document_id, "from_source_id": origin.source_id, "content_type": content_type},
    )
