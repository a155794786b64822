"""A second look at each speaker: were two similar voices clustered into one?

Clustering cuts the dendrogram of window embeddings at one absolute distance. Window embeddings
blur a speaker with whoever talks next to them in the 10 s window, and real speakers vary a lot
from one stretch to the next, so that distance has to be generous: two similar voices (two
women with the same accent, two synthetic voices of one engine) then end up as one speaker.

The check uses cleaner evidence and a relative test. Each speaker's one-speaker speech is cut
into non-overlapping pieces of about 2 s, each piece is embedded, and the pieces are split in
two (Ward linkage, then a few k-means steps on the unit sphere). The split is kept when the
halves are far apart *relative to how alike the pieces within each half are*:

    score = (within - across) / (1 - within)

``within`` is the mean cosine similarity of two pieces of the same half, ``across`` that of two
pieces of different halves. One real speaker cut in two scores about 0.1 (the halves resemble
each other almost as much as themselves: real speech varies); one synthetic voice 0.2-0.4; two
similar voices 0.6-1.0 on the repository's recordings. Two further guards: pieces of the two
halves must also be unlike in absolute terms (``across`` below 0.8: closer than that, CAM++
cannot tell the voices apart anyway), and a half is not checked again. Within one voice, pieces
of the *same words* are near copies (a generated talk that repeats its script, a jingle), so
a second split would part the voice by what was said. A speaker-count hint from the caller
wins: with ``num_speakers`` the check is skipped, and ``max_speakers`` bounds how many it adds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage

from dhgq.media.diarization.resegment import nearest


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class SplitCheck:
    """Tunables; see the module docstring for what the score means."""

    piece: float = 2.0  # seconds of one-speaker speech per piece
    min_piece: float = 1.0  # shorter leftovers of a stretch are not embedded
    min_pieces: int = 3  # each half needs at least this many pieces...
    min_seconds: float = 5.0  # ...and this much speech
    min_score: float = 0.5
    max_across: float = 0.8


def _pieces(owner: np.ndarray, piece: int, min_piece: int) -> list[np.ndarray]:
    """Non-overlapping runs of at most ``piece`` frames within each stretch of one owner."""
    out: list[np.ndarray] = []
    edges = np.nonzero(np.diff(np.concatenate([[-1], owner, [-1]])))[0]
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        if owner[start] < 0:
            continue
        out += [
            np.arange(s, min(s + piece, stop))
            for s in range(start, stop, piece)
            if min(s + piece, stop) - s >= min_piece
        ]
    return out


def _halves(units: np.ndarray, iterations: int = 10) -> np.ndarray:
    labels = fcluster(linkage(units, method="ward"), 2, criterion="maxclust") - 1
    for _ in range(iterations):
        if np.bincount(labels, minlength=2).min() == 0:
            break
        centroids = _unit(np.stack([units[labels == h].mean(axis=0) for h in (0, 1)]))
        updated = (units @ centroids.T).argmax(axis=1)
        if (updated == labels).all() or np.bincount(updated, minlength=2).min() == 0:
            break
        labels = updated
    return labels


def separation(units: np.ndarray, halves: np.ndarray) -> tuple[float, float]:
    """The score (within - across) / (1 - within) of unit embeddings split into halves 0 and 1,
    and ``across``, the mean cosine similarity of two pieces from different halves."""
    similarity = units @ units.T
    same = (halves[:, None] == halves[None, :]) & ~np.eye(len(units), dtype=bool)
    different = halves[:, None] != halves[None, :]
    if not same.any() or not different.any():
        return 0.0, 1.0
    within, across = float(similarity[same].mean()), float(similarity[different].mean())
    return (within - across) / max(1.0 - within, 1e-6), across


def split_merged_speakers(
    binary: np.ndarray,
    frame_times: np.ndarray,
    feature_times: np.ndarray,
    pool: Callable[[list[np.ndarray]], np.ndarray],
    *,
    feature_step: float,
    check: SplitCheck = SplitCheck(),
    max_speakers: int | None = None,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """``binary`` (segmentation frames, speakers) with merged voices given columns of their own.

    Also returns a profile (mean unit piece embedding) for every speaker the check changed, so
    that stored speaker embeddings describe the voices after the split.
    """
    if len(binary) == 0 or binary.shape[1] == 0:
        return binary, {}
    frame_of_feature = nearest(feature_times, frame_times)
    active = binary[frame_of_feature]
    owner = np.where(active.sum(axis=1) == 1, active.argmax(axis=1), -1)
    pieces = _pieces(owner, int(round(check.piece / feature_step)), int(round(check.min_piece / feature_step)))
    if len(pieces) < 2 * check.min_pieces:
        return binary, {}
    units = _unit(pool(pieces))
    piece_owner = np.array([owner[p[0]] for p in pieces])
    piece_seconds = np.array([len(p) * feature_step for p in pieces])
    piece_time = np.array([feature_times[p[len(p) // 2]] for p in pieces])

    out, profiles = binary.copy(), {}
    for speaker in range(binary.shape[1]):
        if max_speakers is not None and out.shape[1] >= max_speakers:
            break
        mine = np.nonzero(piece_owner == speaker)[0]
        if len(mine) < 2 * check.min_pieces:
            continue
        halves = _halves(units[mine])
        counts = np.bincount(halves, minlength=2)
        seconds = np.array([piece_seconds[mine][halves == h].sum() for h in (0, 1)])
        if counts.min() < check.min_pieces or seconds.min() < check.min_seconds:
            continue
        score, across = separation(units[mine], halves)
        if score < check.min_score or across > check.max_across:
            continue
        new = out.shape[1]
        piece_owner[mine[halves == 1]] = new
        out = np.concatenate([out, np.zeros((len(out), 1), dtype=out.dtype)], axis=1)
        # every frame of the old speaker goes to whichever of the two owns the nearest piece
        both = np.nonzero((piece_owner == speaker) | (piece_owner == new))[0]
        order = both[np.argsort(piece_time[both])]
        frames = np.nonzero(out[:, speaker] > 0)[0]
        closest = order[nearest(frame_times[frames], piece_time[order])]
        moved = frames[piece_owner[closest] == new]
        out[moved, speaker], out[moved, new] = 0, 1
        for k in (speaker, new):
            profiles[k] = units[piece_owner == k].mean(axis=0)
    return out, profiles
