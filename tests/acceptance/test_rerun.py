"""``dhgq rerun``: a stage and what depends on it run again, what lies upstream stays; stale outputs
(a newer model or prompt version) are listed and refreshed; earlier versions stay until ``dhgq gc``."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dhgq.db import connect
from dhgq.queries import query
from tests.acceptance.test_reuse import MODEL_CALL, STAGES, run_worker
from tests.support.fake_anthropic import fake_anthropic_server
from tests.support.pipeline import insert_source, rows, scalar, stage_statuses, worker_env
from tests.support.speech import TWO_SPEAKER_SCRIPT, dialogue, to_mp4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rerun-talk")
    return to_mp4(dialogue(TWO_SPEAKER_SCRIPT[:4], folder / "talk.wav").audio, folder / "talk.mp4")


def dhgq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dhgq", *args], env=env, capture_output=True, text=True, timeout=120)


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def stage_rows(db_url: str, source_id: Any) -> dict[str, tuple[Any, ...]]:
    """stage -> (status, attempts, started_at, completed_at, job_id)."""
    found = rows(
        db_url,
        "SELECT stage, status, attempts, started_at, completed_at, job_id FROM dhgq.audio_processing_stages "
        "WHERE source_id = %s",
        (source_id,),
    )
    return {row[0]: row[1:] for row in found}


def assert_summarized_again(db_url: str, source_id: str, requests: list[Any], calls_before: int) -> None:
    """The summary was made again with Claude, not copied: a new request, or (when the request is the same
    as before, byte for byte) the answer the LLM ledger recorded for this source (dhgq/ledger.py)."""
    [(result,)] = rows(
        db_url,
        "SELECT result FROM dhgq.audio_processing_stages WHERE stage = 'summarization' AND source_id = %s",
        (source_id,),
    )
    assert result["method"] == "claude" and "reused_from" not in result
    assert len(requests) - calls_before + (result.get("reused_calls") or 0) == 1


def completed_pipeline(db_url: str, talk: Path, env: dict[str, str]) -> str:
    source_id = insert_source(db_url, talk)
    run_worker(env)
    assert stage_statuses(db_url, source_id) == dict.fromkeys(STAGES, "completed")
    return source_id


def test_rerun_diarization_runs_the_fan_in_and_the_summary_again_and_nothing_upstream(
    db_url: str, talk: Path, tmp_path: Path
) -> None:
    with fake_anthropic_server() as claude:
        env = worker_env(
            db_url, tmp_path / "home", DHGQ_ANTHROPIC_API_KEY="sk-test", DHGQ_ANTHROPIC_BASE_URL=claude.url
        )
        source_id = completed_pipeline(db_url, talk, env)
        before = stage_rows(db_url, source_id)
        wav = Path(scalar(db_url, "SELECT audio_extraction_path FROM sources_google WHERE id = %s", (source_id,)))
        wav_before = wav.stat()
        summary_before = scalar(db_url, "SELECT id FROM expert_documents WHERE content_type = 'summary'")
        calls = len(claude.requests)

        queued = as_json(dhgq(env, "rerun", source_id, "--stage", "diarization", "--json"))
        assert queued["queued"] == 1 and queued["reruns"][0]["queued"] == ["diarization"]
        waiting = stage_rows(db_url, source_id)
        assert waiting["diarization"][0] == "queued" and "summarization" not in waiting  # it follows the fan-in
        assert waiting["extraction"] == before["extraction"] and waiting["transcription"] == before["transcription"]
        busy = dhgq(env, "rerun", source_id, "--stage", "summarization", "--json")
        assert busy.returncode == 1 and json.loads(busy.stdout)["reruns"][0]["status"] == "in flight"

        log = run_worker(env)
        assert_summarized_again(db_url, source_id, claude.requests, calls)
    after = stage_rows(db_url, source_id)
    assert {stage: row[0] for stage, row in after.items()} == dict.fromkeys(STAGES, "completed")
    assert after["extraction"] == before["extraction"] and after["transcription"] == before["transcription"]
    for stage in ("diarization", "summarization"):
        assert after[stage][3] > before[stage][3] and after[stage][4] != before[stage][4], stage
    assert "model host runs diarize" in log and "model host runs transcribe" not in log
    assert "stage=extraction" not in log and "stage=transcription" not in log
    now = wav.stat()
    assert (now.st_ino, now.st_mtime_ns, now.st_size) == (wav_before.st_ino, wav_before.st_mtime_ns, wav_before.st_size)
    diarization = rows(
        db_url,
        "SELECT result FROM dhgq.audio_processing_stages WHERE stage = 'diarization' AND source_id = %s",
        (source_id,),
    )[0][0]
    assert "reused_from" not in diarization  # an explicit re-run computes
    # the fan-in ran again: every segment is linked to one of the new speaker profiles
    unlinked = scalar(
        db_url,
        """SELECT count(*) FROM audio_segments g LEFT JOIN speaker_profiles p ON p.id = g.speaker_id
            WHERE p.id IS NULL""",
    )
    assert unlinked == 0
    assert scalar(db_url, "SELECT id FROM expert_documents WHERE content_type = 'summary'") == summary_before
    # the earlier versions are kept ...
    history = dict(rows(db_url, "SELECT stage, count(*) FROM dhgq.output_history GROUP BY stage"))
    assert history == {"diarization": 1, "summarization": 1}
    superseded = dict(
        rows(db_url, "SELECT stage, count(*) FROM dhgq.stage_outputs WHERE superseded_at IS NOT NULL GROUP BY stage")
    )
    assert superseded == {"diarization": 1, "summarization": 1}
    earlier = scalar(db_url, "SELECT snapshot FROM dhgq.output_history WHERE stage = 'summarization'")
    assert earlier["document"]["id"] == str(summary_before) and earlier["result"]["method"] == "claude"

    # ... until gc removes them, once older than retention (keep_jobs_days)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE dhgq.output_history SET superseded_at = now() - interval '40 days'")
        conn.execute(
            "UPDATE dhgq.stage_outputs SET superseded_at = now() - interval '40 days' WHERE superseded_at IS NOT NULL"
        )
    report = as_json(dhgq(env, "gc", "--dry-run", "--json"))
    assert report["versions"] == {"history": 2, "outputs": 2}
    report = as_json(dhgq(env, "gc", "--json"))
    assert report["versions"] == {"history": 2, "outputs": 2}
    assert scalar(db_url, "SELECT count(*) FROM dhgq.output_history") == 0
    assert scalar(db_url, "SELECT count(*) FROM dhgq.stage_outputs WHERE superseded_at IS NULL") == 4


def test_a_prompt_version_bump_makes_summaries_stale_and_rerun_stale_refreshes_only_them(
    db_url: str, talk: Path, tmp_path: Path
) -> None:
    with fake_anthropic_server() as claude:
        env = worker_env(
            db_url, tmp_path / "home", DHGQ_ANTHROPIC_API_KEY="sk-test", DHGQ_ANTHROPIC_BASE_URL=claude.url
        )
        source_id = completed_pipeline(db_url, talk, env)
        before = stage_rows(db_url, source_id)
        assert scalar(db_url, "SELECT count(*) FROM dhgq.stale_outputs") == 0
        current = rows(db_url, "SELECT stage, engine, model, prompt_version FROM dhgq.current_versions ORDER BY stage")
        assert [row[0] for row in current] == list(sorted(STAGES))
        assert current[2][1:3] == ("claude", "claude-sonnet-4-5") and current[2][3].startswith("summarize.md:")

        # the workers now use another prompt (as a worker started with an edited summarize.md records it)
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE dhgq.current_versions SET prompt_version = 'summarize.md:next' WHERE stage = %s",
                ("summarization",),
            )
        stale = rows(db_url, "SELECT source_id, stage, reasons FROM dhgq.stale_outputs")
        assert stale == [(uuid.UUID(source_id), "summarization", ["prompt_version"])]
        with connect(db_url, autocommit=True) as conn:  # what `dhgq status SOURCE` reads, as the CLI does
            shown = {
                row[0]: row[1:]
                for row in conn.execute(
                    "SELECT stage, stale, stale_reasons, reused_from, output->>'prompt_version' FROM ("
                    + query("cli_source_stages").rstrip(";")
                    + ") s",
                    {"source_id": source_id},
                )
            }
        assert shown["summarization"][:3] == (True, ["prompt_version"], None)
        assert shown["transcription"][:2] == (False, None)

        planned = as_json(dhgq(env, "rerun", "--stale", "--dry-run", "--json"))
        assert planned["reruns"] == [
            {
                "source_id": source_id,
                "name": "talk.mp4",
                "stages": ["summarization"],
                "status": "planned",
                "queued": None,
                "reasons": ["prompt_version"],
                "error": None,
            }
        ]
        calls = len(claude.requests)
        assert as_json(dhgq(env, "rerun", "--stale", "--json"))["queued"] == 1
        log = run_worker(env)
        assert MODEL_CALL not in log
        assert_summarized_again(db_url, source_id, claude.requests, calls)
    after = stage_rows(db_url, source_id)
    assert {stage: row[0] for stage, row in after.items()} == dict.fromkeys(STAGES, "completed")
    for stage in ("extraction", "transcription", "diarization"):
        assert after[stage] == before[stage], stage
    assert after["summarization"][3] > before["summarization"][3]
    rerun = rows(db_url, "SELECT stage, reason, fresh FROM dhgq.stage_reruns")
    assert rerun == [("summarization", "stale", False)]
    # the worker recorded the prompt it really has, and the new summary was made with it
    assert scalar(db_url, "SELECT count(*) FROM dhgq.stale_outputs") == 0


def test_rerun_where_selects_read_only(db_url: str, tmp_path: Path) -> None:
    env = worker_env(db_url, tmp_path / "home")
    keynote = insert_source(db_url, "/talks/keynote.mp4")
    insert_source(db_url, "/talks/panel.mp4")
    planned = as_json(
        dhgq(env, "rerun", "--where", "name LIKE 'key%'", "--stage", "diarization", "--dry-run", "--json")
    )
    assert [(r["source_id"], r["stages"], r["status"]) for r in planned["reruns"]] == [
        (keynote, ["diarization"], "planned")
    ]
    before = rows(db_url, "SELECT id, name, is_deleted FROM sources_google ORDER BY id")
    jobs = scalar(db_url, "SELECT count(*) FROM dhgq.procrastinate_jobs")
    for expression in (
        "dhgq.cancel_source_v1(id) > 0",  # a function that writes
        "true; DELETE FROM sources_google",  # a second statement
        "true) OR (SELECT count(*) FROM (DELETE FROM sources_google RETURNING 1) d) > 0 OR (true",
        "nextval('dhgq.procrastinate_jobs_id_seq') > 0",
    ):
        done = dhgq(env, "rerun", "--where", expression, "--stage", "diarization")
        assert done.returncode == 1 and done.stderr.startswith("error: --where"), (expression, done.stderr)
    assert rows(db_url, "SELECT id, name, is_deleted FROM sources_google ORDER BY id") == before
    assert scalar(db_url, "SELECT count(*) FROM dhgq.procrastinate_jobs") == jobs
    assert stage_statuses(db_url, keynote) == {"extraction": "queued"}


def test_rerun_refuses_what_it_cannot_do(db_url: str, tmp_path: Path) -> None:
    env = worker_env(db_url, tmp_path / "home")

    def outcome(*args: str) -> tuple[int, dict[str, Any]]:
        done = dhgq(env, "rerun", *args, "--json")
        [only] = json.loads(done.stdout)["reruns"]
        return done.returncode, only

    queued = insert_source(db_url, "/talks/queued.mp4")
    code, result = outcome(queued, "--stage", "diarization")
    assert (code, result["status"], result["queued"]) == (1, "in flight", None)
    finished = insert_source(db_url, "/talks/finished.mp4")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE dhgq.audio_processing_stages SET status = 'completed' WHERE source_id = %s", (finished,))
    code, result = outcome(finished, "--stage", "transcription")
    assert (code, result["status"]) == (1, "not ready") and "no extracted audio" in result["error"]
    code, result = outcome(finished, "--stage", "summarization")
    assert (code, result["status"]) == (1, "not ready") and "transcription of source" in result["error"]
    unknown = dhgq(env, "rerun", finished, "--stage", "transcription", "--model", "gpt-5", "--json")
    assert unknown.returncode == 1 and "--model gpt-5: not a model this machine's workers can run" in unknown.stderr
    bad = dhgq(env, "rerun", finished, "--stage", "diarization", "--model", "base")
    assert bad.returncode == 2 and "--model" in bad.stderr
    assert dhgq(env, "rerun", "--stage", "diarization").returncode == 2  # which sources?
    assert stage_statuses(db_url, finished) == {"extraction": "completed"}
    assert scalar(db_url, "SELECT count(*) FROM dhgq.stage_reruns") == 0
