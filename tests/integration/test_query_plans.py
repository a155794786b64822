"""The hot stage queries reach their rows through an index, on a table the size of a real backlog.

Every stage job runs begin_stage, set_progress, lock_stages and complete_stage (or fail_stage)
against ``audio_processing_stages``. On a table of a few hundred rows a sequential scan is as
good as an index and nobody notices; at tens of thousands of sources each claim and each
progress tick would read the whole table, and the queue's throughput would fall as its history
grows. So the plans are checked on 20,000 sources (80,000 stage rows), analysed, with the
parameters the workers pass (dhgq/pipeline.py). Each query is checked twice: with its values
(the plan of a query's first executions) and as a generic plan, which psycopg's server-side
prepared statements (after ``prepare_threshold`` executions) may settle on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from dhgq.db import connect
from dhgq.embedded import ServerInfo
from dhgq.queries import query
from tests.conftest import new_database

TABLE = "audio_processing_stages"
SOURCES = 20_000
IN_FLIGHT = 500  # the newest sources are still being worked on; the rest are done
INDEX_SCANS = {"Index Scan", "Index Only Scan", "Bitmap Index Scan"}
PLACEHOLDER = re.compile(r"%\((\w+)\)s")

FILL = f"""
INSERT INTO sources_google (name, path, mime_type, content_hash)
SELECT 'doc ' || n, '/archive/doc-' || n || '.pdf', 'application/pdf', md5(n::text)
  FROM generate_series(1, {SOURCES}) AS n;

INSERT INTO {TABLE} (source_id, stage, status, job_id, queue_name, attempts, progress,
                     started_at, completed_at)
SELECT src.id, stage.name,
       CASE WHEN src.n <= {SOURCES - IN_FLIGHT} OR stage.name = 'extraction' THEN 'completed'
            WHEN stage.name = 'summarization' THEN 'queued'
            ELSE 'processing' END,
       (src.n * 4 + stage.k)::text, stage.name, 1,
       CASE WHEN src.n <= {SOURCES - IN_FLIGHT} OR stage.name = 'extraction' THEN 100 ELSE 0 END,
       now(), CASE WHEN src.n <= {SOURCES - IN_FLIGHT} THEN now() END
  FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n FROM sources_google) AS src
 CROSS JOIN (VALUES (0, 'extraction'), (1, 'transcription'), (2, 'diarization'), (3, 'summarization'))
         AS stage(k, name);

ANALYZE sources_google;
ANALYZE {TABLE};
"""


@pytest.fixture(scope="module")
def backlog(pg_info: ServerInfo, template_db: str) -> Iterator[psycopg.Connection]:
    """One filled and analysed database for all the plans of this module: filling it is the slow part.

    A copy of the migrated template, as ``db_url`` makes, but once per module rather than per test.
    """
    with connect(new_database(pg_info, template_db), autocommit=True) as conn:
        conn.execute(FILL)
        yield conn


@pytest.fixture(scope="module")
def job(backlog: psycopg.Connection) -> dict[str, Any]:
    """A transcription job of a source in flight: the stage row begin_stage claims and the others update."""
    row = backlog.execute(
        f"SELECT source_id::text, job_id FROM {TABLE} WHERE stage = 'transcription' AND status = 'processing'"
        " ORDER BY job_id LIMIT 1"
    ).fetchone()
    assert row is not None, "the fill left no stage in flight"
    return {"source_id": row[0], "stage": "transcription", "job_id": row[1]}


# what dhgq/pipeline.py passes each query besides the job's own source_id, stage and job_id
EXTRA_PARAMS: dict[str, dict[str, Any]] = {
    "begin_stage": {"attempt": 1, "host": "machine-a", "worker_id": "6f1c5a1e-2f2b-4c55-9b53-4a9ee5b0c001"},
    "lock_stages": {"stages": ["transcription", "diarization"]},  # a fan-in stage locks its sibling too
    "complete_stage": {"result": Jsonb({"segments": 412, "stage_seconds": 93.2})},
    "set_progress": {"progress": 42.5, "detail": None},
    "fail_stage": {"will_retry": True, "error": "TransientError: timeout", "error_class": "transient"},
}


def params_of(name: str, job: dict[str, Any]) -> dict[str, Any]:
    """The parameter dict the worker gives query ``name`` for ``job``; lock_stages takes the source alone."""
    own = {"source_id": job["source_id"]} if name == "lock_stages" else job
    return {**own, **EXTRA_PARAMS[name]}


def scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan tree, CTEs and subplans included."""
    yield plan
    for child in plan.get("Plans", []):
        yield from scans(child)


def table_scans(plan: dict[str, Any], conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(node type, index or table) of each node that reads the stage table, directly or through its indexes."""
    listed = conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'dhgq' AND tablename = %s", (TABLE,))
    indexes = {row[0] for row in listed}
    found: list[tuple[str, str]] = []
    for node in scans(plan):
        if node.get("Relation Name") == TABLE or node.get("Index Name") in indexes:
            found.append((node["Node Type"], node.get("Index Name") or TABLE))
    return found


def assert_indexed(plan: dict[str, Any], conn: psycopg.Connection, label: str) -> None:
    """Reached through an index, and nowhere by a Seq Scan: a claim must not read the whole backlog."""
    found = table_scans(plan, conn)
    rendered = json.dumps(plan, indent=1)
    assert any(kind in INDEX_SCANS for kind, _ in found), f"{label}: no index scan on {TABLE}: {found}\n{rendered}"
    assert all(kind != "Seq Scan" for kind, _ in found), f"{label}: a Seq Scan on {TABLE}: {found}\n{rendered}"


def explain(conn: psycopg.Connection, statement: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The plan, without running the statement (begin_stage and the updates would change the rows)."""
    row = conn.execute("EXPLAIN (FORMAT JSON) " + statement, params).fetchone()
    assert row is not None
    return dict(row[0][0]["Plan"])


def generic_plan(conn: psycopg.Connection, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The plan a prepared statement may settle on: PREPAREd with $n placeholders, planned without their values."""
    order = list(dict.fromkeys(PLACEHOLDER.findall(query(name))))
    conn.execute("PREPARE plan_check AS " + PLACEHOLDER.sub(lambda match: f"${order.index(match[1]) + 1}", query(name)))
    try:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        values = sql.SQL(", ").join(sql.Literal(params[key]) for key in order)
        return explain(conn, sql.SQL("EXECUTE plan_check({})").format(values).as_string(conn))
    finally:
        conn.execute("RESET plan_cache_mode")
        conn.execute("DEALLOCATE plan_check")


HOT_QUERIES = ["begin_stage", "lock_stages", "complete_stage", "set_progress", "fail_stage"]


@pytest.mark.parametrize("name", HOT_QUERIES)
def test_hot_query_uses_an_index(name: str, backlog: psycopg.Connection, job: dict[str, Any]) -> None:
    assert_indexed(explain(backlog, query(name), params_of(name, job)), backlog, name)


@pytest.mark.parametrize("name", HOT_QUERIES)
def test_hot_query_generic_plan_uses_an_index(name: str, backlog: psycopg.Connection, job: dict[str, Any]) -> None:
    assert_indexed(generic_plan(backlog, name, params_of(name, job)), backlog, f"{name} (generic plan)")


def test_the_check_sees_a_seq_scan(backlog: psycopg.Connection) -> None:
    """A query no index serves must fail the check, or a passing check proves nothing."""
    plan = explain(backlog, f"SELECT * FROM {TABLE} WHERE attempts = %(attempts)s", {"attempts": 3})
    assert ("Seq Scan", TABLE) in table_scans(plan, backlog)
    with pytest.raises(AssertionError, match="Seq Scan|no index scan"):
        assert_indexed(plan, backlog, "unindexed")


# --- what a metrics scrape reads: open jobs and today's ledger rows, never the history --------------------

HISTORY = """
INSERT INTO procrastinate_jobs (queue_name, task_name, status, args, attempts, scheduled_at)
SELECT (ARRAY['extraction', 'transcription', 'diarization', 'summarization'])[1 + n % 4],
       'dhgq.' || (ARRAY['extraction', 'transcription', 'diarization', 'summarization'])[1 + n % 4],
       CASE WHEN n > 79800 THEN 'todo' WHEN n > 79700 THEN 'doing' ELSE 'succeeded' END::procrastinate_job_status,
       jsonb_build_object('source_id', gen_random_uuid()), 1,
       CASE WHEN n % 10 = 0 THEN now() + interval '1 hour' END
  FROM generate_series(1, 80000) AS n;
INSERT INTO procrastinate_events (job_id, type, at)
SELECT id, 'deferred', now() - make_interval(secs => 80000 - id) FROM procrastinate_jobs;
INSERT INTO dhgq.ledger (kind, provider, model, fingerprint, status, cost_usd, created_at)
SELECT 'llm', 'anthropic', 'claude-sonnet-4-5', md5(n::text), 'succeeded', 0.01,
       now() - make_interval(mins => n)
  FROM generate_series(1, 60000) AS n;
ANALYZE procrastinate_jobs;
ANALYZE procrastinate_events;
ANALYZE dhgq.ledger;
"""
HISTORY_TABLES = {"procrastinate_jobs", "procrastinate_events", "ledger", TABLE}


@pytest.fixture(scope="module")
def history(backlog: psycopg.Connection) -> psycopg.Connection:
    """80,000 jobs of which 300 are open, their events, and six weeks of ledger rows, analysed."""
    backlog.execute(HISTORY)
    return backlog


@pytest.mark.parametrize("name", ["queue_depths", "ledger_today", "stages_waiting"])
def test_the_metrics_queries_read_no_history(name: str, history: psycopg.Connection) -> None:
    plan = explain(history, query(name))
    read = [(node["Node Type"], node.get("Relation Name")) for node in scans(plan) if node.get("Relation Name")]
    rendered = json.dumps(plan, indent=1)
    assert read, rendered
    assert not [table for kind, table in read if kind == "Seq Scan" and table in HISTORY_TABLES], rendered
