"""Test fixtures: a real PostgreSQL server started by the suite, set up as hosted Supabase is.

One embedded server per test session (dhgq's own embedded module, on Debian's PostgreSQL or the
pgserver wheel) whose superuser is ``supabase_admin``, with Supabase's roles: a project role
``postgres`` that is not a superuser, the API roles anon / authenticated / service_role, and
authenticator, the role PostgREST logs in as (``tests/support/hosted_roles.sql``). Each database
is set up as a Supabase project's (``tests/support/hosted_database.sql``: schema auth owned by
supabase_auth_admin, Supabase's default privileges in public, an empty supabase_realtime
publication), and dhgq's migrations and workers run on it as the project role, as they do on
Supabase. A template database is migrated once, and each test that asks for one gets a fresh
copy of it (``CREATE DATABASE ... TEMPLATE``), as Procrastinate's own test-suite does.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from dhgq import migrations
from dhgq.embedded import EmbeddedServer, ServerInfo

REAL_SPEECH = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "real-speech"
SUPPORT = Path(__file__).resolve().parent / "support"
TEMPLATE = "dhgq_template"
PROJECT_ROLE = "postgres"  # hosted Supabase's project role: what users connect and migrate as
PROJECT_PASSWORD = secrets.token_urlsafe(18)
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_home() -> Iterator[Path]:
    """Outside pytest's numbered temp dirs, which another pytest session may clean up under us."""
    home = Path(tempfile.mkdtemp(prefix="dhgq-test-pg-"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def server_home() -> Iterator[Path]:
    """A home for a test's own embedded server, outside pytest's temp root: pytest makes that root private
    (0700) at every session start, which would lock the server's unprivileged user out of its data dir."""
    home = Path(tempfile.mkdtemp(prefix="dhgq-test-server-"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(pg_home: Path) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(pg_home, superuser="supabase_admin")
    info = server.start()
    roles = (SUPPORT / "hosted_roles.sql").read_text(encoding="utf-8")
    with psycopg.connect(info.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL(roles).format(password=sql.Literal(PROJECT_PASSWORD)))  # type: ignore[arg-type]
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_info(pg_server: EmbeddedServer) -> ServerInfo:
    info = pg_server.status()
    assert info is not None
    return info


@pytest.fixture(scope="session")
def admin_url(pg_info: ServerInfo) -> str:
    """The superuser (supabase_admin), on the maintenance database."""
    return pg_info.url("postgres")


def role_url(info: ServerInfo, database: str, role: str = PROJECT_ROLE, password: str = PROJECT_PASSWORD) -> str:
    """A login role's URL on the test server: the project role's by default; authenticator shares its password."""
    return f"postgresql://{quote(role)}:{quote(password, safe='')}@127.0.0.1:{info.port}/{quote(database)}"


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?", 1)[0]


def new_database(info: ServerInfo, template: str | None) -> str:
    """A new database set up as a Supabase project's (or a copy of ``template``); the project role's URL."""
    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(info.url("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        conn.execute(f'GRANT ALL ON DATABASE "{name}" TO {PROJECT_ROLE}')  # a copy does not keep the grant
    if template is None:
        with psycopg.connect(info.url(name), autocommit=True) as conn:
            conn.execute((SUPPORT / "hosted_database.sql").read_text(encoding="utf-8"))  # type: ignore[arg-type]
    return role_url(info, name)


@pytest.fixture(scope="session")
def template_db(pg_info: ServerInfo) -> str:
    with psycopg.connect(pg_info.url("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
    url = new_database(pg_info, None)
    with psycopg.connect(pg_info.url("postgres"), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database_name(url)}" RENAME TO "{TEMPLATE}"')
    migrations.migrate(role_url(pg_info, TEMPLATE))
    return TEMPLATE


@pytest.fixture
def db_url(pg_info: ServerInfo, template_db: str) -> Iterator[str]:
    """A fresh, fully migrated hosted-like database for this test, as the project role; dropped after it."""
    url = new_database(pg_info, template_db)
    yield url
    drop_database(pg_info, url)


@pytest.fixture
def empty_db_url(pg_info: ServerInfo) -> Iterator[str]:
    """A fresh hosted-like database without dhgq's migrations, as the project role; dropped after it."""
    url = new_database(pg_info, None)
    yield url
    drop_database(pg_info, url)


def drop_database(info: ServerInfo, url: str) -> None:
    """Drop a test's database (its workers' connections too): a session's hundreds of copies of the template
    would otherwise stay on disk (~15 MB each) until the server stops, and make its stop and removal slow."""
    try:
        with psycopg.connect(info.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database_name(url)}" WITH (FORCE)')
    except psycopg.Error:  # a test that stopped the server: its data dir goes with the session
        pass


@pytest.fixture
def superuser_db_url(pg_info: ServerInfo, db_url: str) -> str:
    """The superuser on the same database as ``db_url``."""
    return pg_info.url(database_name(db_url))


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


@pytest.fixture(scope="session")
def plain_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    """A second server, plain PostgreSQL: no Supabase roles, no auth schema, a superuser named postgres."""
    server = EmbeddedServer(Path(tempfile.mkdtemp(prefix="dhgq-test-plain-pg-")))
    info = server.start()
    yield info
    server.stop()
    shutil.rmtree(server.home, ignore_errors=True)


@pytest.fixture
def real_speech() -> Path:
    if not REAL_SPEECH.is_dir():
        pytest.skip(f"real recordings not found at {REAL_SPEECH} (../shared/testdata is absent)")
    return REAL_SPEECH


# Supabase Storage and a Supabase-like API gateway (tests/support/storage_server.py, gateway.py)
from tests.support.gateway import Gateway  # noqa: E402
from tests.support.storage_server import STORAGE_DIR, StorageStack, running_storage  # noqa: E402


@pytest.fixture(scope="session")
def storage_stack(pg_info: ServerInfo) -> Iterator[StorageStack]:
    """Supabase Storage (the real server, ``../shared/supabase-storage``) on a hosted-like database, then dhgq's
    migrations on it as the project role: one server per session; tests use their own users and object keys."""
    if not STORAGE_DIR.is_dir():
        pytest.skip(f"the Supabase Storage server is not at {STORAGE_DIR} (../shared/supabase-storage is absent)")
    url = new_database(pg_info, None)
    name = database_name(url)
    workdir = Path(tempfile.mkdtemp(prefix="dhgq-test-storage-"))
    try:
        with running_storage(
            project_url=url,
            superuser_url=pg_info.url(name),
            authenticator_url=role_url(pg_info, name, "authenticator"),
            workdir=workdir,
        ) as stack:
            # uploads of media start no requests here unless a test turns it on (test_upload_requests.py):
            # the tests that upload media for other reasons must not leave pipelines behind
            with psycopg.connect(stack.database_url, autocommit=True) as conn:
                conn.execute("UPDATE dhgq.config SET value = 'false' WHERE key = 'process_uploads'")
            yield stack
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def gateway_url(storage_stack: StorageStack) -> Iterator[str]:
    """A Supabase-like API URL for ``storage_stack``: ``/storage/v1`` (the real Storage server) and ``/rest/v1``
    (PostgREST's way of running requests, against the real database); give it to ``supabase.create_client``."""
    with Gateway(
        storage_url=storage_stack.storage_url,
        authenticator_url=storage_stack.authenticator_url,
        jwt_secret=storage_stack.jwt_secret,
    ) as gateway:
        yield gateway.url
