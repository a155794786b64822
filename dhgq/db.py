"""Connections: which database to use, how to reach it, and one place that turns psycopg's
errors into dhgq's (a one-line message naming the host, never a traceback with a DSN).

Every connection dhgq makes (workers, CLI, monitor, Procrastinate's own) searches schema
``dhgq`` before ``public``: the queue and the stage machinery live in ``dhgq``, out of reach of
Supabase's Data API, and are named unqualified, as Procrastinate's SQL names its tables.
"""

from __future__ import annotations

import time
import weakref
from typing import TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from dhgq.embedded import EmbeddedServer
from dhgq.errors import DatabaseUnavailable
from dhgq.settings import Settings


def database_url(settings: Settings, *, start: bool = True) -> str:
    """The configured database, or the embedded server's (started here when needed)."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    server = EmbeddedServer(settings.home, settings.pg_bin_dir)
    info = server.start() if start else server.status()
    if info is None:
        raise DatabaseUnavailable("the embedded PostgreSQL server is not running (dhgq db start)")
    return info.url()


PIPELINE_SCHEMA = "dhgq"
SEARCH_PATH = f"{PIPELINE_SCHEMA},public"


def with_search_path(url: str) -> str:
    """The connection string with dhgq's search_path added to any server options it has."""
    try:
        options = conninfo_to_dict(url).get("options") or ""
    except psycopg.ProgrammingError:
        return url  # connect() reports the unparseable string
    return make_conninfo(url, options=f"{options} -c search_path={SEARCH_PATH}".strip())


def describe_host(url: str) -> str:
    """host:port/dbname of a connection string, for messages."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "an unparseable DHGQ_DATABASE_URL"
    return f"{parts.get('host', 'localhost')}:{parts.get('port', '5432')}/{parts.get('dbname', '')}"


def mask_url(url: str) -> str:
    """The connection string with its password replaced, safe to print and log."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<invalid database url>"
    if parts.get("password"):
        parts["password"] = "***"
    if url.startswith(("postgresql://", "postgres://")):
        user = parts.get("user", "")
        auth = f"{user}:***@" if "password" in parts else (f"{user}@" if user else "")
        return f"postgresql://{auth}{describe_host(url)}"
    return make_conninfo("", **parts)


def connect(
    url: str, *, autocommit: bool = False, timeout: float = 10.0, search_path: bool = True
) -> psycopg.Connection:
    """A connection, or DatabaseUnavailable with a one-line reason naming the host.

    ``search_path=False`` leaves the server's default, as migrations need: they must create
    objects where ``supabase db push`` would.
    """
    conninfo = with_search_path(url) if search_path else url
    try:
        return psycopg.connect(conninfo, autocommit=autocommit, connect_timeout=int(max(1, timeout)))
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(f"cannot connect to the database at {describe_host(url)}: {reason}") from None


Row = TypeVar("Row")


def one(cursor: psycopg.Cursor[Row]) -> Row:
    """The single row a query always returns (an aggregate, a RETURNING, a function call)."""
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("a query that always returns a row returned none")
    return row


IDLE_CHECK_AFTER = 2.0  # seconds in the pool after which a connection is checked before it is lent
_returned_at: weakref.WeakKeyDictionary[psycopg.Connection, float] = weakref.WeakKeyDictionary()


def _remember_return(conn: psycopg.Connection) -> None:
    _returned_at[conn] = time.monotonic()


def _check_if_idle(conn: psycopg.Connection) -> None:
    if time.monotonic() - _returned_at.get(conn, 0.0) > IDLE_CHECK_AFTER:
        ConnectionPool.check_connection(conn)


def task_pool(url: str, max_size: int) -> ConnectionPool:
    """The pool that stage code borrows connections from.

    A connection is checked (a round trip) before it is lent only when it sat in the pool for
    more than IDLE_CHECK_AFTER seconds. One lent a moment ago is as good as checked, and under
    load the check was one round trip in ten of a stage's. A connection that a server restart
    broke within that moment fails its stage transiently, and the retry gets a fresh one.

    Connections are in autocommit mode: a single statement (a claim, a progress update) is one
    round trip, where an implicit transaction would add a BEGIN and a COMMIT; several statements
    that belong together use ``conn.transaction()``.
    """
    return ConnectionPool(
        with_search_path(url),
        min_size=1,
        max_size=max_size,
        open=True,
        check=_check_if_idle,
        reset=_remember_return,
        kwargs={"connect_timeout": 10, "autocommit": True},
    )
