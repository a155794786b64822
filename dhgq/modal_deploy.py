"""Modal deploy tooling: ``dhgq modal deploy`` and ``dhgq modal check``.

Runtime dispatch (which backend runs a stage, and how Modal's errors are classified) is in
``dhgq.gpu``; this module only deploys the app of ``modal_gpu/app.py`` (a package of dhgq's wheel, so an
installed dhgq deploys without a checkout) and checks that it answers.
"""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import time
from pathlib import Path

from dhgq.errors import ConfigurationError, DhgqError, TransientError
from dhgq.gpu import CREDENTIALS_FIX, modal_credentials, modal_errors
from dhgq.settings import Settings

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
    }


def deploy(settings: Settings, timeout: float = 3600.0) -> str:
    """``modal deploy modal_gpu/app.py`` under the configured app name and GPU; returns its output."""
    if modal_credentials() is None:
        raise ConfigurationError(f"cannot deploy: no Modal credentials: {CREDENTIALS_FIX}")
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
    return output


def silent_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    import numpy as np
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * rate), dtype=np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def check(settings: Settings) -> list[tuple[str, bool, str]]:
    """``dhgq modal check``: credentials, deployment, a tiny round trip; each (name, ok, detail)."""
    import modal

    where = modal_credentials()
    results = [("credentials", where is not None, f"from {where}" if where else CREDENTIALS_FIX)]
    if where is None:
        return [*results, ("deployment", False, "skipped"), ("round trip", False, "skipped")]
    app_name = settings.modal_app_name
    try:
        with modal_errors(app_name, "check"):
            modal.Cls.from_name(app_name, "Transcriber").hydrate()
            modal.Function.from_name(app_name, "transcribe_long").hydrate()
    except DhgqError as exc:
        return [*results, ("deployment", False, exc.message), ("round trip", False, "skipped")]
    results.append(("deployment", True, f"app {app_name!r} found"))
    started = time.perf_counter()
    try:
        with modal_errors(app_name, "check"):
            output = modal.Cls.from_name(app_name, "Transcriber")(model="tiny.en").transcribe.remote(
                silent_wav(), "tiny.en", "en"
            )
    except DhgqError as exc:
        return [*results, ("round trip", False, exc.message)]
    elapsed = time.perf_counter() - started
    detail = f"tiny.en on {output.get('device')}: {elapsed:.1f}s (remote {output.get('seconds', 0.0):.1f}s)"
    return [*results, ("round trip", True, detail)]
