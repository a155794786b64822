"""The artifact store between stages: Supabase Storage's private artifact bucket (the real Storage server,
through the Supabase-like gateway), each machine's cache, and the errors a stage gets from them.

Two "machines" are two homes with their own caches on this one: what one puts, the other fetches.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import socket
import uuid
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from storage3.exceptions import StorageApiError

from dhgq.artifacts import Artifact, part_keys, store_for
from dhgq.artifacts.cache import ArtifactCache
from dhgq.artifacts.local import LocalStore
from dhgq.artifacts.storage import StorageStore
from dhgq.errors import ArtifactMissing, ConfigurationError, PermanentError, TransientError
from dhgq.gpu import AudioInput, modal_payload
from dhgq.settings import Settings
from tests.support.storage_server import StorageStack

PART = 64 * 1024  # the smallest part size the settings allow: a 300 KB file goes in 5 parts


def machine(tmp_path: Path, name: str, gateway_url: str, stack: StorageStack, **extra: object) -> Settings:
    """The settings of one worker machine: its own home (work dir, scratch, cache) and host name."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=SecretStr(stack.database_url),
        home=tmp_path / name,
        host_name=name,
        supabase_url=gateway_url,
        supabase_service_key=SecretStr(stack.service_key()),
        artifact_part_bytes=PART,
        **extra,
    )


def written(folder: Path, name: str, size: int) -> tuple[Path, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    (folder / name).write_bytes(data)
    return folder / name, data


def test_an_artifact_put_on_one_machine_is_fetched_on_another(
    storage_stack: StorageStack, gateway_url: str, tmp_path: Path
) -> None:
    a, b = (machine(tmp_path, name, gateway_url, storage_stack) for name in ("machine-a", "machine-b"))
    store_a, store_b = store_for(a), store_for(b)
    assert isinstance(store_a, StorageStore) and a.artifact_backend() == "storage"
    source_id = str(uuid.uuid4())
    with store_a.staging(source_id) as folder:
        path, data = written(folder, "audio.wav", 5 * PART - 100)
        artifact = store_a.put(source_id, "audio", path, "audio/wav")
    assert not folder.exists()  # the staging folder goes; the file went into machine A's cache
    assert artifact.uri == f"storage://dhgq-artifacts/{source_id}/audio.wav" and artifact.parts == 5
    assert artifact.sha256 == hashlib.sha256(data).hexdigest() and artifact.host == "machine-a"
    cached_a = store_a.cache.path_of(artifact)  # type: ignore[attr-defined]
    assert cached_a.read_bytes() == data

    with store_b.local_file(artifact) as local:  # machine B: fetched, checked, in B's own cache
        assert local.read_bytes() == data and local.is_relative_to(b.artifact_cache_dir)
        assert oct(local.stat().st_mode & 0o777) == "0o600"
    with store_b.local_file(artifact) as again:  # the second stage on B pays nothing
        assert again == local

    urls = store_a.signed_urls(artifact, 60)
    assert urls is not None and len(urls) == 5
    assert b"".join(httpx.get(url, timeout=30).content for url in urls) == data
    payload, _ = modal_payload(AudioInput(source_id, 12.0, urls=tuple(urls)))
    assert payload == urls  # a Modal function fetches the parts in order

    other = str(uuid.uuid4())
    copied = store_a.copy(artifact, other)  # reuse: the same bytes as another source's own objects
    assert copied.uri.endswith(f"{other}/audio.wav") and copied.sha256 == artifact.sha256
    assert store_b.remove([artifact]) == 5
    with pytest.raises(ArtifactMissing, match="gone from the artifact store"):
        with store_for(machine(tmp_path, "machine-c", gateway_url, storage_stack)).local_file(artifact):
            pass
    with store_for(machine(tmp_path, "machine-c", gateway_url, storage_stack)).local_file(copied) as local:
        assert local.read_bytes() == data  # the copy stands alone


def test_a_corrupt_object_is_refused_and_never_cached(
    storage_stack: StorageStack, gateway_url: str, tmp_path: Path
) -> None:
    a = machine(tmp_path, "machine-a", gateway_url, storage_stack)
    store = store_for(a)
    source_id = str(uuid.uuid4())
    with store.staging(source_id) as folder:
        path, data = written(folder, "audio.wav", 2 * PART)
        artifact = store.put(source_id, "audio", path, "audio/wav")
    bucket = storage_stack.storage(storage_stack.service_key()).from_("dhgq-artifacts")
    second = list(part_keys(f"{source_id}/audio.wav", 2))[1]
    bucket.update(second, os.urandom(PART), {"content-type": "application/octet-stream"})  # bit rot, same size
    b = machine(tmp_path, "machine-b", gateway_url, storage_stack)
    with pytest.raises(ArtifactMissing, match="corrupt in the store"):
        with store_for(b).local_file(artifact):
            pass
    assert not list(ArtifactCache(b.artifact_cache_dir, b.cache_max_bytes).files())


def test_an_unreachable_store_is_transient_and_a_refused_key_is_configuration(
    storage_stack: StorageStack, gateway_url: str, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    down = machine(tmp_path, "machine-a", closed, storage_stack)
    artifact = Artifact("audio", f"storage://dhgq-artifacts/{uuid.uuid4()}/audio.wav", "0" * 64, 10, "audio/wav")
    with pytest.raises(TransientError, match="unreachable"):
        with store_for(down).local_file(artifact):
            pass
    with store_for(down).staging("x") as folder:
        path, _ = written(folder, "audio.wav", 1000)
        with pytest.raises(TransientError, match="unreachable"):
            store_for(down).put("x", "audio", path, "audio/wav")
    refused = machine(tmp_path, "machine-b", gateway_url, storage_stack).model_copy(
        update={"supabase_service_key": SecretStr(storage_stack.anon_key())}
    )
    with pytest.raises(ConfigurationError, match="refused the service key|DHGQ_SUPABASE_SERVICE_KEY"):
        with store_for(refused).staging("y") as folder:
            path, _ = written(folder, "audio.wav", 1000)
            store_for(refused).put("y", "audio", path, "audio/wav")


def test_users_reach_no_artifact(storage_stack: StorageStack, gateway_url: str, tmp_path: Path) -> None:
    store = store_for(machine(tmp_path, "machine-a", gateway_url, storage_stack))
    user = storage_stack.new_user()
    source_id = str(uuid.uuid4())
    with store.staging(source_id) as folder:
        path, _ = written(folder, "audio.wav", 1000)
        store.put(source_id, "audio", path, "audio/wav")
    as_user = storage_stack.storage(storage_stack.user_token(user)).from_("dhgq-artifacts")
    with pytest.raises(StorageApiError):
        as_user.download(f"{source_id}/audio.wav")
    assert as_user.list(source_id) == []
    with pytest.raises(StorageApiError):
        as_user.upload(f"{source_id}/evil.wav", b"RIFF", {"content-type": "audio/wav"})


def test_the_artifact_bucket_is_made_private_when_missing(
    storage_stack: StorageStack, gateway_url: str, tmp_path: Path
) -> None:
    bucket = f"dhgq-artifacts-{uuid.uuid4().hex[:8]}"
    store = store_for(machine(tmp_path, "machine-a", gateway_url, storage_stack, artifact_bucket=bucket))
    with store.staging("s") as folder:
        path, data = written(folder, "audio.wav", 1000)
        artifact = store.put("s", "audio", path, "audio/wav")
    assert artifact.uri == f"storage://{bucket}/s/audio.wav"
    service = storage_stack.storage(storage_stack.service_key())
    assert service.get_bucket(bucket).public is False
    assert service.from_(bucket).download("s/audio.wav") == data


# -- the local store and the cache, without Storage --------------------------------------------------


def test_the_local_store_reads_in_place_and_refuses_another_machines_audio(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, home=tmp_path / "a", host_name="machine-a")  # type: ignore[call-arg]
    store = store_for(settings)
    assert isinstance(store, LocalStore) and settings.artifact_backend() == "local"
    with store.staging("s") as folder:
        path, _ = written(folder, "audio.wav", 1000)
        artifact = store.put("s", "audio", path, "audio/wav")
    assert artifact.uri == str(path) and path.exists()  # nothing moved, copied or uploaded
    with store.local_file(artifact) as local:
        assert local == path
    assert store.signed_urls(artifact, 60) is None
    elsewhere = Settings(_env_file=None, home=tmp_path / "a", host_name="machine-b")  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="made on machine-a.*DHGQ_ARTIFACT_STORE=storage"):
        with store_for(elsewhere).local_file(artifact):
            pass
    path.write_bytes(b"short")
    with pytest.raises(ArtifactMissing, match="retry the source"):
        with store.local_file(artifact):
            pass
    path.unlink()
    with pytest.raises(ArtifactMissing, match="is gone"):
        with store.local_file(artifact):
            pass
    outside = Artifact("audio", "/etc/hosts", None, None, "audio/wav", host="machine-a")
    with pytest.raises(PermanentError, match="outside the work dir"):
        with store.local_file(outside):
            pass


def _fetch_in_process(root: str, data_path: str, counter: str) -> str:
    """In a separate process: fetch one artifact through the cache, counting real downloads."""
    data = Path(data_path).read_bytes()
    artifact = Artifact("audio", "storage://b/s/audio.wav", hashlib.sha256(data).hexdigest(), len(data), "audio/wav")

    def download(_: Artifact, sink: object) -> None:
        with open(counter, "a") as count:
            count.write("x")
        for start in range(0, len(data), 4096):
            sink.write(data[start : start + 4096])  # type: ignore[attr-defined]

    with ArtifactCache(Path(root), 10**9).use(artifact, download) as path:
        return hashlib.sha256(path.read_bytes()).hexdigest()


def test_concurrent_workers_on_one_machine_download_once(tmp_path: Path) -> None:
    data_path, counter = tmp_path / "data", tmp_path / "count"
    data_path.write_bytes(os.urandom(2_000_000))
    counter.touch()
    args = (str(tmp_path / "cache"), str(data_path), str(counter))
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        hashes = pool.starmap(_fetch_in_process, [args] * 4)
    assert set(hashes) == {hashlib.sha256(data_path.read_bytes()).hexdigest()}
    assert counter.read_text() == "x"  # one download; the others waited for it and found the file


def test_the_cache_evicts_least_recently_used_but_never_a_file_in_use(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", max_bytes=250)
    blobs = [os.urandom(100) for _ in range(4)]
    artifacts = [
        Artifact("audio", f"storage://b/{i}/audio.wav", hashlib.sha256(b).hexdigest(), 100, "audio/wav")
        for i, b in enumerate(blobs)
    ]

    def download_of(blob: bytes):  # type: ignore[no-untyped-def]
        return lambda _artifact, sink: sink.write(blob)

    with cache.use(artifacts[0], download_of(blobs[0])) as held:  # in use throughout
        for artifact, blob in zip(artifacts[1:], blobs[1:], strict=True):
            with cache.use(artifact, download_of(blob)):
                pass
        assert held.read_bytes() == blobs[0]  # never evicted while held, though the oldest
    left = {f.path.name.split(".")[0] for f in cache.files()}
    assert artifacts[0].sha256 in left and artifacts[3].sha256 in left
    assert sum(f.size for f in cache.files()) <= 250 + 100  # the newest download may not evict what is held
    with pytest.raises(ArtifactMissing, match="corrupt"):
        with cache.use(artifacts[1], download_of(b"x" * 100)):
            pass


def test_a_modal_stage_hands_the_gpu_function_signed_urls_from_any_machine(
    storage_stack: StorageStack, gateway_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Extraction on machine A; the model stage's input on machine B, with Modal: URLs, not a file."""
    from dhgq.media.extraction.extract import extract_audio
    from dhgq.stage import Resources, Source, StageJob
    from dhgq.tasks.audio import extracted_audio
    from modal_gpu.bodies import fetch_audio
    from tests.support.speech import TWO_SPEAKER_SCRIPT, dialogue

    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")  # Modal "configured": no call is made here
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
    a = machine(tmp_path, "machine-a", gateway_url, storage_stack)
    b = machine(tmp_path, "machine-b", gateway_url, storage_stack, gpu_backend="modal")
    talk = dialogue(TWO_SPEAKER_SCRIPT[:2], tmp_path / "talk.wav").audio
    store_a, source_id = store_for(a), str(uuid.uuid4())
    with store_a.staging(source_id) as folder:
        out = extract_audio(talk, folder, stem="audio")
        artifacts = {
            "audio": store_a.put(source_id, "audio", Path(out.wav_path), "audio/wav"),
            "compact": store_a.put(source_id, "compact", Path(str(out.compact_path)), "audio/ogg"),
        }
    source = Source(source_id, "talk", "/talk.wav", None, out.probe.duration_seconds, artifacts=artifacts)
    resources = Resources(b, pool=None)  # type: ignore[arg-type]  # the input step reads no rows
    with extracted_audio(resources, source, StageJob("transcription", source_id, 1, 1)) as audio:
        assert audio.path is None and len(audio.urls) == 1  # the compact copy, by URL
    assert not (tmp_path / "machine-b").exists()  # machine B touched no disk of its own
    payload, seconds = modal_payload(audio)
    wav = fetch_audio(payload)  # what the GPU function does with it: fetch, decode to 16 kHz WAV
    assert wav[:4] == b"RIFF" and abs((len(wav) - 44) / 32000 - seconds) < 0.2
