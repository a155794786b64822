"""A running model stage as a user watches and stops it, with real worker processes: its progress
rises in steps with audio seconds, a realtime factor and an ETA; cancelling it stops its model
process within seconds; and a stage refuses an audio path outside the worker's work dir."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psycopg
import pytest

from tests.support.pipeline import insert_source, rows, run_once, stage_statuses, start_worker, wait_for, worker_env
from tests.support.speech import TWO_SPEAKER_SCRIPT, dialogue, to_mp4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def long_talk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About two minutes of two-voice talk: long enough to watch, short enough for a test."""
    folder = tmp_path_factory.mktemp("long-talk")
    return to_mp4(dialogue(TWO_SPEAKER_SCRIPT, folder / "talk.wav", repeat=2).audio, folder / "talk.mp4")


def children_of(pid: int) -> set[int]:
    """The live child processes of ``pid`` (the worker's model hosts among them)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def transcription_detail(db_url: str, source_id: str) -> tuple[str, float, dict | None]:
    [(status, progress, detail)] = rows(
        db_url,
        "SELECT status, progress, progress_detail FROM dhgq.audio_processing_stages "
        "WHERE source_id = %s AND stage = 'transcription'",
        (source_id,),
    ) or [("absent", 0.0, None)]
    return status, float(progress), detail


def test_progress_rises_in_steps_then_cancel_stops_the_model_process(
    db_url: str, long_talk: Path, tmp_path: Path
) -> None:
    source_id = insert_source(db_url, long_talk)
    env = worker_env(db_url, tmp_path / "home", DHGQ_MODEL_THREADS="1", DHGQ_PROGRESS_EVERY="0.1")
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        wait_for(lambda: transcription_detail(db_url, source_id)[0] == "processing", 180, "transcription to start")
        seen: list[tuple[float, dict]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(seen) < 3:
            status, progress, detail = transcription_detail(db_url, source_id)
            if status != "processing":
                break
            if detail and (not seen or progress > seen[-1][0]):
                seen.append((progress, detail))
            time.sleep(0.05)
        assert len(seen) >= 3, f"progress seen: {seen}"
        assert all(5 < p < 100 for p, _ in seen) and seen[0][0] < seen[-1][0]
        last = seen[-1][1]
        assert 0 < last["audio_seconds_done"] <= last["audio_seconds"] and last["realtime_factor"] > 0
        assert last["eta_seconds"] is not None

        hosts_before = children_of(worker.pid)
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("SELECT dhgq.cancel_source_v1(%s)", (source_id,))
        cancelled_at = time.monotonic()
        wait_for(lambda: len(children_of(worker.pid)) < len(hosts_before), 5, "a model process to stop")
        assert time.monotonic() - cancelled_at < 5
        wait_for(
            lambda: (
                rows(
                    db_url,
                    "SELECT j.status::text FROM dhgq.audio_processing_stages s JOIN dhgq.procrastinate_jobs j "
                    "ON j.id = s.job_id::bigint WHERE s.source_id = %s AND s.stage = 'transcription'",
                    (source_id,),
                )
                == [("aborted",)]
            ),
            10,
            "the job to end as aborted",
        )
        [(status, error_class)] = rows(
            db_url,
            "SELECT status, error_class FROM dhgq.audio_processing_stages WHERE source_id = %s "
            "AND stage = 'transcription'",
            (source_id,),
        )
        assert (status, error_class) == ("failed", "cancelled")
        assert worker.poll() is None  # the worker itself goes on
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)


def test_a_stage_refuses_audio_outside_the_work_dir(db_url: str, long_talk: Path, tmp_path: Path) -> None:
    source_id = insert_source(db_url, long_talk)
    env = worker_env(db_url, tmp_path / "home")
    with psycopg.connect(db_url, autocommit=True) as conn:  # extraction "done", pointing elsewhere
        conn.execute("UPDATE dhgq.audio_processing_stages SET status = 'completed' WHERE source_id = %s", (source_id,))
        conn.execute(
            "UPDATE public.sources_google SET audio_extraction_path = '/etc/hosts', audio_extracted = true "
            "WHERE id = %s",
            (source_id,),
        )
        conn.execute(
            "INSERT INTO dhgq.artifacts (source_id, kind, uri, content_type) VALUES (%s, 'audio', '/etc/hosts', "
            "'audio/wav')",
            (source_id,),
        )
        conn.execute("SELECT dhgq.enqueue_stage_v1(%s, 'transcription')", (source_id,))
    run_once(env)
    assert stage_statuses(db_url, source_id)["transcription"] == "failed"
    [(error_class, error)] = rows(
        db_url,
        "SELECT error_class, error FROM dhgq.audio_processing_stages WHERE source_id = %s AND stage = 'transcription'",
        (source_id,),
    )
    assert error_class == "permanent" and "outside the work dir" in error
