"""The services a benchmark run owns: a fresh embedded PostgreSQL server with a migrated template
database (a fresh copy per contender), and a throw-away Redis server."""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from dhgq import migrations
from dhgq.embedded import EmbeddedServer, ServerInfo

TEMPLATE = "bench_template"


class BenchError(RuntimeError):
    """A benchmark could not run to its end."""


@dataclass
class Postgres:
    """A running server of this run, and the databases made on it."""

    server: EmbeddedServer
    info: ServerInfo
    _counter: Iterator[int] = field(default_factory=itertools.count)

    def admin_url(self) -> str:
        return self.info.url("postgres")

    def database(self, label: str, *, migrated: bool = True) -> str:
        """A new database (a copy of the migrated template, or empty), as a connection URL."""
        name = f"bench_{label}_{next(self._counter)}"
        template = f' TEMPLATE "{TEMPLATE}"' if migrated else ""
        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{template}')
        return self.info.url(name)

    def binary(self, name: str) -> str:
        path = self.info.bin_dir / name
        if path.exists():
            return str(path)
        found = shutil.which(name)
        if found is None:
            raise BenchError(f"{name} not found next to the server ({self.info.bin_dir}) nor on PATH")
        return found


@contextmanager
def postgres(home: Path) -> Iterator[Postgres]:
    """Start a fresh embedded server under ``home``, build the migrated template, stop it after."""
    server = EmbeddedServer(home)
    info = server.start()
    try:
        with psycopg.connect(info.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
        migrations.migrate(info.url(TEMPLATE))
        yield Postgres(server, info)
    finally:
        server.stop()


def one(conn: psycopg.Connection, sql: str, params: tuple[object, ...] | None = None) -> tuple[Any, ...]:
    """The one row a query returns."""
    row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
    if row is None:
        raise BenchError(f"no row from: {sql.strip().splitlines()[0]}")
    return row


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_missing() -> str | None:
    """Why the BullMQ contender cannot run here, or None."""
    import importlib.util

    if shutil.which("redis-server") is None:
        return "redis-server is not installed: apt-get install redis-server"
    if importlib.util.find_spec("bullmq") is None:
        return "the bullmq package is not installed: .venv/bin/pip install -c constraints.txt bullmq"
    return None


@dataclass(frozen=True)
class Redis:
    url: str
    pid: int


@contextmanager
def redis_server(workdir: Path) -> Iterator[Redis]:
    """A Redis server without persistence on a free port; stopped after."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process, timeout=15.0)
        yield Redis(f"redis://127.0.0.1:{port}/0", process.pid)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"redis-server exited with code {process.returncode} before accepting connections")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"redis-server did not listen on port {port} within {timeout:.0f} s")
