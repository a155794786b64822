"""Modal deploy tooling: ``dhgq modal deploy`` and ``dhgq modal check``.

Runtime dispatch (which backend runs a stage, and how Modal's errors are classified) is in
``dhgq.gpu``; this module deploys the app of ``modal_gpu/app.py`` (a package of dhgq's wheel, so an
installed dhgq deploys without a checkout): it checks first for the secrets the deployment needs,
prefetches the weights onto the Volume after, and checks that both classes answer.
"""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dhgq.errors import ConfigurationError, DhgqError, TransientError
from dhgq.gpu import CREDENTIALS_FIX, MODAL_DIARIZERS, MODAL_WHISPER_MODELS, modal_credentials, modal_errors, wait_for
from dhgq.media.types import ANY_SPEAKERS
from dhgq.settings import Settings
from modal_gpu.bodies import HF_SECRET, PYANNOTE_GATES

APP_MODULE = "modal_gpu.app"


def app_source() -> Path:
    """The ``sys.path`` directory that holds the ``modal_gpu`` package: site-packages, or a source checkout.

    ``modal deploy -m modal_gpu.app`` imports the app by module name, so it deploys from a wheel as well as
    from a checkout; it runs in this directory so that the same copy is found there.
    """
    spec = importlib.util.find_spec("modal_gpu")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        if (Path(location) / "app.py").is_file():
            return Path(location).resolve().parent
    where = f" (found at {', '.join(locations)})" if locations else ""
    raise ConfigurationError(f"no modal_gpu/app.py importable{where}: reinstall dhgq, whose wheel ships it")


def deploy_command(settings: Settings) -> list[str]:
    return [sys.executable, "-m", "modal", "deploy", "--name", settings.modal_app_name, "-m", APP_MODULE]


def deploy_environment(settings: Settings) -> dict[str, str]:
    """The variables ``modal_gpu/app.py`` reads at deploy time, from dhgq's settings."""
    import os

    # The child needs the whole environment (PATH, Modal's token variables); only these are dhgq's.
    return {
        **os.environ,
        "DHGQ_MODAL_GPU": settings.modal_gpu,
        "DHGQ_MODAL_WHISPER_MODEL": settings.modal_whisper_model,
        "DHGQ_MODAL_MAX_CONTAINERS": str(settings.modal_max_containers),
        "DHGQ_MODAL_DIARIZATION_ENGINE": settings.modal_diarization_engine,
    }


SecretLookup = Callable[[str], bool]  # whether the Modal secret of that name exists


def modal_secret_exists(name: str) -> bool:
    """Modal's own answer: whether the workspace has the secret (NotFoundError: it has not)."""
    import modal
    from modal import exception as mx

    try:
        modal.Secret.from_name(name).hydrate()
    except mx.NotFoundError:
        return False
    return True


def required_secrets(settings: Settings) -> dict[str, str]:
    """The Modal secrets this deployment needs, each with the command that creates it."""
    if settings.modal_diarization_engine != "pyannote":
        return {}
    return {HF_SECRET: f"modal secret create {HF_SECRET} HF_TOKEN=hf_..."}


def check_secrets(settings: Settings, exists: SecretLookup = modal_secret_exists) -> None:
    """ConfigurationError naming the exact ``modal secret create`` command for each missing secret."""
    missing = {name: command for name, command in required_secrets(settings).items() if not exists(name)}
    if missing:
        gates = " and ".join(f"https://hf.co/{model}" for model in PYANNOTE_GATES)
        commands = "; ".join(f"`{command}`" for command in missing.values())
        raise ConfigurationError(
            f"DHGQ_MODAL_DIARIZATION_ENGINE=pyannote needs the Modal secret {', '.join(missing)}: run {commands} "
            f"with a Hugging Face token whose account accepted the conditions of {gates}; or deploy with the "
            "default diarizer (DHGQ_MODAL_DIARIZATION_ENGINE=local), which needs no token"
        )


Caller = Callable[[str, tuple[Any, ...]], Any]  # (function name, arguments) -> its result, on the deployed app


def remote_caller(settings: Settings) -> Caller:
    """Calls a function of the deployed app by name (``.remote``)."""
    import modal

    def call(name: str, args: tuple[Any, ...]) -> Any:
        with modal_errors(settings.modal_app_name, "prefetch"):
            return modal.Function.from_name(settings.modal_app_name, name).remote(*args)

    return call


def prefetch(settings: Settings, call: Caller | None = None) -> list[str]:
    """Weights onto the app's Volume, once: the Whisper models the worker asks for, and pyannote's when deployed."""
    call = call or remote_caller(settings)
    models = sorted({settings.modal_whisper_model, "turbo"} & MODAL_WHISPER_MODELS)
    done = call("prefetch", (models,))
    lines = [f"whisper {', '.join(done.get('whisper', [])) or 'nothing'} on the Volume"]
    if settings.modal_diarization_engine == "pyannote":
        call("prefetch_pyannote", ())
        lines.append("pyannote's models on the Volume (both gates accepted)")
    return lines


def deploy(
    settings: Settings,
    timeout: float = 3600.0,
    *,
    exists: SecretLookup = modal_secret_exists,
    call: Caller | None = None,
) -> str:
    """``modal deploy modal_gpu/app.py`` under the configured app name and GPU, then the weights
    prefetched onto the Volume; returns what they said."""
    if modal_credentials() is None:
        raise ConfigurationError(f"cannot deploy: no Modal credentials: {CREDENTIALS_FIX}")
    check_secrets(settings, exists)
    try:
        done = subprocess.run(
            deploy_command(settings),
            cwd=app_source(),
            env=deploy_environment(settings),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise TransientError(f"`modal deploy` ran past {timeout:.0f}s") from exc
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise ConfigurationError(f"`modal deploy` failed (exit {done.returncode}):\n{output[-2000:]}")
    return "\n".join([output, *prefetch(settings, call)])


def silent_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    import numpy as np
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * rate), dtype=np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def check_wav(seconds: float = 4.0, rate: int = 16000) -> bytes:
    """A few seconds of a gliding tone over noise: something for both classes to chew on, made here."""
    import numpy as np
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.5 * t)
    tone = 0.2 * np.sin(2 * np.pi * np.cumsum(pitch) / rate) + 0.01 * np.random.default_rng(0).standard_normal(len(t))
    buffer = io.BytesIO()
    sf.write(buffer, tone.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


CheckResult = tuple[str, bool, str]


def latency(name: str, run: Callable[[], dict[str, Any]], describe: Callable[[dict[str, Any]], str]) -> CheckResult:
    """Two calls: the first pays the cold start (container, image, weights), the second shows the warm latency."""
    try:
        started = time.perf_counter()
        output = run()
        cold = time.perf_counter() - started
        started = time.perf_counter()
        output = run()
        warm = time.perf_counter() - started
    except DhgqError as exc:
        return name, False, exc.message
    remote = float(output.get("seconds", 0.0))
    return name, True, f"{describe(output)}: cold start {cold:.1f}s, warm {warm:.1f}s (remote {remote:.1f}s)"


def check(settings: Settings, timeout: float = 900.0) -> list[CheckResult]:
    """``dhgq modal check``: credentials, deployment, then both classes with the configured models on
    a few seconds of audio, each call within ``timeout``; each (name, ok, detail)."""
    import modal

    where = modal_credentials()
    results = [("credentials", where is not None, f"from {where}" if where else CREDENTIALS_FIX)]
    skipped = [("transcription", False, "skipped"), ("diarization", False, "skipped")]
    if where is None:
        return [*results, ("deployment", False, "skipped"), *skipped]
    app_name, model = settings.modal_app_name, settings.modal_whisper_model
    diarizer = MODAL_DIARIZERS[settings.modal_diarization_engine]
    try:
        with modal_errors(app_name, "check"):
            for cls in ("Transcriber", diarizer):
                modal.Cls.from_name(app_name, cls).hydrate()
            for function in ("transcribe_long", "diarize_long"):
                modal.Function.from_name(app_name, function).hydrate()
    except DhgqError as exc:
        return [*results, ("deployment", False, exc.message), *skipped]
    results.append(("deployment", True, f"app {app_name!r} found, diarizer {diarizer}"))
    audio = check_wav()

    def transcribe() -> dict[str, Any]:
        with modal_errors(app_name, "check"):
            method = modal.Cls.from_name(app_name, "Transcriber")(model=model).transcribe
            return wait_for(method.spawn(audio, model, None), time.monotonic() + timeout, "check")  # type: ignore[no-any-return]

    def diarize() -> dict[str, Any]:
        with modal_errors(app_name, "check"):
            method = modal.Cls.from_name(app_name, diarizer)().diarize
            return wait_for(method.spawn(audio, ANY_SPEAKERS), time.monotonic() + timeout, "check")  # type: ignore[no-any-return]

    results.append(latency("transcription", transcribe, lambda out: f"{model} on {out.get('device')}"))
    engine = settings.modal_diarization_engine
    results.append(latency("diarization", diarize, lambda out: f"{engine} on {out.get('device')}"))
    return results
