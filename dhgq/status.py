"""The read model both front ends share: what the queue looks like at one moment, and its changes.

Plain frozen dataclasses built by pure fetch functions on a connection, so the CLI's tables and
the monitor's widgets only render them and tests can build them by hand (with a fixed
``taken_at`` as the clock). ``follow_stages`` is the one LISTEN-and-renew loop the CLI
(``process --wait``), the monitor and the benchmarks' stand-in monitor use.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from dhgq.db import connect, one
from dhgq.media.export import display_speaker, labelled_segments, merge_turns
from dhgq.media.serialize import diarization_from_dict, summary_from_dict, transcript_from_dict
from dhgq.media.types import Diarization, Summary, Transcript
from dhgq.queries import LISTEN_RENEW_SECONDS, query
from dhgq.queues import Pause
from dhgq.queues import paused as paused_queues
from dhgq.settings import STAGES


@dataclass(frozen=True)
class StageCount:
    stage: str
    queued: int = 0
    processing: int = 0
    completed: int = 0
    failed: int = 0
    completed_last_5_min: int = 0


@dataclass(frozen=True)
class MediaProgress:
    """How far a running model stage is through its audio (reported by the stage as it goes)."""

    audio_seconds_done: float
    audio_seconds: float
    realtime_factor: float | None = None
    eta_seconds: float | None = None

    @classmethod
    def of(cls, detail: dict[str, Any] | None) -> MediaProgress | None:
        if not detail or detail.get("audio_seconds") is None:
            return None
        return cls(
            float(detail.get("audio_seconds_done") or 0.0),
            float(detail["audio_seconds"]),
            detail.get("realtime_factor"),
            detail.get("eta_seconds"),
        )

    def describe(self) -> str:
        """'12:30 of 58:00, 9.5x realtime, about 4 min left'."""
        parts = [f"{_clock(self.audio_seconds_done)} of {_clock(self.audio_seconds)}"]
        if self.realtime_factor:
            parts.append(f"{self.realtime_factor:.1f}x realtime")
        if self.eta_seconds is not None:
            parts.append(f"about {_duration(self.eta_seconds)} left")
        return ", ".join(parts)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


@dataclass(frozen=True)
class StageState:
    status: str
    progress: float = 0.0
    media: MediaProgress | None = None


@dataclass(frozen=True)
class SourceRow:
    source_id: str
    name: str
    state: str
    progress: float
    stages: dict[str, StageState] = field(default_factory=dict)
    error: str | None = None
    path: str = ""
    duration_seconds: float | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class WorkerInfo:
    """One ``dhgq worker`` process (``dhgq.workers``): where it runs, what it serves, what it holds now."""

    worker_id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    artifact_store: str | None
    started_at: datetime
    seen_at: datetime
    alive: bool
    stages_in_hand: int = 0


@dataclass(frozen=True)
class QueueSnapshot:
    taken_at: datetime
    stages: tuple[StageCount, ...]
    sources: tuple[SourceRow, ...]
    workers: int = 0
    jobs_last_minute: int = 0
    fleet: tuple[WorkerInfo, ...] = ()  # the worker processes seen lately, by host
    paused: tuple[Pause, ...] = ()  # queues no worker takes jobs from now (dhgq queue pause, an API's wait)

    @property
    def hosts(self) -> tuple[str, ...]:
        """The machines with a live worker."""
        return tuple(sorted({w.host for w in self.fleet if w.alive}))


@dataclass(frozen=True)
class StageRow:
    stage: str
    status: str
    progress: float = 0.0
    attempts: int = 0
    error_class: str | None = None
    error: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    seconds: float | None = None
    job_id: str | None = None
    media: MediaProgress | None = None
    host: str | None = None  # the machine whose worker ran (claimed) it last
    reused_from: str | None = None  # the source whose output this stage copied (reuse by content)
    stale: tuple[str, ...] = ()  # why the output is stale: model_version, prompt_version
    cost_usd: float = 0.0  # paid calls (Claude, Modal GPU) of this stage, from the ledger
    paid_calls: int = 0

    def notes(self) -> str:
        """Reuse, staleness and cost in a few words (empty when there is nothing to say)."""
        parts = []
        if self.reused_from:
            parts.append(f"reused from {self.reused_from[:8]}")
        if self.stale:
            parts.append("stale: " + ", ".join(reason.replace("_", " ") for reason in self.stale))
        if self.paid_calls or self.cost_usd:
            parts.append(f"${self.cost_usd:.4f} ({self.paid_calls} paid call{'s' if self.paid_calls != 1 else ''})")
        return "; ".join(parts)


@dataclass(frozen=True)
class Line:
    """One speaker turn of a transcript excerpt."""

    start: float
    speaker: str | None
    text: str


@dataclass(frozen=True)
class SourceDetail:
    source: SourceRow
    stages: tuple[StageRow, ...]
    excerpt: tuple[Line, ...] = ()
    summary: dict[str, Any] | None = None


@dataclass(frozen=True)
class Documents:
    transcript: Transcript | None
    diarization: Diarization | None
    summary: Summary | None


def fetch_snapshot(conn: psycopg.Connection, *, limit: int = 500, stalled_after: float = 30.0) -> QueueSnapshot:
    """Stage counts, every source's stages (newest first), live workers and recent throughput."""
    cur = conn.cursor(row_factory=dict_row)
    taken_at = one(conn.execute(query("cli_now")))[0]
    stages = tuple(StageCount(**row) for row in cur.execute(query("cli_stage_counts")))
    sources = tuple(_source_row(row) for row in cur.execute(query("cli_sources"), {"ids": None, "limit": limit}))
    live = one(cur.execute(query("cli_live_workers"), {"stalled_after": stalled_after}))
    fleet = fetch_fleet(conn, stalled_after)
    pauses = paused_queues(conn)
    return QueueSnapshot(taken_at, stages, sources, int(live["workers"]), int(live["jobs_last_minute"]), fleet, pauses)


def fetch_fleet(conn: psycopg.Connection, stalled_after: float = 30.0) -> tuple[WorkerInfo, ...]:
    """The worker processes that ran lately (alive: seen within a few heartbeats), by host."""
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(query("cli_fleet"), {"stalled_after": stalled_after}).fetchall()
    return tuple(
        WorkerInfo(
            str(r["id"]),
            r["host"],
            int(r["pid"]),
            tuple(r["queues"]),
            r["artifact_store"],
            r["started_at"],
            r["seen_at"],
            bool(r["alive"]),
            int(r["stages_in_hand"] or 0),
        )
        for r in rows
    )


def fetch_sources(conn: psycopg.Connection, ids: list[str]) -> list[SourceRow]:
    cur = conn.cursor(row_factory=dict_row)
    return [_source_row(row) for row in cur.execute(query("cli_sources"), {"ids": ids, "limit": len(ids)})]


def fetch_stages(conn: psycopg.Connection, source_id: str) -> tuple[StageRow, ...]:
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(query("cli_source_stages"), {"source_id": source_id}).fetchall()
    return tuple(
        StageRow(
            stage=r["stage"],
            status=r["status"],
            progress=float(r["progress"] or 0),
            attempts=r["attempts"] or 0,
            error_class=r["error_class"],
            error=r["error"],
            started_at=r["started_at"],
            completed_at=r["completed_at"],
            seconds=r["seconds"],
            job_id=r["job_id"],
            media=MediaProgress.of(r.get("progress_detail")) if r["status"] == "processing" else None,
            host=r.get("host"),
            reused_from=(r.get("reused_from") or {}).get("source_id"),
            stale=tuple(r.get("stale_reasons") or ()),
            cost_usd=float(r.get("cost_usd") or 0),
            paid_calls=int(r.get("paid_calls") or 0),
        )
        for r in rows
    )


def fetch_documents(conn: psycopg.Connection, source_id: str) -> Documents:
    """The transcript (speaker-labelled once the fan-in ran), the diarization and the summary."""
    cur = conn.cursor(row_factory=dict_row)
    docs = {r["content_type"]: r for r in cur.execute(query("cli_documents"), {"source_id": source_id})}
    transcript = docs.get("transcript")
    summary = docs.get("summary")
    turns = cur.execute(query("cli_diarization_result"), {"source_id": source_id}).fetchone()
    return Documents(
        transcript_from_dict(transcript["processed_content"])
        if transcript and transcript["processed_content"]
        else None,
        diarization_from_dict(turns["diarization"]) if turns and turns["diarization"] else None,
        summary_from_dict(summary["processed_content"]) if summary and summary["processed_content"] else None,
    )


def fetch_detail(conn: psycopg.Connection, source_id: str, *, turns: int = 6) -> SourceDetail | None:
    """One source's stage rows, the start of its transcript by speaker, and its summary."""
    sources = fetch_sources(conn, [source_id])
    if not sources:
        return None
    documents = fetch_documents(conn, source_id)
    return SourceDetail(
        sources[0], fetch_stages(conn, source_id), excerpt(documents, turns), _summary_dict(documents.summary)
    )


def excerpt(documents: Documents, turns: int = 6) -> tuple[Line, ...]:
    if documents.transcript is None:
        return ()
    merged = merge_turns(labelled_segments(documents.transcript, documents.diarization))
    return tuple(Line(round(t.start, 2), display_speaker(t.speaker), t.text) for t in merged[:turns])


def _summary_dict(summary: Summary | None) -> dict[str, Any] | None:
    """What the detail views show of a summary (its run details stay in the stage row)."""
    if summary is None:
        return None
    shown = asdict(summary)
    del shown["details"]
    return shown


def _source_row(row: dict[str, Any]) -> SourceRow:
    stages = {
        name: StageState(s["status"], float(s["progress"] or 0), MediaProgress.of(s.get("detail")))
        for name, s in (row.get("stages") or {}).items()
    }
    ordered: dict[str, StageState] = {name: stages[name] for name in STAGES if name in stages}
    duration = row.get("audio_duration_seconds")
    return SourceRow(
        source_id=str(row["source_id"]),
        name=row["name"],
        state=row["state"],
        progress=float(row["progress"] or 0),
        stages=ordered,
        error=row.get("error"),
        path=row.get("path") or "",
        duration_seconds=float(duration) if duration is not None else None,
        updated_at=row.get("updated_at"),
    )


def fetch_jobs(
    conn: psycopg.Connection, *, status: str | None = None, stage: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Stage rows across sources with their Procrastinate job's status, newest first."""
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(query("cli_jobs"), {"status": status, "stage": stage, "limit": limit}).fetchall()


def fetch_dead_letter(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """What failed for good (permanent errors, or retries used up), with why."""
    return conn.cursor(row_factory=dict_row).execute(query("cli_dead_letter")).fetchall()


def dead_letter_sources(conn: psycopg.Connection) -> list[str]:
    return [str(row[0]) for row in conn.execute(query("cli_dead_letter_sources"))]


def next_retry_in(conn: psycopg.Connection, source_id: str) -> float | None:
    """Seconds until the source's next waiting job may run (a retry backs off); None when none waits."""
    return one(conn.execute(query("cli_next_retry_in"), {"source_id": source_id}))[0]


class StageChanges:
    """A connection LISTENing on dhgq_stages, whose registration it renews while it is used.

    The stage trigger NOTIFYs only while a registration made by ``dhgq.listen_stages_v1()`` is
    fresh (30 s): ``wait`` renews it every LISTEN_RENEW_SECONDS.
    """

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self._registered = float("-inf")

    def wait(self, seconds: float) -> bool:
        """Block until a stage changes (True) or ``seconds`` pass (False)."""
        if time.monotonic() - self._registered > LISTEN_RENEW_SECONDS:
            self.conn.execute(query("listen_stages"))
            self._registered = time.monotonic()
        return any(True for _ in self.conn.notifies(timeout=seconds, stop_after=1))


@contextmanager
def follow_stages(url: str, *, timeout: float = 10.0) -> Iterator[StageChanges]:
    """Stage changes as they happen, on a connection of their own; unregistered on the way out."""
    with connect(url, autocommit=True, timeout=timeout) as conn:
        changes = StageChanges(conn)
        try:
            yield changes
        finally:
            with suppress(psycopg.Error):
                conn.execute(query("unlisten_stages"))
