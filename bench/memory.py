"""Memory of a worker as a whole: the worker process and its model host children.

Summing RSS counts every shared page (torch's libraries mapped in three processes, say) once per
process; PSS (proportional set size) shares each such page out among the processes mapping it,
so the sum of PSS over the tree is what the tree really takes from the machine. Both are
reported: RSS because it is what ``ps`` and ``top`` show, PSS because it is the honest total.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import psutil

MIB = 1024 * 1024


@dataclass(frozen=True)
class TreeMemory:
    rss_mb: float
    pss_mb: float
    processes: int


def tree_memory(pid: int) -> TreeMemory:
    """RSS and PSS summed over ``pid`` and all its descendants (zero when it has gone)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return TreeMemory(0.0, 0.0, 0)
    rss = pss = 0
    alive = 0
    for process in processes:
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss, pss, alive = rss + info.rss, pss + getattr(info, "pss", info.rss), alive + 1
    return TreeMemory(rss / MIB, pss / MIB, alive)


class PeakTreeMemory:
    """Samples a process tree in the background until stopped; keeps the peaks."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.peak_rss_mb = self.peak_pss_mb = 0.0
        self.most_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)

    def __enter__(self) -> PeakTreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            sample = tree_memory(self.pid)
            self.peak_rss_mb = max(self.peak_rss_mb, sample.rss_mb)
            self.peak_pss_mb = max(self.peak_pss_mb, sample.pss_mb)
            self.most_processes = max(self.most_processes, sample.processes)
