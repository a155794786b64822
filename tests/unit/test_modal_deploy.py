"""``dhgq modal deploy`` and ``dhgq modal check`` without Modal's cloud: the secret check with a
stand-in lookup, the prefetch with a stand-in caller, and check's classes run here through ``.local()``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import modal
import pytest

from dhgq import modal_deploy
from dhgq.errors import ConfigurationError, TransientError
from dhgq.settings import Settings
from tests.unit.test_gpu_dispatch import spawner, use_home


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    use_home(monkeypatch, tmp_path)
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")


def test_the_default_deployment_needs_no_secret() -> None:
    asked: list[str] = []
    modal_deploy.check_secrets(settings(), lambda name: asked.append(name) or False)  # type: ignore[func-returns-value]
    assert asked == [] and modal_deploy.required_secrets(settings()) == {}
    assert modal_deploy.deploy_environment(settings())["DHGQ_MODAL_DIARIZATION_ENGINE"] == "local"


def test_pyannote_without_the_secret_names_the_command_and_both_gates() -> None:
    config = settings(modal_diarization_engine="pyannote")
    with pytest.raises(ConfigurationError) as caught:
        modal_deploy.check_secrets(config, lambda name: False)
    message = str(caught.value)
    assert "`modal secret create dhgq-huggingface HF_TOKEN=hf_...`" in message
    assert "pyannote/speaker-diarization-3.1" in message and "pyannote/segmentation-3.0" in message
    modal_deploy.check_secrets(config, lambda name: name == "dhgq-huggingface")  # present: fine
    assert modal_deploy.deploy_environment(config)["DHGQ_MODAL_DIARIZATION_ENGINE"] == "pyannote"


def test_deploy_stops_before_modal_deploy_when_the_secret_is_missing(
    credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modal_deploy.subprocess, "run", lambda *a, **k: pytest.fail("modal deploy ran"))
    with pytest.raises(ConfigurationError, match="modal secret create dhgq-huggingface"):
        modal_deploy.deploy(settings(modal_diarization_engine="pyannote"), exists=lambda name: False)


def test_deploy_prefetches_the_weights(credentials: None, monkeypatch: pytest.MonkeyPatch) -> None:
    done = SimpleNamespace(returncode=0, stdout="App deployed", stderr="")
    monkeypatch.setattr(modal_deploy.subprocess, "run", lambda *a, **k: done)
    calls: list[tuple[str, tuple[Any, ...]]] = []

    def call(name: str, args: tuple[Any, ...]) -> Any:
        calls.append((name, args))
        return {"whisper": list(args[0])} if name == "prefetch" else {"pyannote": True}

    output = modal_deploy.deploy(settings(modal_whisper_model="large-v3"), call=call)
    assert calls == [("prefetch", (["large-v3", "turbo"],))]
    assert "App deployed" in output and "whisper large-v3, turbo on the Volume" in output
    calls.clear()
    config = settings(modal_diarization_engine="pyannote")
    modal_deploy.deploy(config, exists=lambda name: True, call=call)
    assert [name for name, _ in calls] == ["prefetch", "prefetch_pyannote"]


def test_latency_reports_cold_start_and_warm() -> None:
    runs = iter([0.2, 0.0])

    def run() -> dict[str, Any]:
        import time

        time.sleep(next(runs))
        return {"seconds": 0.01, "device": "NVIDIA H200"}

    name, ok, detail = modal_deploy.latency("transcription", run, lambda out: f"turbo on {out['device']}")
    assert (name, ok) == ("transcription", True)
    assert detail.startswith("turbo on NVIDIA H200: cold start 0.2s, warm 0.0s (remote 0.0s)"), detail

    def fails() -> dict[str, Any]:
        raise TransientError("Modal transcription failed, will retry: timed out")

    assert modal_deploy.latency("diarization", fails, str) == (
        "diarization",
        False,
        "Modal transcription failed, will retry: timed out",
    )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*executing locally.*")
def test_check_runs_both_classes_with_the_configured_models(credentials: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from modal_gpu import app

    built: list[tuple[str, dict[str, Any]]] = []
    instances: dict[str, Any] = {}  # one container per class and parameters: the second call is warm

    class Handle:
        def __init__(self, name: str) -> None:
            self.name = name

        def hydrate(self) -> Handle:
            return self

        def __call__(self, **given: Any) -> Any:
            built.append((self.name, given))
            key = f"{self.name}{sorted(given.items())}"
            if key not in instances:
                instances[key] = self.build(**given)
            return instances[key]

        def build(self, **given: Any) -> Any:
            if self.name == "Transcriber":
                instance = app.Transcriber(engine="faster-whisper", **given)  # type: ignore[call-arg]
                return SimpleNamespace(transcribe=spawner(instance.transcribe.local))
            instance = app.Diarizer(device="cpu", **given)  # type: ignore[call-arg]
            return SimpleNamespace(diarize=spawner(instance.diarize.local))

    monkeypatch.setattr(modal.Cls, "from_name", lambda app_name, name, **_: Handle(name))
    monkeypatch.setattr(modal.Function, "from_name", lambda app_name, name, **_: Handle(name))
    results = modal_deploy.check(settings(modal_whisper_model="tiny.en"), timeout=120)
    assert [(name, ok) for name, ok, _ in results] == [
        ("credentials", True),
        ("deployment", True),
        ("transcription", True),
        ("diarization", True),
    ], results
    assert results[2][2].startswith("tiny.en on cpu: cold start ") and "warm" in results[2][2]
    assert results[3][2].startswith("local on cpu: cold start ")
    assert ("Transcriber", {"model": "tiny.en"}) in built
