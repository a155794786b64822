"""dhgq's GPU stages on Modal: deploy with ``dhgq modal deploy`` (``modal deploy modal_gpu/app.py``).

``Transcriber`` (openai-whisper) and ``Diarizer`` (pyannote 3.1) load their models once per
container in ``@modal.enter()``, from a Volume that keeps the weights between cold starts.
``transcribe_long`` runs on a CPU container: it cuts long audio at silences, fans the chunks
out to ``Transcriber`` and stitches the pieces. Every function takes the audio itself (WAV
bytes) or an http(s) URL such as a signed Storage URL, never a path on the worker.

The bodies are plain functions of this module, so they also run in-process through Modal's
``.local()`` (tests, or a machine without credentials) with the engines of ``dhgq.media``:
``Transcriber(engine="faster-whisper")`` and ``Diarizer(engine="local")``. Modal retries
nothing here: a failed stage is retried once, by the queue.

Deploy-time settings: ``DHGQ_MODAL_GPU``, ``DHGQ_MODAL_WHISPER_MODEL`` (model loaded at start) and
``DHGQ_MODAL_MAX_CONTAINERS`` (GPU containers at most) are fields of dhgq's Settings, and
``dhgq modal deploy`` passes them from there; the images carry no pydantic, so this module reads
the variables themselves, with the same defaults, for a bare ``modal deploy``.
"""

# No `from __future__ import annotations`: Modal reads the class parameters' types at run time.
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import modal

from dhgq.errors import PermanentError, TransientError
from dhgq.media.serialize import diarization_to_dict, transcript_from_dict, transcript_to_dict
from dhgq.media.transcription.chunking import split_at_silences, stitch_chunks
from dhgq.media.transcription.engines import segments_of_openai_result
from dhgq.media.types import ANY_SPEAKERS, SpeakerCount, Transcript

APP_NAME = "dhgq-gpu"
GPU = os.environ.get("DHGQ_MODAL_GPU", "A10G")
DEFAULT_WHISPER_MODEL = os.environ.get("DHGQ_MODAL_WHISPER_MODEL", "turbo")
MAX_CONTAINERS = int(os.environ.get("DHGQ_MODAL_MAX_CONTAINERS", "8"))
CACHE_DIR = Path("/cache")
SAMPLE_RATE = 16000
PYANNOTE_PIPELINE = "pyannote/speaker-diarization-3.1"
PYANNOTE_REVISION = "84fd25912480287da0247647c3d2b4853cb3ee5d"
PYTHON_VERSION = "3.11"
# Resolved together (pip --dry-run, CPython 3.11 x86_64). pyannote.audio 3.3 needs torch < 2.6 (its
# checkpoints are not weights-only), huggingface_hub < 1.0 (use_auth_token) and lightning 2.4.
GPU_PACKAGES = (
    "torch==2.5.1",
    "torchaudio==2.5.1",
    "numpy==1.26.4",
    "soundfile==0.12.1",
    "openai-whisper==20250625",
    "faster-whisper==1.2.1",
    "pyannote.audio==3.3.2",
    "lightning==2.4.0",
    "pytorch-lightning==2.4.0",
    "huggingface_hub==0.25.2",
    "speechbrain==1.0.2",
)
CPU_PACKAGES = ("numpy==1.26.4", "soundfile==0.12.1")
DEPLOY_ENV = {
    "DHGQ_MODAL_GPU": GPU,
    "DHGQ_MODAL_WHISPER_MODEL": DEFAULT_WHISPER_MODEL,
    "DHGQ_MODAL_MAX_CONTAINERS": str(MAX_CONTAINERS),
}
CACHE_ENV = {
    "HF_HOME": str(CACHE_DIR / "huggingface"),
    "TORCH_HOME": str(CACHE_DIR / "torch"),
    "XDG_CACHE_HOME": str(CACHE_DIR),
}

app = modal.App(APP_NAME)
model_cache = modal.Volume.from_name("dhgq-model-cache", create_if_missing=True)
huggingface = modal.Secret.from_name("dhgq-huggingface", required_keys=["HF_TOKEN"])

cpu_image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .apt_install("ffmpeg")  # decodes the compact audio the worker sends
    .pip_install(*CPU_PACKAGES)
    .env(DEPLOY_ENV)
    .add_local_python_source("dhgq", "modal_gpu")
)
gpu_image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .apt_install("ffmpeg")
    .pip_install(*GPU_PACKAGES)
    .env({**DEPLOY_ENV, **CACHE_ENV})
    .add_local_python_source("dhgq", "modal_gpu")
)


# ---- plain helpers: the function bodies, importable and runnable anywhere ----------------------


def fetch_audio(audio: bytes | str, timeout: float = 120.0) -> bytes:
    """The audio as 16 kHz mono WAV bytes, from bytes or an http(s) URL (never a local path).

    The worker sends the compact copy (Opus, AAC or MP3), which ffmpeg decodes here; WAV passes as is.
    """
    return as_wav(_audio_bytes(audio, timeout))


def as_wav(audio: bytes) -> bytes:
    """WAV bytes as they are; anything else decoded by ffmpeg to the 16 kHz mono WAV the engines read."""
    if audio[:4] == b"RIFF":
        return audio
    done = subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-i",
            "pipe:0",
            "-ac",
            "1",
            "-ar",
            str(SAMPLE_RATE),
            "-c:a",
            "pcm_s16le",
            "-f",
            "wav",
            "pipe:1",
        ],
        input=audio,
        capture_output=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0 or not done.stdout:
        detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise PermanentError(f"the audio could not be decoded: {detail[0]}")
    return done.stdout


def _audio_bytes(audio: bytes | str, timeout: float) -> bytes:
    if isinstance(audio, bytes | bytearray):
        return bytes(audio)
    if not audio.startswith(("https://", "http://")):
        raise PermanentError("the GPU functions take the audio bytes or an http(s) URL, not a path")
    try:
        with urllib.request.urlopen(audio, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        error = TransientError if exc.code >= 500 or exc.code == 429 else PermanentError
        raise error(f"downloading the audio failed: HTTP {exc.code}") from exc
    except OSError as exc:
        raise TransientError(f"downloading the audio failed: {exc}") from exc


@contextmanager
def scratch_wav(audio: bytes) -> Iterator[Path]:
    """The audio in a temporary file, for engines that read files."""
    with tempfile.TemporaryDirectory(prefix="dhgq-gpu-") as folder:
        path = Path(folder) / "audio.wav"
        path.write_bytes(audio)
        yield path


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def commit_cache() -> None:
    """Persist weights downloaded into the Volume, so the next cold start finds them."""
    if not modal.is_local():
        model_cache.commit()


class OpenAIWhisper:
    """openai-whisper on the GPU; weights (SHA-256 checked by whisper) cached on the Volume.

    ``name`` is a model name (tiny .. large-v3, turbo) or the path of a checkpoint file.
    """

    engine = "openai-whisper"

    def __init__(self, name: str, download_root: Path = CACHE_DIR / "whisper") -> None:
        import torch
        import whisper

        self.name = name
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = whisper.load_model(name, device=self.device, download_root=str(download_root))

    def transcribe(self, wav_path: Path, *, language: str | None = None) -> Transcript:
        import whisper

        audio = whisper.load_audio(str(wav_path))
        result = self.model.transcribe(
            audio, language=language, word_timestamps=True, fp16=self.device == "cuda", verbose=None
        )
        segments = segments_of_openai_result(result)
        return Transcript(
            text=" ".join(s.text for s in segments if s.text),
            language=result.get("language") or language,
            segments=segments,
            model=Path(self.name).stem,
            engine=self.engine,
            duration_seconds=len(audio) / SAMPLE_RATE,
        )


def load_transcription_engine(engine: str, model: str, compute_type: str, models_dir: str) -> Any:
    """openai-whisper from the Volume, or any engine of ``dhgq.media.transcription.engines`` (local runs)."""
    if engine == OpenAIWhisper.engine and not models_dir:
        return OpenAIWhisper(model)
    from dhgq.media.transcription.engines import load_engine

    return load_engine(engine, model, compute_type, Path(models_dir) if models_dir else None)


def run_transcription(engine: Any, audio: bytes | str, language: str | None) -> dict[str, Any]:
    """The body of ``Transcriber.transcribe``: audio in, the wire dict out."""
    started = time.perf_counter()
    with scratch_wav(fetch_audio(audio)) as path:
        transcript = engine.transcribe(path, language=language)
    return {
        "transcript": transcript_to_dict(transcript),
        "device": device_name(),
        "seconds": time.perf_counter() - started,
    }


def load_diarization_engine(engine: str) -> Any:
    """A ``dhgq.media.diarization.engines`` engine; pyannote at its pinned revision, with the secret's token."""
    from dhgq.media.diarization.engines import PyannoteEngine, load_diarizer

    if engine == PyannoteEngine.name:
        pinned = f"{PYANNOTE_PIPELINE}@{PYANNOTE_REVISION}"
        return PyannoteEngine(hf_token=os.environ.get("HF_TOKEN"), model=pinned)
    return load_diarizer(engine)


def run_diarization(
    engine: Any,
    audio: bytes | str,
    speakers: SpeakerCount,
) -> dict[str, Any]:
    """The body of ``Diarizer.diarize``: audio in, the wire dict out."""
    started = time.perf_counter()
    with scratch_wav(fetch_audio(audio)) as path:
        diarization = engine.diarize(path, speakers=speakers)
    return {
        "diarization": diarization_to_dict(diarization),
        "device": device_name(),
        "seconds": time.perf_counter() - started,
    }


ChunkRunner = Callable[[Sequence[bytes]], Sequence[dict[str, Any] | BaseException]]


def run_long_transcription(audio: bytes | str, run_chunks: ChunkRunner, max_chunk: float) -> dict[str, Any]:
    """The body of ``transcribe_long``: split at silences, run every chunk, stitch."""
    started = time.perf_counter()
    chunks = split_at_silences(fetch_audio(audio), max_chunk=max_chunk)
    outputs = list(run_chunks([chunk.wav_bytes() for chunk in chunks]))
    failures = [(i, out) for i, out in enumerate(outputs) if isinstance(out, BaseException)]
    if failures:
        index, first = failures[0]
        permanent = all(isinstance(out, PermanentError) for _, out in failures)
        error = PermanentError if permanent else TransientError
        raise error(f"{len(failures)} of {len(chunks)} chunks failed (chunk {index}: {first})") from first
    results = [out for out in outputs if not isinstance(out, BaseException)]
    transcript = stitch_chunks(chunks, [transcript_from_dict(r["transcript"]) for r in results])
    return {
        "transcript": transcript_to_dict(transcript),
        "device": results[0]["device"] if results else "none",
        "seconds": time.perf_counter() - started,
        "chunks": len(chunks),
    }


def in_process(call: Callable[[bytes], dict[str, Any]]) -> ChunkRunner:
    """A chunk runner that works through the chunks here, one by one (``.local()`` runs)."""

    def run(chunks: Sequence[bytes]) -> list[dict[str, Any] | BaseException]:
        outputs: list[dict[str, Any] | BaseException] = []
        for chunk in chunks:
            try:
                outputs.append(call(chunk))
            except Exception as exc:  # noqa: BLE001 - reported per chunk, like .map(return_exceptions=True)
                outputs.append(exc)
        return outputs

    return run


# ---- the Modal app ------------------------------------------------------------------------------


@app.cls(
    image=gpu_image,
    gpu=GPU,
    volumes={str(CACHE_DIR): model_cache},
    max_containers=MAX_CONTAINERS,
    timeout=60 * 60,
    scaledown_window=120,
)
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
            engine = load_transcription_engine(self.engine, model, self.compute_type, self.models_dir)
            self.engines[model] = engine
            commit_cache()
        return self.engines[model]

    @modal.method()
    def transcribe(self, audio: bytes | str, model: str | None = None, language: str | None = None) -> dict[str, Any]:
        return run_transcription(self.engine_for(model or self.model), audio, language)


@app.cls(
    image=gpu_image,
    gpu=GPU,
    volumes={str(CACHE_DIR): model_cache},
    secrets=[huggingface],
    max_containers=MAX_CONTAINERS,
    timeout=60 * 60,
    scaledown_window=120,
)
class Diarizer:
    """pyannote speaker diarization on a GPU."""

    engine: str = modal.parameter(default="pyannote")

    @modal.enter()
    def load(self) -> None:
        self.diarizer = load_diarization_engine(self.engine)
        commit_cache()

    @modal.method()
    def diarize(
        self,
        audio: bytes | str,
        speakers: SpeakerCount = ANY_SPEAKERS,
    ) -> dict[str, Any]:
        return run_diarization(self.diarizer, audio, speakers)


@app.function(image=cpu_image, timeout=2 * 60 * 60)
def transcribe_long(
    audio: bytes | str,
    model: str | None = None,
    language: str | None = None,
    engine: str = "openai-whisper",
    max_chunk: float = 60.0,
) -> dict[str, Any]:
    """Long audio on many GPUs at once (at most ``max_containers``), stitched into one transcript."""
    transcriber = Transcriber(engine=engine, model=model or DEFAULT_WHISPER_MODEL)  # type: ignore[call-arg]
    if modal.is_local():
        runner = in_process(lambda chunk: transcriber.transcribe.local(chunk, model, language))
    else:

        def runner(chunks: Sequence[bytes]) -> list[dict[str, Any] | BaseException]:
            kwargs = {"model": model, "language": language}
            return list(transcriber.transcribe.map(chunks, kwargs=kwargs, return_exceptions=True))

    return run_long_transcription(audio, runner, max_chunk)
