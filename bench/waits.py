"""What a contender's PostgreSQL backends are doing while it runs: pg_stat_activity sampled every
few milliseconds, each busy backend counted under its wait event (or as running on the CPU, or as
waiting for the client inside an open transaction)."""

from __future__ import annotations

import threading
from collections import Counter

import psycopg

SAMPLE = """
SELECT CASE WHEN state = 'idle in transaction' THEN 'waiting for the client inside a transaction'
            WHEN wait_event IS NULL THEN 'on CPU'
            ELSE wait_event_type || ':' || wait_event END
  FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
   AND state <> 'idle'
"""


class WaitSampler:
    """Tallies busy backends by what they wait on, from a thread of its own, until stopped."""

    def __init__(self, url: str, interval: float = 0.02) -> None:
        self.url = url
        self.interval = interval
        self.tally: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-waits", daemon=True)

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.wait(self.interval):
                self.tally.update(row[0] for row in conn.execute(SAMPLE))
                self.samples += 1

    def summary(self, top: int = 4) -> str:
        """'2.1 busy backends on average: on CPU 40%, IO:WALSync 30%, ...'"""
        busy = sum(self.tally.values())
        if not self.samples or not busy:
            return "no busy backend seen"
        parts = ", ".join(f"{name} {count / busy:.0%}" for name, count in self.tally.most_common(top))
        return f"{busy / self.samples:.1f} busy on average: {parts}"
