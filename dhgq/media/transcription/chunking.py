"""Long audio in pieces: cut at silences, transcribe the pieces anywhere, stitch the results.

Each chunk carries ``overlap`` seconds of context on both sides of the span it *owns* (its
core). Stitching shifts every piece's timestamps by its offset and keeps a word only from the
chunk whose core holds the word's midpoint, so a word spoken in an overlap appears once. The
same code runs in the worker and in the Modal app.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from dhgq.media.types import Segment, Transcript, Word

FRAME_SECONDS = 0.01
FLOOR_DB = -100.0
SMOOTH_FRAMES = 5  # the quietest spot is judged over 50 ms


@dataclass(frozen=True)
class Chunk:
    """A piece of the source: ``start``..``end`` is what it holds, ``core_*`` what it owns."""

    start: float
    end: float
    core_start: float
    core_end: float
    samples: np.ndarray = field(repr=False, compare=False)
    sample_rate: int = 16000

    @property
    def duration(self) -> float:
        return self.end - self.start

    def wav_bytes(self) -> bytes:
        """The chunk as a 16-bit PCM WAV, ready to send over the wire."""
        buffer = io.BytesIO()
        sf.write(buffer, self.samples, self.sample_rate, format="WAV", subtype="PCM_16")
        return buffer.getvalue()

    def write(self, path: Path) -> Path:
        sf.write(str(path), self.samples, self.sample_rate, subtype="PCM_16")
        return path


def read_mono(audio: Path | str | bytes) -> tuple[np.ndarray, int]:
    """Float32 mono samples and the sample rate of a WAV file or WAV bytes."""
    source = io.BytesIO(audio) if isinstance(audio, bytes) else str(audio)
    samples, rate = sf.read(source, dtype="float32", always_2d=True)
    return samples.mean(axis=1), int(rate)


def frame_levels(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS level in dBFS of consecutive 10 ms frames (floored at -100 dB)."""
    size = max(1, int(sample_rate * FRAME_SECONDS))
    count = math.ceil(len(samples) / size)
    padded = np.zeros(count * size, dtype=np.float64)
    padded[: len(samples)] = samples
    rms = np.sqrt(np.mean(padded.reshape(count, size) ** 2, axis=1))
    return np.maximum(20 * np.log10(np.maximum(rms, 1e-12)), FLOOR_DB)


def silence_threshold(levels: np.ndarray) -> float:
    """A level between the noise floor and the speech level: below it a frame counts as silent."""
    floor, speech = np.percentile(levels, 5), np.percentile(levels, 95)
    return float(floor + 0.25 * (speech - floor))


def _silent_runs(silent: np.ndarray, min_frames: int) -> list[tuple[int, int]]:
    """Half-open frame ranges of at least ``min_frames`` silent frames."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], silent.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= min_frames]


@dataclass(frozen=True)
class Cut:
    """A cut time and how far the overlap may reach around it (the silence it lies in, if any)."""

    at: float
    reach_back: float
    reach_ahead: float


def _cut(levels: np.ndarray, runs: list[tuple[int, int]], lo: int, hi: int) -> Cut:
    """The cut between frames lo and hi: the middle of the latest long silence, else the quietest spot.

    A cut in a silence lets the overlap reach only across that silence, so that no chunk begins
    or ends with a fragment of a word; elsewhere the overlap is free.
    """
    for start, stop in reversed(runs):
        a, b = max(start, lo), min(stop, hi)
        if a < b:
            return Cut((a + b) // 2 * FRAME_SECONDS, start * FRAME_SECONDS, stop * FRAME_SECONDS)
    window = np.convolve(levels[lo:hi], np.ones(SMOOTH_FRAMES) / SMOOTH_FRAMES, mode="same")
    quietest = np.flatnonzero(window <= window.min() + 1e-9)
    return Cut((lo + int(quietest[-1])) * FRAME_SECONDS, -math.inf, math.inf)


def quiet_cut(samples: np.ndarray, sample_rate: int, *, min_silence: float = 0.3) -> float:
    """Where to cut these samples, in seconds from their start: the middle of the latest silence of
    at least ``min_silence`` seconds, else the quietest 50 ms."""
    levels = frame_levels(samples, sample_rate)
    if levels.size == 0:
        return 0.0
    runs = _silent_runs(levels < silence_threshold(levels), max(1, round(min_silence / FRAME_SECONDS)))
    return _cut(levels, runs, 0, len(levels)).at


def cut_points(samples: np.ndarray, sample_rate: int, *, max_span: float, min_silence: float = 0.3) -> list[Cut]:
    """Cuts so that no piece between two cuts is longer than ``max_span`` seconds."""
    levels = frame_levels(samples, sample_rate)
    min_frames = max(1, round(min_silence / FRAME_SECONDS))
    runs = _silent_runs(levels < silence_threshold(levels), min_frames)
    span = int(max_span / FRAME_SECONDS)
    cuts: list[Cut] = []
    previous = 0
    while len(levels) - previous > span:
        cut = _cut(levels, runs, previous + span // 2, previous + span)
        cuts.append(cut)
        previous = round(cut.at / FRAME_SECONDS)
    return cuts


def split_samples(
    samples: np.ndarray,
    sample_rate: int,
    *,
    max_chunk: float = 30.0,
    overlap: float = 1.0,
    min_silence: float = 0.3,
) -> list[Chunk]:
    """Chunks of at most ``max_chunk`` seconds (overlaps included), cut in silences where possible."""
    if max_chunk <= 2 * overlap:
        raise ValueError(f"max_chunk ({max_chunk}s) must be longer than twice the overlap ({overlap}s)")
    total = len(samples) / sample_rate
    cuts = cut_points(samples, sample_rate, max_span=max_chunk - 2 * overlap, min_silence=min_silence)
    before = [Cut(0.0, 0.0, 0.0), *cuts]
    after = [*cuts, Cut(total, total, total)]
    chunks = []
    for left, right in zip(before, after, strict=True):
        start = max(0.0, left.at - overlap, left.reach_back)
        end = min(total, right.at + overlap, right.reach_ahead)
        piece = samples[int(round(start * sample_rate)) : int(round(end * sample_rate))]
        chunks.append(Chunk(start, end, left.at, right.at, piece, sample_rate))
    return chunks


def split_at_silences(
    wav: Path | str | bytes, *, max_chunk: float = 30.0, overlap: float = 1.0, min_silence: float = 0.3
) -> list[Chunk]:
    """Split a WAV (path or bytes) into overlapping chunks cut at silences; see ``split_samples``."""
    samples, rate = read_mono(wav)
    return split_samples(samples, rate, max_chunk=max_chunk, overlap=overlap, min_silence=min_silence)


def _join_words(words: Sequence[Word]) -> str:
    if any(word.text[:1].isspace() for word in words):
        return "".join(word.text for word in words).strip()
    return " ".join(word.text.strip() for word in words)


def _shifted_segment(segment: Segment, offset: float, lo: float, hi: float) -> Segment | None:
    """The segment moved by ``offset``, holding only the words whose midpoint lies in [lo, hi)."""
    if not segment.words:
        middle = offset + (segment.start + segment.end) / 2
        if not lo <= middle < hi:
            return None
        return replace(segment, start=segment.start + offset, end=segment.end + offset)
    words = [replace(w, start=w.start + offset, end=w.end + offset) for w in segment.words]
    kept = [w for w in words if lo <= (w.start + w.end) / 2 < hi]
    if not kept:
        return None
    if len(kept) == len(words):
        return replace(segment, start=segment.start + offset, end=segment.end + offset, words=kept)
    return replace(segment, start=kept[0].start, end=kept[-1].end, text=_join_words(kept), words=kept)


def _make_monotonic(segments: list[Segment]) -> None:
    """Clamp timestamps so that nothing starts before what came before it ended."""
    last = 0.0
    for segment in segments:
        segment.start = max(segment.start, last)
        for word in segment.words:
            word.start = max(word.start, last)
            word.end = max(word.end, word.start)
            last = word.end
        segment.end = max(segment.end, segment.start, last)
        last = segment.end


def _boundaries(results: Sequence[tuple[float, Transcript]]) -> list[float]:
    """Where one chunk's ownership ends: the middle of its overlap with the next chunk."""
    cuts = []
    for (offset, transcript), (next_offset, _) in zip(results, results[1:], strict=False):
        end = offset + transcript.duration_seconds if transcript.duration_seconds else next_offset
        cuts.append((next_offset + max(end, next_offset)) / 2)
    return cuts


def stitch(results: Sequence[tuple[float, Transcript]], *, boundaries: Sequence[float] | None = None) -> Transcript:
    """One transcript from per-chunk transcripts, given each chunk's offset in the source.

    ``boundaries`` are the cut times between consecutive chunks (their cores' edges); when left
    out they are the middles of the overlaps, from the offsets and each transcript's duration.
    """
    if not results:
        raise ValueError("nothing to stitch")
    cuts = list(boundaries) if boundaries is not None else _boundaries(results)
    if len(cuts) != len(results) - 1:
        raise ValueError(f"{len(results)} chunks need {len(results) - 1} boundaries, got {len(cuts)}")
    edges = [-math.inf, *cuts, math.inf]
    segments = [
        kept
        for index, (offset, transcript) in enumerate(results)
        for segment in transcript.segments
        if (kept := _shifted_segment(segment, offset, edges[index], edges[index + 1])) is not None
    ]
    _make_monotonic(segments)
    first = results[0][1]
    ends = [offset + t.duration_seconds for offset, t in results if t.duration_seconds is not None]
    return Transcript(
        text=" ".join(s.text.strip() for s in segments if s.text.strip()),
        language=next((t.language for _, t in results if t.language), None),
        segments=segments,
        model=first.model,
        engine=first.engine,
        duration_seconds=max(ends) if len(ends) == len(results) else (segments[-1].end if segments else None),
    )


def stitch_chunks(chunks: Sequence[Chunk], transcripts: Sequence[Transcript]) -> Transcript:
    """``stitch`` for the chunks ``split_at_silences`` made, using their exact core edges."""
    if len(chunks) != len(transcripts):
        raise ValueError(f"{len(chunks)} chunks but {len(transcripts)} transcripts")
    return stitch(
        [(chunk.start, transcript) for chunk, transcript in zip(chunks, transcripts, strict=True)],
        boundaries=[chunk.core_end for chunk in chunks[:-1]],
    )
