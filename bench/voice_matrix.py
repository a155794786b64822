"""``python -m bench.voice_matrix [--out docs/benchmarks.md]``: speaker counting on voices nobody tuned for.

The local diarizer, without a hint, on every conversation of the generated voice matrix
(``tests/support/voices.py``: every pair of eight espeak-ng voices across accents and sexes,
groups of three and four, voices alone). Reports, per number of speakers, how often the count
was right and the DER, and writes the table between markers in the output file, leaving the rest
of it as it is (the same way as ``dhgq eval --write``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- voice matrix: begin -->", "<!-- voice matrix: end -->"


def der(reference_rttm: str, audio: Path, diarization: object) -> float:
    """DER with pyannote.metrics, no collar, overlap scored, over the whole file."""
    import soundfile as sf
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    from dhgq.evaluation import read_rttm, to_annotation

    rttm = audio.with_suffix(".rttm")
    rttm.write_text(reference_rttm)
    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    uem = Timeline([Segment(0.0, sf.info(str(audio)).duration)])
    return float(metric(read_rttm(rttm), to_annotation(diarization), uem=uem))


def measure(folder: Path) -> list[tuple[str, int, int, float, float]]:
    """(case, speakers, speakers found, DER, seconds) for every case of the matrix."""
    sys.path.insert(0, str(REPO))
    from dhgq.media.diarization.engines import load_diarizer
    from tests.support.voices import matrix_cases

    diarizer = load_diarizer("local")
    rows = []
    for case in matrix_cases():
        reference = case.generate(folder)
        started = time.perf_counter()
        result = diarizer.diarize(reference.audio)
        seconds = time.perf_counter() - started
        error = der(reference.rttm(), reference.audio, result)
        rows.append((case.name, len(case.speakers), len(result.speakers), error, seconds))
        print(f"  {case.name}: {len(result.speakers)}/{len(case.speakers)} speakers, DER {error:.1%}", file=sys.stderr)
    return rows


def render(rows: list[tuple[str, int, int, float, float]]) -> str:
    lines = [
        "| speakers | conversations | count right | DER mean | DER worst | worst case |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for size in sorted({row[1] for row in rows}) + [0]:
        group = [row for row in rows if size == 0 or row[1] == size]
        right = sum(row[1] == row[2] for row in group)
        worst = max(group, key=lambda row: row[3])
        mean = sum(row[3] for row in group) / len(group)
        label = "**all**" if size == 0 else str(size)
        lines.append(f"| {label} | {len(group)} | {right}/{len(group)} | {mean:.1%} | {worst[3]:.1%} | {worst[0]} |")
    wrong = [f"{row[0]} ({row[2]} found)" for row in rows if row[1] != row[2]]
    lines.append("")
    lines.append("Miscounted: " + (", ".join(wrong) if wrong else "none") + ".")
    return "\n".join(lines) + "\n"


def section(rows: list[tuple[str, int, int, float, float]]) -> str:
    audio_note = sum(row[4] for row in rows)
    return (
        f"{BEGIN}\n## Speaker counting on the voice matrix\n\n`python -m bench.voice_matrix` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC: the local diarizer without a speaker-count hint on "
        f"{len(rows)} generated conversations of 20-30 s (every pair of eight espeak-ng voices of "
        "different accents and sexes, groups of three and four, voices alone; scripts other than the "
        f"tests' talks), {audio_note:.0f} s of diarization in all. DER with pyannote.metrics, collar 0.\n\n"
        f"{render(rows)}{END}\n"
    )


def replace_section(path: Path, text: str) -> None:
    import re

    old = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.voice_matrix", description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to put the table in")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dhgq-voice-matrix-") as folder:
        rows = measure(Path(folder))
    text = section(rows)
    print(text)
    if args.out is not None:
        replace_section(args.out, text)
        print(f"wrote the matrix table to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
