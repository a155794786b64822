"""The fan-in after the two side-by-side stages.

Both completions lock the transcription and diarization rows (in a fixed order) before they
commit, so whichever completes second sees the other completed, assigns speakers to the
transcript, and queues summarization: exactly once, however the two finish.
"""

from __future__ import annotations

from collections import defaultdict

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dhgq.completion import enqueue
from dhgq.errors import PermanentError
from dhgq.media.serialize import diarization_from_dict, transcript_from_dict, transcript_to_dict
from dhgq.media.speakers import assign_speakers
from dhgq.queries import query
from dhgq.stage import Source, StageRows
from dhgq.tasks.segments import replace_segments


def after_transcription_or_diarization(conn: psycopg.Connection, source: Source, rows: StageRows) -> None:
    """``rows`` holds both stage rows, locked by the completing transaction (lock_with)."""
    if any(rows.get(stage, {}).get("status") != "completed" for stage in ("transcription", "diarization")):
        return  # the other one is still running; its completion will do this
    merge_speakers(conn, source, rows["diarization"]["result"])
    enqueue(conn, source.id, "summarization")


def merge_speakers(conn: psycopg.Connection, source: Source, diarization_result: dict) -> None:
    """Label each transcript segment with its speaker and link the segment rows to the profiles."""
    cur = conn.cursor(row_factory=dict_row)
    document = cur.execute(query("document"), {"source_id": source.id, "content_type": "transcript"}).fetchone()
    if document is None:
        raise PermanentError("the transcript vanished before speakers could be assigned", file=source.path)
    transcript = transcript_from_dict(document["processed_content"])
    labelled = assign_speakers(transcript, diarization_from_dict(diarization_result["diarization"]))
    conn.execute(
        query("update_document_content"),
        {"document_id": document["id"], "processed_content": Jsonb(transcript_to_dict(labelled))},
    )
    speaker_ids = {r["label"]: r["id"] for r in cur.execute(query("speakers"), {"source_id": source.id})}
    replace_segments(conn, document["id"], labelled.segments, speaker_ids)
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for segment in labelled.segments:
        if segment.speaker:
            seconds[segment.speaker] += segment.end - segment.start
            counts[segment.speaker] += 1
    for label, speaker_id in speaker_ids.items():
        conn.execute(
            query("update_speaker_totals"),
            {"speaker_id": speaker_id, "seconds": round(seconds[label], 3), "segments": counts[label]},
        )
