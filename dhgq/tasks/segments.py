"""The transcript's segment rows (``audio_segments``), written the same way by both writers:
transcription (no speakers yet) and the fan-in (each segment linked to its speaker's profile)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from dhgq.media.types import Segment
from dhgq.queries import query


def replace_segments(
    conn: psycopg.Connection,
    document_id: Any,
    segments: Sequence[Segment],
    speaker_ids: Mapping[str, Any] | None = None,
) -> None:
    """The document's segment rows, replaced by ``segments``; speakers linked where a profile exists."""
    speaker_ids = speaker_ids or {}
    conn.execute(query("delete_segments"), {"document_id": document_id})
    with conn.cursor() as cur:
        cur.executemany(
            query("insert_segment"),
            [
                {
                    "document_id": document_id,
                    "start": s.start,
                    "end": s.end,
                    "text": s.text.strip(),
                    "speaker_id": speaker_ids.get(s.speaker or ""),
                    "confidence": s.confidence,
                    "metadata": Jsonb({"speaker": s.speaker, "words": [w.__dict__ for w in s.words]}),
                }
                for s in segments
            ],
        )
