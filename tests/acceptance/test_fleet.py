"""Many machines, one database: `dhgq worker` processes that share only a hosted-like database and the real
Supabase Storage server, each with its own home, temp dir, cache and host name, as on separate machines.

Extraction runs on machine A, whose home is then deleted; the model stages start on machine B, which is
killed outright mid-stage (its process group, model hosts included); machine C finishes them from the
artifact store, and machine D writes the summary. The talk completes once, with the right speakers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.support.pipeline import rows, scalar, stage_statuses, wait_for, worker_env
from tests.support.speech import TWO_SPEAKER_SCRIPT, dialogue, to_mp4
from tests.support.storage_server import StorageStack

pytestmark = pytest.mark.slow
STAGES = ("extraction", "transcription", "diarization", "summarization")


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fleet-talk")
    return to_mp4(dialogue(TWO_SPEAKER_SCRIPT, folder / "talk.wav").audio, folder / "talk.mp4")


def machine_env(stack: StorageStack, gateway_url: str, root: Path, name: str, **extra: str) -> dict[str, str]:
    """A worker machine: its own home and temp dir, its host name; the database and Storage are shared."""
    return worker_env(
        stack.database_url,
        root / name / "home",
        DHGQ_TEMP_DIR=str(root / name / "tmp"),
        DHGQ_HOST_NAME=name,
        DHGQ_SUPABASE_URL=gateway_url,
        DHGQ_SUPABASE_SERVICE_KEY=stack.service_key(),
        DHGQ_ARTIFACT_PART_BYTES=str(512 * 1024),  # the 16 kHz WAV of the talk goes in several parts
        DHGQ_PROGRESS_EVERY="0.2",
        **extra,
    )


def worker(env: dict[str, str], *queues: str, once: bool = True, log: Path | None = None) -> subprocess.Popen[bytes]:
    """`dhgq worker` for these queues, in its own process group (so that killing the machine kills its children)."""
    command = [sys.executable, "-m", "dhgq", "worker", *(arg for q in queues for arg in ("--queue", q))]
    command += ["--once"] if once else []
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def finish(process: subprocess.Popen[bytes], log: Path, timeout: float = 600) -> None:
    assert process.wait(timeout=timeout) == 0, log.read_text()[-4000:]


def test_stages_run_on_separate_machines_and_survive_losing_two_of_them(
    storage_stack: StorageStack, gateway_url: str, talk: Path, tmp_path: Path
) -> None:
    db = storage_stack.database_url
    user = storage_stack.new_user()
    key = f"{user}/fleet/{uuid.uuid4().hex}.mp4"
    service = storage_stack.storage(storage_stack.service_key())
    service.from_(storage_stack.bucket).upload(key, talk.read_bytes(), {"content-type": "video/mp4"})
    source_id = str(
        scalar(
            db,
            "INSERT INTO sources_google (name, path, mime_type) VALUES ('fleet talk', %s, 'video/mp4') RETURNING id",
            (f"storage://{storage_stack.bucket}/{key}",),
        )
    )
    a, b, c, d = (machine_env(storage_stack, gateway_url, tmp_path, name) for name in "abcd")
    logs = {name: tmp_path / f"{name}.log" for name in "abcd"}

    finish(worker(a, "extraction", log=logs["a"]), logs["a"])  # machine A: extraction only
    assert stage_statuses(db, source_id)["extraction"] == "completed"
    [(uri, parts, host, size)] = rows(
        db, "SELECT uri, parts, host, size FROM dhgq.artifacts WHERE source_id = %s AND kind = 'audio'", (source_id,)
    )
    assert uri == f"storage://dhgq-artifacts/{source_id}/audio.wav" and parts > 1 and host == "a"
    shutil.rmtree(tmp_path / "a")  # machine A is gone, its disk with it

    b_process = worker(b, "transcription", "diarization", once=False, log=logs["b"])  # machine B: the models
    try:
        wait_for(
            lambda: scalar(
                db,
                "SELECT count(*) = 2 FROM dhgq.audio_processing_stages WHERE source_id = %s AND host = 'b' "
                "AND status = 'processing' AND progress >= 5",
                (source_id,),
            ),
            180,
            "machine B to start both model stages",
        )
    finally:
        os.killpg(b_process.pid, signal.SIGKILL)  # the machine dies: worker and model hosts alike
        b_process.wait(timeout=30)
    assert {stage_statuses(db, source_id)[s] for s in ("transcription", "diarization")} == {"processing"}

    finish(worker(c, "transcription", "diarization", log=logs["c"]), logs["c"])  # C picks up B's stalled jobs
    finish(worker(d, "summarization", log=logs["d"]), logs["d"])  # D: summaries only
    assert stage_statuses(db, source_id) == dict.fromkeys(STAGES, "completed"), logs["c"].read_text()[-3000:]

    hosts = dict(rows(db, "SELECT stage, host FROM dhgq.audio_processing_stages WHERE source_id = %s", (source_id,)))
    assert hosts == {"extraction": "a", "transcription": "c", "diarization": "c", "summarization": "d"}
    retried = scalar(
        db,
        "SELECT max(attempts) FROM dhgq.audio_processing_stages WHERE source_id = %s "
        "AND stage IN ('transcription', 'diarization')",
        (source_id,),
    )
    assert retried == 2  # what B held ran again on C
    assert scalar(db, "SELECT count(*) FROM speaker_profiles WHERE source_id = %s", (source_id,)) == 2
    documents = rows(
        db, "SELECT content_type, count(*) FROM expert_documents WHERE source_id = %s GROUP BY 1", (source_id,)
    )
    assert dict(documents) == {"transcript": 1, "summary": 1}  # once, whoever finished
    transcript = scalar(
        db,
        "SELECT raw_content FROM expert_documents WHERE source_id = %s AND content_type = 'transcript'",
        (source_id,),
    )
    assert "pipeline" in transcript.lower()
    cached = list((tmp_path / "c" / "home" / "cache" / "artifacts" / "objects").rglob("*.wav"))
    assert len(cached) == 1 and cached[0].stat().st_size == size  # fetched once on C, for both model stages
    assert not (tmp_path / "d" / "home" / "cache").exists()  # summarization needs no audio

    status = subprocess.run(
        [sys.executable, "-m", "dhgq", "status", "--json"], env=d, capture_output=True, text=True, check=True
    )
    fleet = json.loads(status.stdout)["fleet"]
    assert {w["host"] for w in fleet} >= {"a", "c", "d"}
    assert all(not w["alive"] for w in fleet if w["host"] in "acd")  # --once workers stopped, and said so
    detail = subprocess.run(
        [sys.executable, "-m", "dhgq", "status", source_id, "--json"], env=d, capture_output=True, text=True, check=True
    )
    assert {s["stage"]: s["host"] for s in json.loads(detail.stdout)["stages"]} == hosts


@pytest.fixture(scope="module")
def short_talk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fleet-short")
    return to_mp4(dialogue(TWO_SPEAKER_SCRIPT[:2], folder / "talk.wav").audio, folder / "short.mp4")


def stored_source(stack: StorageStack, talk: Path) -> str:
    """A user's talk in the media bucket and its source row (as the service role adds one)."""
    key = f"{stack.new_user()}/fleet/{uuid.uuid4().hex}.mp4"
    stack.storage(stack.service_key()).from_(stack.bucket).upload(key, talk.read_bytes(), {"content-type": "video/mp4"})
    return str(
        scalar(
            stack.database_url,
            "INSERT INTO sources_google (name, path, mime_type) VALUES ('short', %s, 'video/mp4') RETURNING id",
            (f"storage://{stack.bucket}/{key}",),
        )
    )


def test_audio_gone_from_the_store_fails_clearly_and_a_retry_extracts_again(
    storage_stack: StorageStack, gateway_url: str, short_talk: Path, tmp_path: Path
) -> None:
    db = storage_stack.database_url
    source_id = stored_source(storage_stack, short_talk)
    a, b = (machine_env(storage_stack, gateway_url, tmp_path, name) for name in "ab")
    finish(worker(a, "extraction", log=tmp_path / "a.log"), tmp_path / "a.log")
    bucket = storage_stack.storage(storage_stack.service_key()).from_("dhgq-artifacts")
    bucket.remove([f"{source_id}/{entry['name']}" for entry in bucket.list(source_id)])  # gone from the store

    finish(worker(b, "transcription", "diarization", log=tmp_path / "b.log"), tmp_path / "b.log")
    failed = rows(
        db,
        "SELECT stage, status, error_class, error FROM dhgq.audio_processing_stages "
        "WHERE source_id = %s AND stage IN ('transcription', 'diarization') ORDER BY stage",
        (source_id,),
    )
    assert [(stage, status, error_class) for stage, status, error_class, _ in failed] == [
        ("diarization", "failed", "permanent"),
        ("transcription", "failed", "permanent"),
    ]
    assert all("gone from the artifact store" in error and "retry" in error for *_, error in failed)
    attempts = "SELECT max(attempts) FROM dhgq.audio_processing_stages WHERE source_id = %s AND stage <> 'extraction'"
    assert scalar(db, attempts, (source_id,)) == 1  # permanent: not retried
    assert scalar(db, "SELECT audio_extraction_path FROM sources_google WHERE id = %s", (source_id,)) is None
    assert scalar(db, "SELECT count(*) FROM dhgq.dead_letter WHERE source_id = %s", (source_id,)) == 2

    subprocess.run([sys.executable, "-m", "dhgq", "retry", source_id], env=b, check=True, capture_output=True)
    finish(worker(b, log=tmp_path / "b.log"), tmp_path / "b.log")  # every queue: extraction again, then the rest
    assert stage_statuses(db, source_id) == dict.fromkeys(STAGES, "completed")


def test_gc_removes_stored_audio_of_finished_and_deleted_sources(
    storage_stack: StorageStack, gateway_url: str, short_talk: Path, tmp_path: Path
) -> None:
    db = storage_stack.database_url
    kept, expired, deleted = (stored_source(storage_stack, short_talk) for _ in range(3))
    a = machine_env(storage_stack, gateway_url, tmp_path, "a")
    finish(worker(a, log=tmp_path / "a.log"), tmp_path / "a.log")
    bucket = storage_stack.storage(storage_stack.service_key()).from_("dhgq-artifacts")
    assert all(bucket.list(source_id) for source_id in (kept, expired, deleted))
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "UPDATE dhgq.audio_processing_stages SET completed_at = now() - interval '30 days' WHERE source_id = %s",
            (expired,),
        )
        conn.execute("DELETE FROM sources_google WHERE id = %s", (deleted,))

    plan = subprocess.run(
        [sys.executable, "-m", "dhgq", "gc", "--dry-run", "--json"], env=a, capture_output=True, text=True, check=True
    )
    planned = {
        (r["reason"], r["source_id"]) for r in json.loads(plan.stdout)["removals"] if r["path"].startswith("storage://")
    }
    assert planned == {("audio", expired), ("orphan", deleted)}
    subprocess.run([sys.executable, "-m", "dhgq", "gc"], env=a, check=True, capture_output=True)
    assert bucket.list(expired) == [] and bucket.list(deleted) == [] and bucket.list(kept)
    assert scalar(db, "SELECT count(*) FROM dhgq.artifacts WHERE source_id = %s", (expired,)) == 0
    assert scalar(db, "SELECT audio_extraction_path FROM sources_google WHERE id = %s", (expired,)) is None
    assert scalar(db, "SELECT audio_extraction_path FROM sources_google WHERE id = %s", (kept,)).startswith(
        "storage://"
    )
