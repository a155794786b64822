"""Accuracy and speed on a folder of recordings with references (``dhgq eval DIR``).

For every audio file NAME.* in the folder: WER against NAME.txt (when a transcriber is given),
DER against NAME.rttm, the number of speakers found against the reference, the speed relative
to real time, and the process's peak memory. Scored the way the field does: WER after
lower-casing, dropping punctuation and spelling out numbers; DER with pyannote.metrics, no
forgiveness collar, overlapped speech scored, over the whole recording.
"""

from __future__ import annotations

import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dhgq.media.types import Diarization, Transcript

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".mp4", ".mkv", ".webm")

Transcribe = Callable[[Path], Transcript]
Diarize = Callable[[Path], Diarization]


@dataclass
class FileScore:
    name: str
    audio_seconds: float
    wer: float | None = None  # 0..1
    reference_words: int = 0
    word_errors: int = 0
    der: float | None = None  # 0..1
    speakers_found: int | None = None
    speakers_reference: int | None = None
    transcribe_seconds: float | None = None
    diarize_seconds: float | None = None
    peak_memory_mb: float = 0.0  # the process's peak resident memory after this file
    error: str | None = None

    @property
    def speed(self) -> float | None:
        """Times faster than real time (audio seconds per second of work)."""
        spent = (self.transcribe_seconds or 0.0) + (self.diarize_seconds or 0.0)
        return self.audio_seconds / spent if spent > 0 else None


@dataclass
class EvaluationReport:
    files: list[FileScore] = field(default_factory=list)
    wer: float | None = None  # pooled: all word errors over all reference words
    der: float | None = None  # pooled: all error seconds over all reference speech
    speed: float | None = None  # total audio over total work
    peak_memory_mb: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {**asdict(self), "files": [{**asdict(f), "speed": f.speed} for f in self.files]}


# -- text --------------------------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))


def number_words(n: int) -> str:
    """English words for a non-negative integer (``1961`` -> ``one thousand nine hundred sixty one``)."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for value, name in _SCALES:
        if n >= value:
            rest = n % value
            return f"{number_words(n // value)} {name}" + (f" {number_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def normalise_text(text: str) -> str:
    """Lower case, numbers spelled out, punctuation gone, single spaces."""
    text = text.lower().replace("%", " percent")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # 1,000 -> 1000
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()))} ", text)
    text = re.sub(r"[^\w\s']|_", " ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)  # quotes, not apostrophes inside words
    return " ".join(text.split())


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(errors, reference words) after normalisation."""
    import jiwer

    ref, hyp = normalise_text(reference), normalise_text(hypothesis)
    if not ref:
        return len(hyp.split()), 0
    out = jiwer.process_words(ref, hyp or "")
    return out.substitutions + out.deletions + out.insertions, len(ref.split())


# -- speakers ----------------------------------------------------------------------------------


def read_rttm(path: Path) -> Any:
    """The RTTM file's SPEAKER lines as a pyannote Annotation."""
    from pyannote.core import Annotation, Segment

    annotation = Annotation(uri=path.stem)
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0] == "SPEAKER":
            start, duration = float(fields[3]), float(fields[4])
            annotation[Segment(start, start + duration), len(annotation)] = fields[7]
    return annotation


def to_annotation(diarization: Diarization, uri: str = "hypothesis") -> Any:
    from pyannote.core import Annotation, Segment

    annotation = Annotation(uri=uri)
    for index, turn in enumerate(diarization.turns):
        if turn.end > turn.start:
            annotation[Segment(turn.start, turn.end), index] = turn.speaker
    return annotation


# -- the folder --------------------------------------------------------------------------------


def evaluate_folder(
    folder: Path,
    *,
    transcribe: Transcribe | None = None,
    diarize: Diarize | None = None,
) -> EvaluationReport:
    """Score every recording in ``folder`` that has a NAME.txt or NAME.rttm reference."""
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    pooled = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    report = EvaluationReport()
    for audio in _recordings(Path(folder)):
        score = FileScore(name=audio.name, audio_seconds=_duration(audio))
        try:
            text, rttm = audio.with_suffix(".txt"), audio.with_suffix(".rttm")
            if transcribe is not None and text.exists():
                started = time.perf_counter()
                transcript = transcribe(audio)
                score.transcribe_seconds = time.perf_counter() - started
                score.word_errors, score.reference_words = word_errors(text.read_text(), transcript.text)
                score.wer = score.word_errors / score.reference_words if score.reference_words else None
            if diarize is not None and rttm.exists():
                started = time.perf_counter()
                diarization = diarize(audio)
                score.diarize_seconds = time.perf_counter() - started
                reference = read_rttm(rttm)
                end = max(score.audio_seconds, reference.get_timeline().extent().end)
                uem = Timeline([Segment(0.0, end)])
                hypothesis = to_annotation(diarization)
                single = DiarizationErrorRate(collar=0.0, skip_overlap=False)
                score.der = float(single(reference, hypothesis, uem=uem))
                pooled(reference, hypothesis, uem=uem)
                score.speakers_found = len({t.speaker for t in diarization.turns})
                score.speakers_reference = len(reference.labels())
        except Exception as exc:  # one bad file must not hide the others' scores
            score.error = f"{exc.__class__.__name__}: {exc}"
        score.peak_memory_mb = peak_memory_mb()
        report.files.append(score)
    _pool(report, pooled)
    return report


def evaluate_directory(directory: Path, *, settings: Any = None) -> EvaluationReport:
    """``evaluate_folder`` with the transcription and diarization engines that ``settings`` name."""
    from dhgq.media.diarization.engines import load_diarizer
    from dhgq.media.transcription.engines import load_engine
    from dhgq.settings import get_settings

    s = settings or get_settings()
    whisper = load_engine(s.whisper_engine, s.whisper_model, s.whisper_compute_type, s.models_dir)
    diarizer = load_diarizer(s.diarization_engine)
    return evaluate_folder(
        directory,
        transcribe=lambda path: whisper.transcribe(path, language=s.whisper_language),
        diarize=lambda path: diarizer.diarize(path),
    )


def _pool(report: EvaluationReport, pooled: Any) -> None:
    words = sum(f.reference_words for f in report.files if f.wer is not None)
    errors = sum(f.word_errors for f in report.files if f.wer is not None)
    report.wer = errors / words if words else None
    report.der = float(abs(pooled)) if any(f.der is not None for f in report.files) else None
    audio = sum(f.audio_seconds for f in report.files if f.speed is not None)
    spent = sum((f.transcribe_seconds or 0.0) + (f.diarize_seconds or 0.0) for f in report.files)
    report.speed = audio / spent if spent > 0 else None
    report.peak_memory_mb = peak_memory_mb()


def _recordings(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in AUDIO_SUFFIXES and (p.with_suffix(".txt").exists() or p.with_suffix(".rttm").exists())
    )


def _duration(path: Path) -> float:
    try:
        import soundfile as sf

        return float(sf.info(str(path)).duration)
    except Exception:
        return 0.0


def peak_memory_mb() -> float:
    """The process's peak resident set size so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# -- rendering ---------------------------------------------------------------------------------


def render_markdown(report: EvaluationReport) -> str:
    """The report as a markdown table, one row per file and a pooled row."""
    rows = [
        "| file | audio s | WER | DER | speakers (found/ref) | x realtime | peak MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in report.files:
        speakers = "" if f.speakers_found is None else f"{f.speakers_found}/{f.speakers_reference}"
        rows.append(
            f"| {f.name} | {f.audio_seconds:.1f} | {_pct(f.wer)} | {_pct(f.der)} | {speakers} | "
            f"{_num(f.speed)} | {f.peak_memory_mb:.0f} |" + (f" error: {f.error}" if f.error else "")
        )
    total = sum(f.audio_seconds for f in report.files)
    rows.append(
        f"| **pooled** | {total:.1f} | {_pct(report.wer)} | {_pct(report.der)} |  | "
        f"{_num(report.speed)} | {report.peak_memory_mb:.0f} |"
    )
    return "\n".join(rows) + "\n"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}x"
