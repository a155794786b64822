"""Transcripts, diarizations and summaries as plain dicts, for the wire (Modal) and for ``result`` columns.

``asdict`` gives the dict; these functions give the dataclasses back, nested lists included.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from dhgq.media.types import Diarization, Segment, SpeakerTurn, Summary, Transcript, Word


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


def summary_to_dict(summary: Summary) -> dict[str, Any]:
    return asdict(summary)


def summary_from_dict(data: dict[str, Any]) -> Summary:
    """A stored summary; fields a stored dict lacks (an older row) take their empty values."""
    return Summary(
        summary=data.get("summary", ""),
        key_points=list(data.get("key_points", [])),
        topics=list(data.get("topics", [])),
        document_type=data.get("document_type", ""),
        method=data.get("method", ""),
        details=dict(data.get("details", {})),
    )
