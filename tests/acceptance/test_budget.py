"""Budgets: caps in dollars per day and per batch, kept in dhgq.config, checked before a paid stage.

A daily cap of $0 holds a Claude summary back (visibly: waiting_budget, with the reason) while
transcription and diarization complete; raising the cap resumes it by itself. An extractive
summary costs nothing and is never held. The SQL side (hold, re-queue, cancel, the views) is
checked without a worker too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import generate_latest
from psycopg_pool import ConnectionPool
from typer.testing import CliRunner

from dhgq import budget
from dhgq.cli import app
from dhgq.db import task_pool
from tests.support.fake_anthropic import fake_anthropic_server
from tests.support.pipeline import rows, run_once, scalar, stage_statuses, worker_env
from tests.support.speech import TWO_SPEAKER_SCRIPT, dialogue, to_mp4

pytestmark = pytest.mark.slow
DONE_BEFORE_SUMMARY = {"extraction": "completed", "transcription": "completed", "diarization": "completed"}


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("talk")
    reference = dialogue(TWO_SPEAKER_SCRIPT[:4], folder / "talk.wav")
    return to_mp4(reference.audio, folder / "talk.mp4")


@pytest.fixture
def dhgq(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`dhgq ...` in this process, on the test's database."""
    monkeypatch.setenv("DHGQ_DATABASE_URL", db_url)
    monkeypatch.setenv("DHGQ_HOME", str(tmp_path / "home"))

    def run(*args: str) -> Any:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout) if "--json" in args else result

    return run


def request_for(db_url: str, path: Path) -> tuple[str, str]:
    """A user's request for the file (as the CLI's trusted role may make one): its id and source."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        user = conn.execute("INSERT INTO auth.users (id, email) VALUES (gen_random_uuid(), 'a@b.c') RETURNING id")
        user_id = user.fetchone()[0]
        request = conn.execute(
            "INSERT INTO processing_jobs (user_id, file_path) VALUES (%s, %s) RETURNING id, source_id",
            (user_id, str(path)),
        ).fetchone()
    return str(request[0]), str(request[1])


def test_a_zero_daily_cap_holds_the_summary_until_the_cap_is_raised(
    db_url: str, talk: Path, tmp_path: Path, dhgq: Any
) -> None:
    assert dhgq("budget", "set", "--daily", "0", "--json") == {"daily_usd": 0.0, "batch_usd": None}
    request_id, source_id = request_for(db_url, talk)
    with fake_anthropic_server() as fake:
        env = worker_env(db_url, tmp_path, DHGQ_ANTHROPIC_API_KEY="sk-test", DHGQ_ANTHROPIC_BASE_URL=fake.url)
        run_once(env)
        assert fake.requests == []  # nothing paid
        assert stage_statuses(db_url, source_id) == DONE_BEFORE_SUMMARY | {"summarization": "waiting_budget"}
        error = scalar(
            db_url,
            "SELECT error FROM dhgq.audio_processing_stages WHERE source_id = %s AND stage = 'summarization'",
            (source_id,),
        )
        assert re.fullmatch(
            r"daily budget \$0\.00 reached: \$0\.00 spent today \(UTC\), this summary needs about \$0\.\d\d", error
        ), error
        assert scalar(db_url, "SELECT state FROM dhgq.pipeline_status WHERE source_id = %s", (source_id,)) == (
            "waiting_budget"
        )
        assert (
            scalar(db_url, "SELECT waiting_budget FROM dhgq.pipeline_stage_counts WHERE stage = 'summarization'") == 1
        )
        assert scalar(db_url, "SELECT status FROM processing_jobs WHERE id = %s", (request_id,)) == "processing"
        # the refused job ended without failing; the next check waits its turn, 15 minutes on
        jobs = rows(
            db_url,
            "SELECT status::text, coalesce(scheduled_at > now() + interval '14 minutes', false) "
            "FROM dhgq.procrastinate_jobs "
            "WHERE task_name = 'dhgq.summarization' ORDER BY id",
        )
        assert jobs == [("succeeded", False), ("todo", True)]
        assert scalar(db_url, "SELECT count(*) FROM dhgq.dead_letter") == 0
        shown = dhgq("budget", "show", "--json")
        assert shown["daily_usd"] == 0.0 and [w["source_id"] for w in shown["waiting"]] == [source_id]

        dhgq("budget", "set", "--daily", "5")  # the trigger re-queues it at once: no delay, no restart
        assert stage_statuses(db_url, source_id)["summarization"] == "queued"
        statuses = [s for (s,) in rows(db_url, "SELECT status::text FROM dhgq.procrastinate_jobs ORDER BY id")]
        assert statuses[-2:] == ["cancelled", "todo"]
        run_once(env)
        assert len(fake.requests) == 1
    assert stage_statuses(db_url, source_id) == DONE_BEFORE_SUMMARY | {"summarization": "completed"}
    assert scalar(db_url, "SELECT status FROM processing_jobs WHERE id = %s", (request_id,)) == "completed"
    assert rows(db_url, "SELECT stage, status FROM dhgq.ledger") == [("summarization", "succeeded")]
    spent = float(scalar(db_url, "SELECT cost_usd FROM dhgq.ledger"))
    assert 0 < spent < 5 and dhgq("budget", "show", "--json")["spent_today_usd"] == pytest.approx(spent)


def test_an_extractive_summary_is_never_held(db_url: str, talk: Path, tmp_path: Path, dhgq: Any) -> None:
    dhgq("budget", "set", "--daily", "0", "--batch", "0")
    source_id = request_for(db_url, talk)[1]
    run_once(worker_env(db_url, tmp_path))  # no Anthropic key: the offline summary, free
    assert stage_statuses(db_url, source_id) == DONE_BEFORE_SUMMARY | {"summarization": "completed"}
    assert scalar(db_url, "SELECT result->>'method' FROM dhgq.audio_processing_stages WHERE stage='summarization'") == (
        "extractive"
    )
    assert scalar(db_url, "SELECT count(*) FROM dhgq.ledger") == 0


# --- the SQL side, without a worker ----------------------------------------------------------------------


@pytest.fixture
def pool(db_url: str) -> Iterator[ConnectionPool]:
    with task_pool(db_url, max_size=2) as opened:
        yield opened


def queued_summary(conn: psycopg.Connection, batch_id: str | None = None) -> tuple[str, int]:
    """A source whose summarization job a worker has just fetched (no media: nothing else runs)."""
    source_id = conn.execute(
        "INSERT INTO sources_google (name, path, mime_type, batch_id) VALUES ('t', '/t.mp3', 'text/plain', %s) "
        "RETURNING id",
        (batch_id,),
    ).fetchone()[0]
    job_id = conn.execute("SELECT dhgq.enqueue_stage_v1(%s, 'summarization')", (source_id,)).fetchone()[0]
    return str(source_id), fetched(conn, job_id)


def fetched(conn: psycopg.Connection, job_id: int | str) -> int:
    """The job as a worker runs it ('doing'), the stage's job before it done: the budget check happens then."""
    conn.execute(
        "UPDATE dhgq.procrastinate_jobs SET status = 'succeeded' WHERE status = 'doing' "
        "AND lock = (SELECT lock FROM dhgq.procrastinate_jobs WHERE id = %s)",
        (int(job_id),),
    )
    conn.execute("UPDATE dhgq.procrastinate_jobs SET status = 'doing' WHERE id = %s", (int(job_id),))
    return int(job_id)


def spend(conn: psycopg.Connection, source_id: str, usd: float) -> None:
    conn.execute(
        "INSERT INTO dhgq.ledger (kind, provider, model, fingerprint, source_id, stage, batch_id, status, cost_usd) "
        "SELECT 'llm', 'anthropic', 'claude-sonnet-4-5', md5(random()::text), id, 'summarization', batch_id, "
        "'succeeded', %s FROM sources_google WHERE id = %s",
        (usd, source_id),
    )


def test_a_batch_cap_holds_the_batch_and_a_raise_requeues_what_waits(
    conn: psycopg.Connection, pool: ConnectionPool
) -> None:
    batch_id = str(conn.execute("INSERT INTO processing_batches (name) VALUES ('nov') RETURNING id").fetchone()[0])
    done, _ = queued_summary(conn, batch_id)
    spend(conn, done, 1.95)
    source_id, job_id = queued_summary(conn, batch_id)
    loose, loose_job = queued_summary(conn)  # no batch: a batch cap does not apply
    budget.set_cap(conn, budget.BATCH, 2.0)
    gate = {"stage": "summarization", "what": "this summary", "recheck_seconds": 900}

    assert budget.gate(pool, source_id=loose, job_id=loose_job, estimate_usd=0.10, **gate) is None
    reason = budget.gate(pool, source_id=source_id, job_id=job_id, estimate_usd=0.10, **gate)
    assert reason == "budget $2.00 of batch 'nov' reached: $1.95 spent in it, this summary needs about $0.10"
    status, error, waiting_job = conn.execute(
        "SELECT status, error, job_id FROM dhgq.audio_processing_stages WHERE source_id = %s", (source_id,)
    ).fetchone()
    assert (status, error) == ("waiting_budget", reason) and int(waiting_job) != job_id
    assert conn.execute(
        "SELECT status::text, scheduled_at > now() + interval '14 minutes' FROM dhgq.procrastinate_jobs WHERE id = %s",
        (int(waiting_job),),
    ).fetchone() == ("todo", True)
    # a stale job (not the row's any more) holds nothing
    assert budget.gate(pool, source_id=source_id, job_id=job_id, estimate_usd=5.0, **gate) is None
    # waiting is in flight: a second start is a no-op, the request-status follows
    assert conn.execute("SELECT dhgq.start_pipeline_v1(%s)", (source_id,)).fetchone() == (None,)
    assert conn.execute("SELECT dhgq.request_status_v1(%s)", (source_id,)).fetchone() == ("processing",)
    # the periodic check, still over the cap, waits again; lowering re-queues too, and it waits again
    assert budget.gate(pool, source_id=source_id, job_id=fetched(conn, waiting_job), estimate_usd=0.10, **gate)

    budget.set_cap(conn, budget.BATCH, 3.0)  # raised: queued at once, the delayed check cancelled
    status, new_job = conn.execute(
        "SELECT status, job_id FROM dhgq.audio_processing_stages WHERE source_id = %s", (source_id,)
    ).fetchone()
    assert status == "queued"
    assert budget.gate(pool, source_id=source_id, job_id=fetched(conn, new_job), estimate_usd=0.10, **gate) is None
    assert conn.execute(
        "SELECT status FROM dhgq.audio_processing_stages WHERE source_id = %s", (source_id,)
    ).fetchone() == ("queued",)


def test_a_waiting_stage_can_be_cancelled_and_caps_are_checked(conn: psycopg.Connection, pool: ConnectionPool) -> None:
    budget.set_cap(conn, budget.DAILY, 0)
    source_id, job_id = queued_summary(conn)
    reason = budget.gate(pool, source_id=source_id, stage="summarization", job_id=job_id, estimate_usd=0.0)
    assert reason is not None and reason.startswith("daily budget $0.00 reached")  # $0 admits nothing paid
    waiting_job = conn.execute("SELECT job_id FROM dhgq.audio_processing_stages WHERE source_id = %s", (source_id,))
    waiting_job_id = int(waiting_job.fetchone()[0])
    assert conn.execute("SELECT dhgq.cancel_source_v1(%s)", (source_id,)).fetchone() == (1,)
    assert conn.execute(
        "SELECT status, error_class FROM dhgq.audio_processing_stages WHERE source_id = %s", (source_id,)
    ).fetchone() == ("failed", "cancelled")
    assert conn.execute(
        "SELECT status::text FROM dhgq.procrastinate_jobs WHERE id = %s", (waiting_job_id,)
    ).fetchone() == ("cancelled",)
    # a paid-nothing stage (an extractive summary) passes any cap
    other, other_job = queued_summary(conn)
    assert budget.gate(pool, source_id=other, stage="summarization", job_id=other_job, estimate_usd=None) is None
    # the caps are numbers of dollars, or none
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE dhgq.config SET value = '-1' WHERE key = 'budget_daily_usd'")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE dhgq.config SET value = '\"lots\"' WHERE key = 'budget_batch_usd'")
    budget.set_cap(conn, budget.DAILY, None)
    assert budget.read_caps(conn) == budget.Caps(None, None)


def test_budget_holds_are_counted_by_the_metrics(
    conn: psycopg.Connection, pool: ConnectionPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage held for the budget counts as a wait (``waiting_for="budget"``) in the worker's own counter
    and in the database gauge, as holds for the API and for disk space do."""
    from prometheus_client.parser import text_string_to_metric_families

    from dhgq.metrics import WorkerMetrics
    from dhgq.settings import Settings
    from dhgq.stage import Resources, StageJob
    from dhgq.tasks.audio import held_for_gpu_budget
    from dhgq.telemetry import Telemetry

    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")  # Modal configured: the model stage is a paid call
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
    settings = Settings(database_url=conn.info.dsn, home=tmp_path / "home", gpu_backend="modal")
    metrics = WorkerMetrics(pool, queues=["transcription"], host="test", worker_id="w", version=None)
    resources = Resources(settings, pool, telemetry=Telemetry(metrics=metrics))
    budget.set_cap(conn, budget.DAILY, 0)
    source_id = conn.execute(
        "INSERT INTO sources_google (name, path, mime_type) VALUES ('t', '/t.mp3', 'audio/mpeg') RETURNING id"
    ).fetchone()[0]
    job_id = fetched(
        conn, conn.execute("SELECT dhgq.enqueue_stage_v1(%s, 'transcription')", (source_id,)).fetchone()[0]
    )
    assert held_for_gpu_budget(resources, StageJob("transcription", str(source_id), job_id, 1))
    scrape = generate_latest(metrics.registry).decode()
    samples = {
        (sample.name, sample.labels.get("stage"), sample.labels.get("waiting_for")): sample.value
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
    }
    assert samples[("dhgq_stage_waits_total", "transcription", "budget")] == 1
    assert samples[("dhgq_stages_waiting", "transcription", "budget")] == 1
    assert samples[("dhgq_stages_waiting", "summarization", "budget")] == 0
    budget.set_cap(conn, budget.DAILY, None)


def test_budget_command_line(dhgq: Any) -> None:
    assert dhgq("budget", "show", "--json") == {
        "daily_usd": None,
        "batch_usd": None,
        "spent_today_usd": 0,
        "waiting": [],
    }
    assert dhgq("budget", "set", "--daily", "$5", "--batch", "2.5", "--json") == {"daily_usd": 5.0, "batch_usd": 2.5}
    assert dhgq("budget", "set", "--batch", "none", "--json") == {"daily_usd": 5.0, "batch_usd": None}
    assert "daily cap: $5.00" in dhgq("budget", "show").stdout
    bad = CliRunner().invoke(app, ["budget", "set", "--daily", "-1"])
    assert bad.exit_code == 2
    assert CliRunner().invoke(app, ["budget", "set"]).exit_code == 2


def test_a_zero_daily_cap_holds_modal_gpu_stages_before_any_call(
    db_url: str, talk: Path, tmp_path: Path, dhgq: Any
) -> None:
    import subprocess
    import sys

    from tests.support.pipeline import insert_source

    source_id = insert_source(db_url, talk)
    env = worker_env(db_url, tmp_path)
    command = [sys.executable, "-m", "dhgq", "worker", "--once"]
    subprocess.run([*command, "--queue", "extraction"], env=env, check=True, capture_output=True, timeout=300)
    dhgq("budget", "set", "--daily", "0", "--json")
    # Modal "configured" with a token that would be refused: any call to Modal would fail the stage
    modal_env = env | {"DHGQ_GPU_BACKEND": "modal", "MODAL_TOKEN_ID": "ak-test", "MODAL_TOKEN_SECRET": "as-test"}
    models = [*command, "--queue", "transcription", "--queue", "diarization"]
    subprocess.run(models, env=modal_env, check=True, capture_output=True, timeout=300)
    statuses = stage_statuses(db_url, source_id)
    assert statuses["transcription"] == statuses["diarization"] == "waiting_budget"
    reasons = rows(
        db_url,
        "SELECT stage, error FROM dhgq.audio_processing_stages WHERE source_id = %s AND status = 'waiting_budget'",
        (source_id,),
    )
    assert all(
        "daily budget $0.00 reached" in reason and f"this {stage} on Modal" in reason for stage, reason in reasons
    )
    assert scalar(db_url, "SELECT count(*) FROM dhgq.ledger WHERE kind = 'gpu'") == 0  # no GPU call was made
