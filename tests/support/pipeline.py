"""Helpers for pipeline tests: real `dhgq worker` processes against a test database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg


def worker_env(db_url: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DHGQ_", "ANTHROPIC_", "MODAL_"))}
    return (
        env
        | {
            "DHGQ_DATABASE_URL": db_url,
            "DHGQ_HOME": str(home),
            "DHGQ_RETRY_BASE_DELAY": "0",
            "DHGQ_STALLED_AFTER": "4",
            "HF_HUB_OFFLINE": "1",
            "DHGQ_LOG_LEVEL": "INFO",
            # the suite's talks are English (espeak-ng): the English model, as DHGQ_WHISPER_MODEL=auto picks for a
            # request that says "en"; the auto choice itself is tested in tests/unit/test_languages.py
            "DHGQ_WHISPER_MODEL": "tiny.en",
        }
        | extra
    )


def run_once(env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "dhgq", "worker", "--once"], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "dhgq", "worker"], env=env, stdout=handle, stderr=handle)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def scalar(db_url: str, sql: str, params: tuple = ()) -> Any:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def rows(db_url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def stage_statuses(db_url: str, source_id: Any) -> dict[str, str]:
    return dict(
        rows(db_url, "SELECT stage, status FROM dhgq.audio_processing_stages WHERE source_id = %s", (source_id,))
    )


def insert_source(db_url: str, path: Path | str, mime_type: str = "video/mp4") -> str:
    """A source row for a local path or a URI (gdrive://..., https://...), as a psql user inserts one."""
    name = str(path).rstrip("/").rsplit("/", 1)[-1]
    with psycopg.connect(db_url, autocommit=True) as conn:
        return str(
            conn.execute(
                "INSERT INTO sources_google (name, path, mime_type) VALUES (%s, %s, %s) RETURNING id",
                (name, str(path), mime_type),
            ).fetchone()[0]
        )
