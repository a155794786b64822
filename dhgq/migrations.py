"""Apply ``supabase/migrations/*.sql`` in order, each in its own transaction.

The files live in ``supabase/migrations``, where the Supabase CLI reads them; pyproject's ``package-dir``
ships that directory in the wheel as ``dhgq/_migrations``, so an installed dhgq migrates without a checkout.

Applied versions are recorded in ``supabase_migrations.schema_migrations``, the table the Supabase
CLI itself uses, so ``supabase db push`` and ``dhgq db migrate`` agree on what has been applied.
A session advisory lock serialises concurrent runs: the second waits, then finds nothing to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg

from dhgq.db import connect
from dhgq.errors import ConfigurationError, DhgqError

LOCK_KEY = 0x64686771  # "dhgq"
FILENAME = re.compile(r"^(?P<version>\d{14})_(?P<name>[a-z0-9_]+)\.sql$")

_HISTORY_DDL = """
CREATE SCHEMA IF NOT EXISTS supabase_migrations;
CREATE TABLE IF NOT EXISTS supabase_migrations.schema_migrations (
    version text NOT NULL PRIMARY KEY,
    statements text[],
    name text
);
"""


def migrations_dir() -> Path:
    """Where the migrations are: ``dhgq/_migrations`` in an installed wheel, else the checkout's directory.

    A wheel holds the mapped package as a real directory next to dhgq's modules. An editable install maps
    ``dhgq._migrations`` too, but setuptools' editable finder cannot import a namespace package mapped from
    outside its parent (pypa/setuptools#4943), and an ``__init__.py`` in ``supabase/migrations`` would make the
    Supabase CLI warn about a file it skips; so a checkout (editable or on ``PYTHONPATH``) reads
    ``supabase/migrations`` itself. The package is not imported: ``files()`` of a namespace package is a
    ``MultiplexedPath``, which cannot ``glob``.
    """
    packaged = resources.files("dhgq") / "_migrations"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[1] / "supabase" / "migrations"
    if checkout.is_dir():
        return checkout
    raise ConfigurationError(
        f"no migrations: neither {packaged} (an installed wheel) nor {checkout} (a source checkout) exists;"
        " reinstall dhgq"
    )


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def discover(directory: Path | None = None) -> list[Migration]:
    """The migration files (of ``migrations_dir()`` by default), in version order.

    Anything not named like the Supabase CLI's files is an error, so both tools see the same list.
    """
    found = []
    for path in sorted((directory or migrations_dir()).glob("*.sql")):
        match = FILENAME.match(path.name)
        if not match:
            raise ValueError(f"migration file {path.name} is not named <14-digit timestamp>_<name>.sql")
        found.append(Migration(match["version"], match["name"], path))
    return found


def applied_versions(conn: psycopg.Connection) -> set[str]:
    exists = conn.execute("SELECT to_regclass('supabase_migrations.schema_migrations')").fetchone()
    if not exists or exists[0] is None:
        return set()
    return {row[0] for row in conn.execute("SELECT version FROM supabase_migrations.schema_migrations")}


class MigrationFailed(DhgqError):
    """A migration failed; nothing of it was applied."""


def pending(url: str, directory: Path | None = None) -> list[Migration]:
    with connect(url, autocommit=True, search_path=False) as conn:
        done = applied_versions(conn)
    return [m for m in discover(directory) if m.version not in done]


def migrate(url: str, directory: Path | None = None) -> list[Migration]:
    """Apply what is pending; returns the migrations applied by this call (none when up to date)."""
    applied: list[Migration] = []
    with connect(url, autocommit=True, search_path=False) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute(_HISTORY_DDL)
            done = applied_versions(conn)
            for migration in discover(directory):
                if migration.version in done:
                    continue
                _apply(conn, migration)
                applied.append(migration)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied


def _apply(conn: psycopg.Connection, migration: Migration) -> None:
    """One migration and its history row, in one transaction; a failure names the file."""
    try:
        with conn.transaction():
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO supabase_migrations.schema_migrations (version, name, statements)"
                " VALUES (%s, %s, ARRAY[%s])",
                (migration.version, migration.name, migration.sql),
            )
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        state = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
        raise MigrationFailed(f"migration {migration.path.name} failed: {first_line}{state}") from None


def procrastinate_behind(url: str) -> list[str]:
    """Procrastinate migrations shipped by the installed package but newer than the schema's level."""
    import procrastinate

    shipped = Path(procrastinate.__file__).parent / "sql" / "migrations"
    with connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT schema_level FROM dhgq.components WHERE component = 'procrastinate'").fetchone()
    if row is None:
        return []
    return sorted(p.stem for p in shipped.glob("*.sql") if p.stem > row[0])
