"""CPU time spent by this process, the PostgreSQL server (postmaster, live backends and the ones
already gone) and Redis, to say which side a contender's time goes to."""

from __future__ import annotations

import resource
from dataclasses import dataclass


@dataclass(frozen=True)
class Cpu:
    bench: float
    postgres: float
    redis: float

    def __add__(self, other: Cpu) -> Cpu:
        return Cpu(self.bench + other.bench, self.postgres + other.postgres, self.redis + other.redis)

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.bench - other.bench, self.postgres - other.postgres, self.redis - other.redis)


def snapshot(postmaster_pid: int | None, redis_pid: int | None = None) -> Cpu:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return Cpu(own.ru_utime + own.ru_stime, _tree(postmaster_pid), _tree(redis_pid))


def _tree(pid: int | None) -> float:
    """A server's CPU seconds: itself, its live children, and the children it has reaped."""
    if pid is None:
        return 0.0
    try:
        import psutil
    except ImportError:
        return float("nan")
    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in root.children(recursive=True):
            try:
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
            except psutil.NoSuchProcess:
                continue
        return total
    except psutil.NoSuchProcess:
        return 0.0
