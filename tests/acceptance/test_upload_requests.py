"""Processing on upload: a signed-in user uploads a talk into their folder of the media bucket with
supabase-py (through the real Storage server), and that alone starts a request of theirs that a real
worker completes; the same bytes uploaded again start nothing; uploads dhgq must not process (other
buckets, the worker's own exports, files that are not media, opted out) start nothing; options that
fail the request checks refuse the upload with the reason.

The trigger is on for this module only (``process_uploads``): the session's Storage stack keeps it
off, so that tests uploading media for other reasons start no pipelines (tests/conftest.py).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from storage3.exceptions import StorageApiError

from dhgq.client import DhgqClient
from supabase import ClientOptions, create_client
from tests.support.pipeline import start_worker, worker_env
from tests.support.speech import TWO_SPEAKER_SCRIPT, dialogue, to_mp4
from tests.support.storage_server import StorageStack

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(r"ignore::DeprecationWarning:supabase\._sync\.client"),
]


def sdk_for(gateway_url: str, stack: StorageStack, user: uuid.UUID) -> DhgqClient:
    options = ClientOptions(headers={"Authorization": f"Bearer {stack.user_token(user)}"})
    return DhgqClient(create_client(gateway_url, stack.anon_key(), options=options))


def upload(sdk: DhgqClient, key: str, data: bytes, content_type: str, metadata: Any = None) -> None:
    """What an app does with supabase-js / supabase-py: an upload into the user's folder, with user metadata."""
    options: dict[str, Any] = {"content-type": content_type, "upsert": "true"}
    if metadata is not None:
        options["metadata"] = metadata
    sdk.supabase.storage.from_("media").upload(key, data, options)


def requests_of(stack: StorageStack, user: uuid.UUID) -> list[tuple[Any, ...]]:
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT file_path, options, status, source_id FROM processing_jobs WHERE user_id = %s ORDER BY created_at",
            (user,),
        ).fetchall()


def set_uploads(stack: StorageStack, on: bool) -> None:
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        value = "true" if on else "false"
        conn.execute("UPDATE dhgq.config SET value = %s::jsonb WHERE key = 'process_uploads'", (value,))


@pytest.fixture(scope="module")
def uploads_on(storage_stack: StorageStack) -> Iterator[StorageStack]:
    set_uploads(storage_stack, True)
    yield storage_stack
    set_uploads(storage_stack, False)


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("upload-talk")
    return to_mp4(dialogue(TWO_SPEAKER_SCRIPT[:4], folder / "talk.wav").audio, folder / "keynote.mp4")


@pytest.fixture
def worker(uploads_on: StorageStack, gateway_url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = worker_env(
        uploads_on.database_url,
        tmp_path / "home",
        DHGQ_SUPABASE_URL=gateway_url,
        DHGQ_SUPABASE_SERVICE_KEY=uploads_on.service_key(),
    )
    process = start_worker(env, tmp_path / "worker.log")
    yield process
    process.terminate()
    process.wait(timeout=60)


def test_the_default_is_on(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT value FROM dhgq.config WHERE key = 'process_uploads'").fetchone() == (True,)


def test_an_upload_starts_a_request_that_a_worker_completes(
    uploads_on: StorageStack, gateway_url: str, talk: Path, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    ada = uploads_on.new_user()
    sdk = sdk_for(gateway_url, uploads_on, ada)
    key = f"{ada}/talks/keynote.mp4"
    upload(sdk, key, talk.read_bytes(), "video/mp4", {"dhgq": {"language": "en", "num_speakers": 2}})

    [job] = sdk.list_jobs()  # the user's own request, through the Data API
    assert (job.file_path, job.options) == (key, {"language": "en", "num_speakers": 2})
    done = sdk.wait(job.id, timeout=300)
    assert done.status == "completed", (done.error, (tmp_path / "worker.log").read_text()[-3000:])
    results = sdk.results(job.id)
    assert results.speakers == ["SPEAKER_1", "SPEAKER_2"] and "pipeline" in results.text.lower()

    upload(sdk, key, talk.read_bytes(), "video/mp4")  # the same bytes again (upsert): nothing starts
    assert [j.id for j in sdk.list_jobs()] == [job.id]
    assert sdk.status(job.id).status == "completed"

    upload(sdk, f"{ada}/talks/keep.mp4", talk.read_bytes(), "video/mp4", {"dhgq": False})  # stored, not processed
    assert len(requests_of(uploads_on, ada)) == 1


def test_uploads_dhgq_does_not_process_start_nothing(uploads_on: StorageStack, gateway_url: str) -> None:
    bob = uploads_on.new_user()
    sdk = sdk_for(gateway_url, uploads_on, bob)
    media = b"\x00\x00\x00\x18ftypmp42" + bytes(1024)
    upload(sdk, f"{bob}/notes.txt", b"not a talk", "text/plain")
    upload(sdk, f"{bob}/keynote.dhgq/keynote.mp4", media, "video/mp4")  # under an exports folder
    upload(sdk, f"{bob}/opted-out.mp4", media, "video/mp4", {"dhgq": False})
    service = uploads_on.storage(uploads_on.service_key())
    other = f"other-{uuid.uuid4().hex[:8]}"
    service.create_bucket(other, options={"public": False})
    service.from_(other).upload(f"{bob}/elsewhere.mp4", media, {"content-type": "video/mp4"})
    set_uploads(uploads_on, False)
    try:
        upload(sdk, f"{bob}/while-off.mp4", media, "video/mp4")
    finally:
        set_uploads(uploads_on, True)
    assert requests_of(uploads_on, bob) == []

    with pytest.raises(StorageApiError) as refused:  # options the database refuses: so is the upload
        upload(sdk, f"{bob}/bad-options.mp4", media, "video/mp4", {"dhgq": {"language": "English"}})
    assert "options.language must be a two- or three-letter ISO 639 code" in str(refused.value.message)
    assert not sdk.supabase.storage.from_("media").exists(f"{bob}/bad-options.mp4")
    assert requests_of(uploads_on, bob) == []

    # the service role uploads for a user: the folder's user owns the request
    service.from_("media").upload(f"{bob}/by-the-backend.m4a", media, {"content-type": "application/octet-stream"})
    [(file_path, options, status, source_id)] = requests_of(uploads_on, bob)
    assert (file_path, options, status) == (f"{bob}/by-the-backend.m4a", {}, "queued") and source_id is not None
    with psycopg.connect(uploads_on.database_url, autocommit=True) as conn:  # not a talk: no worker need try it
        conn.execute("SELECT dhgq.cancel_source_v1(%s)", (source_id,))
