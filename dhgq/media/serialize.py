"""Transcripts and diarizations as plain dicts, for the wire (Modal) and for ``result`` columns.

``asdict`` gives the dict; these functions give the dataclasses back, nested lists included.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from dhgq.media.types import Diarization, Segment, SpeakerTurn, Transcript, Word


def transcript_to_dict(transcript: Transcript) -> dict[str, Any]:
    return asdict(transcript)


def transcript_from_dict(data: dict[str, Any]) -> Transcript:
    segments = [
        Segment(**{**segment, "words": [Word(**word) for word in segment.get("words", [])]})
        for segment in data.get("segments", [])
    ]
    return Transcript(**{**data, "segments": segments})


def diarization_to_dict(diarization: Diarization) -> dict[str, Any]:
    return asdict(diarization)


def diarization_from_dict(data: dict[str, Any]) -> Diarization:
    turns = [SpeakerTurn(**turn) for turn in data.get("turns", [])]
    return Diarization(**{**data, "turns": turns})
