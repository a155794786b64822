"""Long audio diarized in chunks on many GPUs, its speakers linked across the chunks.

Each chunk is diarized alone (``Diarizer.diarize_chunk``), which names its speakers as it likes
and gives each one a mean embedding. The coordinator (``diarize_long``) then clusters all
chunks' speaker embeddings at once: agglomerative, average linkage on cosine distance, where two
speakers of one chunk never join (the chunk's diarizer already told them apart) and a request's
speaker count bounds the result. Turns are moved to the source's time line, each chunk keeps the
turns of the span it owns (its core, as in transcription's stitching), and a speaker's turns
that meet at a boundary are joined.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dhgq.media.serialize import diarization_from_dict, diarization_to_dict
from dhgq.media.transcription.chunking import Chunk, split_at_silences
from dhgq.media.types import ANY_SPEAKERS, Diarization, SpeakerCount, SpeakerTurn
from modal_gpu.bodies import Audio, ChunkRunner, fetch_audio, raise_for_failed_chunks, run_chunks_retrying

# Cosine distance below which two chunks' speakers are one person. A speaker's mean embedding over
# a chunk is steadier than one window's: the same voice sits at 0.85-0.95 to itself across chunks,
# different voices at most ~0.6 (see tests/support/voices.py).
LINK_THRESHOLD = 0.3
JOIN_GAP = 0.75  # seconds: a speaker's turns this close across a chunk boundary become one
CHUNK_OVERLAP = 2.0


@dataclass(frozen=True)
class ChunkSpeaker:
    """One speaker of one chunk: its chunk, its label there, its mean embedding and speech seconds."""

    chunk: int
    label: str
    embedding: np.ndarray
    seconds: float


def chunk_speakers(diarizations: Sequence[Diarization]) -> list[ChunkSpeaker]:
    speakers = []
    for index, diarization in enumerate(diarizations):
        for label in diarization.speakers:
            seconds = sum(t.end - t.start for t in diarization.turns if t.speaker == label)
            vector = diarization.embeddings.get(label)
            embedding = np.asarray(vector, dtype=np.float64) if vector else np.full(1, np.nan)
            speakers.append(ChunkSpeaker(index, label, embedding, seconds))
    return speakers


def link_speakers(
    speakers: Sequence[ChunkSpeaker], count: SpeakerCount = ANY_SPEAKERS, threshold: float = LINK_THRESHOLD
) -> list[int]:
    """A global speaker index for each chunk speaker (0..k-1, by first appearance in ``speakers``).

    Average-linkage agglomerative clustering on cosine distance with cannot-link within a chunk:
    merging stops at ``threshold``, except that it goes on (closest pairs first) while there are
    more clusters than ``count`` allows and stops early at its lower bound. A speaker without an
    embedding stays alone.
    """
    n = len(speakers)
    if n == 0:
        return []
    dim = max(len(s.embedding) for s in speakers)
    vectors = np.stack([s.embedding if len(s.embedding) == dim else np.full(dim, np.nan) for s in speakers])
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    distance = np.nan_to_num(1.0 - unit @ unit.T, nan=np.inf)
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    chunks: dict[int, set[int]] = {i: {speakers[i].chunk} for i in range(n)}
    upper = count.exact or count.at_most
    lower = count.exact or count.at_least or 1
    while len(members) > lower:
        best, pair = np.inf, None
        keys = list(members)
        for a_index, a in enumerate(keys):
            for b in keys[a_index + 1 :]:
                if chunks[a] & chunks[b]:
                    continue
                d = float(distance[np.ix_(members[a], members[b])].mean())
                if d < best:
                    best, pair = d, (a, b)
        if pair is None or (best > threshold and (upper is None or len(members) <= upper)) or not np.isfinite(best):
            break
        a, b = pair
        members[a] += members.pop(b)
        chunks[a] |= chunks.pop(b)
    labels = np.empty(n, dtype=int)
    for index, key in enumerate(sorted(members, key=lambda k: min(members[k]))):
        labels[members[key]] = index
    return [int(label) for label in labels]


def stitch_diarizations(
    chunks: Sequence[Chunk], diarizations: Sequence[Diarization], labels: Sequence[int]
) -> Diarization:
    """One diarization on the source's time line from per-chunk diarizations and linked labels."""
    speakers = chunk_speakers(diarizations)
    global_of = {(s.chunk, s.label): label for s, label in zip(speakers, labels, strict=True)}
    turns: list[SpeakerTurn] = []
    for index, (chunk, diarization) in enumerate(zip(chunks, diarizations, strict=True)):
        lo = chunk.core_start if index > 0 else 0.0
        hi = chunk.core_end if index < len(chunks) - 1 else np.inf
        for turn in diarization.turns:
            start, end = max(turn.start + chunk.start, lo), min(turn.end + chunk.start, hi)
            if end > start:
                turns.append(SpeakerTurn(start, end, str(global_of[(index, turn.speaker)])))
    joined = _join(sorted(turns, key=lambda t: (t.speaker, t.start)))
    order = list(dict.fromkeys(t.speaker for t in joined))
    names = {old: f"SPEAKER_{i + 1}" for i, old in enumerate(order)}
    embeddings = {}
    for old in order:
        mine = [
            s for s, label in zip(speakers, labels, strict=True) if str(label) == old and np.isfinite(s.embedding).all()
        ]
        if mine:
            weights = np.array([max(s.seconds, 1e-3) for s in mine])
            mean = np.average(np.stack([s.embedding for s in mine]), axis=0, weights=weights)
            embeddings[names[old]] = [round(float(v), 6) for v in mean]
    engine = diarizations[0].engine if diarizations else "local"
    return Diarization(
        turns=[SpeakerTurn(round(t.start, 3), round(t.end, 3), names[t.speaker]) for t in joined],
        speakers=list(names.values()),
        embeddings=embeddings,
        engine=engine,
    )


def _join(turns: Sequence[SpeakerTurn]) -> list[SpeakerTurn]:
    """Turns of one speaker (sorted by speaker, then start) that meet or nearly meet, as one; by start."""
    out: list[SpeakerTurn] = []
    for turn in turns:
        if out and out[-1].speaker == turn.speaker and turn.start - out[-1].end <= JOIN_GAP:
            out[-1] = SpeakerTurn(out[-1].start, max(out[-1].end, turn.end), turn.speaker)
        else:
            out.append(SpeakerTurn(turn.start, turn.end, turn.speaker))
    return sorted(out, key=lambda t: (t.start, t.end))


def chunk_hint(speakers: SpeakerCount) -> SpeakerCount:
    """What a request's count says about one chunk: no more speakers than the whole talk has."""
    return SpeakerCount(at_most=speakers.exact or speakers.at_most)


def run_long_diarization(
    audio: Audio, run_chunks: ChunkRunner, speakers: SpeakerCount = ANY_SPEAKERS, max_chunk: float = 600.0
) -> dict[str, Any]:
    """The body of ``diarize_long``: split at silences, diarize every chunk (a failed one twice), link, stitch."""
    started = time.perf_counter()
    chunks = split_at_silences(fetch_audio(audio), max_chunk=max_chunk, overlap=CHUNK_OVERLAP)
    results = raise_for_failed_chunks(run_chunks_retrying([chunk.wav_bytes() for chunk in chunks], run_chunks))
    diarizations = [diarization_from_dict(r["diarization"]) for r in results]
    labels = link_speakers(chunk_speakers(diarizations), speakers)
    diarization = stitch_diarizations(chunks, diarizations, labels)
    return {
        "diarization": diarization_to_dict(diarization),
        "device": results[0]["device"] if results else "none",
        "seconds": time.perf_counter() - started,
        "gpu_seconds": sum(float(r.get("seconds", 0.0)) for r in results),
        "chunks": len(chunks),
    }
