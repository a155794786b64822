"""What the figures were measured on: CPU, memory, PostgreSQL, Python and package versions."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import psycopg

from bench.infra import one

PACKAGES = (
    "procrastinate",
    "psycopg",
    "psycopg-pool",
    "bullmq",
    "redis",
    "numpy",
    "faster-whisper",
    "ctranslate2",
    "openai-whisper",
    "torch",
    "sentence-transformers",
)
SETTINGS = "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s) ORDER BY name"
SERVER_SETTINGS = ("shared_buffers", "synchronous_commit", "fsync", "wal_sync_method", "max_connections")


def describe(admin_url: str | None) -> list[tuple[str, str]]:
    rows = [
        ("CPU", _cpu_model()),
        ("CPU cores (logical, usable)", f"{os.cpu_count()}, {len(os.sched_getaffinity(0))}"),
        ("RAM", _memory()),
        ("OS", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("Python", platform.python_version()),
    ]
    if admin_url is not None:
        rows += _postgres(admin_url)
    rows.append(("redis-server", _version(["redis-server", "--version"])))
    rows.append(("packages", ", ".join(f"{name} {_package(name)}" for name in PACKAGES)))
    return rows


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _postgres(admin_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        version = one(conn, "SELECT version()")[0]
        settings = conn.execute(SETTINGS, (list(SERVER_SETTINGS),)).fetchall()
    shown = ", ".join(
        f"{name}={setting}{'×' + unit if unit and unit != 's' else ''}" for name, setting, unit in settings
    )
    return [
        ("PostgreSQL", version.split(" on ")[0] + " (dhgq's embedded server, fresh for this run)"),
        ("PostgreSQL settings", shown),
    ]


def _version(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return "not installed"
    done = subprocess.run(cmd, capture_output=True, text=True)
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else "unknown"


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"
