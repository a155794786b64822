"""The command line as a new user meets it: `dhgq process` with the URIs the README names, options for a
file already known applied or refused (never ignored), `--model` only one the workers can run, `--wait`
saying that no worker runs, `rerun --dry-run` that never says queued, `status` and `dead-letter` at 80
columns, and a worker whose classified failure is one log line and that leaves no leaked semaphore."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner, Result

from dhgq import sources
from dhgq.cli import app
from dhgq.errors import PermanentError
from tests.support.pipeline import rows, run_once, worker_env
from tests.support.rows import failed_source, finished_source

REAL_SPEECH = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "real-speech"


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> dict[str, str]:
    return worker_env(db_url, tmp_path / "home")


def dhgq(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def one_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    return lines[0]


@pytest.fixture
def talk(tmp_path: Path) -> Path:
    if not REAL_SPEECH.is_dir():
        pytest.skip("../shared/testdata is absent")
    return Path(shutil.copy(REAL_SPEECH / "goforward.wav", tmp_path / "goforward.wav"))


def test_process_takes_the_uris_the_readme_names(env: dict[str, str], db_url: str) -> None:
    uris = ["gdrive://1TalkOnDrive0000000000000", "https://example.org/talks/keynote.mp4", "storage://media/u/x.mp4"]
    added = dhgq(env, "process", *uris, "--language", "en")
    assert added.exit_code == 0 and "3 new source(s)" in added.stderr, added.output
    found = dict(rows(db_url, "SELECT path, options FROM sources_google"))
    assert found == dict.fromkeys(uris, {"language": "en"})
    queued = rows(db_url, "SELECT count(*) FROM dhgq.audio_processing_stages WHERE stage = 'extraction'")
    assert queued == [(3,)]  # a Drive id has no extension: extraction tells what it is
    again = dhgq(env, "process", uris[0])
    assert again.exit_code == 0 and "0 new source(s), 1 already known" in again.stderr
    assert "not a gdrive://FILE_ID URI" in one_error(dhgq(env, "process", "gdrive://short"))
    assert "not a storage://BUCKET/KEY URI" in one_error(dhgq(env, "process", "storage://"))
    assert "no such file or directory" in one_error(dhgq(env, "process", "/no/such/talk.mp4"))


def test_a_model_the_workers_cannot_run_is_refused(env: dict[str, str], talk: Path) -> None:
    line = one_error(dhgq(env, "process", str(talk), "--model", "large-v3"))
    assert "--model large-v3" in line and "tiny.en" in line and "base" in line
    assert dhgq(env, "process", str(talk), "--model", "tiny.en").exit_code == 0


def test_options_for_a_known_file_are_applied_or_refused(env: dict[str, str], db_url: str, talk: Path) -> None:
    assert dhgq(env, "process", str(talk)).exit_code == 0
    busy = dhgq(env, "process", str(talk), "--speakers", "2")  # its pipeline is queued: in flight
    assert busy.exit_code == 1 and "num_speakers was not applied" in busy.stderr, busy.output
    assert rows(db_url, "SELECT options FROM sources_google") == [({},)]

    with psycopg.connect(db_url, autocommit=True) as conn:
        done = finished_source(conn)
        assert sources.apply_options(conn, done, {}) == ""
        note = sources.apply_options(conn, done, {"num_speakers": 2, "vocabulary": ["pgvector"]})
        assert note.startswith("new num_speakers, vocabulary:") and "queued again" in note
        assert rows(db_url, "SELECT options FROM sources_google WHERE id = %s", (done,)) == [
            ({"num_speakers": 2, "vocabulary": ["pgvector"]},)
        ]
        assert sources.apply_options(conn, done, {"num_speakers": 2}) == ""  # the same again: nothing
        with pytest.raises(PermanentError, match="being processed"):
            sources.apply_options(conn, done, {"num_speakers": 3})


def test_wait_says_when_no_worker_runs(env: dict[str, str], talk: Path) -> None:
    waited = dhgq(env, "process", str(talk), "--wait", "--timeout", "3")
    assert waited.exit_code == 1
    assert "no worker is running: start one with `dhgq worker`" in waited.stderr
    assert "timed out" in waited.stderr


def test_rerun_dry_run_never_says_queued(env: dict[str, str], db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        finished_source(conn, "keynote.mp4")
    planned = dhgq(env, "rerun", "keynote.mp4", "--stage", "diarization", "--dry-run")
    assert planned.exit_code == 0 and "would run again" in planned.stderr, planned.output
    assert "queued" not in planned.output.lower()


def test_status_and_dead_letter_fit_80_columns(env: dict[str, str], db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for index in range(3):
            failed_source(conn, f"a-talk-with-a-rather-long-file-name-{index}.mp4")
        finished_source(conn, "keynote.mp4")
    for command in (["status"], ["dead-letter"]):
        shown = subprocess.run(
            [sys.executable, "-m", "dhgq", *command], env=env | {"COLUMNS": "80"}, capture_output=True, text=True
        )
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines and max(len(line.rstrip()) for line in lines) <= 80, shown.stdout
        assert "…" not in "".join(line[:8] for line in lines)  # ids are never cut
    dead = subprocess.run(
        [sys.executable, "-m", "dhgq", "dead-letter"], env=env | {"COLUMNS": "80"}, capture_output=True, text=True
    ).stdout
    assert dead.count("a-talk-with-a-rather-long-file-name") == 3 and dead.count("no audio stream") == 3


def test_a_worker_logs_a_classified_failure_in_one_line_and_leaks_nothing(
    env: dict[str, str], db_url: str, talk: Path, tmp_path: Path
) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a talk at all\n", encoding="utf-8")
    assert dhgq(env, "process", str(talk), str(text), "--language", "en").exit_code == 0
    log = run_once(env).stderr
    assert "Traceback" not in log, log[-3000:]
    [failure] = [line for line in log.splitlines() if "ended with status: Error" in line]
    assert "permanent: " in failure and "not a media file" in failure
    assert "leaked semaphore" not in log and "resource_tracker" not in log
    assert rows(db_url, "SELECT count(*) FROM dhgq.audio_processing_stages WHERE status = 'completed'") == [(4,)]
