"""The dhgq command line through Typer's CliRunner, against a real PostgreSQL database.

Read commands run on stage rows and documents inserted here with SQL; one test runs the whole
pipeline (``dhgq demo``) and exports what it made.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner, Result

from dhgq.cli import app
from dhgq.settings import STAGES
from tests.support.rows import add_source, failed_source, finished_source, set_stage


@pytest.fixture
def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("DHGQ_DATABASE_URL", db_url)
    monkeypatch.setenv("DHGQ_HOME", str(tmp_path / "home"))
    return CliRunner()


def run(cli: CliRunner, *args: str) -> Result:
    return cli.invoke(app, list(args))


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def one_error_line(result: Result) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def test_no_arguments_shows_help_and_bad_options_exit_2(cli: CliRunner) -> None:
    assert "process" in run(cli).output
    assert run(cli, "status", "--bogus").exit_code == 2
    assert run(cli, "jobs", "--status", "nope").exit_code == 2
    assert run(cli, "export", "x", "--format", "docx").exit_code == 2
    assert run(cli, "retry").exit_code == 2  # neither SOURCE nor --all-failed
    assert "no such file or directory" in one_error_line(run(cli, "process", "/does/not/exist.mp4"))


def test_process_adds_media_recursively_and_skips_known_content(
    cli: CliRunner, conn: psycopg.Connection, tmp_path: Path
) -> None:
    (tmp_path / "home").mkdir()
    talks = tmp_path / "talks"
    (talks / "day2").mkdir(parents=True)
    (talks / "a.mp4").write_bytes(b"video a")
    (talks / "day2" / "b.WAV").write_bytes(b"audio b")
    (talks / "day2" / "copy-of-a.mkv").write_bytes(b"video a")  # same content as a.mp4
    (talks / "notes.txt").write_text("not media")
    first = as_json(run(cli, "process", str(talks), "--json"))["sources"]
    assert [(Path(s["path"]).name, s["created"]) for s in first] == [
        ("a.mp4", True),
        ("b.WAV", True),
        ("copy-of-a.mkv", False),
    ]
    assert first[0]["source_id"] == first[2]["source_id"]
    assert {s["state"] for s in first} == {"queued"}
    again = as_json(run(cli, "process", str(talks / "a.mp4"), "--json"))["sources"]
    assert again[0]["created"] is False and again[0]["source_id"] == first[0]["source_id"]
    rows = conn.execute("""SELECT src.mime_type, src.content_hash, st.status FROM sources_google src
                           JOIN dhgq.audio_processing_stages st
                             ON st.source_id = src.id AND st.stage = 'extraction'
                           ORDER BY src.name""").fetchall()
    assert [(m, s) for m, _, s in rows] == [("video/mp4", "queued"), ("audio/wav", "queued")]
    assert all(len(h) == 64 for _, h, _ in rows)
    human = run(cli, "process", str(talks))
    assert human.exit_code == 0 and "0 new source(s), 3 already known" in human.stderr
    assert "not a media file" in one_error_line(run(cli, "process", str(talks / "notes.txt")))
    assert "no media files" in one_error_line(run(cli, "process", str(tmp_path / "home")))


def test_process_passes_checked_options_to_the_stages(cli: CliRunner, conn: psycopg.Connection, tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    talk = tmp_path / "talk.mp4"
    talk.write_bytes(b"video")
    added = as_json(run(cli, "process", str(talk), "--speakers", "2", "--language", "en", "--json"))["sources"]
    options = conn.execute("SELECT options FROM sources_google WHERE id = %s", (added[0]["source_id"],)).fetchone()
    assert options == ({"num_speakers": 2, "language": "en"},)
    other = tmp_path / "other.mp4"
    other.write_bytes(b"other video")
    assert "whole number from 1 to 20" in one_error_line(run(cli, "process", str(other), "--speakers", "0"))
    assert "not a model this machine's workers can run" in one_error_line(
        run(cli, "process", str(other), "--model", "gpt-5")
    )


def test_process_wait_follows_until_the_pipeline_ends(cli: CliRunner, db_url: str, tmp_path: Path) -> None:
    talk = tmp_path / "talk.mp3"
    talk.write_bytes(b"some audio")

    def fake_worker() -> None:  # plays the worker: finishes every stage it finds queued
        with psycopg.connect(db_url, autocommit=True) as conn:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                queued = conn.execute(
                    "SELECT source_id FROM dhgq.audio_processing_stages WHERE status='queued'"
                ).fetchall()
                if queued:
                    time.sleep(0.5)
                    for (source_id,) in queued:
                        for stage in STAGES:
                            set_stage(conn, str(source_id), stage, "completed", progress=100)
                    return
                time.sleep(0.1)

    helper = threading.Thread(target=fake_worker)
    helper.start()
    started = time.monotonic()
    result = run(cli, "process", str(talk), "--wait", "--timeout", "30", "--json")
    helper.join()
    assert as_json(result)["sources"][0]["state"] == "completed"
    assert time.monotonic() - started < 10  # woken by NOTIFY, not by the timeout


def test_status_overview_and_one_source(cli: CliRunner, conn: psycopg.Connection) -> None:
    done = finished_source(conn)
    broken = failed_source(conn)
    overview = as_json(run(cli, "status", "--json"))
    counts = {s["stage"]: s for s in overview["stages"]}
    assert counts["extraction"]["completed"] == 1 and counts["extraction"]["failed"] == 1
    assert {s["source_id"]: s["state"] for s in overview["sources"]} == {done: "completed", broken: "failed"}
    assert overview["fleet"] == []  # no worker process ever registered in this database
    detail = as_json(run(cli, "status", broken[:8], "--json"))
    assert detail["source"]["name"] == "broken.mp4"
    assert detail["stages"] == [
        {
            "stage": "extraction",
            "status": "failed",
            "progress": 0.0,
            "attempts": 1,
            "error_class": "permanent",
            "error": "/talks/broken.mp4: no audio stream",
            "started_at": "2026-01-01T10:00:00+00:00",
            "completed_at": "2026-01-01T10:00:12.500000+00:00",
            "seconds": 12.5,
            "job_id": detail["stages"][0]["job_id"],
            "media": None,  # a running model stage's audio seconds, realtime factor and ETA
            "host": None,  # the machine whose worker claimed it last (none did: the row was made by hand)
            "reused_from": None,  # the source whose output a reused stage copied
            "stale": [],  # why an output is stale (model_version, prompt_version)
            "cost_usd": 0.0,  # paid calls (Claude, Modal GPU) of the stage, from the ledger
            "paid_calls": 0,
        }
    ]
    by_name = as_json(run(cli, "status", "finished.mp4", "--json"))
    assert [line["speaker"] for line in by_name["excerpt"]] == ["Speaker 1", "Speaker 2", "Speaker 1"]
    assert by_name["summary"]["summary"] == "A short welcome."
    human = run(cli, "status", broken)
    assert human.exit_code == 0 and "no audio stream" in human.stdout and "12.5s" in human.stdout
    assert "broken.mp4" in run(cli, "status").stdout


def test_unknown_and_ambiguous_sources_are_one_line_errors(cli: CliRunner, conn: psycopg.Connection) -> None:
    add_source(conn, "same.mp4")
    add_source(conn, "same.mp4")
    assert "no source matches 'nothing-like-it'" in one_error_line(run(cli, "status", "nothing-like-it"))
    assert "matches several sources" in one_error_line(run(cli, "cancel", "same.mp4"))
    one_error_line(run(cli, "export", "00000000-0000-0000-0000-000000000000"))


def test_jobs_filters_by_status_and_stage(cli: CliRunner, conn: psycopg.Connection) -> None:
    finished_source(conn)
    broken = failed_source(conn)
    failed = as_json(run(cli, "jobs", "--status", "failed", "--json"))
    assert [(j["source_id"], j["stage"], j["error_class"]) for j in failed] == [(broken, "extraction", "permanent")]
    summaries = as_json(run(cli, "jobs", "--stage", "summarization", "--json"))
    assert [(j["name"], j["status"], j["seconds"]) for j in summaries] == [("finished.mp4", "completed", 12.5)]
    assert len(as_json(run(cli, "jobs", "--json"))) == 5
    assert "broken.mp4" in run(cli, "jobs").stdout


def test_dead_letter_lists_failures_but_not_cancellations(cli: CliRunner, conn: psycopg.Connection) -> None:
    broken = failed_source(conn)
    set_stage(
        conn,
        add_source(conn, "stopped.mp4"),
        "extraction",
        "failed",
        error_class="cancelled",
        error="cancelled by request",
    )
    letters = as_json(run(cli, "dead-letter", "--json"))
    assert [(d["source_id"], d["error"]) for d in letters] == [(broken, "/talks/broken.mp4: no audio stream")]
    assert "broken.mp4" in run(cli, "dead-letter").stdout


def job_status(conn: psycopg.Connection, source_id: str, stage: str) -> tuple[str, str]:
    return conn.execute(
        """SELECT st.status, j.status::text FROM dhgq.audio_processing_stages st
                           JOIN dhgq.procrastinate_jobs j ON j.id = st.job_id::bigint
                           WHERE st.source_id = %s AND st.stage = %s""",
        (source_id, stage),
    ).fetchone()


def test_retry_requeues_failed_stages(cli: CliRunner, conn: psycopg.Connection) -> None:
    broken = failed_source(conn)
    other = failed_source(conn, "also-broken.mp4")
    assert as_json(run(cli, "retry", broken[:10], "--json")) == {"retried": {broken: 1}, "total": 1}
    assert job_status(conn, broken, "extraction") == ("queued", "todo")
    assert as_json(run(cli, "retry", "--all-failed", "--json")) == {"retried": {other: 1}, "total": 1}
    assert job_status(conn, other, "extraction") == ("queued", "todo")
    assert "nothing failed" in run(cli, "retry", broken).stderr


def test_cancel_stops_queued_stages(cli: CliRunner, conn: psycopg.Connection) -> None:
    source_id = add_source(conn, "long.mp4")
    assert as_json(run(cli, "cancel", "long.mp4", "--json")) == {"cancelled": {source_id: 1}, "total": 1}
    assert job_status(conn, source_id, "extraction") == ("failed", "cancelled")
    assert as_json(run(cli, "status", source_id, "--json"))["stages"][0]["error_class"] == "cancelled"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (
            "txt",
            "Speaker 1: Hello and welcome.\nSpeaker 2: Thanks for having me.\nSpeaker 1: Let us begin.\n",
        ),
        ("srt", "00:00:02,200 --> 00:00:04,000\nSpeaker 2: Thanks for having me."),
        ("vtt", "WEBVTT"),
        ("md", "## Summary\n\nA short welcome."),
        ("rttm", "SPEAKER finished 1 2.200 1.800 <NA> <NA> SPEAKER_2 <NA> <NA>\n"),
    ],
)
def test_export_formats(cli: CliRunner, conn: psycopg.Connection, fmt: str, expected: str) -> None:
    source_id = finished_source(conn)
    result = run(cli, "export", source_id[:8], "--format", fmt)
    assert result.exit_code == 0, result.stderr
    assert expected in result.stdout


def test_export_json_to_a_file(cli: CliRunner, conn: psycopg.Connection, tmp_path: Path) -> None:
    finished_source(conn)
    out = tmp_path / "t.json"
    assert run(cli, "export", "finished.mp4", "-f", "json", "-o", str(out)).exit_code == 0
    document = json.loads(out.read_text())
    assert [s["speaker_label"] for s in document["segments"]] == ["Speaker 1", "Speaker 2", "Speaker 1"]
    assert document["summary"]["topics"] == ["greetings"] and len(document["turns"]) == 3


def test_export_before_transcription_is_a_clear_error(cli: CliRunner, conn: psycopg.Connection) -> None:
    add_source(conn, "fresh.mp4")
    assert "fresh.mp4 has no transcript yet" in one_error_line(run(cli, "export", "fresh.mp4"))


def test_unreachable_database_is_one_line_without_the_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DHGQ_DATABASE_URL", "postgresql://dhgq:s3cret-pw@127.0.0.1:9/nowhere")
    monkeypatch.setenv("DHGQ_HOME", str(tmp_path))
    monkeypatch.setenv("DHGQ_DB_CONNECT_TIMEOUT", "2")
    for args in (["status"], ["jobs", "--json"], ["dead-letter"]):
        result = CliRunner().invoke(app, args)
        line = one_error_line(result)
        assert "cannot connect" in line and "s3cret" not in result.stdout + result.stderr


def test_missing_schema_says_migrate(empty_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DHGQ_DATABASE_URL", empty_db_url)
    monkeypatch.setenv("DHGQ_HOME", str(tmp_path))
    assert "dhgq db migrate" in one_error_line(CliRunner().invoke(app, ["status"]))


def test_thin_wrappers(cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dhgq.media.transcription.convert
    from tests.unit.test_gpu_dispatch import use_home

    monkeypatch.setattr(
        dhgq.media.transcription.convert,
        "convert_named_model",
        lambda name, out, models_dir=None: Path(out) / f"{name}.pt",
    )
    converted = as_json(run(cli, "models", "convert", "tiny.en", "--out", str(tmp_path / "m"), "--json"))
    assert converted == {"model": "tiny.en", "checkpoint": str(tmp_path / "m" / "tiny.en.pt")}
    use_home(monkeypatch, tmp_path / "no-modal")  # no Modal credentials anywhere: the check says so
    checked = run(cli, "modal", "check", "--json")
    assert checked.exit_code == 1 and json.loads(checked.stdout)[0]["ok"] is False
    assert "modal token new" in json.loads(checked.stdout)[0]["detail"]


@pytest.mark.slow
def test_eval_scores_a_folder_and_writes_its_table(cli: CliRunner, tmp_path: Path) -> None:
    from tests.support.speech import say

    folder = tmp_path / "recordings"
    folder.mkdir()
    say("Please go forward ten meters.", "bob", folder / "clip.wav")
    (folder / "clip.txt").write_text("please go forward ten meters")
    (folder / "clip.rttm").write_text("SPEAKER clip 1 0.000 2.000 <NA> <NA> bob <NA> <NA>\n")
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nother figures\n")
    report = as_json(run(cli, "eval", str(folder), "--json", "--write", str(doc)))
    assert report["files"][0]["name"] == "clip.wav" and report["wer"] is not None
    run(cli, "eval", str(folder), "--write", str(doc))  # a second run replaces the section
    text = doc.read_text()
    assert "other figures" in text and text.count("## Accuracy on real recordings") == 1


@pytest.mark.slow
def test_demo_runs_the_pipeline_then_export(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DHGQ_RETRY_BASE_DELAY", "0")
    for name in ("ANTHROPIC_API_KEY", "DHGQ_ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    try:
        from dhgq.app import app as tasks_app

        tasks_app.perform_import_paths()
    except ImportError as exc:  # a stage module still being written elsewhere
        pytest.skip(f"the stage tasks cannot be imported: {exc}")
    result = run(cli, "demo", "--json")
    assert result.exit_code == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["source"]["state"] == "completed"
    assert [s["stage"] for s in report["stages"]] == list(STAGES)
    assert all(s["seconds"] is not None and s["seconds"] >= 0 for s in report["stages"])
    assert len({line["speaker"] for line in report["excerpt"]}) == 2
    assert report["summary"]["summary"]
    human = run(cli, "demo")  # the same sample again: known by its hash, shown as it is
    assert human.exit_code == 0 and "already known (completed)" in human.stderr and "Summary" in human.stdout
    srt = run(cli, "export", report["source"]["source_id"][:8], "--format", "srt")
    assert srt.exit_code == 0 and "Speaker 1:" in srt.stdout and "Speaker 2:" in srt.stdout
