"""Retention: ``dhgq gc`` (and the worker's daily dhgq.gc task) against a real database and real files.

One world of sources in every state (live, finished long ago, finished lately, failed for good long
ago and lately), stray and orphan files, scratch leftovers old and new, and Procrastinate jobs old
and new; ``--dry-run`` lists exactly what retention lets go and changes nothing, ``gc`` removes
exactly that, and a second ``gc`` finds nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import soundfile
from psycopg.types.json import Jsonb
from typer.testing import CliRunner, Result

from dhgq.cli import app
from dhgq.db import connect
from dhgq.settings import Settings
from tests.support.rows import add_source, finished_source, set_stage

DAY = 86400.0


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def cli(db_url: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in [n for n in os.environ if n.startswith("DHGQ_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DHGQ_DATABASE_URL", db_url)
    monkeypatch.setenv("DHGQ_HOME", str(home))
    return CliRunner()


@pytest.fixture
def conn(db_url: str) -> Any:
    with connect(db_url, autocommit=True) as connection:
        yield connection


def gc(cli: CliRunner, *args: str) -> dict[str, Any]:
    result: Result = cli.invoke(app, ["gc", *args, "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def touch(path: Path, data: bytes = b"x" * 100, age_days: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    age(path, age_days)
    return path


def age(path: Path, days: float) -> None:
    when = time.time() - days * DAY
    os.utime(path, (when, when))


def extracted_audio(conn: psycopg.Connection, work: Path, source_id: str) -> list[Path]:
    """What extraction leaves: a small 16 kHz WAV and a compact copy, named by the row and the stage result."""
    folder = work / source_id
    folder.mkdir(parents=True, exist_ok=True)
    wav, compact = folder / "audio.wav", folder / "audio.opus"
    soundfile.write(wav, np.zeros(1600, dtype="float32"), 16000)
    compact.write_bytes(b"OggS" + b"\0" * 60)
    conn.execute(
        "UPDATE sources_google SET audio_extracted = true, audio_extraction_path = %s WHERE id = %s",
        (str(wav), source_id),
    )
    conn.execute(
        """UPDATE dhgq.audio_processing_stages SET result = %s WHERE source_id = %s AND stage = 'extraction'""",
        (Jsonb({"wav_path": str(wav), "compact_path": str(compact), "duration_seconds": 0.1}), source_id),
    )
    return [wav, compact]


def finished_days_ago(conn: psycopg.Connection, source_id: str, days: float) -> None:
    conn.execute(
        "UPDATE dhgq.audio_processing_stages SET completed_at = now() - %s * interval '1 day' WHERE source_id = %s",
        (days, source_id),
    )


def jobs_of(conn: psycopg.Connection, source_id: str) -> set[int]:
    rows = conn.execute(
        "SELECT job_id::bigint FROM dhgq.audio_processing_stages WHERE source_id = %s", (source_id,)
    ).fetchall()
    return {row[0] for row in rows}


def events_days_ago(conn: psycopg.Connection, job_ids: set[int], days: float) -> None:
    conn.execute(
        "UPDATE dhgq.procrastinate_events SET at = now() - %s * interval '1 day' WHERE job_id = ANY(%s)",
        (days, list(job_ids)),
    )


def bare_job(conn: psycopg.Connection, status: str, days: float) -> int:
    """A maintenance job finished ``days`` ago, as a periodic task leaves one."""
    job_id = conn.execute(
        "INSERT INTO dhgq.procrastinate_jobs (queue_name, task_name, args) VALUES ('maintenance', 'dhgq.gc', "
        "'{\"timestamp\": 0}') RETURNING id"
    ).fetchone()[0]
    conn.execute(
        "UPDATE dhgq.procrastinate_jobs SET status = %s::dhgq.procrastinate_job_status WHERE id = %s",
        (status, job_id),
    )
    events_days_ago(conn, {job_id}, days)
    return int(job_id)


@dataclass
class World:
    work: Path
    scratch: Path
    ids: dict[str, str]
    removed: set[tuple[str, str]]  # (reason, path) that gc removes
    removed_files: set[Path]
    kept_files: set[Path]
    cleared: set[str]  # sources whose audio columns gc clears
    old_jobs: set[int]
    kept_jobs: set[int] = field(default_factory=set)


def build(conn: psycopg.Connection, home: Path) -> World:
    work, scratch = home / "audio", home / "tmp"
    removed: set[tuple[str, str]] = set()
    removed_files: set[Path] = set()
    kept: set[Path] = set()

    # live: transcription processing, diarization queued; old files in its dirs stay all the same
    live = add_source(conn, "live.mp4")
    set_stage(conn, live, "extraction", "completed", completed_at="2026-01-01T00:00:00Z")
    set_stage(conn, live, "transcription", "processing")
    set_stage(conn, live, "diarization", "queued")
    kept |= set(extracted_audio(conn, work, live))
    kept.add(touch(work / live / "half-written.wav", age_days=3))
    kept.add(touch(scratch / live / "download.mp4", age_days=3))
    # its queued diarization names a job that ended (say, by hand) long ago: that job stays
    queued_job = conn.execute(
        "SELECT job_id::bigint FROM dhgq.audio_processing_stages WHERE source_id = %s AND stage = 'diarization'",
        (live,),
    ).fetchone()[0]
    conn.execute("UPDATE dhgq.procrastinate_jobs SET status = 'failed' WHERE id = %s", (queued_job,))

    # completed 10 days ago: its audio goes, its row says so, its jobs go
    old_done = finished_source(conn, "old.mp4")
    audio = extracted_audio(conn, work, old_done)
    finished_days_ago(conn, old_done, 10)
    removed.add(("audio", str(work / old_done)))
    removed_files |= set(audio)
    leftover = touch(scratch / old_done / "talk.mp4.part", age_days=3)
    age(scratch / old_done, 3)
    removed.add(("scratch", str(scratch / old_done)))
    removed_files.add(leftover)

    # completed yesterday: its audio stays; a stale file no row names goes, a fresh one and a source's own file stay
    recent_done = finished_source(conn, "recent.mp4")
    kept |= set(extracted_audio(conn, work, recent_done))
    finished_days_ago(conn, recent_done, 1)
    stray = touch(work / recent_done / "audio.mp3", age_days=3)
    removed.add(("unreferenced", str(stray)))
    removed_files.add(stray)
    kept.add(touch(work / recent_done / "audio.m4a"))
    named = touch(work / recent_done / "talk-copy.mp4", age_days=3)
    kept.add(named)
    conn.execute("INSERT INTO sources_google (name, path, mime_type) VALUES ('copy', %s, 'video/mp4')", (str(named),))

    # failed for good 9 days ago (transcription, permanent): its audio goes too
    old_failed = add_source(conn, "old-failed.mp4")
    set_stage(conn, old_failed, "extraction", "completed")
    set_stage(conn, old_failed, "transcription", "failed", error_class="permanent", error="no speech model")
    set_stage(conn, old_failed, "diarization", "completed")
    audio = extracted_audio(conn, work, old_failed)
    finished_days_ago(conn, old_failed, 9)
    removed.add(("audio", str(work / old_failed)))
    removed_files |= set(audio)

    # failed two days ago: kept
    recent_failed = add_source(conn, "recent-failed.mp4")
    set_stage(conn, recent_failed, "extraction", "completed")
    set_stage(conn, recent_failed, "transcription", "failed", error_class="permanent", error="no speech model")
    set_stage(conn, recent_failed, "diarization", "completed")
    kept |= set(extracted_audio(conn, work, recent_failed))
    finished_days_ago(conn, recent_failed, 2)

    # a directory whose source row is gone, untouched for 3 days: goes; one written just now: stays
    gone = str(uuid.uuid4())
    orphan = touch(work / gone / "audio.wav", age_days=3)
    age(work / gone, 3)
    removed.add(("orphan", str(work / gone)))
    removed_files.add(orphan)
    kept.add(touch(work / str(uuid.uuid4()) / "audio.wav"))
    # not dhgq's layout: never touched
    kept.add(touch(work / "notes.txt", age_days=30))
    kept.add(touch(work / "not-a-source" / "audio.wav", age_days=30))

    # scratch: a killed worker's download without a row, an exports folder; a fresh one and a foreign file stay
    dead = str(uuid.uuid4())
    removed_files.add(touch(scratch / dead / "object.bin", age_days=2))
    age(scratch / dead, 2)
    removed.add(("scratch", str(scratch / dead)))
    removed_files.add(touch(scratch / "dhgq-exports-k3j2" / "talk.srt", age_days=2))
    age(scratch / "dhgq-exports-k3j2", 2)
    removed.add(("scratch", str(scratch / "dhgq-exports-k3j2")))
    kept.add(touch(scratch / str(uuid.uuid4()) / "object.bin"))
    kept.add(touch(scratch / "someone-elses.tmp", age_days=30))

    # jobs: the old sources' jobs ended 40 days ago, so did two maintenance runs (one still the
    # periodic task's latest defer); the rest are recent or live
    old_jobs = jobs_of(conn, old_done) | jobs_of(conn, old_failed)
    events_days_ago(conn, old_jobs, 40)
    events_days_ago(conn, {queued_job}, 40)
    old_jobs.add(bare_job(conn, "succeeded", 40))
    latest_defer = bare_job(conn, "succeeded", 40)
    conn.execute(
        "INSERT INTO dhgq.procrastinate_periodic_defers (task_name, periodic_id, defer_timestamp, job_id)"
        " VALUES ('dhgq.gc', 'daily', 1, %s)",
        (latest_defer,),
    )
    kept_jobs = {queued_job, latest_defer, bare_job(conn, "succeeded", 10)}

    ids = {
        "live": live,
        "old_done": old_done,
        "recent_done": recent_done,
        "old_failed": old_failed,
        "recent_failed": recent_failed,
    }
    return World(work, scratch, ids, removed, removed_files, kept, {old_done, old_failed}, old_jobs, kept_jobs)


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def database_state(conn: psycopg.Connection) -> Any:
    return (
        conn.execute(
            "SELECT id, audio_extracted, audio_extraction_path, updated_at FROM sources_google ORDER BY id"
        ).fetchall(),
        conn.execute(
            "SELECT source_id, stage, status, job_id, result, updated_at FROM dhgq.audio_processing_stages"
            " ORDER BY source_id, stage"
        ).fetchall(),
        conn.execute("SELECT id, status FROM dhgq.procrastinate_jobs ORDER BY id").fetchall(),
        conn.execute("SELECT count(*) FROM dhgq.procrastinate_events").fetchone(),
    )


def listed(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(r["reason"], r["path"]) for r in report["removals"]}


def test_dry_run_lists_then_gc_removes_exactly_what_retention_lets_go(
    cli: CliRunner, conn: psycopg.Connection, home: Path
) -> None:
    world = build(conn, home)
    every_file = files_under(home)
    assert world.removed_files | world.kept_files <= every_file
    before = database_state(conn)

    preview = gc(cli, "--dry-run")
    assert preview["dry_run"] is True
    assert listed(preview) == world.removed
    assert {Path(f) for r in preview["removals"] for f in r["files"]} == world.removed_files
    assert {s["source_id"] for s in preview["sources"]} == world.cleared
    assert {j["id"] for j in preview["jobs"]} == world.old_jobs
    assert preview["totals"]["files"] == len(world.removed_files)
    assert preview["totals"]["bytes"] == sum(p.stat().st_size for p in world.removed_files)
    assert preview["totals"]["events"] > len(world.old_jobs)
    assert files_under(home) == every_file and database_state(conn) == before  # nothing changed

    done = gc(cli)
    assert done["dry_run"] is False
    assert {k: v for k, v in done.items() if k != "dry_run"} == {k: v for k, v in preview.items() if k != "dry_run"}
    assert files_under(home) == every_file - world.removed_files
    for reason, path in world.removed:
        if reason != "unreferenced":
            assert not Path(path).exists(), path  # the directories they left empty went too
    assert (world.work / world.ids["recent_done"]).is_dir()

    audio = dict(
        (str(row[0]), row[1:])
        for row in conn.execute("SELECT id, audio_extracted, audio_extraction_path FROM sources_google")
    )
    for name, source_id in world.ids.items():
        if source_id in world.cleared:
            assert audio[source_id] == (False, None), name
        else:
            assert audio[source_id][0] is True and Path(audio[source_id][1]).is_file(), name
    jobs = {row[0] for row in conn.execute("SELECT id FROM dhgq.procrastinate_jobs")}
    assert not jobs & world.old_jobs and world.kept_jobs <= jobs
    assert len(jobs) == len(before[2]) - len(world.old_jobs)
    orphaned = conn.execute(
        "SELECT count(*) FROM dhgq.procrastinate_events WHERE job_id = ANY(%s)", (list(world.old_jobs),)
    ).fetchone()
    assert orphaned == (0,)
    # the stage rows are left as they were: the dead letter still says why it failed
    assert database_state(conn)[1] == before[1]

    again = gc(cli)
    assert again["removals"] == [] and again["sources"] == [] and again["jobs"] == []
    assert again["totals"] == {"files": 0, "bytes": 0, "sources": 0, "jobs": 0, "events": 0}

    human = cli.invoke(app, ["gc", "--dry-run"])
    assert human.exit_code == 0 and "would remove 0 file(s)" in human.stderr


def test_a_retry_after_gc_starts_again_from_extraction(cli: CliRunner, conn: psycopg.Connection, home: Path) -> None:
    world = build(conn, home)
    gc(cli)
    old_failed, recent_failed = world.ids["old_failed"], world.ids["recent_failed"]
    for source_id in (old_failed, recent_failed):
        result = cli.invoke(app, ["retry", source_id, "--json"])
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["retried"] == {source_id: 1}

    def stages(source_id: str) -> dict[str, str]:
        rows = conn.execute(
            "SELECT stage, status FROM dhgq.audio_processing_stages WHERE source_id = %s", (source_id,)
        ).fetchall()
        return dict(rows)

    # the audio is gone: extraction again, and the later stages follow it as on a first run
    assert stages(old_failed) == {"extraction": "queued"}
    # the audio is there: the failed stage only, as before
    assert stages(recent_failed) == {"extraction": "completed", "transcription": "queued", "diarization": "completed"}
    # a failed summarization needs no audio: retried by itself even when the audio is gone
    done = world.ids["old_done"]
    conn.execute(
        "UPDATE dhgq.audio_processing_stages SET status = 'failed', error = 'rate limited', error_class = 'transient'"
        " WHERE source_id = %s AND stage = 'summarization'",
        (done,),
    )
    assert conn.execute("SELECT dhgq.retry_source_v1(%s)", (done,)).fetchone() == (1,)
    assert stages(done)["summarization"] == "queued" and stages(done)["extraction"] == "completed"


def test_live_sources_are_never_touched_whatever_their_age(
    cli: CliRunner, conn: psycopg.Connection, home: Path
) -> None:
    """A source finished long ago but queued again (a reprocess): nothing of it goes until it ends."""
    work = home / "audio"
    source_id = finished_source(conn, "again.mp4")
    audio = extracted_audio(conn, work, source_id)
    stray = touch(work / source_id / "leftover.bin", age_days=30)
    finished_days_ago(conn, source_id, 30)
    conn.execute("UPDATE sources_google SET reprocess_requested = true WHERE id = %s", (source_id,))
    # a cancelled job still running (abort requested, its stage row already failed) counts as live too
    other = finished_source(conn, "aborting.mp4")
    other_audio = extracted_audio(conn, work, other)
    finished_days_ago(conn, other, 30)
    conn.execute(
        "UPDATE dhgq.procrastinate_jobs SET status = 'doing' WHERE id = "
        "(SELECT job_id::bigint FROM dhgq.audio_processing_stages WHERE source_id = %s AND stage = 'summarization')",
        (other,),
    )
    report = gc(cli)
    assert report["removals"] == [] and report["sources"] == []
    assert all(p.is_file() for p in [*audio, stray, *other_audio])


def test_one_collection_at_a_time(cli: CliRunner, conn: psycopg.Connection, home: Path) -> None:
    conn.execute("SELECT pg_advisory_lock(hashtext('dhgq.gc')::bigint)")
    try:
        result = cli.invoke(app, ["gc"])
        assert result.exit_code == 1 and "another dhgq gc" in result.stderr.lower()
        assert gc(cli, "--dry-run")["dry_run"] is True  # a dry run takes no lock
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtext('dhgq.gc')::bigint)")


def test_the_daily_task_runs_gc_in_a_worker(db_url: str, conn: psycopg.Connection, home: Path) -> None:
    from procrastinate.worker import Worker

    from dhgq.app import app as procrastinate_app
    from dhgq.app import connector_for
    from dhgq.db import task_pool
    from dhgq.stage import Resources
    from dhgq.tasks import gc as gc_task

    periodic = procrastinate_app.periodic_registry.periodic_tasks[(gc_task.TASK, "daily")]
    assert periodic.cron == gc_task.CRON and periodic.task.queue == gc_task.QUEUE == "maintenance"
    orphan = touch(home / "audio" / str(uuid.uuid4()) / "audio.wav", age_days=3)
    age(orphan.parent, 3)
    settings = Settings(database_url=db_url, home=home)
    resources = Resources(settings, task_pool(db_url, max_size=4))

    async def run() -> None:
        with procrastinate_app.replace_connector(connector_for(db_url)) as bound:
            async with bound.open_async():
                await bound.tasks[gc_task.TASK].defer_async(timestamp=0)
                worker = Worker(
                    bound,
                    queues=[gc_task.QUEUE],
                    wait=False,
                    additional_context={"dhgq": resources},
                    install_signal_handlers=False,
                )
                await worker.run()

    try:
        asyncio.run(run())
    finally:
        resources.close()
    assert not orphan.parent.exists()
    statuses = conn.execute(
        "SELECT DISTINCT status::text FROM dhgq.procrastinate_jobs WHERE task_name = %s", (gc_task.TASK,)
    ).fetchall()
    assert statuses == [("succeeded",)]
