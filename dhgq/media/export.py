"""Transcripts rendered for people and tools: txt, srt, vtt, json, md and NIST RTTM.

Segments take their speaker from ``Segment.speaker`` or, where that is empty and a diarization
is given, from the speaker turn that overlaps them most. Labels such as ``SPEAKER_1`` are shown
as "Speaker 1"; RTTM keeps the raw label, since its fields are separated by spaces.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import asdict, dataclass, replace
from typing import Any

import pysubs2

from dhgq.errors import PermanentError
from dhgq.media.types import Diarization, Segment, Summary, Transcript

FORMATS = ("txt", "srt", "vtt", "json", "md", "rttm")


@dataclass
class Turn:
    """Consecutive segments of one speaker, merged."""

    start: float
    end: float
    speaker: str | None
    text: str


def render(
    transcript: Transcript,
    diarization: Diarization | None,
    fmt: str,
    *,
    title: str = "",
    summary: Summary | None = None,
) -> str:
    """The transcript in one of ``FORMATS``; ``summary`` is included by json and md."""
    renderers = {
        "txt": lambda segs: render_txt(segs),
        "srt": lambda segs: render_subtitles(segs, "srt"),
        "vtt": lambda segs: render_subtitles(segs, "vtt"),
        "json": lambda segs: render_json(transcript, segs, diarization, title, summary),
        "md": lambda segs: render_markdown(segs, title, summary),
        "rttm": lambda segs: render_rttm(segs, diarization, title),
    }
    key = fmt.lower().lstrip(".")
    if key not in renderers:
        raise PermanentError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return renderers[key](labelled_segments(transcript, diarization))


def display_speaker(label: str | None) -> str | None:
    """``SPEAKER_1`` or ``SPEAKER_01`` as "Speaker 1"; other labels unchanged."""
    if not label:
        return None
    match = re.fullmatch(r"(?i)speaker[_ ]?0*(\d+)", label.strip())
    return f"Speaker {match.group(1)}" if match else label


def overlapping_speaker(segment: Segment, diarization: Diarization) -> str | None:
    """The speaker whose turns overlap the segment longest."""
    overlap: dict[str, float] = {}
    for turn in diarization.turns:
        shared = min(segment.end, turn.end) - max(segment.start, turn.start)
        if shared > 0:
            overlap[turn.speaker] = overlap.get(turn.speaker, 0.0) + shared
    return max(overlap, key=lambda speaker: overlap[speaker]) if overlap else None


def labelled_segments(transcript: Transcript, diarization: Diarization | None) -> list[Segment]:
    """The non-empty segments, each with a speaker where one is known."""
    segments = [s for s in transcript.segments if s.text.strip()]
    if diarization is None:
        return segments
    return [s if s.speaker else replace(s, speaker=overlapping_speaker(s, diarization)) for s in segments]


def merge_turns(segments: list[Segment]) -> list[Turn]:
    turns: list[Turn] = []
    for segment in segments:
        if turns and turns[-1].speaker == segment.speaker and segment.speaker is not None:
            turns[-1].end = segment.end
            turns[-1].text = f"{turns[-1].text} {segment.text.strip()}"
        else:
            turns.append(Turn(segment.start, segment.end, segment.speaker, segment.text.strip()))
    return turns


def with_speaker(speaker: str | None, text: str) -> str:
    shown = display_speaker(speaker)
    return f"{shown}: {text}" if shown else text


def render_txt(segments: list[Segment]) -> str:
    return "".join(f"{with_speaker(turn.speaker, turn.text)}\n" for turn in merge_turns(segments))


def render_subtitles(segments: list[Segment], fmt: str) -> str:
    """SRT or WebVTT cues of at most two lines of ``LINE_CHARS`` characters (the broadcasters' rule, which
    Netflix's and the BBC's subtitle guidelines share): a longer segment becomes several cues, timed by its
    words where Whisper gave them, else in proportion to their length."""
    subtitles = pysubs2.SSAFile()
    for segment in segments:
        for start, end, lines in cues(segment):
            subtitles.append(pysubs2.SSAEvent(start=round(start * 1000), end=round(end * 1000), text=r"\N".join(lines)))
    return subtitles.to_string(fmt)


LINE_CHARS = 42
CUE_LINES = 2


def cues(segment: Segment) -> list[tuple[float, float, list[str]]]:
    """A segment's text (its speaker first) as cues of at most CUE_LINES lines of LINE_CHARS, with their times."""
    text = with_speaker(segment.speaker, segment.text.strip())
    lines = textwrap.wrap(text, LINE_CHARS, break_long_words=True, break_on_hyphens=False) or [""]
    groups = [lines[i : i + CUE_LINES] for i in range(0, len(lines), CUE_LINES)]
    if len(groups) == 1:
        return [(segment.start, segment.end, groups[0])]
    total = sum(len(" ".join(group)) for group in groups)
    timed: list[tuple[float, float, list[str]]] = []
    start, done, spoken = segment.start, 0, _word_ends(segment)
    for index, group in enumerate(groups):
        done += len(" ".join(group))
        if index == len(groups) - 1:
            end = segment.end
        elif spoken:
            end = spoken[min(len(spoken) - 1, round(done / total * len(spoken)) - 1)]
        else:
            end = segment.start + (segment.end - segment.start) * done / total
        end = min(max(end, start), segment.end)
        timed.append((start, end, group))
        start = end
    return timed


def _word_ends(segment: Segment) -> list[float]:
    return [word.end for word in segment.words if segment.start <= word.end <= segment.end]


def speakers_of(segments: list[Segment], diarization: Diarization | None) -> list[str]:
    """Speakers in order of first appearance, then any that the diarization alone knows."""
    found = dict.fromkeys(s.speaker for s in segments if s.speaker)
    found.update(dict.fromkeys(diarization.speakers if diarization else []))
    return list(found)


def render_json(
    transcript: Transcript,
    segments: list[Segment],
    diarization: Diarization | None,
    title: str,
    summary: Summary | None,
) -> str:
    speakers = speakers_of(segments, diarization)
    document: dict[str, Any] = {
        "title": title,
        "language": transcript.language,
        "duration_seconds": transcript.duration_seconds,
        "model": transcript.model,
        "engine": transcript.engine,
        "text": transcript.text,
        "speakers": [{"id": s, "label": display_speaker(s)} for s in speakers],
        "segments": [asdict(s) | {"speaker_label": display_speaker(s.speaker)} for s in segments],
        "turns": [asdict(t) for t in diarization.turns] if diarization else [],
        "summary": asdict(summary) if summary else None,
    }
    return json.dumps(document, ensure_ascii=False, indent=2)


def timestamp(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def render_markdown(segments: list[Segment], title: str, summary: Summary | None) -> str:
    lines = [f"# {title or 'Transcript'}", ""]
    speakers = [display_speaker(s) for s in speakers_of(segments, None)]
    if speakers:
        lines += [f"**Speakers:** {', '.join(s for s in speakers if s)}", ""]
    if summary:
        lines += ["## Summary", "", summary.summary, ""]
        lines += [f"- {point}" for point in summary.key_points] + ([""] if summary.key_points else [])
        if summary.topics:
            lines += [f"**Topics:** {', '.join(summary.topics)}", ""]
    lines += ["## Transcript", ""]
    for turn in merge_turns(segments):
        shown = display_speaker(turn.speaker)
        prefix = f"**[{timestamp(turn.start)}] {shown}:**" if shown else f"**[{timestamp(turn.start)}]**"
        lines += [f"{prefix} {turn.text}", ""]
    return "\n".join(lines)


def rttm_field(value: str) -> str:
    return re.sub(r"\s+", "_", value.strip()) or "recording"


def render_rttm(segments: list[Segment], diarization: Diarization | None, title: str) -> str:
    """NIST RTTM: the diarization's turns, or the merged segment turns when there is none."""
    uri = rttm_field(title)
    if diarization is not None:
        turns = [(t.start, t.end, t.speaker) for t in diarization.turns]
    else:
        turns = [(t.start, t.end, t.speaker) for t in merge_turns(segments) if t.speaker]
    return "".join(
        f"SPEAKER {uri} 1 {start:.3f} {max(end - start, 0.0):.3f} <NA> <NA> {rttm_field(speaker)} <NA> <NA>\n"
        for start, end, speaker in sorted(turns)
    )
