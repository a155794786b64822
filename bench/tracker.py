"""Timing pipelines as the workers see them, and a closed-loop driver that keeps a fixed number
of pipelines in flight.

Every contender calls ``entered`` when a stage's job starts and ``completed`` once the stage's
outputs are committed (for dhgq: when ``run_stage`` returns). All times are ``perf_counter``
readings of this one process, so they compare across threads and the event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from bench.infra import BenchError


@dataclass
class Pipeline:
    launched: float
    committed: float | None = None  # the start (INSERT or defer) has returned
    finished: float | None = None  # the last terminal stage completed
    entered: dict[str, float] = field(default_factory=dict)
    completed: dict[str, float] = field(default_factory=dict)


class Tracker:
    """Thread-safe record of stage starts and completions; wakes the driver when a pipeline ends."""

    def __init__(self, terminal: Iterable[str]) -> None:
        self.terminal = frozenset(terminal)
        self.pipelines: dict[str, Pipeline] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished: asyncio.Queue[str] = asyncio.Queue()

    def bind(self) -> None:
        """Attach to the running event loop (call from it, before any pipeline starts)."""
        self._loop = asyncio.get_running_loop()
        self._finished = asyncio.Queue()

    def clear(self) -> None:
        with self._lock:
            self.pipelines.clear()

    def launched(self, key: str) -> None:
        with self._lock:
            self.pipelines[key] = Pipeline(time.perf_counter())

    def committed(self, key: str) -> None:
        now = time.perf_counter()
        with self._lock:
            self.pipelines[key].committed = now

    def entered(self, key: str, stage: str) -> None:
        now = time.perf_counter()
        with self._lock:
            pipeline = self.pipelines.get(key)
            if pipeline is not None:
                pipeline.entered.setdefault(stage, now)

    def completed(self, key: str, stage: str) -> None:
        now = time.perf_counter()
        with self._lock:
            pipeline = self.pipelines.get(key)
            if pipeline is None:
                return
            pipeline.completed.setdefault(stage, now)
            if pipeline.finished is not None or not self.terminal <= pipeline.completed.keys():
                return
            pipeline.finished = now
        assert self._loop is not None, "Tracker.bind() was not called"
        self._loop.call_soon_threadsafe(self._finished.put_nowait, key)

    async def next_finished(self, timeout: float) -> str:
        return await asyncio.wait_for(self._finished.get(), timeout)

    def stuck(self) -> str:
        """A one-line picture of unfinished pipelines, for the error when a run stalls."""
        with self._lock:
            waiting = [p for p in self.pipelines.values() if p.finished is None]
        if not waiting:
            return "none unfinished"
        sample = waiting[0]
        return f"{len(waiting)} unfinished; e.g. entered {sorted(sample.entered)}, completed {sorted(sample.completed)}"


@dataclass
class Run:
    """The outcome of one driven run."""

    count: int
    seconds: float
    latencies: list[float]  # seconds, launch to last stage completed

    @property
    def pipelines_per_s(self) -> float:
        return self.count / self.seconds

    def latency_ms(self, q: float) -> float:
        return percentile_ms(self.latencies, q)


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q)) if seconds else float("nan")


async def drive(
    tracker: Tracker, launch: Callable[[str], Awaitable[None]], count: int, window: int, stall_timeout: float = 60.0
) -> Run:
    """Start ``count`` pipelines, keeping ``window`` in flight: each finish starts the next.

    Starts run as concurrent tasks, so a slow start never holds back the others (the launcher's own
    pool bounds how many INSERTs are on the wire at once)."""
    keys = [str(uuid.uuid4()) for _ in range(count)]
    pending = iter(keys)
    starting: set[asyncio.Task[None]] = set()

    async def start(key: str) -> None:
        tracker.launched(key)
        await launch(key)
        tracker.committed(key)

    def start_next() -> None:
        key = next(pending, None)
        if key is not None:
            task = asyncio.create_task(start(key))
            starting.add(task)
            task.add_done_callback(starting.discard)

    began = time.perf_counter()
    for _ in range(min(window, count)):
        start_next()
    for _ in range(count):
        try:
            await tracker.next_finished(stall_timeout)
        except TimeoutError:
            failed = [t.exception() for t in starting if t.done() and t.exception()]
            raise BenchError(
                f"no pipeline finished for {stall_timeout:.0f} s: {tracker.stuck()}"
                f"{'; a start failed: ' + repr(failed[0]) if failed else ''}"
            ) from None
        start_next()
    seconds = time.perf_counter() - began
    if starting:
        await asyncio.gather(*starting)
    latencies = []
    for key in keys:
        pipeline = tracker.pipelines[key]
        assert pipeline.finished is not None
        latencies.append(pipeline.finished - pipeline.launched)
    return Run(count, seconds, latencies)
