"""Watched Drive folders, against the local Drive v3 server (tests/support/fake_drive.py): `dhgq drive watch`
adds the folder's media files as sources; the periodic task, run by a real `dhgq worker` on the maintenance
queue, adds what arrived since Drive's page token (and runs a changed file again) and nothing else; a
failing folder says why in `dhgq drive list`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner, Result

from dhgq.cli import app
from dhgq.fetch import google_credentials
from tests.support.fake_drive import DriveFile, FakeDrive, fake_drive_server, new_service_account
from tests.support.pipeline import rows, worker_env

FOLDER = "1WatchedFolderOfTalks00"
OTHER = "1SomeOtherFolder0000000"
FOLDER_TYPE = "application/vnd.google-apps.folder"


@pytest.fixture
def drive(tmp_path: Path) -> Iterator[tuple[FakeDrive, Path]]:
    account = new_service_account()
    google_credentials.clear_cache()
    with fake_drive_server() as fake:
        fake.trust(account)
        fake.add(
            DriveFile(FOLDER, "Talks 2026", mime_type=FOLDER_TYPE, parents=["0RootFolder000000000"]),
            DriveFile("1FirstTalkInFolder0000", "keynote.mp4", b"first talk", parents=[FOLDER]),
            DriveFile("1SecondTalkInFolder000", "panel.m4a", b"second talk", mime_type="audio/mp4", parents=[FOLDER]),
            DriveFile("1SlidesNotMedia0000000", "slides.pdf", b"%PDF", mime_type="application/pdf", parents=[FOLDER]),
        )
        yield fake, account.write(tmp_path / "service-account.json", fake.token_uri)
    google_credentials.clear_cache()


@pytest.fixture
def env(db_url: str, drive: tuple[FakeDrive, Path], tmp_path: Path) -> dict[str, str]:
    fake, key_file = drive
    return worker_env(
        db_url, tmp_path / "home", DHGQ_GDRIVE_SERVICE_ACCOUNT_FILE=str(key_file), DHGQ_GDRIVE_API_URL=fake.url
    )


def dhgq(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def drive_sources(db_url: str) -> dict[str, tuple[Any, ...]]:
    found = rows(
        db_url,
        "SELECT drive_id, id, name, path, parent_folder_id, md5_checksum, options FROM sources_google"
        " WHERE drive_id IS NOT NULL",
    )
    return {row[0]: row[1:] for row in found}


def run_watch_task(env: dict[str, str], db_url: str) -> str:
    """What the periodic deferrer does every minute, then a real worker on the maintenance queue only."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE dhgq.drive_watches SET checked_at = now() - interval '1 hour'")  # a while later
        conn.execute(
            "SELECT dhgq.procrastinate_defer_jobs_v1(ARRAY[ROW('maintenance', 'dhgq.drive_watch', 0, NULL,"
            " 'dhgq.drive_watch', '{\"timestamp\": 0}'::jsonb, NULL)::dhgq.procrastinate_job_to_defer_v1])"
        )
    done = subprocess.run(
        [sys.executable, "-m", "dhgq", "worker", "--once", "--queue", "maintenance"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def test_a_watched_folder_adds_its_media_then_what_arrives(
    env: dict[str, str], db_url: str, drive: tuple[FakeDrive, Path]
) -> None:
    fake, _ = drive
    watched = dhgq(env, "drive", "watch", f"https://drive.google.com/drive/folders/{FOLDER}", "--speakers", "2")
    assert watched.exit_code == 0, watched.output
    assert "'Talks 2026'" in watched.stderr and "2 media file(s) added" in watched.stderr
    sources = drive_sources(db_url)
    assert set(sources) == {"1FirstTalkInFolder0000", "1SecondTalkInFolder000"}
    assert sources["1FirstTalkInFolder0000"][1:4] == ("keynote.mp4", "gdrive://1FirstTalkInFolder0000", FOLDER)
    assert sources["1FirstTalkInFolder0000"][5] == {"num_speakers": 2}
    started = rows(db_url, "SELECT count(*) FROM dhgq.audio_processing_stages WHERE stage = 'extraction'")
    assert started == [(2,)]  # their pipelines started with the INSERT

    fake.add(
        DriveFile("1ThirdTalkArrives00000", "q-and-a.webm", b"third", mime_type="video/webm", parents=[FOLDER]),
        DriveFile("1NotesArrive0000000000", "notes.txt", b"notes", mime_type="text/plain", parents=[FOLDER]),
        DriveFile("1TalkElsewhere00000000", "other.mp4", b"elsewhere", parents=[OTHER]),
        DriveFile("1TrashedOnArrival00000", "oops.mp4", b"trashed", parents=[FOLDER], trashed=True),
    )
    fake.replace("1SecondTalkInFolder000", b"second talk, re-recorded", "2026-12-01T10:00:00.000Z")
    log = run_watch_task(env, db_url)
    assert "Traceback" not in log
    after = drive_sources(db_url)
    assert set(after) == set(sources) | {"1ThirdTalkArrives00000"}
    assert after["1SecondTalkInFolder000"][4] != sources["1SecondTalkInFolder000"][4]  # the new version's md5

    listed = json.loads(dhgq(env, "drive", "list", "--json").stdout)["watches"]
    assert [(w["folder_id"], w["folder_name"], w["sources_added"], w["last_error"]) for w in listed] == [
        (FOLDER, "Talks 2026", 3, None)
    ]

    run_watch_task(env, db_url)  # nothing new since the last token: nothing added
    assert set(drive_sources(db_url)) == set(after)

    fake.add(DriveFile("1FourthTalkArrives0000", "closing.mp3", b"fourth", mime_type="audio/mpeg", parents=[FOLDER]))
    checked = dhgq(env, "drive", "check", FOLDER)
    assert checked.exit_code == 0 and "1 new source(s)" in checked.stderr, checked.output
    assert dhgq(env, "drive", "unwatch", FOLDER).exit_code == 0
    assert json.loads(dhgq(env, "drive", "list", "--json").stdout)["watches"] == []


def test_a_folder_that_fails_says_why(env: dict[str, str], db_url: str, drive: tuple[FakeDrive, Path]) -> None:
    not_folder = dhgq(env, "drive", "watch", "1FirstTalkInFolder0000")
    assert not_folder.exit_code == 1 and "is a file (video/mp4), not a folder" in not_folder.stderr
    unknown = dhgq(env, "drive", "watch", "1NoSuchFolderAnywhere0")
    assert unknown.exit_code == 1 and "not shared with dhgq-worker@" in unknown.stderr
    assert "Traceback" not in not_folder.output + unknown.output

    assert dhgq(env, "drive", "watch", FOLDER, "--new-only").exit_code == 0
    assert drive_sources(db_url) == {}  # the files already there are left alone
    with psycopg.connect(db_url, autocommit=True) as conn:  # a token Drive no longer knows
        conn.execute("UPDATE dhgq.drive_watches SET page_token = '999999'")
    run_watch_task(env, db_url)
    [watch] = json.loads(dhgq(env, "drive", "list", "--json").stdout)["watches"]
    assert "Invalid Value: pageToken" in watch["last_error"]
    assert "failing:" in dhgq(env, "drive", "list").stdout
