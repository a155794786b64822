"""Scale: many queued sources (a short generated clip each) worked off by two real ``dhgq worker``
processes; their memory is sampled throughout and throughput is counted per block of completions."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.infra import Postgres, one
from bench.media import REPO, make_talk, worker_env
from bench.memory import tree_memory
from bench.report import Section, skipped, table, verdict
from dhgq.migrations import migrate

TITLE = "Scale (two worker processes)"
WORKERS = 2
COUNT_DONE = """
SELECT count(*) FILTER (WHERE stage = 'summarization' AND status = 'completed'),
       count(DISTINCT source_id) FILTER (WHERE status = 'failed')
  FROM dhgq.audio_processing_stages
"""
COMPLETIONS = """
SELECT extract(epoch FROM completed_at) FROM dhgq.audio_processing_stages
 WHERE stage = 'summarization' AND status = 'completed' ORDER BY completed_at
"""


@dataclass
class Sample:
    at: float
    completed: int
    rss_mb: list[float] = field(default_factory=list)
    pss_mb: list[float] = field(default_factory=list)


def run_section(pg: Postgres, workdir: Path, count: int, timeout: float) -> tuple[Section, dict[str, Any]]:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return skipped(TITLE, "psutil is not installed (needed to sample the workers' memory)"), {}
    try:
        clip = make_talk(workdir / "scale", 1, lines=2)
    except Exception as exc:  # noqa: BLE001
        return skipped(TITLE, f"could not generate the clip: {exc}"), {}
    url = pg.database("scale")
    migrate(url)  # migrations added since the run began (the worker refuses a schema behind the code)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO sources_google (name, path, mime_type) VALUES (%s, %s, 'video/mp4')",
            [(f"clip-{i}.mp4", str(clip)) for i in range(count)],
        )
    env = worker_env({"DHGQ_DATABASE_URL": url, "DHGQ_HOME": str(workdir / "scale" / "dhgq-home")})
    log_paths = [workdir / "scale" / f"worker{i}.log" for i in range(WORKERS)]
    logs = [open(path, "ab") for path in log_paths]
    workers = [
        subprocess.Popen([sys.executable, "-m", "dhgq", "worker"], cwd=REPO, env=env, stdout=log, stderr=log)
        for log in logs
    ]
    samples = _watch(url, workers, count, timeout)
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    for log in logs:
        log.close()
    with psycopg.connect(url, autocommit=True) as conn:
        done_at = [float(row[0]) for row in conn.execute(COMPLETIONS)]
        failed = one(conn, COUNT_DONE)[1]
    if not done_at and samples and samples[-1].at < 60:
        tail = log_paths[0].read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
        return skipped(TITLE, f"the workers exited at once: {tail[0][:300]}"), {}
    return Section(TITLE, _render(count, samples, done_at, failed, timeout)), {"samples": samples}


def _watch(url: str, workers: list[subprocess.Popen[bytes]], count: int, timeout: float) -> list[Sample]:
    samples: list[Sample] = []
    began = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() - began < timeout:
            completed, failed = one(conn, COUNT_DONE)
            trees = [tree_memory(w.pid) for w in workers]
            samples.append(
                Sample(time.monotonic() - began, completed, [t.rss_mb for t in trees], [t.pss_mb for t in trees])
            )
            if completed + failed >= count or all(w.poll() is not None for w in workers):
                break
            time.sleep(1.0)
    return samples


def _render(count: int, samples: list[Sample], done_at: list[float], failed: int, timeout: float) -> str:
    block = 100 if count >= 1000 else max(10, count // 10)
    rows: list[list[object]] = []
    rates: list[float] = []
    for start in range(0, len(done_at) - block + 1, block):
        first, last = done_at[start], done_at[start + block - 1]
        span = last - (done_at[start - 1] if start else first)
        rate = block / span if span > 0 else None
        rows.append([f"{start + 1}–{start + block}", rate])
        if rate:
            rates.append(rate)
    memory = _memory_rows(samples, len(done_at))
    drift = _drift(rates)
    growth = _growth(samples)
    cut = f" (stopped at the {timeout:.0f} s limit)" if len(done_at) + failed < count else ""
    text = [
        f"{count} sources queued at once (a two-utterance clip of about 10 s each), worked off by {WORKERS} "
        f"`dhgq worker` processes with default settings; {len(done_at)} completed, {failed} failed{cut}.\n",
        table((f"completions (blocks of {block})", "pipelines/s in the block"), rows)
        if rows
        else "Too few completions for a throughput block.\n",
        table(("when", *[f"worker {i + 1} RSS MiB (with model hosts)" for i in range(WORKERS)]), memory),
    ]
    if drift is not None:
        text.append(
            f"Throughput, the late blocks against the early ones (the first block, which pays for "
            f"model loading, and the last, which drains the queue, left out): {drift:.2f}×, "
            f"{verdict(drift >= 0.9)} (no degradation: at least 0.9×).\n"
        )
    else:
        text.append("Too few blocks (fewer than five) to compare early and late throughput.\n")
    if growth is not None:
        text.append(
            f"Memory, last sample against the first after warm-up: {growth:.2f}×, "
            f"{verdict(growth <= 1.2)} (flat: within 20%; models are loaded once per worker).\n"
        )
    return "\n".join(text)


def _drift(rates: list[float]) -> float | None:
    """Mean rate of the late blocks over the early ones, first and last blocks left out."""
    if len(rates) < 5:
        return None
    middle = rates[1:-1]
    third = max(1, len(middle) // 3)
    return (sum(middle[-third:]) / third) / (sum(middle[:third]) / third)


def _memory_rows(samples: list[Sample], total: int) -> list[list[object]]:
    if not samples:
        return []
    marks = [("first sample (workers starting)", samples[0])]
    for share in (0.25, 0.5, 0.75, 1.0):
        target = max(1, int(total * share))
        hit = next((s for s in samples if s.completed >= target), samples[-1])
        marks.append((f"{hit.completed} completed ({hit.at:.0f} s)", hit))
    peak = [max(s.rss_mb[i] for s in samples) for i in range(WORKERS)]
    rows: list[list[object]] = [[label, *sample.rss_mb] for label, sample in marks]
    rows.append(["peak over the run", *peak])
    rows.append(
        [
            "peak over the run, PSS (shared pages counted once)",
            *[max(s.pss_mb[i] for s in samples) for i in range(WORKERS)],
        ]
    )
    return rows


def _growth(samples: list[Sample]) -> float | None:
    if not samples:
        return None
    threshold = max(1, samples[-1].completed // 10)  # warm: models loaded, caches filled
    warm = [s for s in samples if s.completed >= threshold]
    if len(warm) < 2 or not all(warm[0].rss_mb):
        return None
    return max(warm[-1].rss_mb[i] / warm[0].rss_mb[i] for i in range(WORKERS))
