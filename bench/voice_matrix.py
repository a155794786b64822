"""``python -m bench.voice_matrix [--out docs/benchmarks.md] [--transcribe]``: speaker counting on generated voices.

The local diarizer, without a hint, on every conversation of the generated voice matrix
(``tests/support/voices.py``) in its two parts: the tuning part (every pair of eight espeak-ng
voices across accents and sexes, groups of three and four, voices alone), on which the diarizer
was tuned, and the validation part (voices drawn at random from espeak-ng's ``+m1..+m7`` and
``+f1..+f5`` variants, accents, pitches and speeds, fixed before anything was measured on them),
on which it is only judged. Reports, per part and number of speakers, how often the count was
right, how sure the diarizer said it was, and the DER; with ``--transcribe``, also the
speaker-attributed word error rate (cpWER, meeteval) of faster-whisper's words labelled with the
diarizer's speakers. Writes the table between markers in the output file, leaving the rest of it
as it is (the same way as ``dhgq eval --write``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- voice matrix: begin -->", "<!-- voice matrix: end -->"
PARTS = ("tuning", "validation")


@dataclass
class Row:
    case: str
    part: str
    speakers: int
    found: int
    der: float
    seconds: float
    confidence: float | None = None
    cp_errors: int | None = None
    cp_words: int | None = None

    @property
    def right(self) -> bool:
        return self.speakers == self.found


def der(reference_rttm: str, audio: Path, diarization: Any) -> float:
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


def measure(folder: Path, *, transcribe: bool = False, parts: tuple[str, ...] = PARTS) -> list[Row]:
    """One row for every case of the matrix in ``parts``."""
    sys.path.insert(0, str(REPO))
    from dhgq.evaluation import speaker_attributed_errors
    from dhgq.media.diarization.engines import load_diarizer
    from tests.support.voices import matrix_cases

    diarizer = load_diarizer("local")
    whisper = None
    if transcribe:
        from dhgq.media.transcription.engines import load_engine

        whisper = load_engine("faster-whisper", "tiny.en", "int8", None)
    rows = []
    for case in (case for case in matrix_cases() if case.part in parts):
        reference = case.generate(folder)
        started = time.perf_counter()
        result = diarizer.diarize(reference.audio)
        seconds = time.perf_counter() - started
        row = Row(case.name, case.part, len(case.speakers), len(result.speakers), 0.0, seconds)
        row.der = der(reference.rttm(), reference.audio, result)
        row.confidence = result.count_confidence
        if whisper is not None:
            transcript = whisper.transcribe(reference.audio, language="en")
            row.cp_errors, row.cp_words = speaker_attributed_errors(case.attributed(), transcript, result)
        rows.append(row)
        print(
            f"  [{case.part}] {case.name}: {row.found}/{row.speakers} speakers"
            f" ({_pct(row.confidence)} sure), DER {row.der:.1%}",
            file=sys.stderr,
        )
    return rows


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def render(rows: list[Row]) -> str:
    transcribed = any(row.cp_words for row in rows)
    head = "| part | speakers | conversations | count right | sure (mean) | DER mean | DER worst | worst case |"
    rule = "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    if transcribed:
        head, rule = head + " cpWER |", rule + " ---: |"
    lines = [head, rule]
    for part in [p for p in PARTS if any(row.part == p for row in rows)]:
        mine = [row for row in rows if row.part == part]
        for size in sorted({row.speakers for row in mine}) + [0]:
            group = [row for row in mine if size == 0 or row.speakers == size]
            lines.append(_line(part, "**all**" if size == 0 else str(size), group, transcribed))
    lines.append("")
    for part in PARTS:
        mine = [row for row in rows if row.part == part]
        if mine:
            wrong = [f"{row.case} ({row.found} found, {_pct(row.confidence)} sure)" for row in mine if not row.right]
            lines += [f"Miscounted in the {part} part: " + (", ".join(wrong) if wrong else "none") + ".", ""]
    return "\n".join(lines)


def _line(part: str, label: str, group: list[Row], transcribed: bool) -> str:
    right = sum(row.right for row in group)
    worst = max(group, key=lambda row: row.der)
    mean = sum(row.der for row in group) / len(group)
    sure = [row.confidence for row in group if row.confidence is not None]
    sure_text = _pct(sum(sure) / len(sure)) if sure else "—"
    line = (
        f"| {part} | {label} | {len(group)} | {right}/{len(group)} ({right / len(group):.0%}) | {sure_text} | "
        f"{mean:.1%} | {worst.der:.1%} | {worst.case} |"
    )
    if transcribed:
        words = sum(row.cp_words or 0 for row in group)
        errors = sum(row.cp_errors or 0 for row in group)
        line += f" {errors / words:.1%} |" if words else " |"
    return line


def section(rows: list[Row], *, transcribe: bool) -> str:
    seconds = sum(row.seconds for row in rows)
    command = "python -m bench.voice_matrix" + (" --transcribe" if transcribe else "")
    cp = (
        " cpWER: faster-whisper tiny.en's words, each labelled with the diarizer's speaker it overlaps "
        "most (as the exports label them), against the script's lines and their speakers, scored by "
        "meeteval's cpWER after dhgq eval's text normalisation."
        if transcribe
        else ""
    )
    return (
        f"{BEGIN}\n## Speaker counting on the voice matrix\n\n`{command}` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC: the local diarizer without a speaker-count hint on "
        f"{len(rows)} generated conversations of 15-35 s ({seconds:.0f} s of diarization in all). The "
        "tuning part is what the diarizer was tuned on: the first matrix (every pair of eight espeak-ng "
        "voices of different accents and sexes, groups of three and four, voices alone) and 31 conversations "
        "drawn like the validation part from the accent and variant pairs it does not use. The validation part was "
        "drawn at random, and fixed, before anything was measured on it: espeak-ng's `+m1..+m7` and "
        "`+f1..+f5` variants in eight accents (Lancaster among them, absent from the tuning part), "
        "pitches 25-75 and speeds 140-185 wpm, no voice of the tuning part; 14 pairs of a man and a "
        "woman, 6 pairs of one sex (different variants, pitches at least 20 apart), 4 threes, 3 fours, "
        "4 voices alone. `sure` is the diarizer's own confidence in its count (the probability it "
        f"gives the count it chose). DER with pyannote.metrics, collar 0.{cp}\n\n"
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
    parser.add_argument("--transcribe", action="store_true", help="also score cpWER with faster-whisper tiny.en")
    parser.add_argument("--part", choices=PARTS, action="append", help="only this part (default: both)")
    args = parser.parse_args(argv)
    parts = tuple(args.part) if args.part else PARTS
    with tempfile.TemporaryDirectory(prefix="dhgq-voice-matrix-") as folder:
        rows = measure(Path(folder), transcribe=args.transcribe, parts=parts)
    text = section(rows, transcribe=args.transcribe)
    print(text)
    if args.out is not None:
        replace_section(args.out, text)
        print(f"wrote the matrix table to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
