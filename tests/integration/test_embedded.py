"""The embedded server as users meet it: through the dhgq command, from several processes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dhgq.embedded import EmbeddedServer, ServerInfo


def dhgq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dhgq", *args], env=env, capture_output=True, text=True, timeout=120)


def test_start_reuse_and_stop(server_home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DHGQ_DATABASE_URL"} | {"DHGQ_HOME": str(server_home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dhgq", "db", "start", "--json"], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
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
    env = {
        **os.environ,
        "DHGQ_HOME": str(tmp_path),
        "DHGQ_DATABASE_URL": "postgresql://dhgq:s3cret@db.invalid.example:5432/dhgq",
    }
    result = dhgq("db", "migrate", env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "db.invalid.example" in lines[0] and "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


def test_self_contained_server_wheel_works(server_home: Path) -> None:
    """Where the machine has no PostgreSQL, the binaries of the pgserver wheel serve instead."""
    from dhgq import migrations
    from dhgq.embedded import _pgserver_bin_dir

    bin_dir = _pgserver_bin_dir()
    assert bin_dir is not None, "the pgserver wheel is a dependency of dhgq"
    server = EmbeddedServer(server_home, bin_dir)
    info = server.start()
    try:
        assert migrations.migrate(info.url())
        assert not migrations.pending(info.url())
        with psycopg.connect(info.url()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert_password_required(info)
    finally:
        assert server.stop()


@pytest.fixture(autouse=True)
def no_ambient_password(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A password-less connection must not pick one up from the environment or ~/.pgpass."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path_factory.getbasetemp() / "absent.pgpass"))


@pytest.fixture
def started(server_home: Path) -> Iterator[EmbeddedServer]:
    """A server of its own (not the suite's), stopped after the test."""
    server = EmbeddedServer(server_home, superuser="supabase_admin")
    server.start()
    yield server
    server.stop()


def assert_password_required(info: ServerInfo) -> None:
    """The URL's password works; the same URL without it is turned away."""
    assert info.password and f":{info.password}@" in info.url()
    with psycopg.connect(info.url("postgres")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (info.user,)
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(f"postgresql://{info.user}@127.0.0.1:{info.port}/postgres", connect_timeout=5).close()


def test_fresh_server_needs_its_generated_password(server_home: Path) -> None:
    server = EmbeddedServer(server_home)
    info = server.start()
    try:
        assert info.user == "postgres"
        assert_password_required(info)
        password_file = server_home / "pg" / "password"
        assert password_file.read_text().strip() == info.password
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        assert password_file.stat().st_uid == os.geteuid()  # the user running dhgq, not the service user
        assert not list((server_home / "pg").glob(".initdb-pwfile-*"))  # initdb's copy is gone
        assert info.password not in repr(info)
        with psycopg.connect(info.url()) as conn:
            assert conn.execute(
                "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = current_user"
            ).fetchone() == (True,)
    finally:
        assert server.stop()
    again = EmbeddedServer(server_home).start()  # a restart reads the same password back
    try:
        assert again.password == info.password
        assert_password_required(again)
    finally:
        assert EmbeddedServer(server_home).stop()


def test_superuser_name_is_configurable_and_remembered(started: EmbeddedServer, server_home: Path) -> None:
    from dhgq.errors import ConfigurationError

    info = started.status()
    assert info is not None and info.user == "supabase_admin"
    assert_password_required(info)
    with psycopg.connect(info.url("postgres"), autocommit=True) as conn:
        conn.execute("CREATE ROLE postgres LOGIN")  # free to exist as an ordinary role, as on hosted Supabase
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'postgres'").fetchone() == (False,)
    found = EmbeddedServer(server_home).status()  # default arguments: the name comes from server.json
    assert found is not None
    assert (found.user, found.password, found.port) == (info.user, info.password, info.port)
    assert EmbeddedServer(server_home).start() == info
    with pytest.raises(ConfigurationError, match="supabase_admin"):
        EmbeddedServer(server_home, superuser="someone_else").start()


def test_trust_data_directory_is_upgraded_to_passwords(server_home: Path) -> None:
    """A data directory initialised by an older dhgq (``initdb -A trust``) asks for a password after start()."""
    from dhgq.embedded import _demote, _make_traversable, _service_user, find_bin_dir

    root = server_home / "pg"
    root.mkdir()
    user = _service_user()
    if user is not None:
        _make_traversable(root, user)
    subprocess.run(
        [
            str(find_bin_dir() / "initdb"),
            "-D",
            str(root / "data"),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ],
        check=True,
        capture_output=True,
        preexec_fn=_demote(user),
        cwd=root,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    assert not (root / "password").exists()
    server = EmbeddedServer(server_home)
    info = server.start()
    try:
        assert info.user == "postgres"
        assert_password_required(info)
        assert stat.S_IMODE((root / "password").stat().st_mode) == 0o600
        hba = root / "data" / "pg_hba.conf"
        rules = [line.split() for line in hba.read_text().splitlines() if line.strip() and not line.startswith("#")]
        assert rules and all(rule[-1] == "scram-sha-256" for rule in rules)
        if user is not None:
            assert hba.stat().st_uid == user.pw_uid  # the server must still be able to read it
        assert info.password not in (root / "server.log").read_text()
    finally:
        assert server.stop()
    again = EmbeddedServer(server_home).start()  # after a restart: the rewritten pg_hba.conf, the stored password
    try:
        assert again.password == info.password
        assert_password_required(again)
    finally:
        assert server.stop()
