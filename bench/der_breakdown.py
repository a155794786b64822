"""``python -m bench.der_breakdown [--out docs/benchmarks.md]``: where the diarizer's error on real
recordings comes from, per part of the tuning/validation split.

``dhgq eval`` gives one DER per file. To decide what to work on next, this splits the error of the
local diarizer on the real recordings with speaker references (../shared/testdata/real-speech and
tests/data/real-meetings, parts from tests/data/accuracy-split.toml) into:

* missed speech where the diarizer says **nobody** talks (a voice the segmentation did not hear);
* missed speech where it names **fewer** people than talk at once (overlap it under-counts);
* false alarm and speaker confusion (pyannote.metrics, no collar, overlap scored, as ``dhgq eval``).

Then it re-decides the same analyses (each recording's models run once) under a few settings of
the post-processing knobs, to show how much each moves either part. It is a diagnosis, not a
tuner: the defaults are only ever chosen on the tuning part (issue 24's rule), and a setting that
helps tuning and not validation is not kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
REAL = (REPO.parent / "shared" / "testdata" / "real-speech", REPO / "tests" / "data" / "real-meetings")
SPLIT = REPO / "tests" / "data" / "accuracy-split.toml"
BEGIN, END = "<!-- der breakdown: begin -->", "<!-- der breakdown: end -->"
GRID = 0.01  # seconds per frame of the missed-speech split
PARTS = ("tuning", "validation")

# Not knobs but what-ifs, from the references: the true number of speakers as the caller's hint,
# and the reference's number of people talking in every frame in place of the segmentation's (what a
# perfect segmentation would leave to the clustering, with the turns' padding and bridging, which
# make up for an imperfect one, turned off).
HINTED = "the true count as a hint (--speakers N)"
PERFECT_COUNT = "the reference's count of people talking in every frame, turns as found"
PERFECT_BOTH = "both of the above"
# Knob settings re-decided on the cached analyses: (label, LocalDiarizerConfig overrides).
SWEEP: list[tuple[str, dict[str, Any]]] = [
    ("defaults", {}),
    ("min_duration_off 0", {"min_duration_off": 0.0}),
    ("min_duration_off 0.5", {"min_duration_off": 0.5}),
    ("pad_offset 0", {"pad_offset": 0.0}),
    ("pad_offset 0.1", {"pad_offset": 0.1}),
    ("count from 0/1 decisions", {"soft_scores": False}),
    ("count_bias +0.15", {"count_bias": 0.15}),
    ("count_bias +0.3", {"count_bias": 0.3}),
    ("no split check", {"split_check": None}),
    ("no resegmentation", {"reseg_span": 0.0}),
    (HINTED, {}),
    (PERFECT_COUNT, {"pad_offset": 0.0, "min_duration_off": 0.0, "min_duration_on": 0.0}),
    (PERFECT_BOTH, {"pad_offset": 0.0, "min_duration_off": 0.0, "min_duration_on": 0.0}),
]


@dataclass
class Breakdown:
    """Seconds of reference speech and of each kind of error, summed over files."""

    reference: float = 0.0
    missed_nobody: float = 0.0
    missed_fewer: float = 0.0
    false_alarm: float = 0.0
    confusion: float = 0.0
    files: list[str] = field(default_factory=list)

    def add(self, other: Breakdown) -> None:
        for name in ("reference", "missed_nobody", "missed_fewer", "false_alarm", "confusion"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.files += other.files

    @property
    def der(self) -> float:
        errors = self.missed_nobody + self.missed_fewer + self.false_alarm + self.confusion
        return errors / self.reference if self.reference else 0.0

    def share(self, seconds: float) -> str:
        return f"{100 * seconds / self.reference:.1f}%" if self.reference else ""


def recordings() -> list[tuple[str, Path, Path]]:
    """(part, audio, rttm) of every real recording with a speaker reference and a part."""
    from dhgq.evaluation import load_split

    parts = load_split(SPLIT)
    return [
        (parts[audio.name], audio, audio.with_suffix(".rttm"))
        for directory in REAL
        for audio in sorted(directory.iterdir())
        if audio.with_suffix(".rttm").exists() and parts.get(audio.name) in PARTS
    ]


def breakdown(name: str, reference: Any, diarization: Any, duration: float) -> Breakdown:
    """One file's error, with the missed speech split by what the diarizer said at that moment."""
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    from dhgq.evaluation import to_annotation

    end = max(duration, reference.get_timeline().extent().end)
    details = DiarizationErrorRate(collar=0.0, skip_overlap=False)(
        reference, to_annotation(diarization), uem=Timeline([Segment(0.0, end)]), detailed=True
    )
    frames = int(np.ceil(end / GRID)) + 1
    talking, said = np.zeros(frames), np.zeros(frames)
    for segment, _, _ in reference.itertracks(yield_label=True):
        talking[int(segment.start / GRID) : int(segment.end / GRID)] += 1
    for turn in diarization.turns:
        said[int(turn.start / GRID) : int(turn.end / GRID)] += 1
    nobody = float(np.sum(np.where(said == 0, talking, 0))) * GRID
    fewer = float(np.sum(np.where(said > 0, np.maximum(talking - said, 0), 0))) * GRID
    # pyannote's missed detection is exactly nobody + fewer, up to the grid's rounding: keep its total.
    missed = float(details["missed detection"])
    scale = missed / (nobody + fewer) if nobody + fewer else 0.0
    return Breakdown(
        reference=float(details["total"]),
        missed_nobody=nobody * scale,
        missed_fewer=fewer * scale,
        false_alarm=float(details["false alarm"]),
        confusion=float(details["confusion"]),
        files=[name],
    )


def reference_count(diarizer: Any, reference: Any) -> Any:
    """A ``speaker_count`` for ``diarizer`` that reads the reference: how many people it has
    talking at the centre of each segmentation frame."""

    def count(scores: np.ndarray, total: int) -> np.ndarray:
        times = diarizer.segmentation.grid.center(np.arange(total))
        out = np.zeros(total, dtype=int)
        for segment, _, _ in reference.itertracks(yield_label=True):
            out[(times >= segment.start) & (times < segment.end)] += 1
        return out

    return count


def render(per_file: list[tuple[str, Breakdown]], sweep: list[tuple[str, dict[str, Breakdown]]]) -> str:
    def row(label: str, part: str, b: Breakdown) -> str:
        return (
            f"| {label} | {part} | {b.reference:.1f} | {100 * b.der:.1f}% | {b.share(b.missed_nobody)} | "
            f"{b.share(b.missed_fewer)} | {b.share(b.false_alarm)} | {b.share(b.confusion)} |"
        )

    lines = [
        "| file | part | speech s | DER | missed: nobody said | missed: fewer said | false alarm | confusion |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for part in PARTS:
        pooled = Breakdown()
        for file_part, b in per_file:
            if file_part == part:
                lines.append(row(b.files[0], part, b))
                pooled.add(b)
        lines.append(row(f"**pooled {part}**", part, pooled))
    lines += [
        "",
        "Re-decided under other knob settings (pooled DER; the models' analyses are the same):",
        "",
        "| setting | tuning DER | validation DER | tuning missed / false alarm / confusion |",
        "| --- | ---: | ---: | --- |",
    ]
    for label, parts in sweep:
        t, v = parts["tuning"], parts["validation"]
        lines.append(
            f"| {label} | {100 * t.der:.1f}% | {100 * v.der:.1f}% | "
            f"{t.share(t.missed_nobody + t.missed_fewer)} / {t.share(t.false_alarm)} / {t.share(t.confusion)} |"
        )
    return "\n".join(lines) + "\n"


def replace_section(path: Path, text: str) -> None:
    import re

    old = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.der_breakdown", description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to put the tables in")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from dhgq.evaluation import read_rttm
    from dhgq.media.diarization.audio import open_audio, source_gain
    from dhgq.media.diarization.local import MIN_SAMPLES, LocalDiarizer
    from dhgq.media.types import ANY_SPEAKERS, SpeakerCount

    diarizer = LocalDiarizer()
    defaults = diarizer.config
    analysed = []
    for part, audio, rttm in recordings():
        with open_audio(audio, MIN_SAMPLES) as source:
            source.gain = source_gain(source)
            analysed.append((part, audio.name, read_rttm(rttm), diarizer.analyse_source(source)))
        print(f"  analysed {audio.name} ({part})", file=sys.stderr)
    try:
        sweep: list[tuple[str, dict[str, Breakdown]]] = []
        per_file: list[tuple[str, Breakdown]] = []
        for label, overrides in SWEEP:
            diarizer.config = dataclasses.replace(defaults, **overrides)
            pooled = {part: Breakdown() for part in PARTS}
            hinted = label in (HINTED, PERFECT_BOTH)
            for part, name, reference, analysis in analysed:
                hint = SpeakerCount(exact=len(reference.labels())) if hinted else ANY_SPEAKERS
                if label in (PERFECT_COUNT, PERFECT_BOTH):
                    diarizer.speaker_count = reference_count(diarizer, reference)  # type: ignore[method-assign]
                else:
                    vars(diarizer).pop("speaker_count", None)
                b = breakdown(name, reference, diarizer.decide(analysis, speakers=hint), analysis.duration)
                pooled[part].add(b)
                if label == "defaults":
                    per_file.append((part, b))
            sweep.append((label, pooled))
            print(f"  {label}: " + ", ".join(f"{p} {100 * b.der:.1f}%" for p, b in pooled.items()), file=sys.stderr)
    finally:
        for *_, analysis in analysed:
            analysis.close()
    table = render(per_file, sweep)
    print(table)
    if args.out is not None:
        replace_section(
            args.out,
            f"{BEGIN}\n### Where the error comes from (real recordings)\n\n`python -m bench.der_breakdown` on "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Missed speech split by what the diarizer said at that "
            "moment: nobody (a voice the segmentation did not hear) or fewer people than were talking "
            "(overlap under-counted). No collar, overlap scored, as `dhgq eval`.\n\n"
            f"{table}{END}\n",
        )


if __name__ == "__main__":
    main()
