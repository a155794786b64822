"""Dispatch latency: from a stage's commit to the next stage's start, with idle workers woken by
LISTEN/NOTIFY (dhgq), and plain Procrastinate's for reference."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.infra import Postgres
from bench.procrastinate_contenders import DhgqContender, PlainContender
from bench.report import Section, table, verdict
from bench.tracker import Pipeline, Tracker, drive, percentile_ms

TITLE = "Dispatch latency (idle workers)"
TARGET_MS = 20.0
Hop = Callable[[Pipeline], list[float]]


def _start(p: Pipeline) -> list[float]:
    assert p.committed is not None
    return [p.entered["extraction"] - p.committed]


def _fan_out(p: Pipeline) -> list[float]:
    return [p.entered[stage] - p.completed["extraction"] for stage in ("transcription", "diarization")]


def _dhgq_fan_in(p: Pipeline) -> list[float]:
    return [p.entered["summarization"] - max(p.completed["transcription"], p.completed["diarization"])]


def _plain_next(p: Pipeline) -> list[float]:
    return [p.entered["summarization"] - p.completed["transcription"]]


async def _sequential(contender: Any, count: int, gap: float) -> list[Pipeline]:
    """One pipeline at a time, each after the workers have sat idle for ``gap`` seconds."""
    tracker = Tracker(contender.terminal)
    tracker.bind()
    async with contender.running(tracker) as launch:
        await drive(tracker, launch, 3, 1)  # warm the connections and the task code
        tracker.clear()
        for _ in range(count):
            await asyncio.sleep(gap)
            await drive(tracker, launch, 1, 1, stall_timeout=30.0)
    return list(tracker.pipelines.values())


def run_section(
    pg: Postgres, workdir: Path, count: int, concurrency: dict[str, int], gap: float = 0.2
) -> tuple[Section, dict[str, Any]]:
    dhgq = asyncio.run(
        _sequential(DhgqContender(pg.database("dispatch"), workdir / "dispatch-home", concurrency), count, gap)
    )
    plain = asyncio.run(_sequential(PlainContender(pg.database("dispatch_plain"), concurrency), count, gap))
    hops: list[tuple[str, str, list[Pipeline], Hop]] = [
        ("dhgq", "INSERT into sources_google committed → extraction starts", dhgq, _start),
        ("dhgq", "extraction committed → transcription / diarization start", dhgq, _fan_out),
        ("dhgq", "fan-in committed → summarization starts", dhgq, _dhgq_fan_in),
        ("plain Procrastinate", "first defer committed → extraction starts", plain, _start),
        ("plain Procrastinate", "extraction committed → transcription / diarization start", plain, _fan_out),
        ("plain Procrastinate", "transcription committed → summarization starts", plain, _plain_next),
    ]
    rows = []
    for who, hop, pipelines, measure in hops:
        samples = [s for p in pipelines for s in measure(p)]
        rows.append(
            [who, hop, len(samples), percentile_ms(samples, 50), percentile_ms(samples, 95), max(samples) * 1000.0]
        )
    stage_to_stage = [s for p in dhgq for s in _fan_out(p) + _dhgq_fan_in(p)]
    p50, p95 = percentile_ms(stage_to_stage, 50), percentile_ms(stage_to_stage, 95)
    body = "\n".join(
        [
            f"{count} pipelines one after another, each started after the workers sat idle for "
            f"{gap * 1000:.0f} ms "
            "(so every hop wakes a worker through LISTEN/NOTIFY; the workers' fallback poll is 5 s). "
            '"Committed" is when the stage\'s completing transaction has returned; "starts" is when '
            "Procrastinate hands the job to the task function, before dhgq claims its stage row.\n",
            table(("queue", "hop", "samples", "p50 ms", "p95 ms", "max ms"), rows),
            f"Target: dhgq stage commit → next stage start p50 under {TARGET_MS:.0f} ms: p50 {p50:.1f} ms, "
            f"p95 {p95:.1f} ms, {verdict(p50 < TARGET_MS)}.\n",
            "What the hop contains: the NOTIFY sent by Procrastinate's insert trigger is delivered at commit; "
            "the worker's listener wakes its fetch loop, which runs procrastinate_fetch_job_v2 (one round trip), "
            "then hands the job to a thread of the executor.\n",
        ]
    )
    return Section(TITLE, body), {"stage_to_stage_p50_ms": p50, "stage_to_stage_p95_ms": p95}
