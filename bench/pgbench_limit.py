"""The ceiling: how many stage transitions per second the same server commits when each is one
transaction with as many row writes as dhgq makes per transition, and no queue at all (pgbench)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg

from bench.infra import BenchError, Postgres, one

SETUP = """
CREATE TABLE bench_log (id bigserial PRIMARY KEY, payload jsonb NOT NULL,
                        at timestamptz NOT NULL DEFAULT now());
CREATE TABLE bench_state (id integer PRIMARY KEY, status text NOT NULL, job_id bigint,
                          updated_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON bench_state (status);
INSERT INTO bench_state (id, status) SELECT g, 'queued' FROM generate_series(1, 100000) g;
"""
STATS = """
SELECT coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0), coalesce(sum(n_tup_del), 0),
       (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
       (SELECT wal_sync FROM pg_stat_wal)
  FROM pg_stat_user_tables
"""


@dataclass(frozen=True)
class Writes:
    """Row writes and transactions a database saw (pg_stat_user_tables, pg_stat_database), and the
    server's WAL flushes (pg_stat_wal: server-wide, so read them around one contender at a time)."""

    inserts: int
    updates: int
    deletes: int
    commits: int
    wal_syncs: int

    @property
    def rows(self) -> int:
        return self.inserts + self.updates + self.deletes

    def __add__(self, other: Writes) -> Writes:
        return Writes(
            self.inserts + other.inserts,
            self.updates + other.updates,
            self.deletes + other.deletes,
            self.commits + other.commits,
            self.wal_syncs + other.wal_syncs,
        )

    def __sub__(self, other: Writes) -> Writes:
        return Writes(
            self.inserts - other.inserts,
            self.updates - other.updates,
            self.deletes - other.deletes,
            self.commits - other.commits,
            self.wal_syncs - other.wal_syncs,
        )


def writes(url: str, settle: float = 1.0) -> Writes:
    """What the database has counted so far; read after the contender's connections closed
    (a backend flushes its counters when it exits)."""
    time.sleep(settle)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        ins, upd, dele, commits, syncs = one(conn, STATS)
    return Writes(int(ins), int(upd), int(dele), int(commits), int(syncs))


@dataclass(frozen=True)
class PgbenchResult:
    transitions_per_s: float
    latency_p50_ms: float
    latency_p95_ms: float
    inserts: int
    updates: int
    clients: int
    seconds: int


def script(inserts: int, updates: int) -> str:
    """One stage transition: one transaction with that many inserts and updates."""
    lines = ["\\set id random(1, 99990)", "BEGIN;"]
    payload = '{"source_id": "00000000-0000-0000-0000-000000000000", "stage": "transcription", "n": %d}'
    lines += [f"INSERT INTO bench_log (payload) VALUES ('{payload % i}');" for i in range(inserts)]
    lines += [
        f"UPDATE bench_state SET status = 'completed', job_id = :id, updated_at = now() WHERE id = :id + {i};"
        for i in range(updates)
    ]
    lines.append("END;")
    return "\n".join(lines) + "\n"


def run_pgbench(
    pg: Postgres, workdir: Path, observed: Writes, transitions: int, clients: int, seconds: int
) -> PgbenchResult:
    """pgbench on a fresh database, matching dhgq's measured writes per transition."""
    inserts = max(1, round(observed.inserts / transitions))
    updates = max(1, round((observed.updates + observed.deletes) / transitions))
    url = pg.database("pgbench", migrated=False)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SETUP)
        conn.execute("VACUUM ANALYZE bench_state")
    workdir.mkdir(parents=True, exist_ok=True)
    script_file = workdir / "transition.sql"
    script_file.write_text(script(inserts, updates))
    for old in workdir.glob("pgbench_log*"):
        old.unlink()
    cmd = [
        pg.binary("pgbench"),
        "-n",
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        str(min(clients, 4)),
        "-T",
        str(seconds),
        "-f",
        str(script_file),
        "-l",
        "--log-prefix",
        str(workdir / "pgbench_log"),
        url,
    ]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=seconds + 120,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )
    if done.returncode != 0:
        raise BenchError(f"pgbench failed: {(done.stderr or done.stdout).strip()[-500:]}")
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", done.stdout)
    if match is None:
        raise BenchError(f"no tps line in pgbench's output: {done.stdout[-500:]}")
    latencies = _logged_latencies_ms(workdir)
    return PgbenchResult(
        float(match.group(1)),
        float(np.percentile(latencies, 50)),
        float(np.percentile(latencies, 95)),
        inserts,
        updates,
        clients,
        seconds,
    )


def _logged_latencies_ms(workdir: Path) -> np.ndarray:
    values: list[float] = []
    for log in workdir.glob("pgbench_log*"):
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3:
                values.append(int(fields[2]) / 1000.0)
    if not values:
        raise BenchError("pgbench wrote no per-transaction log")
    return np.asarray(values)
