"""The dataclasses the stage functions exchange. They are JSON-friendly (``asdict``) because the
pipeline stores them in ``result`` columns and the GPU backend ships them over the wire."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProbeInfo:
    duration_seconds: float
    format_name: str
    audio_codec: str | None
    video_codec: str | None
    channels: int | None
    sample_rate: int | None
    bitrate: int | None
    size_bytes: int


@dataclass
class ExtractionResult:
    """The extracted audio: a 16 kHz mono WAV for the models plus a compact copy to keep."""

    wav_path: str
    compact_path: str | None
    probe: ProbeInfo
    quality_metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Word:
    start: float
    end: float
    text: str
    probability: float | None = None
    speaker: str | None = None


@dataclass
class Segment:
    start: float
    end: float
    text: str
    confidence: float | None = None
    words: list[Word] = field(default_factory=list)
    speaker: str | None = None


@dataclass
class Transcript:
    text: str
    language: str | None
    segments: list[Segment]
    model: str
    engine: str
    duration_seconds: float | None = None
    language_probability: float | None = None  # how sure the model was of a language it detected (None: asked for)


@dataclass
class SpeakerTurn:
    start: float
    end: float
    speaker: str


@dataclass
class Diarization:
    """Speaker turns (overlapping where two people talk) and one mean embedding per speaker."""

    turns: list[SpeakerTurn]
    speakers: list[str]
    embeddings: dict[str, list[float]] = field(default_factory=dict)
    engine: str = "local"
    # How sure the engine is of the number of speakers: the probability it gives len(speakers), and
    # its probability for each count it weighed ("1", "2", ...; JSON keys). None and {} when a hint
    # fixed the count or the engine does not say (pyannote, diarizations stored before these fields).
    count_confidence: float | None = None
    count_probabilities: dict[str, float] = field(default_factory=dict)


@dataclass
class Summary:
    summary: str
    key_points: list[str]
    topics: list[str]
    document_type: str
    method: str  # "claude" or "extractive"
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SpeakerCount:
    """What is known of how many people speak: exactly ``exact``, or from ``at_least`` to ``at_most``.

    One type for the hint, from a request's options to the diarizer (local, pyannote or on Modal).
    """

    exact: int | None = None
    at_least: int | None = None
    at_most: int | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SpeakerCount:
        """From a request's options (num_speakers, min_speakers, max_speakers), already checked."""

        def number(name: str) -> int | None:
            value = options.get(name)
            return None if value is None else int(value)

        return cls(number("num_speakers"), number("min_speakers"), number("max_speakers"))


ANY_SPEAKERS = SpeakerCount()


# How far a long piece of work is, in audio seconds: (done, in all). Engines call it as they go.
Progress = Callable[[float, float], None]
