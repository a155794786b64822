"""Paused queues: kept in ``dhgq.queue_pauses``, obeyed by every worker at each fetch.

Procrastinate has no pause, so dhgq's workers fetch through ``dhgq.fetch_job_v1``
(``PauseAwareJobManager``), which leaves paused queues out: their jobs stay todo, the jobs in hand
finish, and a resume NOTIFYs the queue's channel so idle workers fetch at once. A pause by hand
(``dhgq queue pause``) lasts until ``dhgq queue resume``; a timed pause (the Claude API's rate limit,
``dhgq/waits.py``) ends by itself. The check is one primary-key lookup inside the fetch's own
statement, so a pause applies to every fetch that starts after it commits, on every machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import procrastinate
import psycopg
from procrastinate import jobs
from procrastinate.manager import JobManager
from psycopg.rows import dict_row

from dhgq.queries import query
from dhgq.settings import STAGES

QUEUES: tuple[str, ...] = (*STAGES, "webhooks", "maintenance")


@dataclass(frozen=True)
class Pause:
    """A queue's pause: why, by whom, since when, and until when (None: until resumed by hand)."""

    queue: str
    reason: str
    paused_by: str | None
    paused_at: datetime
    resume_at: datetime | None = None

    def describe(self) -> str:
        until = f"until {self.resume_at:%Y-%m-%d %H:%M:%S %Z}" if self.resume_at else "until resumed"
        return f"{self.queue} paused {until}: {self.reason}"


def check_queue(queue: str) -> str:
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; choose from {', '.join(QUEUES)}")
    return queue


def pause(conn: psycopg.Connection, queue: str, reason: str, by: str | None, resume_at: datetime | None = None) -> None:
    """Pause a queue (by hand: ``resume_at`` None) for every worker; its jobs stay todo."""
    params = {"queue": check_queue(queue), "reason": reason, "by": by, "resume_at": resume_at}
    conn.execute(query("queue_pause"), params)


def resume(conn: psycopg.Connection, queue: str) -> bool:
    """Resume a paused queue and wake its workers; False when it was not paused."""
    row = conn.execute(query("queue_resume"), {"queue": check_queue(queue)}).fetchone()
    return bool(row and row[0])


def paused(conn: psycopg.Connection) -> tuple[Pause, ...]:
    """The pauses in force now."""
    rows = conn.cursor(row_factory=dict_row).execute(query("queue_pauses")).fetchall()
    return tuple(
        Pause(row["queue_name"], row["reason"], row["paused_by"], row["paused_at"], row["resume_at"]) for row in rows
    )


class PauseAwareJobManager(JobManager):
    """Procrastinate's job manager whose fetch leaves paused queues out (``dhgq.fetch_job_v1``)."""

    async def fetch_job(self, queues: Iterable[str] | None, worker_id: int) -> jobs.Job | None:
        row: dict[str, Any] = await self.connector.execute_query_one_async(
            query=query("fetch_job_unless_paused"),
            queues=list(queues) if queues is not None else None,
            worker_id=worker_id,
        )
        if row["id"] is None:
            return None
        return jobs.Job.from_row(row)


@contextmanager
def pause_aware(bound: procrastinate.App) -> Iterator[procrastinate.App]:
    """The app's workers fetch through ``PauseAwareJobManager`` within the block."""
    original = bound.job_manager
    bound.job_manager = PauseAwareJobManager(original.connector)
    try:
        yield bound
    finally:
        bound.job_manager = original
