"""Accuracy and speed on folders of recordings with references (``dhgq eval DIR [DIR...]``).

For every audio file NAME.* in the folders: WER against NAME.txt (when a transcriber is given),
DER against NAME.rttm, the number of speakers found against the reference (and how sure the
diarizer said it was), who-said-which-word against NAME.stm (cpWER: the transcript's words
labelled with the diarizer's speakers, as the exports label them), the speed relative to real
time, and the process's peak memory. Scored the way the field does: WER after lower-casing,
dropping punctuation and spelling out numbers; DER with pyannote.metrics, no forgiveness collar,
overlapped speech scored, over the whole recording; cpWER with meeteval (the speaker mapping
that gives the fewest errors, each reference speaker's words against one hypothesis speaker's).

A split file (TOML: ``tuning = [...]``, ``validation = [...]``, file names) puts each recording
in a part, and every pooled figure is given per part: tuning figures alone prove nothing.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from dhgq.media.types import Diarization, Transcript

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".mp4", ".mkv", ".webm")

Transcribe = Callable[[Path], Transcript]
Diarize = Callable[[Path], Diarization]
PARTS = ("tuning", "validation")
UNASSIGNED = "unassigned"  # the part of a recording that no split file names
EVERYTHING = "all"  # the pooled figures over every recording


@dataclass
class FileScore:
    name: str
    audio_seconds: float
    wer: float | None = None  # 0..1
    reference_words: int = 0
    word_errors: int = 0
    der: float | None = None  # 0..1
    der_error_seconds: float = 0.0  # missed speech, false alarm and confusion, in seconds
    der_reference_seconds: float = 0.0  # the reference's speech (overlap counted per speaker)
    speakers_found: int | None = None
    speakers_reference: int | None = None
    count_confidence: float | None = None  # the diarizer's probability for the count it gave
    cp_errors: int = 0  # speaker-attributed word errors (cpWER's numerator), against NAME.stm
    cp_words: int = 0
    cpwer: float | None = None  # 0..1
    part: str = UNASSIGNED
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
class PartScore:
    """Pooled figures over the recordings of one part (or all of them)."""

    files: int = 0
    wer: float | None = None  # all word errors over all reference words
    der: float | None = None  # all error seconds over all reference speech
    cpwer: float | None = None  # all speaker-attributed word errors over all reference words
    counts_right: int = 0  # recordings whose speaker count is the reference's
    counts_scored: int = 0
    speed: float | None = None  # total audio over total work


@dataclass
class EvaluationReport:
    files: list[FileScore] = field(default_factory=list)
    wer: float | None = None  # pooled over every file, whatever its part
    der: float | None = None
    cpwer: float | None = None
    speed: float | None = None  # total audio over total work
    peak_memory_mb: float = 0.0
    parts: dict[str, PartScore] = field(default_factory=dict)  # tuning, validation, unassigned, all

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {**asdict(self), "files": [{**asdict(f), "speed": f.speed} for f in self.files]}


# -- text --------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _english_normalizer() -> Callable[[str], str]:
    """Whisper's own English normaliser (the whisper-normalizer package, a copy that needs no torch): what the
    field scores WER after, so that "10 metres" and "ten meters", "Mr." and "mister", "um" and nothing match."""
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()  # type: ignore[no-any-return]


def normalise_text(text: str) -> str:
    """Whisper's English normalisation: lower case, numbers as digits, spellings standardised, fillers and
    punctuation gone, single spaces."""
    return " ".join(_english_normalizer()(text).split())


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


def read_stm(path: Path) -> list[tuple[str, str]]:
    """(speaker, words) of each line of an STM file (``uri channel speaker start end words``), in time order."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and not line.startswith(";;"):
            lines.append((float(fields[3]), fields[2], fields[5]))
    return [(speaker, words) for _, speaker, words in sorted(lines, key=lambda line: line[0])]


def speaker_attributed_errors(
    reference: list[tuple[str, str]], transcript: Transcript, diarization: Diarization
) -> tuple[int, int]:
    """(errors, reference words) of cpWER: the transcript's words labelled with the diarization's
    speakers (each word takes the speaker it overlaps most, as the exports do), against the
    reference's (speaker, words) lines, under the speaker mapping with the fewest errors. A word
    of the wrong speaker costs two errors (missing from one speaker, inserted in another), a
    speaker too many or too few costs all their words."""
    from meeteval.io.seglst import SegLST
    from meeteval.wer.api import cpwer

    from dhgq.media.speakers import assign_speakers

    def segment(speaker: str, words: str) -> dict[str, Any]:
        return {"session_id": "recording", "speaker": speaker, "words": normalise_text(words)}

    ref = [segment(speaker, words) for speaker, words in reference]
    labelled = assign_speakers(transcript, diarization) if diarization.turns else transcript
    hyp = [segment(s.speaker or "nobody", s.text) for s in labelled.segments]
    if not any(line["words"] for line in ref):
        return sum(len(line["words"].split()) for line in hyp), 0
    hyp = hyp or [segment("nobody", "")]
    result = cpwer(SegLST(ref), SegLST(hyp), reference_sort=False, hypothesis_sort=False)["recording"]
    return int(result.errors), int(result.length)


# -- the folders -------------------------------------------------------------------------------


def load_split(path: Path) -> dict[str, str]:
    """File name -> part (tuning or validation) from a split file, refusing a name in both."""
    import tomllib

    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    parts: dict[str, str] = {}
    for part in PARTS:
        for name in data.get(part, []):
            if parts.get(name, part) != part:
                raise ValueError(f"{path}: {name} is in both the tuning and the validation part")
            parts[name] = part
    unknown = set(data) - set(PARTS)
    if unknown:
        raise ValueError(f"{path}: unknown part(s) {', '.join(sorted(unknown))}: use {' and '.join(PARTS)}")
    return parts


def evaluate_folder(
    folder: Path | list[Path],
    *,
    transcribe: Transcribe | None = None,
    diarize: Diarize | None = None,
    split: dict[str, str] | None = None,
) -> EvaluationReport:
    """Score every recording in ``folder`` (or each of several folders) that has a NAME.txt,
    NAME.rttm or NAME.stm reference, each in the part ``split`` gives its file name."""
    folders = [Path(folder)] if isinstance(folder, (str, Path)) else [Path(f) for f in folder]
    report = EvaluationReport()
    for audio in [recording for f in folders for recording in _recordings(f)]:
        score = FileScore(name=audio.name, audio_seconds=_duration(audio))
        score.part = (split or {}).get(audio.name, UNASSIGNED)
        try:
            _score(score, audio, transcribe, diarize)
        except Exception as exc:  # one bad file must not hide the others' scores
            score.error = f"{exc.__class__.__name__}: {exc}"
        score.peak_memory_mb = peak_memory_mb()
        report.files.append(score)
    _pool(report)
    return report


def _score(score: FileScore, audio: Path, transcribe: Transcribe | None, diarize: Diarize | None) -> None:
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    text, rttm, stm = audio.with_suffix(".txt"), audio.with_suffix(".rttm"), audio.with_suffix(".stm")
    transcript = diarization = None
    if transcribe is not None and (text.exists() or (stm.exists() and diarize is not None)):
        started = time.perf_counter()
        transcript = transcribe(audio)
        score.transcribe_seconds = time.perf_counter() - started
        if text.exists():
            score.word_errors, score.reference_words = word_errors(text.read_text(), transcript.text)
            score.wer = score.word_errors / score.reference_words if score.reference_words else None
    if diarize is not None and (rttm.exists() or (stm.exists() and transcript is not None)):
        started = time.perf_counter()
        diarization = diarize(audio)
        score.diarize_seconds = time.perf_counter() - started
        score.speakers_found = len({t.speaker for t in diarization.turns})
        score.count_confidence = diarization.count_confidence
    if diarization is not None and rttm.exists():
        reference = read_rttm(rttm)
        end = max(score.audio_seconds, reference.get_timeline().extent().end)
        metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
        details = metric(reference, to_annotation(diarization), uem=Timeline([Segment(0.0, end)]), detailed=True)
        score.der_error_seconds = float(details["confusion"] + details["missed detection"] + details["false alarm"])
        score.der_reference_seconds = float(details["total"])
        score.der = score.der_error_seconds / score.der_reference_seconds if score.der_reference_seconds else None
        score.speakers_reference = len(reference.labels())
    if transcript is not None and diarization is not None and stm.exists():
        score.cp_errors, score.cp_words = speaker_attributed_errors(read_stm(stm), transcript, diarization)
        score.cpwer = score.cp_errors / score.cp_words if score.cp_words else None


def evaluate_directory(
    directory: Path | list[Path], *, settings: Any = None, split: dict[str, str] | None = None
) -> EvaluationReport:
    """``evaluate_folder`` with the transcription and diarization engines that ``settings`` name."""
    from dhgq.media.diarization.engines import load_diarizer
    from dhgq.media.transcription.engines import load_engine
    from dhgq.media.transcription.models import choose_model
    from dhgq.settings import get_settings

    s = settings or get_settings()
    language = s.whisper_language or "en"  # every recording with a reference here is English
    choice = choose_model(
        None, s.whisper_model, language, english=s.whisper_english_model, multilingual=s.whisper_multilingual_model
    )
    whisper = load_engine(s.whisper_engine, choice.model, s.whisper_compute_type, s.models_dir)
    diarizer = load_diarizer(s.diarization_engine)
    return evaluate_folder(
        directory,
        transcribe=lambda path: whisper.transcribe(path, language=language),
        diarize=lambda path: diarizer.diarize(path),
        split=split,
    )


def pool(files: list[FileScore]) -> PartScore:
    """Pooled figures of ``files``: error totals over reference totals, not a mean of rates."""
    part = PartScore(files=len(files))
    worded = [f for f in files if f.wer is not None]
    words = sum(f.reference_words for f in worded)
    part.wer = sum(f.word_errors for f in worded) / words if words else None
    scored = [f for f in files if f.der is not None]
    reference = sum(f.der_reference_seconds for f in scored)
    part.der = sum(f.der_error_seconds for f in scored) / reference if reference else None
    attributed = [f for f in files if f.cpwer is not None]
    cp_words = sum(f.cp_words for f in attributed)
    part.cpwer = sum(f.cp_errors for f in attributed) / cp_words if cp_words else None
    counted = [f for f in files if f.speakers_reference is not None]
    part.counts_scored = len(counted)
    part.counts_right = sum(f.speakers_found == f.speakers_reference for f in counted)
    audio = sum(f.audio_seconds for f in files if f.speed is not None)
    spent = sum((f.transcribe_seconds or 0.0) + (f.diarize_seconds or 0.0) for f in files)
    part.speed = audio / spent if spent > 0 else None
    return part


def _pool(report: EvaluationReport) -> None:
    everything = pool(report.files)
    report.wer, report.der, report.cpwer, report.speed = (
        everything.wer,
        everything.der,
        everything.cpwer,
        everything.speed,
    )
    named = [part for part in (*PARTS, UNASSIGNED) if any(f.part == part for f in report.files)]
    report.parts = {part: pool([f for f in report.files if f.part == part]) for part in named if named != [UNASSIGNED]}
    report.parts[EVERYTHING] = everything
    report.peak_memory_mb = peak_memory_mb()


def _recordings(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in AUDIO_SUFFIXES and any(p.with_suffix(s).exists() for s in (".txt", ".rttm", ".stm"))
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
    """The report as a markdown table: one row per file (by part when a split was given), then
    the pooled figures of each part and of everything."""
    split = any(f.part != UNASSIGNED for f in report.files)
    order = {part: index for index, part in enumerate((*PARTS, UNASSIGNED))}
    files = sorted(report.files, key=lambda f: order[f.part]) if split else report.files
    rows = [
        "| file | part | audio s | WER | cpWER | DER | speakers (found/ref) | sure | x realtime | peak MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in files:
        speakers = "" if f.speakers_found is None else f"{f.speakers_found}/{f.speakers_reference or '?'}"
        sure = "" if f.count_confidence is None else f"{f.count_confidence:.0%}"
        rows.append(
            f"| {f.name} | {f.part if split else ''} | {f.audio_seconds:.1f} | {_pct(f.wer)} | {_pct(f.cpwer)} | "
            f"{_pct(f.der)} | {speakers} | {sure} | {_num(f.speed)} | {f.peak_memory_mb:.0f} |"
            + (f" error: {f.error}" if f.error else "")
        )
    for name, part in report.parts.items():
        audio = sum(f.audio_seconds for f in report.files if name == EVERYTHING or f.part == name)
        counts = f"{part.counts_right}/{part.counts_scored} right" if part.counts_scored else ""
        peak = f"{report.peak_memory_mb:.0f}" if name == EVERYTHING else ""
        rows.append(
            f"| **pooled** | **{name}** | {audio:.1f} | {_pct(part.wer)} | {_pct(part.cpwer)} | {_pct(part.der)} | "
            f"{counts} |  | {_num(part.speed)} | {peak} |"
        )
    return "\n".join(rows) + "\n"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}x"
