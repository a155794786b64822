"""Queue controls with real workers: a priority per request, pausing and resuming a queue, and the disk
floor that holds extraction. (The Claude API's Retry-After, which pauses the summarization queue, is
tested with the metrics that count it: tests/acceptance/test_observability.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from dhgq.cli import app
from tests.support.pipeline import rows, scalar, wait_for, worker_env
from tests.support.speech import TWO_SPEAKER_SCRIPT, dialogue, to_mp4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def talks(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three short talks of different content (sources are deduplicated by content)."""
    folder = tmp_path_factory.mktemp("talks")
    return [
        to_mp4(dialogue(TWO_SPEAKER_SCRIPT[i : i + 1], folder / f"talk{i}.wav").audio, folder / f"talk{i}.mp4")
        for i in range(3)
    ]


@pytest.fixture
def dhgq(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`dhgq ...` in this process, on the test's database."""
    monkeypatch.setenv("DHGQ_DATABASE_URL", db_url)
    monkeypatch.setenv("DHGQ_HOME", str(tmp_path / "home"))

    def run(*args: str) -> Any:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout) if "--json" in args else result

    return run


def extract_once(env: dict[str, str], *extra: str) -> None:
    """`dhgq worker --once` on the extraction queue alone, one job at a time."""
    command = [sys.executable, "-m", "dhgq", "worker", "--once", "--queue", "extraction", "--concurrency", "1", *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def extraction_of(db_url: str, source_id: str) -> tuple[str, Any]:
    return rows(
        db_url,
        "SELECT status, started_at FROM dhgq.audio_processing_stages WHERE source_id = %s AND stage = 'extraction'",
        (source_id,),
    )[0]


def test_a_high_priority_source_queued_last_runs_first(
    db_url: str, talks: list[Path], tmp_path: Path, dhgq: Any
) -> None:
    low = dhgq("process", str(talks[0]), "--json")["sources"][0]["source_id"]
    normal = dhgq("process", str(talks[1]), "--priority", "0", "--json")["sources"][0]["source_id"]
    high = dhgq("process", str(talks[2]), "--priority", "50", "--json")["sources"][0]["source_id"]
    priorities = dict(rows(db_url, "SELECT args->>'source_id', priority FROM dhgq.procrastinate_jobs"))
    assert priorities == {low: 0, normal: 0, high: 50}

    extract_once(worker_env(db_url, tmp_path))  # one slot: the order the worker takes them is the order they run
    started = {source: extraction_of(db_url, source)[1] for source in (low, normal, high)}
    assert all(extraction_of(db_url, s)[0] == "completed" for s in started)
    assert started[high] < started[low] < started[normal]  # priority first, then the order of arrival
    # every later stage of the source inherits its priority (and keeps it through a retry)
    jobs = rows(
        db_url,
        "SELECT task_name, priority FROM dhgq.procrastinate_jobs WHERE args->>'source_id' = %s ORDER BY id",
        (high,),
    )
    assert jobs and all(priority == 50 for _, priority in jobs), jobs
    assert {name for name, _ in jobs} >= {"dhgq.extraction", "dhgq.transcription", "dhgq.diarization"}


def test_a_requests_priority_is_checked_like_its_other_options(db_url: str, talks: list[Path]) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        user = conn.execute("INSERT INTO auth.users (id, email) VALUES (gen_random_uuid(), 'p@q.r') RETURNING id")
        user_id = user.fetchone()[0]  # type: ignore[index]
        for bad in ('{"priority": 101}', '{"priority": 1.5}', '{"priority": "9"}'):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="priority must be a whole number"):
                conn.execute(
                    "INSERT INTO processing_jobs (user_id, file_path, options) VALUES (%s, %s, %s)",
                    (user_id, str(talks[0]), bad),
                )
        conn.execute(
            "INSERT INTO processing_jobs (user_id, file_path, options) VALUES (%s, %s, '{\"priority\": -20}')",
            (user_id, str(talks[0])),
        )
    assert scalar(db_url, "SELECT priority FROM dhgq.procrastinate_jobs WHERE task_name = 'dhgq.extraction'") == -20


def test_a_paused_queue_keeps_its_jobs_until_resumed_without_restarting_the_worker(
    db_url: str, talks: list[Path], tmp_path: Path, dhgq: Any
) -> None:
    env = worker_env(db_url, tmp_path)
    log = tmp_path / "worker.log"
    with open(log, "ab") as handle:
        worker = subprocess.Popen(
            [sys.executable, "-m", "dhgq", "worker", "--queue", "extraction"], env=env, stdout=handle, stderr=handle
        )
    try:
        wait_for(lambda: scalar(db_url, "SELECT count(*) FROM dhgq.procrastinate_workers"), 60, "the worker to start")
        dhgq("queue", "pause", "extraction", "--reason", "disk maintenance")
        source = dhgq("process", str(talks[0]), "--json")["sources"][0]["source_id"]
        time.sleep(6.5)  # the insert's NOTIFY woke the worker, and a poll (every 5 s) came and went
        assert extraction_of(db_url, source)[0] == "queued"
        assert scalar(db_url, "SELECT status::text FROM dhgq.procrastinate_jobs") == "todo"
        listed = {row["queue"]: row for row in dhgq("queue", "list", "--json")}
        assert listed["extraction"]["paused"] and listed["extraction"]["reason"] == "disk maintenance"
        assert listed["extraction"]["ready"] == 1 and listed["extraction"]["resume_at"] is None
        assert not listed["transcription"]["paused"]
        status = dhgq("status", "--json")
        assert [pause["queue"] for pause in status["paused"]] == ["extraction"]
        assert "extraction paused until resumed: disk maintenance" in dhgq("status").stdout

        assert dhgq("queue", "resume", "extraction", "--json") == {"queue": "extraction", "resumed": True}
        wait_for(lambda: extraction_of(db_url, source)[0] == "completed", 60, "the extraction after the resume")
        assert dhgq("queue", "resume", "extraction", "--json")["resumed"] is False
        assert dhgq("status", "--json")["paused"] == []
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    assert worker.returncode == 0, log.read_text()[-3000:]


def test_below_the_disk_floor_extraction_waits_and_resumes_by_itself(
    db_url: str, talks: list[Path], tmp_path: Path, dhgq: Any
) -> None:
    source = dhgq("process", str(talks[1]), "--json")["sources"][0]["source_id"]
    env = worker_env(db_url, tmp_path, DHGQ_DISK_RECHECK_SECONDS="2")
    extract_once(env | {"DHGQ_MIN_FREE_DISK_BYTES": str(10**18)})  # more than any disk has
    status, waiting_for, error, until_ahead, api_waits = rows(
        db_url,
        "SELECT status, waiting_for, error, waiting_until > now(), api_waits FROM dhgq.audio_processing_stages "
        "WHERE source_id = %s AND stage = 'extraction'",
        (source,),
    )[0]
    assert (status, waiting_for, api_waits) == ("queued", "disk", 0)
    assert error.startswith("waiting for disk space: the work dir ") and "(DHGQ_MIN_FREE_DISK_BYTES)" in error
    assert "checking again every 2 s" in error
    jobs = rows(
        db_url,
        "SELECT status::text, scheduled_at IS NOT NULL FROM dhgq.procrastinate_jobs WHERE queue_name = 'extraction' "
        "ORDER BY id",
    )  # (a worker also defers the periodic maintenance tasks: not this test's)
    assert jobs == [("succeeded", False), ("todo", True)]  # held, not failed: no attempt spent
    assert scalar(db_url, "SELECT count(*) FROM dhgq.dead_letter") == 0

    wait_for(
        lambda: scalar(
            db_url,
            "SELECT bool_and(scheduled_at <= now()) FROM dhgq.procrastinate_jobs "
            "WHERE status = 'todo' AND queue_name = 'extraction'",
        ),
        10,
        "the re-check's time",
    )
    extract_once(env | {"DHGQ_MIN_FREE_DISK_BYTES": "1"})  # space is back: the re-check runs it, nobody retries
    status, waiting_for, error, attempts = rows(
        db_url,
        "SELECT status, waiting_for, error, attempts FROM dhgq.audio_processing_stages "
        "WHERE source_id = %s AND stage = 'extraction'",
        (source,),
    )[0]
    assert (status, waiting_for, error, attempts) == ("completed", None, None, 1)
