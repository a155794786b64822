"""Budgets: optional caps in dollars per UTC day and per batch on what paid stages may spend.

The caps are rows of ``dhgq.config`` (``budget_daily_usd``, ``budget_batch_usd``; JSON null is no
cap), read at every check: raising one takes effect without restarting a worker, and its trigger
re-queues the stages that wait (``dhgq.resume_waiting_budget_v1``). What was spent comes from the
ledger (``dhgq/ledger.py``).

A paid stage asks ``gate`` before it starts, with an estimate of what it will cost. Over a cap,
the stage does not start: its row says ``waiting_budget`` with the reason, and a job checks again
``Settings.budget_recheck_seconds`` later, so the next UTC day frees it without anyone acting.
Summarization calls it with its tokens' estimate; transcription and diarization on Modal call it
with the audio's length in GPU seconds (``dhgq/tasks/audio.py``, ``ledger.gpu_estimate_usd``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dhgq.db import one
from dhgq.queries import query

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

DAILY = "budget_daily_usd"
BATCH = "budget_batch_usd"
DESCRIPTIONS = {
    DAILY: "Most dollars paid calls (Claude, Modal GPU) may cost per UTC day; null: no cap (dhgq budget set --daily)",
    BATCH: "Most dollars the paid calls of one batch may cost; null: no cap (dhgq budget set --batch)",
}


@dataclass(frozen=True)
class Caps:
    """The caps in dollars; None is no cap."""

    daily_usd: float | None = None
    batch_usd: float | None = None


@dataclass(frozen=True)
class Spend:
    """What the UTC day, and the batch of a source (when it has one), have spent so far."""

    today_usd: float
    batch_id: str | None = None
    batch_name: str | None = None
    batch_usd: float = 0.0


def read_caps(conn: psycopg.Connection) -> Caps:
    values = {key: value for key, value in conn.execute(query("budget_caps"))}
    return Caps(_dollars(values.get(DAILY)), _dollars(values.get(BATCH)))


def _dollars(value: str | None) -> float | None:
    return None if value is None else float(value)


def set_cap(conn: psycopg.Connection, key: str, usd: float | None) -> None:
    """Set (or with None remove) one cap; stages waiting for budget are queued again at once."""
    if key not in DESCRIPTIONS:
        raise ValueError(f"no budget {key!r}")
    if usd is not None and usd < 0:
        raise ValueError("a budget is a number of dollars, 0 or more")
    conn.execute(query("budget_set_cap"), {"key": key, "usd": usd, "description": DESCRIPTIONS[key]})


def spend(conn: psycopg.Connection, source_id: str) -> Spend:
    row = one(conn.cursor(row_factory=dict_row).execute(query("budget_spend"), {"source_id": source_id}))
    return Spend(
        float(row["today_usd"]),
        str(row["batch_id"]) if row["batch_id"] else None,
        row["batch_name"],
        float(row["batch_usd"]),
    )


def refusal(caps: Caps, spent: Spend, estimate_usd: float, what: str = "this stage") -> str | None:
    """Why a stage estimated at ``estimate_usd`` may not start, or None when it may.

    A cap is reached when what was spent is at it, or would pass it with this stage: a cap of 0
    admits no paid stage at all, even one whose price is unknown (estimated at 0).
    """
    need = f"{what} needs about ${estimate_usd:.2f}"
    if caps.daily_usd is not None and _over(caps.daily_usd, spent.today_usd, estimate_usd):
        return f"daily budget ${caps.daily_usd:.2f} reached: ${spent.today_usd:.2f} spent today (UTC), {need}"
    if (
        caps.batch_usd is not None
        and spent.batch_id is not None
        and _over(caps.batch_usd, spent.batch_usd, estimate_usd)
    ):
        batch = f"batch {spent.batch_name!r}" if spent.batch_name else f"batch {spent.batch_id}"
        return f"budget ${caps.batch_usd:.2f} of {batch} reached: ${spent.batch_usd:.2f} spent in it, {need}"
    return None


def _over(cap: float, spent: float, estimate: float) -> bool:
    return spent >= cap or spent + estimate > cap


def admit(conn: psycopg.Connection, source_id: str, estimate_usd: float, what: str = "this stage") -> str | None:
    """The refusal reason for a paid stage of this source, or None: caps and spend as committed now."""
    return refusal(read_caps(conn), spend(conn, source_id), estimate_usd, what)


def gate(
    pool: ConnectionPool,
    *,
    source_id: str,
    stage: str,
    job_id: int,
    estimate_usd: float | None,
    what: str = "this stage",
    recheck_seconds: int = 900,
) -> str | None:
    """Check the budget before a paid stage's job starts; the reason when it must wait, else None.

    ``estimate_usd`` None means the stage costs nothing this time (an extractive summary): it is
    never held. Held, the stage row turns ``waiting_budget`` (only while it is still this job's)
    and a job to check again is queued ``recheck_seconds`` later; the caller just returns, and the
    Procrastinate job ends without failing. Admitted after waiting, the row is ``queued`` again
    for the stage's claim. The shared budget lock is taken before the row's: a change of caps
    takes it exclusively, so it never misses a hold that is being written.
    """
    params: dict[str, Any] = {"source_id": source_id, "stage": stage, "job_id": str(job_id)}
    with pool.connection() as conn, conn.transaction():
        conn.execute(query("budget_lock"))
        row = conn.execute(query("budget_stage_row"), params).fetchone()
        if row is None:
            return None  # not this job's any more: the stage's claim finds nothing to do
        reason = admit(conn, source_id, estimate_usd, what) if estimate_usd is not None else None
        if reason is not None:
            conn.execute(query("budget_hold"), params | {"reason": reason, "delay_seconds": recheck_seconds})
            return reason
        if row[0] == "waiting_budget":
            conn.execute(query("budget_release"), params)
    return None


def waiting(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """The stages waiting for budget, with why and when they check again."""
    return conn.cursor(row_factory=dict_row).execute(query("budget_waiting")).fetchall()


def spent_today(conn: psycopg.Connection) -> float:
    return float(one(conn.execute(query("budget_today")))[0])


def new_batch(conn: psycopg.Connection, name: str, total_files: int, config: dict[str, Any] | None = None) -> str:
    """A batch row for one `dhgq process` run: its sources' costs add up, and a batch budget caps them."""
    params = {"name": name, "total_files": total_files, "config": Jsonb(config or {})}
    return str(one(conn.execute(query("insert_batch"), params))[0])


def discard_empty_batch(conn: psycopg.Connection, batch_id: str | None) -> bool:
    """Remove a batch no source joined (every file was known, or the first was refused); whether it went."""
    if batch_id is None:
        return False
    return conn.execute(query("delete_empty_batch"), {"batch_id": batch_id}).rowcount > 0
