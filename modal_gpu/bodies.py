"""The Modal functions' bodies: plain functions, importable and runnable anywhere.

``modal_gpu/app.py`` wraps them in Modal classes and functions; tests run them here, through
Modal's ``.local()`` or directly. Nothing here imports torch at module level: the coordinators'
CPU image has no torch.
"""

# No `from __future__ import annotations`: app.py's Modal classes read their parameters' types at run time.
import importlib.util
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from dhgq.errors import PermanentError, TransientError
from dhgq.media.serialize import diarization_to_dict, transcript_from_dict, transcript_to_dict
from dhgq.media.transcription.chunking import split_at_silences, stitch_chunks
from dhgq.media.transcription.engines import segments_of_openai_result
from dhgq.media.types import ANY_SPEAKERS, SpeakerCount, Transcript

SAMPLE_RATE = 16000
CACHE_DIR = Path("/cache")  # the weights Volume, in the GPU containers
WHISPER_ROOT = CACHE_DIR / "whisper"
# Every engine's downloads land on the Volume: Hugging Face (pyannote's models), torch hub, pyannote.
CACHE_ENV = {
    "HF_HOME": str(CACHE_DIR / "huggingface"),
    "TORCH_HOME": str(CACHE_DIR / "torch"),
    "PYANNOTE_CACHE": str(CACHE_DIR / "pyannote"),
    "XDG_CACHE_HOME": str(CACHE_DIR),
}
PYANNOTE_PIPELINE = "pyannote/speaker-diarization-3.1"
PYANNOTE_REVISION = "84fd25912480287da0247647c3d2b4853cb3ee5d"
PYANNOTE_GATES = ("pyannote/speaker-diarization-3.1", "pyannote/segmentation-3.0")
HF_SECRET = "dhgq-huggingface"


# ---- audio in ------------------------------------------------------------------------------------


Audio = bytes | str | list[str]  # the bytes, an http(s) URL, or the URLs of its parts in order


def fetch_audio(audio: Audio, timeout: float = 120.0) -> bytes:
    """The audio as 16 kHz mono WAV bytes, from bytes or http(s) URLs (never a local path).

    The worker sends the compact copy (Opus, AAC or MP3), which ffmpeg decodes here; WAV passes as is.
    A large artifact is stored in parts, each with its own signed URL: their bytes, in order, are the file.
    """
    return as_wav(_audio_bytes(audio, timeout))


def as_wav(audio: bytes) -> bytes:
    """WAV bytes as they are; anything else decoded by ffmpeg to the 16 kHz mono WAV the engines read."""
    if audio[:4] == b"RIFF":
        return audio
    command = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", "pipe:0"]
    command += ["-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le", "-f", "wav", "pipe:1"]
    done = subprocess.run(command, input=audio, capture_output=True, check=False, timeout=600)
    if done.returncode != 0 or not done.stdout:
        detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise PermanentError(f"the audio could not be decoded: {detail[0]}")
    return done.stdout


def _audio_bytes(audio: Audio, timeout: float) -> bytes:
    if isinstance(audio, bytes | bytearray):
        return bytes(audio)
    if isinstance(audio, list):
        return b"".join(_audio_bytes(part, timeout) for part in audio)
    if not audio.startswith(("https://", "http://")):
        raise PermanentError("the GPU functions take the audio bytes or an http(s) URL, not a path")
    try:
        with urllib.request.urlopen(audio, timeout=timeout) as response:
            return response.read()  # type: ignore[no-any-return]
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


def torch_device() -> str:
    """``cuda`` where a GPU is, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


# ---- transcription -------------------------------------------------------------------------------


class OpenAIWhisper:
    """openai-whisper on the GPU; weights (SHA-256 checked by whisper) cached on the Volume.

    ``name`` is a model name (tiny .. large-v3, turbo), recorded as given, or the path of a
    checkpoint file, recorded by its stem.
    """

    engine = "openai-whisper"

    def __init__(self, name: str, download_root: Path = WHISPER_ROOT) -> None:
        import whisper

        self.name = name
        self.device = torch_device()
        self.model = whisper.load_model(name, device=self.device, download_root=str(download_root))

    @property
    def model_name(self) -> str:
        return Path(self.name).stem if Path(self.name).is_file() else self.name

    def language_probabilities(self, wav_path: Path) -> list[tuple[str, float]]:
        """The most probable languages of the first 30 s (an English-only model knows one)."""
        import whisper

        if not self.model.is_multilingual:
            return [("en", 1.0)]
        audio = whisper.pad_or_trim(whisper.load_audio(str(wav_path)))
        mel = whisper.log_mel_spectrogram(audio, n_mels=self.model.dims.n_mels).to(self.model.device)
        _, probabilities = self.model.detect_language(mel)
        return sorted(((code, float(p)) for code, p in probabilities.items()), key=lambda item: -item[1])[:5]

    def transcribe(self, wav_path: Path, *, language: str | None = None, prompt: str | None = None) -> Transcript:
        import whisper

        audio = whisper.load_audio(str(wav_path))
        result = self.model.transcribe(
            audio,
            language=language,
            word_timestamps=True,
            fp16=self.device == "cuda",
            verbose=None,
            initial_prompt=prompt,
            carry_initial_prompt=bool(prompt),  # the user's hints in every window, not only the first
        )
        segments = segments_of_openai_result(result)
        return Transcript(
            text=" ".join(s.text for s in segments if s.text),
            language=result.get("language") or language,
            segments=segments,
            model=self.model_name,
            engine=self.engine,
            duration_seconds=len(audio) / SAMPLE_RATE,
        )


def load_transcription_engine(engine: str, model: str, compute_type: str, models_dir: str) -> Any:
    """openai-whisper from the Volume, or any engine of ``dhgq.media.transcription.engines`` (local runs)."""
    if engine == OpenAIWhisper.engine and not models_dir:
        return OpenAIWhisper(model)
    from dhgq.media.transcription.engines import load_engine

    return load_engine(engine, model, compute_type, Path(models_dir) if models_dir else None)


def prefetch_whisper(models: Sequence[str], root: Path = WHISPER_ROOT) -> list[str]:
    """Download openai-whisper checkpoints into ``root`` (the Volume), once; what is there now."""
    import whisper

    fetched = []
    for name in models:
        if name in whisper._MODELS:  # a name whisper knows (paths and local models need nothing)
            whisper._download(whisper._MODELS[name], str(root), in_memory=False)
            fetched.append(name)
    return fetched


def run_transcription(engine: Any, audio: Audio, language: str | None, prompt: str | None = None) -> dict[str, Any]:
    """The body of ``Transcriber.transcribe``: audio in, the wire dict out. ``prompt``: the user's hints as
    one text (initial_prompt, then the vocabulary), for openai-whisper's initial_prompt."""
    started = time.perf_counter()
    hints: dict[str, Any] = {}
    if prompt:
        if isinstance(engine, OpenAIWhisper):
            hints["prompt"] = prompt
        else:  # dhgq's own engines (local runs of the app)
            from dhgq.media.transcription.engines import Prompt

            hints["prompt"] = Prompt(prompt)
    with scratch_wav(fetch_audio(audio)) as path:
        transcript = engine.transcribe(path, language=language, **hints)
    return {
        "transcript": transcript_to_dict(transcript),
        "device": device_name(),
        "seconds": time.perf_counter() - started,
    }


ChunkRunner = Callable[[Sequence[bytes]], Sequence[dict[str, Any] | BaseException]]
TranscriptionRunner = Callable[[Sequence[bytes], str | None], Sequence[dict[str, Any] | BaseException]]
LanguageDetector = Callable[[list[bytes]], dict[str, Any]]
LANGUAGE_SNIPPETS = 3  # chunks (start, middle, end) a long talk's language is told from, once


def run_language_detection(engine: Any, snippets: Sequence[bytes]) -> dict[str, Any]:
    """The body of ``Transcriber.detect_language``: the language most probable over the snippets, with
    its mean probability (each snippet's first 30 s, as Whisper detects)."""
    totals: dict[str, float] = {}
    for snippet in snippets:
        with scratch_wav(as_wav(snippet)) as path:
            for code, probability in engine.language_probabilities(path):
                totals[code] = totals.get(code, 0.0) + probability
    if not totals:
        return {"language": None, "probability": 0.0}
    best = max(totals, key=lambda code: totals[code])
    return {"language": best, "probability": round(totals[best] / len(snippets), 4)}


def language_snippets(chunks: Sequence[bytes]) -> list[bytes]:
    """The chunks a talk's language is told from: its start, middle and end (an intro may be music)."""
    picked = sorted({0, len(chunks) // 2, len(chunks) - 1})[:LANGUAGE_SNIPPETS] if chunks else []
    return [chunks[i] for i in picked]


def run_chunks_retrying(chunks: Sequence[bytes], run_chunks: ChunkRunner) -> list[dict[str, Any] | BaseException]:
    """Every chunk's output; a chunk that failed with anything but a PermanentError runs once more."""
    outputs = list(run_chunks(chunks))
    again = [i for i, out in enumerate(outputs) if isinstance(out, Exception) and not isinstance(out, PermanentError)]
    if again:
        for index, out in zip(again, run_chunks([chunks[i] for i in again]), strict=True):
            outputs[index] = out
    return outputs


def raise_for_failed_chunks(outputs: Sequence[dict[str, Any] | BaseException]) -> list[dict[str, Any]]:
    """The outputs when all chunks succeeded; else one error for the file, permanent if every failure was."""
    failures = [(i, out) for i, out in enumerate(outputs) if isinstance(out, BaseException)]
    if failures:
        index, first = failures[0]
        permanent = all(isinstance(out, PermanentError) for _, out in failures)
        error = PermanentError if permanent else TransientError
        raise error(f"{len(failures)} of {len(outputs)} chunks failed (chunk {index}: {first})") from first
    return [out for out in outputs if not isinstance(out, BaseException)]


def run_long_transcription(
    audio: Audio,
    run_chunks: TranscriptionRunner,
    max_chunk: float,
    *,
    language: str | None = None,
    detect: LanguageDetector | None = None,
) -> dict[str, Any]:
    """The body of ``transcribe_long``: split at silences, tell the talk's language once (unless one was
    asked for) so that every chunk is decoded in it, run every chunk (a failed one twice), stitch."""
    started = time.perf_counter()
    chunks = split_at_silences(fetch_audio(audio), max_chunk=max_chunk)
    wavs = [chunk.wav_bytes() for chunk in chunks]
    detected: dict[str, Any] = {}
    if language is None and detect is not None and wavs:
        detected = detect(language_snippets(wavs))
        language = detected.get("language")
    outputs = run_chunks_retrying(wavs, lambda part: run_chunks(part, language))
    results = raise_for_failed_chunks(outputs)
    transcript = stitch_chunks(chunks, [transcript_from_dict(r["transcript"]) for r in results])
    if language:
        transcript = replace(transcript, language=language)
    return {
        "transcript": transcript_to_dict(transcript),
        "device": results[0]["device"] if results else "none",
        "seconds": time.perf_counter() - started,
        "gpu_seconds": sum(float(r.get("seconds", 0.0)) for r in results),
        "chunks": len(chunks),
        "language": language,
        "language_probability": detected.get("probability"),
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


# ---- diarization ---------------------------------------------------------------------------------


def pyannote_gate_error(detail: str) -> PermanentError:
    """Pyannote cannot load: what to accept and which secret to create. Permanent: retrying cannot help."""
    pages = " and ".join(f"https://hf.co/{model}" for model in PYANNOTE_GATES)
    return PermanentError(
        f"the pyannote diarizer cannot load ({detail}): it needs a Hugging Face token whose account "
        f"has accepted the conditions of both gated models, {' and '.join(PYANNOTE_GATES)} ({pages}), "
        f"in the Modal secret {HF_SECRET!r}: `modal secret create {HF_SECRET} HF_TOKEN=hf_...`, then "
        "`DHGQ_MODAL_DIARIZATION_ENGINE=pyannote dhgq modal deploy`; or use the default engine, local"
    )


def load_pyannote(token: str | None) -> Any:
    """pyannote's pipeline at its pinned revision, or a PermanentError that names both gates."""
    from dhgq.errors import ConfigurationError

    if importlib.util.find_spec("pyannote") is None or importlib.util.find_spec("pyannote.audio") is None:
        raise ConfigurationError(
            "pyannote.audio is not installed in this image: deploy with DHGQ_MODAL_DIARIZATION_ENGINE=pyannote"
        )
    if not token:
        raise pyannote_gate_error(f"no HF_TOKEN: the secret {HF_SECRET!r} is not attached or empty")
    from dhgq.media.diarization.engines import PyannoteEngine

    try:
        engine = PyannoteEngine(hf_token=token, model=f"{PYANNOTE_PIPELINE}@{PYANNOTE_REVISION}")
    except Exception as exc:  # noqa: BLE001 - a refused gate shows as None pipelines, AttributeErrors, HTTP 401/403
        raise pyannote_gate_error(f"{type(exc).__name__}: {exc}") from exc
    if getattr(engine, "pipeline", None) is None:
        raise pyannote_gate_error("the pipeline loaded as None")
    return engine


def load_diarization_engine(engine: str, device: str | None = None) -> Any:
    """dhgq's local diarizer on ``device`` (default: the GPU when there is one), or pyannote with the secret's token."""
    if engine == "pyannote":
        return load_pyannote(os.environ.get("HF_TOKEN"))
    if engine != "local":
        from dhgq.errors import ConfigurationError

        raise ConfigurationError(f"unknown diarization engine {engine!r}: use local or pyannote")
    from dhgq.media.diarization.engines import warm_up
    from dhgq.media.diarization.local import LocalDiarizer

    diarizer = LocalDiarizer(device=device or torch_device())
    warm_up(diarizer)
    return diarizer


def run_diarization(engine: Any, audio: Audio, speakers: SpeakerCount = ANY_SPEAKERS) -> dict[str, Any]:
    """The body of ``Diarizer.diarize``: audio in, the wire dict out."""
    started = time.perf_counter()
    with scratch_wav(fetch_audio(audio)) as path:
        diarization = engine.diarize(path, speakers=speakers)
    return {
        "diarization": diarization_to_dict(diarization),
        "device": device_name(),
        "seconds": time.perf_counter() - started,
    }
