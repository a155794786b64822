"""Queue overhead: N four-stage pipelines whose stages do nothing, through dhgq's real plumbing,
against plain Procrastinate, BullMQ with PostgreSQL status writes, and pgbench as the ceiling."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

from bench import cpu
from bench.infra import Postgres, redis_missing, redis_server
from bench.pgbench_limit import PgbenchResult, Writes, run_pgbench, writes
from bench.procrastinate_contenders import DhgqContender, ListenedDhgqContender, PlainContender
from bench.report import Section, ratio, table, verdict
from bench.tracker import Run, Tracker, drive, percentile_ms
from bench.waits import WaitSampler

STAGES_PER_PIPELINE = 4
TITLE = "Queue overhead (no-op stages)"


class Contender(Protocol):
    name: str
    key: str
    terminal: tuple[str, ...]

    def running(self, tracker: Tracker) -> Any: ...


@dataclass
class Options:
    count: int
    window: int
    warmup: int
    concurrency: dict[str, int]
    pgbench_seconds: int
    rounds: int = 1
    diagnostic: bool = True  # dhgq without the stage NOTIFY, in the last round
    timeout: float = 600.0
    skip_bullmq: str | None = None  # why the BullMQ contender is left out, when it is


@dataclass
class Outcome:
    """One contender over all rounds; costs cover its whole life, warm-ups included."""

    key: str
    name: str
    runs: list[Run] = field(default_factory=list)
    writes: Writes = Writes(0, 0, 0, 0, 0)
    cpu: cpu.Cpu = cpu.Cpu(0.0, 0.0, 0.0)
    transitions: int = 0
    waits: list[str] = field(default_factory=list)  # one summary per round
    skipped: str | None = None

    @property
    def rate(self) -> float:
        """Pipelines per second: the median round's."""
        return statistics.median(run.pipelines_per_s for run in self.runs)

    def latency_ms(self, q: float) -> float:
        return percentile_ms([s for run in self.runs for s in run.latencies], q)

    def per_transition(self) -> list[float | None]:
        """Row writes, transactions, WAL flushes and CPU ms (bench, PostgreSQL, Redis) per transition."""
        n = self.transitions
        return [
            self.writes.rows / n,
            self.writes.commits / n,
            self.writes.wal_syncs / n,
            1000 * self.cpu.bench / n,
            1000 * self.cpu.postgres / n,
            1000 * self.cpu.redis / n if self.cpu.redis else None,
        ]

    def cores_busy(self) -> tuple[float, float]:
        """CPU cores kept busy at the measured rate: the bench process, and PostgreSQL (+ Redis)."""
        per = self.per_transition()
        transitions_per_s = STAGES_PER_PIPELINE * self.rate
        bench_ms, server_ms = per[3] or 0.0, (per[4] or 0.0) + (per[5] or 0.0)
        return bench_ms * transitions_per_s / 1000, server_ms * transitions_per_s / 1000


async def _measure(contender: Contender, options: Options) -> Run:
    tracker = Tracker(contender.terminal)
    tracker.bind()
    async with contender.running(tracker) as launch:
        if options.warmup:
            await drive(tracker, launch, options.warmup, options.window)
            tracker.clear()
        return await drive(tracker, launch, options.count, options.window)


def measure(
    outcome: Outcome, contender: Contender, url: str, options: Options, pg: Postgres, redis_pid: int | None = None
) -> None:
    """One round of one contender in its own event loop; counters read around it."""

    async def bounded() -> Run:
        return await asyncio.wait_for(_measure(contender, options), options.timeout)

    writes_before, cpu_before = writes(url, settle=0.0), cpu.snapshot(pg.info.pid, redis_pid)
    with WaitSampler(url) as sampler:
        run = asyncio.run(bounded())
    cpu_after = cpu.snapshot(pg.info.pid, redis_pid)
    outcome.waits.append(sampler.summary())
    outcome.runs.append(run)
    outcome.writes = outcome.writes + (writes(url) - writes_before)
    outcome.cpu = outcome.cpu + (cpu_after - cpu_before)
    outcome.transitions += STAGES_PER_PIPELINE * (run.count + options.warmup)
    print(f"  {contender.key}: {run.pipelines_per_s:.1f} pipelines/s", file=sys.stderr, flush=True)


def _bullmq_round(
    send: Connection, outcome: Outcome, url: str, workdir: Path, options: Options, server_pid: int
) -> None:
    """The BullMQ contender's round, in a child process; the outcome goes back through ``send``."""
    from bench.bullmq_contender import BullmqContender

    server = SimpleNamespace(info=SimpleNamespace(pid=server_pid))
    with redis_server(workdir / "redis") as redis:
        send.send(("redis", redis.pid))  # so that the parent can stop it if this process is killed
        measure(outcome, BullmqContender(url, redis.url, options.concurrency), url, options, server, redis.pid)  # type: ignore[arg-type]
        send.send(("outcome", outcome))


def run_section(pg: Postgres, workdir: Path, options: Options) -> tuple[Section, dict[str, Any]]:
    from bench.bullmq_contender import BullmqContender

    outcomes = {
        "dhgq": Outcome("dhgq", DhgqContender.name),
        "plain": Outcome("plain", PlainContender.name),
        "bullmq": Outcome("bullmq", BullmqContender.name, skipped=options.skip_bullmq or redis_missing()),
        "dhgq-listened": Outcome("dhgq-listened", ListenedDhgqContender.name),
    }

    def dhgq(kind: type[DhgqContender] = DhgqContender) -> None:
        url = pg.database(kind.key.replace("-", "_"))
        measure(outcomes[kind.key], kind(url, workdir / "dhgq-home", options.concurrency), url, options, pg)

    def plain() -> None:
        url = pg.database("plain")
        measure(outcomes["plain"], PlainContender(url, options.concurrency), url, options, pg)

    def bullmq() -> None:
        # One round, in a child process that is killed if it hangs: the bullmq package has stopped
        # delivering jobs mid-run here, and its Worker.close then spins forever.
        if outcomes["bullmq"].skipped or outcomes["bullmq"].runs:
            return
        url = pg.database("bullmq", migrated=False)
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        child = context.Process(
            target=_bullmq_round,
            name="bench-bullmq",
            args=(send, outcomes["bullmq"], url, workdir, options, pg.info.pid),
        )
        child.start()
        send.close()
        limit = options.timeout + 120
        deadline, redis_pid = time.monotonic() + limit, None
        while receive.poll(max(0.0, deadline - time.monotonic())):
            try:
                kind, value = receive.recv()
            except EOFError:
                outcomes["bullmq"].skipped = f"its process ended without a result (exit code {child.exitcode})"
                break
            if kind == "redis":
                redis_pid = value
            else:
                outcomes["bullmq"] = value
                break
        else:
            outcomes["bullmq"].skipped = (
                f"its run did not finish within {limit:.0f} s and was stopped (the bullmq "
                "package stopped delivering jobs; it has done so before here)"
            )
        child.join(30)  # it stops Redis on its way out, unless bullmq hangs it
        if child.is_alive():
            child.kill()
            child.join()
        if redis_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(redis_pid, signal.SIGKILL)

    order: list[Callable[[], None]] = [dhgq, plain, bullmq]
    for round_number in range(options.rounds):
        for step in order[round_number % 3 :] + order[: round_number % 3]:  # rotate, to spread drift
            step()
    if options.diagnostic:
        dhgq(ListenedDhgqContender)
    else:
        del outcomes["dhgq-listened"]
    clients = sum(options.concurrency.values())
    reference = outcomes["dhgq"]
    limit = run_pgbench(
        pg, workdir / "pgbench", reference.writes, reference.transitions, clients, options.pgbench_seconds
    )
    return Section(TITLE, _render(outcomes, limit, options)), {"outcomes": outcomes, "pgbench": limit}


def _render(outcomes: dict[str, Outcome], limit: PgbenchResult, options: Options) -> str:
    dhgq = outcomes["dhgq"]
    base_rate, base_p50, base_p95 = dhgq.rate, dhgq.latency_ms(50), dhgq.latency_ms(95)
    rows: list[list[object]] = []
    costs: list[list[object]] = []
    for outcome in outcomes.values():
        if outcome.skipped:
            rows.append([outcome.name, f"skipped: {outcome.skipped}", *[None] * 7])
            continue
        rounds = ", ".join(f"{run.pipelines_per_s:.0f}" for run in outcome.runs)
        rows.append(
            [
                outcome.name,
                outcome.rate,
                STAGES_PER_PIPELINE * outcome.rate,
                outcome.latency_ms(50),
                outcome.latency_ms(95),
                ratio(outcome.rate, base_rate),
                ratio(outcome.latency_ms(50), base_p50),
                ratio(outcome.latency_ms(95), base_p95),
                rounds,
            ]
        )
        costs.append([outcome.name, *outcome.per_transition()])
    rows.append(
        [
            f"pgbench ceiling: {limit.inserts} inserts + {limit.updates} updates in one transaction per transition",
            limit.transitions_per_s / STAGES_PER_PIPELINE,
            limit.transitions_per_s,
            None,
            None,
            ratio(limit.transitions_per_s / STAGES_PER_PIPELINE, base_rate),
            None,
            None,
            None,
        ]
    )
    slots = ", ".join(f"{queue} {n}" for queue, n in options.concurrency.items())
    return "\n".join(
        [
            f"{options.count} pipelines per contender and round, {options.rounds} round(s) in rotating order "
            "(BullMQ in the first only: a second round in one process has hung in the bullmq package), each "
            f"after {options.warmup} warm-up pipelines on a fresh database; {options.window} pipelines in flight "
            "(each one that finishes starts the next). Worker concurrency per queue, the same for every "
            "contender: "
            f"{slots}. pgbench: {limit.clients} clients for {limit.seconds} s (one transaction: p50 "
            f"{limit.latency_p50_ms:.1f} ms, p95 {limit.latency_p95_ms:.1f} ms). Pipelines/s is the median "
            "round's; latency runs from the start (INSERT into sources_google for dhgq; the first defer or queue "
            "add otherwise) to the last stage's completion committed, over all rounds. With a fixed number in "
            "flight, that latency is mostly waiting in the queues (Little's law: in flight / throughput); the "
            "idle-worker latency is in the dispatch section.\n",
            table(
                (
                    "contender",
                    "pipelines/s",
                    "stage transitions/s",
                    "p50 ms",
                    "p95 ms",
                    "pipelines/s vs dhgq",
                    "p50 vs dhgq",
                    "p95 vs dhgq",
                    "pipelines/s per round",
                ),
                rows,
            ),
            "What one stage transition costs, over each contender's whole run (warm-ups included): PostgreSQL "
            "row writes (pg_stat_user_tables), transactions (pg_stat_database.xact_commit, read-only ones "
            "included), WAL flushes (pg_stat_wal.wal_sync), and CPU time of the bench process (driver and "
            "workers), of the PostgreSQL server and of Redis.\n",
            table(
                (
                    "contender",
                    "PG row writes",
                    "PG transactions",
                    "WAL flushes",
                    "CPU ms: bench process",
                    "CPU ms: PostgreSQL",
                    "CPU ms: Redis",
                ),
                costs,
            ),
            _targets(outcomes),
            _notes(outcomes, limit),
        ]
    )


def _targets(outcomes: dict[str, Outcome]) -> str:
    dhgq, plain, bullmq = outcomes["dhgq"], outcomes["plain"], outcomes["bullmq"]
    share = dhgq.rate / plain.rate
    lines = [
        "Targets:\n",
        f"- within 15% of plain Procrastinate: dhgq runs at {share:.0%} of plain's throughput, "
        f"{verdict(share >= 0.85)}.",
    ]
    listened = outcomes.get("dhgq-listened")
    if listened is not None and listened.runs:
        lines[-1] += (
            f" (Diagnostic: with a monitor listening, so that every stage change NOTIFYs, "
            f"{listened.rate / plain.rate:.0%}; one round, so read it as a direction.)"
        )
    if bullmq.skipped:
        lines.append(f"- ahead of BullMQ plus status writes: not measured ({bullmq.skipped}).")
    else:
        lead = dhgq.rate / bullmq.rate
        lines.append(
            f"- ahead of BullMQ plus status writes: dhgq runs at {lead:.2f}× BullMQ's throughput, "
            f"{verdict(lead > 1.0)}."
        )
    return "\n".join(lines) + "\n"


def _notes(outcomes: dict[str, Outcome], limit: PgbenchResult) -> str:
    lines = ["What limits them:\n"]
    cores = len(os.sched_getaffinity(0))
    for outcome in outcomes.values():
        if outcome.skipped:
            continue
        bench_cores, server_cores = outcome.cores_busy()
        lines.append(
            f"- {outcome.name}: at its rate it keeps {bench_cores:.2f} core(s) busy in the bench "
            f"process (one Python process: the GIL caps it near 1.0) and {server_cores:.2f} in the "
            f"servers, of {cores} on this machine. Its PostgreSQL backends (pg_stat_activity every "
            f"20 ms, last round): {outcome.waits[-1]}."
        )
    dhgq = outcomes["dhgq"]
    lines.append(
        "- `Lock:object` is the server-wide lock a committing transaction takes when it has sent "
        "a NOTIFY, held until its commit record is flushed: commits that NOTIFY queue behind each "
        "other and behind the WAL flush. Procrastinate NOTIFYs in every defer (both contenders); dhgq's "
        "stage trigger (dhgq.stage_changed_v1, on every stage-row change) adds a NOTIFY to its claim and "
        "completing transactions only while a monitor listens (the diagnostic round). "
        "`waiting for the client inside a transaction` is a backend idle in an open transaction "
        "while the Python side (threads sharing one GIL) gets round to its next statement."
    )
    lines.append(
        f"- pgbench puts all of dhgq's row writes for a transition in one transaction with no queue "
        f"logic and no Python: the most this server commits; dhgq reaches "
        f"{STAGES_PER_PIPELINE * dhgq.rate / limit.transitions_per_s:.0%} of it."
    )
    lines.append(
        "- dhgq per transition: Procrastinate's fetch and finish, plus its own claim (begin_stage "
        "and the source row, one statement, committed without waiting for its WAL flush) and its "
        "completing transaction in pipeline mode (row locks, complete_stage, dhgq.enqueue_stage_v1 "
        "for the next stages, the fan-in's decision), each stage-row write firing "
        "dhgq.stage_changed_v1 (a look for listeners, and for sources that users requested through "
        "processing_jobs, the status aggregate and their UPDATE). Plain Procrastinate makes "
        "the fetch, one defer transaction and the finish. With the driver and every worker in one "
        "Python process, pipelines/s is about the bench process's busy cores divided by its CPU "
        "time per transition (the table above): that Python time, more statements and rows to "
        "build and read per transition than plain Procrastinate's, is what separates the two. "
        "BullMQ keeps its queue in Redis (in "
        "memory here: no AOF, no RDB, so the queue itself is not durable) and pays three "
        "autocommitted UPSERTs per stage in PostgreSQL; Redis commands are not in the write "
        "columns."
    )
    lines.append(
        "- The baselines have no fan-in (without stage rows there is nothing to join on): "
        "summarization follows transcription, and their pipeline ends when summarization and "
        "diarization are both done."
    )
    return "\n".join(lines) + "\n"
