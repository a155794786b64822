"""The pipeline end to end: SQL starts it, real worker processes run it, crashes do not lose it."""

from __future__ import annotations

import signal
from pathlib import Path

import psycopg
import pytest

from dhgq import migrations
from dhgq.embedded import EmbeddedServer
from tests.support.fake_anthropic import fake_anthropic_server
from tests.support.pipeline import (
    insert_source,
    rows,
    run_once,
    scalar,
    stage_statuses,
    start_worker,
    wait_for,
    worker_env,
)
from tests.support.speech import TWO_SPEAKER_SCRIPT, dialogue, to_mp4

STAGES = {"extraction", "transcription", "diarization", "summarization"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short two-speaker talk as an MP4 with a video track."""
    folder = tmp_path_factory.mktemp("talk")
    reference = dialogue(TWO_SPEAKER_SCRIPT[:4], folder / "talk.wav")
    return to_mp4(reference.audio, folder / "talk.mp4")


def assert_complete_once(db_url: str, source_id: str) -> None:
    assert stage_statuses(db_url, source_id) == dict.fromkeys(STAGES, "completed")
    assert scalar(db_url, "SELECT count(*) FROM expert_documents WHERE source_id=%s", (source_id,)) == 2
    segments = rows(
        db_url,
        """SELECT s.speaker_id FROM audio_segments s JOIN expert_documents d
                               ON d.id = s.expert_document_id WHERE d.source_id = %s""",
        (source_id,),
    )
    transcript = scalar(
        db_url,
        """SELECT jsonb_array_length(processed_content->'segments') FROM expert_documents
                                   WHERE source_id=%s AND content_type='transcript'""",
        (source_id,),
    )
    assert len(segments) == transcript > 0
    assert all(speaker is not None for (speaker,) in segments)


def test_sql_insert_runs_all_four_stages(db_url: str, talk: Path, tmp_path: Path) -> None:
    source_id = insert_source(db_url, talk)
    assert stage_statuses(db_url, source_id) == {"extraction": "queued"}
    run_once(worker_env(db_url, tmp_path))
    assert_complete_once(db_url, source_id)
    assert scalar(db_url, "SELECT count(*) FROM speaker_profiles WHERE source_id=%s", (source_id,)) == 2
    assert scalar(db_url, "SELECT audio_extracted FROM sources_google WHERE id=%s", (source_id,)) is True
    state = rows(db_url, "SELECT state, progress FROM dhgq.pipeline_status WHERE source_id=%s", (source_id,))
    assert state == [("completed", 100)]
    # the embedded single-machine default: the artifacts are the work dir's files, read in place, nothing cached
    artifacts = dict(rows(db_url, "SELECT kind, uri FROM dhgq.artifacts WHERE source_id = %s", (source_id,)))
    assert artifacts["audio"] == str(tmp_path / "audio" / source_id / "audio.wav") and "compact" in artifacts
    assert all(Path(uri).is_file() for uri in artifacts.values()) and not (tmp_path / "cache").exists()
    # stage rows agree with Procrastinate's job table
    assert (
        scalar(
            db_url,
            """SELECT count(*) FROM dhgq.audio_processing_stages s JOIN dhgq.procrastinate_jobs j
                             ON j.id = s.job_id::bigint WHERE j.status = 'succeeded' AND s.source_id=%s""",
            (source_id,),
        )
        == 4
    )


def test_permanent_failure_is_dead_lettered_and_isolated(db_url: str, talk: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("this is a text file, not a video")
    bad = insert_source(db_url, bogus)
    good = insert_source(db_url, talk)
    run_once(worker_env(db_url, tmp_path))
    assert stage_statuses(db_url, bad) == {"extraction": "failed"}
    stage, error_class, error, attempts = rows(
        db_url, "SELECT stage, error_class, error, attempts FROM dhgq.dead_letter WHERE source_id=%s", (bad,)
    )[0]
    assert (stage, error_class, attempts) == ("extraction", "permanent", 1)
    assert "notes.mp4" in error
    assert_complete_once(db_url, good)


def test_transient_failure_is_retried(db_url: str, talk: Path, tmp_path: Path) -> None:
    source_id = insert_source(db_url, talk)
    with fake_anthropic_server() as fake:
        fake.fail(429, times=1, message="rate limited")
        run_once(worker_env(db_url, tmp_path, DHGQ_ANTHROPIC_API_KEY="sk-test", DHGQ_ANTHROPIC_BASE_URL=fake.url))
    status, attempts, method = rows(
        db_url,
        """SELECT status, attempts, result->>'method'
                                      FROM dhgq.audio_processing_stages
                                      WHERE source_id=%s AND stage='summarization'""",
        (source_id,),
    )[0]
    assert (status, attempts, method) == ("completed", 2, "claude")


def test_second_start_while_in_flight_is_a_noop(db_url: str, talk: Path) -> None:
    source_id = insert_source(db_url, talk)
    assert scalar(db_url, "SELECT dhgq.start_pipeline_v1(%s)", (source_id,)) is None
    assert scalar(db_url, "SELECT count(*) FROM dhgq.procrastinate_jobs") == 1


def test_sigkill_mid_stage_completes_once(db_url: str, talk: Path, tmp_path: Path) -> None:
    source_id = insert_source(db_url, talk)
    env = worker_env(db_url, tmp_path)
    first = start_worker(env, tmp_path / "worker1.log")
    wait_for(
        lambda: "processing" in stage_statuses(db_url, source_id).get("transcription", ""),
        120,
        "transcription to start",
        interval=0.02,
    )
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = start_worker(env, tmp_path / "worker2.log")
    try:
        wait_for(
            lambda: stage_statuses(db_url, source_id).get("summarization") == "completed",
            240,
            "the pipeline to complete after the crash",
        )
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)
    assert_complete_once(db_url, source_id)
    assert scalar(db_url, "SELECT count(*) FROM dhgq.audio_processing_stages WHERE source_id=%s", (source_id,)) == 4


def test_database_restart_mid_run(tmp_path: Path, server_home: Path, talk: Path) -> None:
    server = EmbeddedServer(server_home)
    url = server.start().url()
    migrations.migrate(url)
    sources = [insert_source(url, talk) for _ in range(3)]
    worker = start_worker(worker_env(url, tmp_path), tmp_path / "worker.log")
    try:
        wait_for(
            lambda: scalar(url, "SELECT count(*) FROM dhgq.audio_processing_stages WHERE status='completed'"),
            120,
            "a first stage to complete",
        )
        server.stop()
        server.start()
        for source_id in sources:
            wait_for(
                lambda s=source_id: stage_statuses(url, s).get("summarization") == "completed",
                300,
                "pipelines to complete after the restart",
                interval=0.5,
            )
        for source_id in sources:
            assert_complete_once(url, source_id)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        server.stop()


def test_hundred_sources_in_one_statement(db_url: str, tmp_path: Path) -> None:
    from tests.support.speech import say

    clip = say("Hello, this is a very short talk.", "alice", tmp_path / "clip.wav")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO sources_google (name, path, mime_type)
                        SELECT 'clip ' || g, %s, 'audio/wav' FROM generate_series(1, 100) g""",
            (str(clip),),
        )
    run_once(worker_env(db_url, tmp_path, DHGQ_MAX_CONCURRENT_TRANSCRIPTIONS="2"), timeout=900)
    assert scalar(db_url, "SELECT count(*) FROM dhgq.pipeline_status WHERE state='completed'") == 100
    assert scalar(db_url, "SELECT count(*) FROM dhgq.audio_processing_stages") == 400
    assert scalar(db_url, "SELECT count(*) FROM expert_documents") == 200
    assert (
        scalar(
            db_url,
            """SELECT count(*) FROM dhgq.audio_processing_stages s JOIN dhgq.procrastinate_jobs j
                             ON j.id = s.job_id::bigint AND j.status = 'succeeded'""",
        )
        == 400
    )
    assert scalar(db_url, "SELECT count(*) FROM dhgq.procrastinate_jobs WHERE status <> 'succeeded'") == 0
