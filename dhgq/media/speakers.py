"""Speaker labels on transcripts: which diarized speaker said each word.

Pure functions on the dataclasses of ``types``. Speaker names are canonical: ``SPEAKER_1``,
``SPEAKER_2``, ... in the order the speakers first talk in the diarization, so the same
mapping renames the diarization's turns, speakers and embeddings and the transcript's words
and segments (``relabel_speakers`` and ``assign_speakers`` agree without talking to each other).
"""

from __future__ import annotations

from dataclasses import replace

from dhgq.media.types import Diarization, Segment, SpeakerTurn, Transcript, Word


def speaker_names(diarization: Diarization) -> dict[str, str]:
    """Old label -> ``SPEAKER_n``, numbered by first turn; speakers without turns come last."""
    order = [t.speaker for t in sorted(diarization.turns, key=lambda t: (t.start, t.end))]
    order += list(diarization.speakers)
    unique = list(dict.fromkeys(order))
    return {old: f"SPEAKER_{i + 1}" for i, old in enumerate(unique)}


def relabel_speakers(diarization: Diarization) -> Diarization:
    """The diarization with canonical speaker names in turns, speakers and embeddings."""
    names = speaker_names(diarization)
    turns = sorted(
        (SpeakerTurn(t.start, t.end, names[t.speaker]) for t in diarization.turns),
        key=lambda t: (t.start, t.end, t.speaker),
    )
    return replace(
        diarization,
        turns=turns,
        speakers=sorted(
            {names[s] for s in [*diarization.speakers, *(t.speaker for t in diarization.turns)]}, key=_number
        ),
        embeddings={names[s]: list(v) for s, v in diarization.embeddings.items() if s in names},
    )


def assign_speakers(transcript: Transcript, diarization: Diarization) -> Transcript:
    """Each word gets the speaker it overlaps most (the nearest turn's if none); segments are
    split where the speaker changes and carry their words' speaker. Names are canonical."""
    if not diarization.turns:
        return transcript
    names = speaker_names(diarization)
    turns = [SpeakerTurn(t.start, t.end, names[t.speaker]) for t in diarization.turns]
    segments = [piece for segment in transcript.segments for piece in _split(segment, turns)]
    return replace(transcript, segments=segments)


def speaker_at(start: float, end: float, turns: list[SpeakerTurn]) -> str | None:
    """The speaker with the most overlap with [start, end], else the one whose turn is nearest."""
    if not turns:
        return None
    overlap: dict[str, float] = {}
    for turn in turns:
        shared = min(end, turn.end) - max(start, turn.start)
        if shared > 0:
            overlap[turn.speaker] = overlap.get(turn.speaker, 0.0) + shared
    if overlap:
        return max(overlap, key=lambda s: (overlap[s], -_number(s)))
    nearest = min(turns, key=lambda t: (max(t.start - end, start - t.end, 0.0), _number(t.speaker)))
    return nearest.speaker


def _split(segment: Segment, turns: list[SpeakerTurn]) -> list[Segment]:
    if not segment.words:
        return [replace(segment, speaker=speaker_at(segment.start, segment.end, turns))]
    words = [replace(w, speaker=speaker_at(w.start, w.end, turns)) for w in segment.words]
    groups: list[list[Word]] = []
    for word in words:
        if groups and groups[-1][-1].speaker == word.speaker:
            groups[-1].append(word)
        else:
            groups.append([word])
    if len(groups) == 1:
        return [replace(segment, words=words, speaker=words[0].speaker)]
    pieces = []
    for index, group in enumerate(groups):
        start = segment.start if index == 0 else group[0].start
        end = segment.end if index == len(groups) - 1 else group[-1].end
        pieces.append(replace(segment, start=start, end=end, text=_join(group), words=group, speaker=group[0].speaker))
    return pieces


def _join(words: list[Word]) -> str:
    """Whisper's word texts carry their leading space; plain words are joined with one."""
    if any(w.text.startswith(" ") for w in words):
        return "".join(w.text for w in words).strip()
    return " ".join(w.text.strip() for w in words)


def _number(label: str) -> int:
    tail = label.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 1 << 30
