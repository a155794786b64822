"""Sources that are not on the worker's disk, through the whole pipeline with real `dhgq worker`
processes: a Google Drive file (a local server speaking Drive v3 and the service-account token
exchange), its Drive metadata landing in sources_google, a 503 retried by the queue; and an
https:// URL, a private address refused unless allowed."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.fake_drive import DriveFile, FakeDrive, fake_drive_server, new_service_account
from tests.support.pipeline import insert_source, rows, run_once, scalar, stage_statuses, worker_env
from tests.support.speech import TWO_SPEAKER_SCRIPT, dialogue, to_mp4

pytestmark = pytest.mark.slow
DRIVE_ID = "1TalkOnDrive0000000000000"


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("remote-talk")
    return to_mp4(dialogue(TWO_SPEAKER_SCRIPT[:2], folder / "talk.wav").audio, folder / "talk.mp4")


@pytest.fixture
def drive(talk: Path, tmp_path: Path) -> Iterator[tuple[FakeDrive, Path]]:
    account = new_service_account()
    with fake_drive_server() as fake:
        fake.trust(account)
        fake.add(DriveFile(DRIVE_ID, "Keynote on Drive.mp4", talk.read_bytes(), failures=1))  # one 503 first
        yield fake, account.write(tmp_path / "service-account.json", fake.token_uri)


def test_a_drive_file_runs_through_the_pipeline_with_its_metadata(
    db_url: str, drive: tuple[FakeDrive, Path], talk: Path, tmp_path: Path
) -> None:
    fake, key_file = drive
    source_id = insert_source(db_url, f"gdrive://{DRIVE_ID}")
    env = worker_env(
        db_url, tmp_path / "home", DHGQ_GDRIVE_SERVICE_ACCOUNT_FILE=str(key_file), DHGQ_GDRIVE_API_URL=fake.url
    )
    run_once(env)
    assert stage_statuses(db_url, source_id) == dict.fromkeys(
        ("extraction", "transcription", "diarization", "summarization"), "completed"
    )
    assert (
        scalar(
            db_url,
            "SELECT attempts FROM dhgq.audio_processing_stages WHERE source_id = %s AND stage = 'extraction'",
            (source_id,),
        )
        == 2
    )  # the 503, retried by the queue
    [row] = rows(
        db_url,
        "SELECT drive_id, web_view_link, md5_checksum, content_hash, parent_folder_id "
        "FROM sources_google WHERE id = %s",
        (source_id,),
    )
    assert row[0] == DRIVE_ID and row[1].endswith(f"/d/{DRIVE_ID}/view?usp=drivesdk")
    assert row[2] == hashlib.md5(talk.read_bytes()).hexdigest()
    assert row[3] == hashlib.sha256(talk.read_bytes()).hexdigest() and row[4] == "1FolderOfTalks0000000"
    assert not list((tmp_path / "home" / "tmp").rglob("*.mp4"))  # the download is gone


@pytest.fixture
def web(talk: Path) -> Iterator[str]:
    handler = partial(SimpleHTTPRequestHandler, directory=str(talk.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_an_https_source_is_fetched_and_a_private_one_refused(db_url: str, web: str, tmp_path: Path) -> None:
    allowed = insert_source(db_url, f"{web}/talk.mp4")
    run_once(worker_env(db_url, tmp_path / "a", DHGQ_ALLOW_PRIVATE_HOSTS='["127.0.0.1"]'))
    assert stage_statuses(db_url, allowed)["summarization"] == "completed"

    refused = insert_source(db_url, f"{web}/talk.mp4?again")
    run_once(worker_env(db_url, tmp_path / "b"))  # nothing private allowed: the default
    [(status, error_class, error)] = rows(
        db_url,
        "SELECT status, error_class, error FROM dhgq.audio_processing_stages "
        "WHERE source_id = %s AND stage = 'extraction'",
        (refused,),
    )
    assert (status, error_class) == ("failed", "permanent") and "private, loopback or link-local" in error
