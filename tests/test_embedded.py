"""The embedded server as users meet it: through the dhgq command, from several processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg


def dhgq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dhgq", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_start_reuse_and_stop(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DHGQ_DATABASE_URL"} | {"DHGQ_HOME": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-m", "dhgq", "db", "start", "--json"], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    started = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert started[0]["port"] == started[1]["port"]  # the second process reused the first one's server
    url = dhgq("db", "url", env=env).stdout.strip()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("dhgq",)
    status = json.loads(dhgq("db", "status", "--json", env=env).stdout)
    assert status["running"] is True
    assert dhgq("db", "stop", env=env).returncode == 0
    assert dhgq("db", "status", "--json", env=env).returncode == 1


def test_bad_database_url_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "DHGQ_HOME": str(tmp_path),
           "DHGQ_DATABASE_URL": "postgresql://dhgq:s3cret@db.invalid.example:5432/dhgq"}
    result = dhgq("db", "migrate", env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "db.invalid.example" in lines[0] and "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


def test_self_contained_server_wheel_works(tmp_path: Path) -> None:
    """Where the machine has no PostgreSQL, the binaries of the pgserver wheel serve instead."""
    from dhgq import migrations
    from dhgq.embedded import EmbeddedServer, _pgserver_bin_dir

    bin_dir = _pgserver_bin_dir()
    assert bin_dir is not None, "the pgserver wheel is a dependency of dhgq"
    server = EmbeddedServer(tmp_path, bin_dir)
    info = server.start()
    try:
        assert migrations.migrate(info.url())
        with psycopg.connect(info.url()) as conn:
            assert conn.execute("SELECT count(*) FROM pipeline_stage_counts").fetchone() == (4,)
    finally:
        assert server.stop()
