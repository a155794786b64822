"""``python -m bench.count_model``: learn the speaker-count model on the tuning part, and only there.

The local diarizer counts speakers with a posterior over the cuts of its dendrogram
(dhgq/media/diarization/count.py): a logistic model gives each merge the probability that it
joined two different people. This fits that model's weights on the tuning part:

* the real recordings that tests/data/accuracy-split.toml puts in ``tuning`` (in
  ../shared/testdata/real-speech and tests/data/real-meetings), and
* the voice matrix's tuning cases (tests/support/voices.py: ``tuning_cases`` and
  ``variant_tuning_cases``), generated here;

never on the validation part. Each window embedding that clustering starts from is labelled with
the reference speaker who talks in most of its frames; each merge of the dendrogram is labelled
"different" when the two sides' majority speakers differ, "same" when they agree (merges with a
side that has no clear majority are left out). Real recordings and generated ones weigh the same
in all. Prints the weights to paste into ``MERGE_MODEL``, and how well they separate the merges.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
REAL = (REPO.parent / "shared" / "testdata" / "real-speech", REPO / "tests" / "data" / "real-meetings")
SPLIT = REPO / "tests" / "data" / "accuracy-split.toml"
MIN_PURITY = 0.6  # a side's majority speaker must hold this share of its labelled windows


def seed_speakers(diarizer: Any, analysis: Any, reference: Any) -> list[str | None]:
    """The reference speaker of each clustering seed: who talks in most of its active frames."""
    (windows, locals_), _ = diarizer.seed_index(analysis)
    grid, step = diarizer.segmentation.grid, diarizer.config.window_step
    turns = [(seg.start, seg.end, label) for seg, _, label in reference.itertracks(yield_label=True)]
    out: list[str | None] = []
    for w, s in zip(windows, locals_, strict=True):
        frames = np.nonzero(analysis.activity[w, :, s])[0]
        times = w * step + grid.center(frames)
        votes: dict[str, int] = {}
        for start, end, label in turns:
            votes[label] = votes.get(label, 0) + int(((times >= start) & (times < end)).sum())
        best = max(votes, key=lambda k: votes[k]) if votes else None
        out.append(best if best is not None and votes[best] >= 0.5 * max(len(frames), 1) else None)
    return out


def training_rows(diarizer: Any, analysis: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
    """(merge features, 1 when the merge joined different people) over one recording's dendrogram."""
    from scipy.cluster.hierarchy import linkage

    from dhgq.media.diarization.count import merge_features, merge_members

    sample, _ = diarizer.cluster_seeds(analysis)
    if len(sample) < 2:
        return np.zeros((0, 3)), np.zeros(0)
    unit = sample / np.linalg.norm(sample, axis=1, keepdims=True)
    tree = linkage(unit, method="centroid", metric="euclidean")
    labels = seed_speakers(diarizer, analysis, reference)
    features = merge_features(unit, tree)
    keep, target = [], []
    for row, sides in enumerate(merge_members(tree, len(unit))):
        majorities = [_majority([labels[i] for i in side]) for side in sides]
        if None not in majorities:
            keep.append(row)
            target.append(int(majorities[0] != majorities[1]))
    return features[keep], np.array(target)


def _majority(labels: list[str | None]) -> str | None:
    known = [label for label in labels if label is not None]
    if not known:
        return None
    best = max(set(known), key=known.count)
    return best if known.count(best) >= MIN_PURITY * len(known) else None


def tuning_recordings(folder: Path) -> list[tuple[str, Path, Path]]:
    """(kind, audio, rttm) of every tuning recording with a speaker reference; the matrix's
    conversations are generated into ``folder``."""
    sys.path.insert(0, str(REPO))
    from dhgq.evaluation import load_split
    from tests.support.voices import tuning_cases, variant_tuning_cases

    parts = load_split(SPLIT)
    out = []
    for directory in REAL:
        for audio in sorted(directory.iterdir()):
            if parts.get(audio.name) == "tuning" and audio.with_suffix(".rttm").exists():
                out.append(("real", audio, audio.with_suffix(".rttm")))
    for case in tuning_cases() + variant_tuning_cases():
        reference = case.generate(folder)
        rttm = reference.audio.with_suffix(".rttm")
        rttm.write_text(reference.rttm())
        out.append(("synthetic", reference.audio, rttm))
    return out


def fit(rows: list[tuple[str, np.ndarray, np.ndarray]]) -> tuple[Any, dict[str, float]]:
    """The logistic model over all recordings' merges, real and generated weighing the same in all."""
    from sklearn.linear_model import LogisticRegression

    from dhgq.media.diarization.count import MergeModel

    features = np.concatenate([f for _, f, _ in rows])
    target = np.concatenate([t for _, _, t in rows])
    kinds = np.concatenate([[kind] * len(t) for kind, _, t in rows])
    weights = np.ones(len(target))
    for kind in ("real", "synthetic"):
        mine = kinds == kind
        weights[mine] = 0.5 * len(target) / max(mine.sum(), 1)
    mean, scale = features.mean(axis=0), features.std(axis=0)
    regression = LogisticRegression(C=1.0).fit((features - mean) / scale, target, sample_weight=weights)
    model = MergeModel(
        weights=tuple(round(float(w), 4) for w in regression.coef_[0]),  # type: ignore[arg-type]
        bias=round(float(regression.intercept_[0]), 4),
        mean=tuple(round(float(m), 4) for m in mean),  # type: ignore[arg-type]
        scale=tuple(round(float(s), 4) for s in scale),  # type: ignore[arg-type]
    )
    predicted = model.p_different(features) > 0.5
    summary = {
        "merges": float(len(target)),
        "different": float(target.sum()),
        "accuracy": float((predicted == target).mean()),
        "accuracy_real": float((predicted == target)[kinds == "real"].mean()),
    }
    return model, summary


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m bench.count_model", description=__doc__).parse_args(argv)
    sys.path.insert(0, str(REPO))
    from dhgq.evaluation import read_rttm
    from dhgq.media.diarization.audio import open_audio, source_gain
    from dhgq.media.diarization.local import MIN_SAMPLES, LocalDiarizer

    diarizer = LocalDiarizer()
    rows = []
    with tempfile.TemporaryDirectory(prefix="dhgq-count-model-") as folder:
        for kind, audio, rttm in tuning_recordings(Path(folder)):
            with open_audio(audio, MIN_SAMPLES) as source:
                source.gain = source_gain(source)
                analysis = diarizer.analyse_source(source)
            try:
                features, target = training_rows(diarizer, analysis, read_rttm(rttm))
            finally:
                analysis.close()
            rows.append((kind, features, target))
            print(f"  {kind} {audio.name}: {len(target)} merges, {int(target.sum())} different", file=sys.stderr)
    model, summary = fit(rows)
    print(f"MERGE_MODEL = {model!r}")
    print(", ".join(f"{k} {v:.3g}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
