"""Test fixtures: a real PostgreSQL server started by the suite itself.

One embedded server per test session (dhgq's own embedded module, on Debian's PostgreSQL or the
pgserver wheel), a template database migrated once, and a fresh copy of it for each test that asks
for one (``CREATE DATABASE ... TEMPLATE``), as Procrastinate's own test-suite does.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dhgq import migrations
from dhgq.embedded import EmbeddedServer

REAL_SPEECH = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "real-speech"
TEMPLATE = "dhgq_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_home() -> Iterator[Path]:
    """Outside pytest's numbered temp dirs, which another pytest session may clean up under us."""
    home = Path(tempfile.mkdtemp(prefix="dhgq-test-pg-"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(pg_home: Path) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(pg_home)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def admin_url(pg_server: EmbeddedServer) -> str:
    info = pg_server.status()
    assert info is not None
    return info.url("postgres")


@pytest.fixture(scope="session")
def template_db(admin_url: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
    url = _swap_db(admin_url, TEMPLATE)
    migrations.migrate(url)
    return TEMPLATE


def _swap_db(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


def new_database(admin_url: str, template: str | None) -> str:
    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return _swap_db(admin_url, name)


@pytest.fixture
def db_url(admin_url: str, template_db: str) -> str:
    """A fresh, fully migrated database for this test."""
    return new_database(admin_url, template_db)


@pytest.fixture
def empty_db_url(admin_url: str) -> str:
    """A fresh database with nothing in it."""
    return new_database(admin_url, None)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def real_speech() -> Path:
    if not REAL_SPEECH.is_dir():
        pytest.skip(f"real recordings not found at {REAL_SPEECH} (../shared/testdata is absent)")
    return REAL_SPEECH
