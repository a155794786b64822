"""The schema: migrations apply once, concurrently, and create every table of the seeds."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest

from dhgq import migrations

SEED_COLUMNS = {
    "sources_google": {
        "id",
        "name",
        "mime_type",
        "path",
        "created_at",
        "drive_id",
        "web_view_link",
        "size",
        "modified_time",
        "audio_extracted",
        "audio_extraction_path",
        "audio_duration_seconds",
        "audio_channels",
        "audio_bitrate",
        "audio_quality_metrics",
    },
    "expert_documents": {
        "id",
        "source_id",
        "raw_content",
        "processed_content",
        "content_type",
        "processing_status",
        "word_count",
        "language",
        "whisper_model_used",
        "ai_processing_details",
    },
    "audio_segments": {
        "id",
        "expert_document_id",
        "start_time",
        "end_time",
        "text",
        "speaker_id",
        "confidence",
        "metadata",
        "created_at",
        "updated_at",
    },
    "speaker_profiles": {"id", "source_id", "label", "embedding"},
    "processing_batches": {"id", "name", "status", "processor_config"},
    "audio_processing_stages": {
        "id",
        "source_id",
        "stage",
        "status",
        "job_id",
        "queue_name",
        "started_at",
        "completed_at",
        "result",
        "error",
        "attempts",
        "created_at",
        "updated_at",
    },
    "presentation_assets": {"id", "presentation_id", "expert_document_id", "relationship_metadata"},
    "processing_jobs": {
        "id",
        "created_at",
        "updated_at",
        "completed_at",
        "user_id",
        "job_id",
        "file_path",
        "options",
        "status",
        "result",
        "error",
    },
}
ABSENT = {"expert_documents": "processing_metadata", "processing_batches": "processor_settings"}


def columns(conn: psycopg.Connection, table: str) -> set[str]:
    schema = "dhgq" if table == "audio_processing_stages" else "public"
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema=%s AND table_name=%s",
        (schema, table),
    )
    return {r[0] for r in rows}


def test_migrations_apply_once(empty_db_url: str) -> None:
    first = migrations.migrate(empty_db_url)
    assert [m.name for m in first] == [m.name for m in migrations.discover()]
    assert migrations.migrate(empty_db_url) == []
    with psycopg.connect(empty_db_url) as conn:
        recorded = conn.execute("SELECT count(*) FROM supabase_migrations.schema_migrations").fetchone()
    assert recorded == (len(first),)


def test_concurrent_migrate_commands_both_succeed(empty_db_url: str) -> None:
    env = {**os.environ, "DHGQ_DATABASE_URL": empty_db_url}
    cmd = [sys.executable, "-m", "dhgq", "db", "migrate", "--json"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert migrations.pending(empty_db_url) == []


def test_seed_tables_and_columns(conn: psycopg.Connection) -> None:
    for table, expected in SEED_COLUMNS.items():
        assert expected <= columns(conn, table), table
    for table, column in ABSENT.items():
        assert column not in columns(conn, table)


def test_stage_checks_and_indexes(conn: psycopg.Connection) -> None:
    source = conn.execute(
        "INSERT INTO sources_google (name, path, mime_type) VALUES ('doc', '/x.pdf', 'application/pdf') RETURNING id"
    ).fetchone()[0]
    for stage, status in (("bogus", "queued"), ("extraction", "bogus")):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO dhgq.audio_processing_stages (source_id, stage, status) VALUES (%s, %s, %s)",
                (source, stage, status),
            )
    indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename='audio_processing_stages'")}
    expected = {"idx_processing_stages_source_id", "idx_processing_stages_job_id", "idx_processing_stages_status"}
    assert expected <= indexes


def test_procrastinate_version_recorded(conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT version, schema_level FROM dhgq.components WHERE component='procrastinate'").fetchone()
    assert row is not None and row[0].startswith("3.")


def test_status_views_exist(conn: psycopg.Connection) -> None:
    for view in ("pipeline_stage_counts", "pipeline_status", "dead_letter"):
        conn.execute(f"SELECT * FROM dhgq.{view}").fetchall()
    assert len(conn.execute("SELECT * FROM dhgq.pipeline_stage_counts").fetchall()) == 4


def test_stage_changes_notify_only_while_someone_listens(db_url: str) -> None:
    """NOTIFY serialises commits server-wide, so the stage trigger sends it only to a listener."""
    with psycopg.connect(db_url, autocommit=True) as writer, psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN dhgq_stages")  # a bare LISTEN does not register
        source_id = writer.execute(
            "INSERT INTO sources_google (name, path) VALUES ('a.mp4', '/a.mp4') RETURNING id"
        ).fetchone()[0]
        writer.execute(
            "INSERT INTO dhgq.audio_processing_stages (source_id, stage, status) "
            "VALUES (%s, 'extraction', 'processing') ON CONFLICT DO NOTHING",
            (source_id,),
        )
        writer.execute("UPDATE dhgq.audio_processing_stages SET progress = 10 WHERE source_id = %s", (source_id,))
        assert list(listener.notifies(timeout=0.5)) == []

        listener.execute("SELECT dhgq.listen_stages_v1()")
        writer.execute("UPDATE dhgq.audio_processing_stages SET progress = 20 WHERE source_id = %s", (source_id,))
        heard = list(listener.notifies(timeout=2.0, stop_after=1))
        assert heard and str(source_id) in heard[0].payload and heard[0].channel == "dhgq_stages"

        writer.execute("UPDATE dhgq.stage_listeners SET seen_at = now() - interval '31 seconds'")  # lapsed
        writer.execute("UPDATE dhgq.audio_processing_stages SET progress = 30 WHERE source_id = %s", (source_id,))
        assert list(listener.notifies(timeout=0.5)) == []

        listener.execute("SELECT dhgq.listen_stages_v1()")  # renewed
        listener.execute("SELECT dhgq.unlisten_stages_v1()")
        assert writer.execute("SELECT count(*) FROM dhgq.stage_listeners").fetchone() == (0,)


def test_claims_and_progress_commit_without_waiting_for_the_flush(db_url: str) -> None:
    """Only the claim's and the progress update's own transactions: completions stay synchronous."""
    from dhgq.db import connect
    from dhgq.queries import query

    with connect(db_url, autocommit=True) as conn:  # dhgq's search_path, as the workers
        source_id = conn.execute(
            "INSERT INTO sources_google (name, path) VALUES ('a.mp4', '/a.mp4') RETURNING id"
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO dhgq.audio_processing_stages (source_id, stage, status, job_id) "
            "VALUES (%s, 'extraction', 'queued', '7') ON CONFLICT (source_id, stage) "
            "DO UPDATE SET status = 'queued', job_id = '7'",
            (source_id,),
        )
        params = {
            "source_id": source_id,
            "stage": "extraction",
            "job_id": "7",
            "attempt": 1,
            "progress": 50,
            "detail": None,
            "host": "machine-a",
            "worker_id": "6f1c5a1e-2f2b-4c55-9b53-4a9ee5b0c001",
        }
        for name in ("begin_stage", "set_progress"):
            with conn.transaction():
                conn.execute(query(name), params)
                assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        row = conn.execute(
            "SELECT status, progress FROM dhgq.audio_processing_stages WHERE source_id = %s", (source_id,)
        ).fetchone()
        assert row == ("processing", 50)
