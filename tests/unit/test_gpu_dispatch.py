"""Choosing the GPU backend, and Modal's failures as dhgq's error classes.

No test here reaches Modal's servers (none can be reached from CI): credentials are cleared or
faked, and the "remote" calls of the Modal backend are routed to the app's bodies in-process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import modal
import modal.config
import pytest
from modal import exception as mx

from dhgq import gpu, modal_deploy
from dhgq.errors import ConfigurationError, PermanentError, TransientError, classify
from dhgq.media.types import SpeakerCount
from dhgq.settings import Settings


def use_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Point HOME (and Modal's config file, which modal reads once at import) at ``home``."""
    monkeypatch.setenv("HOME", str(home))
    for name in [n for n in __import__("os").environ if n.startswith("MODAL_")]:
        monkeypatch.delenv(name)
    path = str(home / ".modal.toml")
    monkeypatch.setattr(modal.config, "user_config_path", path)
    monkeypatch.setattr(modal.config, "_user_config", modal.config._read_user_config())


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    use_home(monkeypatch, tmp_path)
    assert gpu.modal_credentials() is None
    yield


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_modal_without_credentials_is_a_configuration_error_naming_the_fix(no_credentials: None) -> None:
    with pytest.raises(ConfigurationError) as caught:
        gpu.select_backend(settings(gpu_backend="modal"))
    message = str(caught.value)
    assert "modal token new" in message and "MODAL_TOKEN_ID/MODAL_TOKEN_SECRET" in message
    assert "dhgq modal deploy" in message
    assert classify(caught.value) == "permanent"


def test_auto_without_credentials_falls_back_to_local_and_says_so(no_credentials: None) -> None:
    backend, reason = gpu.select_backend(settings(gpu_backend="auto"))
    assert isinstance(backend, gpu.LocalBackend)
    assert "chose local" in reason and "no Modal credentials" in reason and "modal token new" in reason


def test_local_is_local(no_credentials: None) -> None:
    backend, reason = gpu.select_backend(settings(gpu_backend="local"))
    assert isinstance(backend, gpu.LocalBackend) and "local" in reason


def test_auto_with_token_variables_chooses_modal(no_credentials: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
    backend, reason = gpu.select_backend(settings(gpu_backend="auto", modal_gpu="L4"))
    assert isinstance(backend, gpu.ModalBackend)
    assert "chose Modal" in reason and "MODAL_TOKEN_ID" in reason and "L4" in reason


def test_modal_with_a_config_file_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".modal.toml").write_text('[dhgq]\ntoken_id = "ak-1"\ntoken_secret = "as-1"\nactive = true\n')
    use_home(monkeypatch, tmp_path)
    monkeypatch.setattr(modal.config, "_profile", "dhgq")
    backend, reason = gpu.select_backend(settings(gpu_backend="modal"))
    assert isinstance(backend, gpu.ModalBackend) and ".modal.toml" in reason


@pytest.mark.parametrize(
    ("raised", "expected", "words"),
    [
        (mx.NotFoundError("App 'dhgq-gpu' not found"), ConfigurationError, "dhgq modal deploy"),
        (mx.AuthError("Token missing"), ConfigurationError, "modal token new"),
        (mx.FunctionTimeoutError("timed out"), TransientError, "retry"),
        (mx.ConnectionError("Could not connect to the Modal server."), TransientError, "retry"),
        (mx.InternalFailure("gone"), TransientError, "retry"),
        (mx.ServiceError("unavailable"), TransientError, "retry"),
        (TimeoutError("socket"), TransientError, "retry"),
        (mx.InvalidError("bad argument"), PermanentError, "rejected"),
        (ValueError("bad audio"), PermanentError, "bad audio"),
        (RuntimeError("CUDA error: out of memory"), TransientError, "out of memory"),
        (PermanentError("not a WAV"), PermanentError, "not a WAV"),
    ],
)
def test_modal_errors_become_dhgq_errors(raised: Exception, expected: type, words: str) -> None:
    with pytest.raises(expected) as caught, gpu.modal_errors("dhgq-gpu", "transcription"):
        raise raised
    assert type(caught.value) is expected and words in str(caught.value)


def test_model_paths_cannot_go_to_modal(tmp_path: Path) -> None:
    backend = gpu.ModalBackend(settings())
    with pytest.raises(ConfigurationError, match="not one the Modal app can load"):
        backend.transcribe(local_audio(tmp_path / "a.wav"), model=str(tmp_path / "my-model"))


def test_deploy_and_check_without_credentials(no_credentials: None) -> None:
    config = settings(modal_app_name="dhgq-test", modal_gpu="H100", modal_whisper_model="small", modal_max_containers=3)
    command = modal_deploy.deploy_command(config)
    assert command[command.index("--name") + 1] == "dhgq-test" and command[-1] == "modal_gpu.app"
    env = modal_deploy.deploy_environment(config)
    assert env["DHGQ_MODAL_GPU"] == "H100" and env["DHGQ_MODAL_WHISPER_MODEL"] == "small"
    assert env["DHGQ_MODAL_MAX_CONTAINERS"] == "3"
    assert (modal_deploy.app_source() / "modal_gpu" / "app.py").is_file()
    with pytest.raises(ConfigurationError, match="modal token new"):
        modal_deploy.deploy(config)
    results = modal_deploy.check(config)
    assert [name for name, _, _ in results] == ["credentials", "deployment", "transcription", "diarization"]
    assert results[0][1] is False and "modal token new" in results[0][2]
    assert not any(ok for _, ok, _ in results)


def test_a_missing_deployment_names_dhgq_modal_deploy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def not_deployed(app_name: str, name: str, **_: Any) -> Any:
        raise mx.NotFoundError(f"Lookup failed for Cls '{name}' from the '{app_name}' app")

    monkeypatch.setattr(modal.Cls, "from_name", not_deployed)
    wav = tmp_path / "a.wav"
    wav.write_bytes(modal_deploy.silent_wav(0.5))
    with pytest.raises(ConfigurationError, match="dhgq modal deploy"):
        gpu.ModalBackend(settings()).transcribe(local_audio(wav), model="tiny.en")


def local_audio(path: Path) -> gpu.AudioInput:
    """A model stage's input on this machine (the local artifact store)."""
    return gpu.AudioInput("", None, path=str(path))


# ---- the Modal backend end to end, its "remote" calls run in-process through .local() -----------


class LocalCall:
    """A stand-in for a spawned ``modal.FunctionCall``: the body already ran here, through ``.local()``."""

    count = 0

    def __init__(self, run: Any) -> None:
        LocalCall.count += 1
        self.object_id = f"fc-local-{LocalCall.count}"
        self.cancelled = False
        try:
            self.output, self.error = run(), None
        except Exception as exc:  # noqa: BLE001 - raised by get(), as Modal re-raises the remote's exception
            self.output, self.error = None, exc

    def get(self, timeout: float | None = None) -> Any:
        if self.error is not None:
            raise self.error
        return self.output

    def cancel(self, terminate_containers: bool = False) -> None:
        self.cancelled = True


def spawner(body: Any, **fixed: Any) -> SimpleNamespace:
    return SimpleNamespace(spawn=lambda *args, **kwargs: LocalCall(lambda: body(*args, **kwargs, **fixed)))


@pytest.fixture
def modal_in_process(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Route ``Cls.from_name``/``Function.from_name`` to the app's own classes, run with ``.local()``."""
    from modal_gpu import app

    calls: list[str] = []
    params = {"Transcriber": {"engine": "faster-whisper"}, "Diarizer": {"device": "cpu"}}

    def cls_from_name(app_name: str, name: str, **_: Any) -> Any:
        assert app_name == "dhgq-gpu"

        def construct(**given: Any) -> Any:
            instance = getattr(app, name)(**params[name], **given)
            method = "transcribe" if name == "Transcriber" else "diarize"
            calls.append(name)
            return SimpleNamespace(**{method: spawner(getattr(instance, method).local)})

        return construct

    def function_from_name(app_name: str, name: str, **_: Any) -> Any:
        assert app_name == "dhgq-gpu" and name in ("transcribe_long", "diarize_long")
        calls.append(name)
        if name == "transcribe_long":
            return spawner(app.transcribe_long.local, engine="faster-whisper", max_chunk=20.0)
        return spawner(app.diarize_long.local, max_chunk=20.0, device="cpu")

    monkeypatch.setattr(modal.Cls, "from_name", cls_from_name)
    monkeypatch.setattr(modal.Function, "from_name", function_from_name)
    return calls


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*executing locally.*")
def test_modal_backend_round_trip_in_process(modal_in_process: list[str], dialogue_wav: Path) -> None:
    backend = gpu.ModalBackend(settings(modal_gpu="A10G"), long_audio_seconds=30.0)
    transcript, info = backend.transcribe(local_audio(dialogue_wav), model="tiny.en", language=None)
    assert modal_in_process == ["transcribe_long"]
    assert "pipeline" in transcript.text.lower() and transcript.engine == "faster-whisper"
    assert info["backend"] == "modal" and info["gpu"] == "A10G" and info["model"] == "tiny.en"
    assert info["chunks"] >= 3 and info["duration_s"] > 0 and info["device"] == "cpu"

    short = gpu.ModalBackend(settings(), long_audio_seconds=3600.0)
    transcript, info = short.transcribe(local_audio(dialogue_wav), model="tiny.en")
    assert modal_in_process[-1] == "Transcriber" and info["chunks"] == 1
    assert "pipeline" in transcript.text.lower()

    diarization, info = short.diarize(local_audio(dialogue_wav), speakers=SpeakerCount(exact=2))
    assert modal_in_process[-1] == "Diarizer" and len(diarization.speakers) == 2
    assert info["backend"] == "modal" and info["model"] == "local" and info["device"] == "cpu"

    long = gpu.ModalBackend(settings(), long_audio_seconds=30.0)
    diarization, info = long.diarize(local_audio(dialogue_wav), speakers=SpeakerCount(exact=2))
    assert modal_in_process[-1] == "diarize_long" and info["chunks"] >= 2
    assert len(diarization.speakers) == 2


@pytest.fixture(scope="module")
def dialogue_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.speech import TWO_SPEAKER_SCRIPT, dialogue

    return dialogue(TWO_SPEAKER_SCRIPT, tmp_path_factory.mktemp("dialogue") / "dialogue.wav").audio


@pytest.mark.slow
def test_local_backend_returns_run_metadata(dialogue_wav: Path) -> None:
    backend = gpu.LocalBackend(settings(whisper_model="tiny.en"))
    transcript, info = backend.transcribe(local_audio(dialogue_wav), model="tiny.en")
    assert "pipeline" in transcript.text.lower()
    assert info["backend"] == "local" and info["gpu"] is None and info["model"] == "tiny.en"
    assert info["duration_s"] > 0

    diarization, info = backend.diarize(local_audio(dialogue_wav), speakers=SpeakerCount(exact=2))
    assert len(diarization.speakers) == 2 and info["backend"] == "local" and info["engine"] == "local"


def test_model_stage_slots_follow_where_the_models_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Locally a slot is a model process using several cores; on Modal it only waits."""
    url = "postgresql://unused/none"
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    local = Settings(database_url=url, gpu_backend="local")
    assert local.concurrency("transcription") == local.concurrency("diarization") == 1
    assert local.concurrency("extraction") == 5 and local.concurrency("summarization") == 2
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert Settings(database_url=url, gpu_backend="local").concurrency("diarization") == 2
    assert Settings(database_url=url, gpu_backend="modal").concurrency("transcription") == 2
    assert Settings(database_url=url, max_concurrent_transcriptions=3).concurrency("transcription") == 3


def test_model_threads_share_the_cores_out_among_the_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://unused/none"
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert Settings(database_url=url).threads_per_model_job() == 1  # 1 transcription + 1 diarization slot
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert Settings(database_url=url).threads_per_model_job() == 4  # 2 + 2 slots
    assert Settings(database_url=url, model_threads=3).threads_per_model_job() == 3
