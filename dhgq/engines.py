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
    from dhgq.gpu import select_backend

    backend, _reason = select_backend(get_settings())
    return backend


def transcribe(wav_path: str) -> tuple[Transcript, dict[str, Any]]:
    settings = get_settings()
    return _backend().transcribe(Path(wav_path), model=settings.whisper_model, language=settings.whisper_language)


def diarize(wav_path: str) -> tuple[Diarization, dict[str, Any]]:
    return _backend().diarize(Path(wav_path))


def warm(stage: str) -> str:
    """Load the stage's models now (and compile what numba compiles), so no job pays for it."""
    from dhgq.gpu import LocalBackend

    settings = get_settings()
    if isinstance(_backend(), LocalBackend):
        if stage == "transcription":
            from dhgq.media.transcription import load_engine

            load_engine(settings.whisper_engine, settings.whisper_model, settings.whisper_compute_type,
                        settings.models_dir)
        elif stage == "diarization":
            from dhgq.media.diarization import load_diarizer

            load_diarizer(settings.diarization_engine)
    return stage
