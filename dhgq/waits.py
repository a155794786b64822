"""Stages that wait instead of failing: for an API that asked to wait, and for disk space.

A held stage stays ``queued``; its row says what it waits for (``waiting_for``), why (``error``)
and until when (``waiting_until``), and a job to run it again is queued for that time with the
stage's priority (``dhgq.hold_stage_v1``). The held job itself ends without failing, so waiting is
not an attempt.

- **The API.** A 429 or 529 from Claude with Retry-After (``ApiBusy``) holds the summary until then
  and pauses the whole summarization queue until the same moment (``dhgq/queues.py``), so other
  summaries do not hammer the API meanwhile. Waits are counted per run of the stage and limited
  by ``DHGQ_API_MAX_WAITS``; past that the error is an ordinary transient failure.
- **Disk.** Extraction writes the WAV and the compact copy; below ``DHGQ_MIN_FREE_DISK_BYTES`` free
  in the work, temp or cache dir it waits, and checks again every ``DHGQ_DISK_RECHECK_SECONDS``.
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime
from pathlib import Path

from dhgq import queues
from dhgq.db import one
from dhgq.errors import ApiBusy
from dhgq.queries import query
from dhgq.settings import Settings
from dhgq.stage import Resources, StageJob

logger = logging.getLogger("dhgq.waits")


def wait_for_api(resources: Resources, job: StageJob, busy: ApiBusy) -> bool:
    """Hold the stage and pause its queue until the API's time; False when its waits are used up."""
    settings = resources.settings
    delay = min(busy.retry_after, settings.api_max_wait_seconds)
    params = {"source_id": job.source_id, "stage": job.stage, "job_id": str(job.job_id)}
    with resources.pool.connection() as conn, conn.transaction():
        row = conn.execute(query("stage_api_waits"), params).fetchone()
        if row is None:
            return True  # cancelled or queued again meanwhile: nothing to hold, nothing to fail
        if row[0] >= settings.api_max_waits:
            return False
        until: datetime = one(conn.execute(query("time_in"), {"seconds": delay}))[0]
        reason = f"waiting for the {busy.api} until {until:%H:%M:%S %Z}: {busy.message}"
        conn.execute(query("hold_stage"), params | {"waiting_for": "api", "reason": reason, "until": until})
        queues.pause(conn, job.stage, f"the {busy.api} asked to wait: {busy.message}", settings.host_name, until)
    resources.telemetry.waited(job, "api")
    logger.warning("%s; the %s queue is paused until then", reason, job.stage, extra=job.log)
    return True


def disk_shortage(settings: Settings) -> str | None:
    """Why extraction may not write now (a directory's disk below the floor), or None."""
    floor = settings.min_free_disk_bytes
    if floor <= 0:
        return None
    places = {"work dir": settings.work_dir, "temp dir": settings.scratch_dir}
    if settings.artifact_backend() == "storage":
        places["cache dir"] = settings.artifact_cache_dir
    for label, path in places.items():
        free = shutil.disk_usage(_existing(path)).free
        if free < floor:
            return (
                f"the {label} {path} has {_size(free)} free, below the floor of {_size(floor)} "
                "(DHGQ_MIN_FREE_DISK_BYTES)"
            )
    return None


def held_for_disk(resources: Resources, job: StageJob) -> bool:
    """Whether extraction must wait for disk space (its row then says why, and it checks again later)."""
    shortage = disk_shortage(resources.settings)
    if shortage is None:
        return False
    every = resources.settings.disk_recheck_seconds
    reason = f"waiting for disk space: {shortage}; checking again every {every} s"
    params = {"source_id": job.source_id, "stage": job.stage, "job_id": str(job.job_id)}
    with resources.pool.connection() as conn:
        until = one(conn.execute(query("time_in"), {"seconds": every}))[0]
        conn.execute(query("hold_stage"), params | {"waiting_for": "disk", "reason": reason, "until": until})
    resources.telemetry.waited(job, "disk")
    logger.warning(reason, extra=job.log)
    return True


def _existing(path: Path) -> Path:
    """The directory itself, or its nearest ancestor that exists yet (the disk it will be on)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _size(count: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"
