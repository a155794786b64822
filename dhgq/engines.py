"""Entry points that run inside a worker's model host (a child process, see ``dhgq.runner``).

They pick the GPU backend (local engines or Modal) once per process and keep it, so models load
once per worker process, never per job.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from dhgq.media.types import Diarization, Transcript
from dhgq.settings import get_settings


@lru_cache(maxsize=1)
def _backend() -> Any:
    """The backend of this model host; local models share the cores with the worker's other hosts."""
    from dhgq.gpu import LocalBackend, select_backend

    settings = get_settings()
    backend, _reason = select_backend(settings)
    if isinstance(backend, LocalBackend):
        backend.cpu_threads = settings.threads_per_model_job()
    return backend


def transcribe(
    wav_path: str, model: str | None = None, language: str | None = None
) -> tuple[Transcript, dict[str, Any]]:
    """Whisper on the WAV; a request's model and language win over the worker's settings."""
    settings = get_settings()
    return _backend().transcribe(
        Path(wav_path), model=model or settings.whisper_model, language=language or settings.whisper_language
    )


def diarize(
    wav_path: str, num_speakers: int | None = None, min_speakers: int | None = None, max_speakers: int | None = None
) -> tuple[Diarization, dict[str, Any]]:
    """Who spoke when; a request's speaker counts steer the clustering."""
    return _backend().diarize(
        Path(wav_path), num_speakers=num_speakers, min_speakers=min_speakers, max_speakers=max_speakers
    )


def warm(stage: str) -> str:
    """Load the stage's models now (and compile what numba compiles), so no job pays for it."""
    from dhgq.gpu import LocalBackend

    backend = _backend()
    if isinstance(backend, LocalBackend):
        if stage == "transcription":
            backend.transcription_engine(get_settings().whisper_model)
        elif stage == "diarization":
            backend.diarization_engine()
    return stage
