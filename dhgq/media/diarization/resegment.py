"""Resegmentation: relabel single-speaker stretches from short speaker embeddings.

The segmentation model sometimes follows one voice into the next within a 10 s window (two
similar voices at a distant microphone); whole-window embeddings then mix both people. After
clustering has fixed who the speakers are, short embeddings (~1.5 s of one-speaker frames,
overlapping) are compared with speaker centroids refined on those same short embeddings, and
each one-speaker frame takes the speaker its surrounding short embeddings resemble most.
Frames where two people talk keep the pyannote-style labels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def nearest(times: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Index of the ``grid`` time (sorted) nearest to each of ``times``."""
    right = np.clip(np.searchsorted(grid, times), 1, max(1, len(grid) - 1))
    left = right - 1
    return np.where(np.abs(grid[left] - times) <= np.abs(grid[right] - times), left, right)


def resegment(
    binary: np.ndarray,
    frame_times: np.ndarray,
    feature_times: np.ndarray,
    pool: Callable[[list[np.ndarray]], np.ndarray],
    *,
    span: int,
    hop: int,
    min_fill: float = 0.5,
    iterations: int = 3,
    min_windows: int = 2,
) -> np.ndarray:
    """A copy of ``binary`` (segmentation frames, speakers) with one-speaker frames relabelled.

    ``frame_times`` and ``feature_times`` are the centres of the segmentation frames and of
    the embedding-feature frames; ``pool`` turns lists of feature-frame indices into
    embeddings; ``span`` and ``hop`` are counted in feature frames.
    """
    speakers = binary.shape[1]
    if speakers < 2 or len(binary) == 0:
        return binary
    frame_index = nearest(feature_times, frame_times)
    single = binary[frame_index].sum(axis=1) == 1
    first = np.where(single, binary[frame_index].argmax(axis=1), -1)
    starts = range(0, max(1, len(frame_index) - span + 1), hop)
    chosen = [np.arange(s, min(s + span, len(frame_index))) for s in starts]
    chosen = [c[single[c]] for c in chosen]
    chosen = [c for c in chosen if len(c) >= min_fill * span]
    if len(chosen) < 2 * min_windows:
        return binary
    embeddings = _unit(pool(chosen))
    labels = np.array([np.bincount(first[c], minlength=speakers).argmax() for c in chosen])
    present = np.nonzero(np.bincount(labels, minlength=speakers) >= min_windows)[0]
    if len(present) < 2:
        return binary  # fewer than two speakers talk alone long enough to compare
    for _ in range(iterations):  # k-means on the short embeddings, from the first pass's labels
        centroids = _unit(np.stack([embeddings[labels == k].mean(axis=0) for k in present]))
        updated = present[(embeddings @ centroids.T).argmax(axis=1)]
        if np.bincount(updated, minlength=speakers)[present].min() < min_windows:
            break  # a speaker would lose its short embeddings: keep the last labels
        labels = updated
    centroids = _unit(np.stack([embeddings[labels == k].mean(axis=0) for k in present]))
    similarity = np.full((len(chosen), speakers), -1.0)
    similarity[:, present] = embeddings @ centroids.T
    votes = np.zeros((len(frame_index), speakers))
    for c, sim in zip(chosen, similarity, strict=True):
        votes[c] += sim
    feature_of_frame = nearest(frame_times, feature_times)
    frame_votes = votes[feature_of_frame]
    relabel = (binary.sum(axis=1) == 1) & (frame_votes.any(axis=1))
    out = binary.copy()
    out[relabel] = np.eye(speakers)[frame_votes[relabel].argmax(axis=1)]
    return out
