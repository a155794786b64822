"""End to end as a Supabase app sees dhgq: a user submits a talk with the SDK (uploaded to Supabase
Storage under their own folder), a worker processes it from Storage, ``wait()`` returns,
``results()`` gives the speaker-labelled transcript and summary, the exports are back in Storage;
another user's client sees none of it.

The real Storage server and the Data API gateway (``tests/support/gateway.py``) stand in for a
Supabase project; supabase-py is used unchanged, with the anon key and the user's JWT.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dhgq.client import DhgqClient, DhgqClientError
from supabase import ClientOptions, create_client
from tests.support.pipeline import start_worker, worker_env
from tests.support.speech import TWO_SPEAKER_SCRIPT, dialogue, to_mp4
from tests.support.storage_server import StorageStack

pytestmark = pytest.mark.slow


def sdk_for(gateway_url: str, stack: StorageStack, user: uuid.UUID) -> DhgqClient:
    """The SDK as an app builds it for a signed-in user: the anon key, and the user's access token."""
    options = ClientOptions(headers={"Authorization": f"Bearer {stack.user_token(user)}"})
    return DhgqClient(create_client(gateway_url, stack.anon_key(), options=options))


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sdk-talk")
    return to_mp4(dialogue(TWO_SPEAKER_SCRIPT[:4], folder / "talk.wav").audio, folder / "keynote.mp4")


@pytest.fixture
def worker(storage_stack: StorageStack, gateway_url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `dhgq worker` that reads sources from Storage with the service key and uploads the exports back."""
    env = worker_env(
        storage_stack.database_url,
        tmp_path / "home",
        DHGQ_SUPABASE_URL=gateway_url,
        DHGQ_SUPABASE_SERVICE_KEY=storage_stack.service_key(),
        DHGQ_UPLOAD_OUTPUTS="true",
    )
    process = start_worker(env, tmp_path / "worker.log")
    yield process
    process.terminate()
    process.wait(timeout=60)


def test_a_user_submits_waits_and_reads_results_others_see_nothing(
    storage_stack: StorageStack, gateway_url: str, talk: Path, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    ada, bob = storage_stack.new_user(), storage_stack.new_user()
    mine, theirs = sdk_for(gateway_url, storage_stack, ada), sdk_for(gateway_url, storage_stack, bob)

    job = mine.submit(talk, {"num_speakers": 2, "language": "en"})
    assert job.file_path == f"{ada}/keynote.mp4" and job.status in ("queued", "processing")
    done = mine.wait(job.id, timeout=300)
    assert done.status == "completed", (done.error, (tmp_path / "worker.log").read_text()[-3000:])

    results = mine.results(job.id)
    assert results.speakers == ["SPEAKER_1", "SPEAKER_2"] and results.language == "en"
    assert len(results.utterances) >= 2 and all(u.end >= u.start >= 0 for u in results.utterances)
    words = [w for u in results.utterances for w in u.words]  # word timings, as the transcription kept them
    assert len(words) >= 10 and all(
        u.start - 0.5 <= w.start <= w.end <= u.end + 0.5 for u in results.utterances for w in u.words
    )
    assert all(w.text and w.probability is not None and 0 < w.probability <= 1 for w in words)
    assert results.language_probability is None  # the language was given (en), not detected
    assert "pipeline" in results.text.lower()
    assert results.summary is not None and results.summary["summary"]
    assert set(results.outputs) == {"srt", "vtt", "json", "md"}
    srt_key = results.outputs["srt"].removeprefix(f"storage://{storage_stack.bucket}/")
    assert srt_key == f"{ada}/keynote.dhgq/keynote.srt"
    srt = mine.supabase.storage.from_(storage_stack.bucket).download(srt_key).decode()
    assert "-->" in srt and "SPEAKER" in srt.upper()
    assert [j.id for j in mine.list_jobs()] == [job.id] and mine.list_jobs(status="failed") == []

    # Bob: none of Ada's requests, results or files
    assert theirs.list_jobs() == []
    with pytest.raises(DhgqClientError, match="of yours"):
        theirs.status(job.id)
    with pytest.raises(DhgqClientError):
        theirs.results(job.id)
    with pytest.raises(Exception):  # noqa: B017 - storage3 says 400/404 as it sees fit; any refusal will do
        theirs.supabase.storage.from_(storage_stack.bucket).download(srt_key)


def test_a_missing_object_fails_the_request_with_a_reason(
    storage_stack: StorageStack, gateway_url: str, worker: subprocess.Popen[bytes]
) -> None:
    ada = storage_stack.new_user()
    sdk = sdk_for(gateway_url, storage_stack, ada)
    job = sdk.submit("never-uploaded.mp4")  # not a local file: a key in Ada's folder
    done = sdk.wait(job.id, timeout=120)
    assert done.status == "failed" and "no such object" in (done.error or "")
    assert sdk.retry(job.id).status in ("queued", "processing")  # her own request: she may retry it
