"""Where the monitor's data comes from: PostgreSQL, or fixed data for tests and snapshots.

The app calls these only from thread workers; each returns plain dataclasses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import psycopg

from dhgq import sources
from dhgq.db import connect
from dhgq.status import QueueSnapshot, SourceDetail, fetch_detail, fetch_snapshot, follow_stages


class Backend(Protocol):
    def snapshot(self) -> QueueSnapshot: ...
    def detail(self, source_id: str) -> SourceDetail | None: ...
    def retry(self, source_id: str) -> int: ...
    def cancel(self, source_id: str) -> int: ...
    def listen(self, changed: Callable[[], object], stopped: Callable[[], bool]) -> None: ...


class PostgresBackend:
    """Reads on one connection (polls never overlap); actions and LISTEN on their own."""

    def __init__(self, url: str, *, stalled_after: float = 30.0, timeout: float = 10.0) -> None:
        self.url = url
        self.stalled_after = stalled_after
        self.timeout = timeout
        self._conn: psycopg.Connection | None = None

    def _reader(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self.url, autocommit=True, timeout=self.timeout)
        return self._conn

    def snapshot(self) -> QueueSnapshot:
        try:
            return fetch_snapshot(self._reader(), stalled_after=self.stalled_after)
        except psycopg.OperationalError:
            self.close()
            raise

    def detail(self, source_id: str) -> SourceDetail | None:
        return fetch_detail(self._reader(), source_id)

    def retry(self, source_id: str) -> int:
        with connect(self.url, autocommit=True, timeout=self.timeout) as conn:
            return sources.retry(conn, source_id)

    def cancel(self, source_id: str) -> int:
        with connect(self.url, autocommit=True, timeout=self.timeout) as conn:
            return sources.cancel(conn, source_id)

    def listen(self, changed: Callable[[], object], stopped: Callable[[], bool]) -> None:
        """Call ``changed`` on every stage change until ``stopped``; reconnect after errors."""
        while not stopped():
            try:
                with follow_stages(self.url, timeout=self.timeout) as changes:
                    while not stopped():
                        if changes.wait(0.5):
                            changed()
            except (psycopg.Error, OSError):
                time.sleep(1.0)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class FixedBackend:
    """Fixed data: snapshot tests and demos without a database. Actions are recorded."""

    fixed: QueueSnapshot
    details: dict[str, SourceDetail] = field(default_factory=dict)
    actions: list[tuple[str, str]] = field(default_factory=list)

    def snapshot(self) -> QueueSnapshot:
        return self.fixed

    def detail(self, source_id: str) -> SourceDetail | None:
        return self.details.get(source_id)

    def retry(self, source_id: str) -> int:
        self.actions.append(("retry", source_id))
        return 1

    def cancel(self, source_id: str) -> int:
        self.actions.append(("cancel", source_id))
        return 1

    def listen(self, changed: Callable[[], object], stopped: Callable[[], bool]) -> None:
        return None
