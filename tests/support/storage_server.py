"""The real Supabase Storage server, on a hosted-like test database, laid out as hosted Supabase lays it out.

``../shared/supabase-storage`` holds the open-source Storage API server (the one that serves
``/storage/v1`` on every Supabase project) and the scripts that build it (``prepare.sh``: Node 24 and
``npm ci``, cached per snapshot) and run it (``start.sh``). Tests run it against a database made by the
hosted-like fixture, because what dhgq must get right lives in that database: the ``media`` bucket and
the row-level security policies on ``storage.objects`` that dhgq's migration creates as the project role.

Ownership, as on hosted Supabase: schema ``storage`` belongs to ``supabase_admin``, everything in it
(``storage.objects`` and ``storage.buckets`` above all) to ``supabase_storage_admin``, and the project
role ``postgres`` is a member of ``supabase_storage_admin``, which is why a project's own migration may
create policies on ``storage.objects`` at all. The server runs its migrations as the superuser with
``DB_INSTALL_ROLES=false`` (the API roles exist already) and ``DB_SUPER_USER=supabase_storage_admin``;
with roles not installed its own migrations leave what they create to the role they run as, so the
objects are handed to ``supabase_storage_admin`` afterwards (``_OWNERSHIP``). Only then do dhgq's
migrations run, as the project role, as on a Supabase project where Storage exists before any of the
project's own migrations.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from storage3 import SyncStorageClient

from dhgq import migrations
from tests.support import jwt as tokens

STORAGE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "supabase-storage"
BUCKET = "media"
PREPARE_TIMEOUT = 600.0  # the first build: Node 24 and npm ci, about a minute on a warm network
START_TIMEOUT = 60.0  # migrations and GET /status, 2-3 s when built
STOP_TIMEOUT = 10.0
DHGQ_POLICIES = (
    "dhgq: users read their own media",
    "dhgq: users upload into their own folder",
    "dhgq: users replace their own media",
    "dhgq: users delete their own media",
)

# Run by the superuser before the server starts: Supabase's storage admin role, granted to the project
# role as hosted Supabase grants it, and schema storage with the privileges Supabase's images give it
# (the server's own migration does this only with DB_INSTALL_ROLES=true).
_SETUP = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'supabase_storage_admin') THEN
        CREATE ROLE supabase_storage_admin NOINHERIT CREATEROLE LOGIN NOREPLICATION;
    END IF;
END
$$;
GRANT supabase_storage_admin TO postgres;
CREATE SCHEMA IF NOT EXISTS storage AUTHORIZATION supabase_admin;
GRANT ALL ON SCHEMA storage TO supabase_storage_admin;
GRANT USAGE ON SCHEMA storage TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA storage GRANT ALL ON TABLES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA storage GRANT ALL ON FUNCTIONS TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA storage GRANT ALL ON SEQUENCES TO postgres, anon, authenticated, service_role;
"""

# Run by the superuser once the server has migrated: what it created in schema storage goes to
# supabase_storage_admin (tables take their indexes, row types and owned sequences with them).
_OWNERSHIP = """
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.oid::regclass AS name FROM pg_class c
              WHERE c.relnamespace = 'storage'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                AND c.relowner <> 'supabase_storage_admin'::regrole
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO supabase_storage_admin', r.name);
    END LOOP;
    FOR r IN SELECT c.oid::regclass AS name FROM pg_class c
              WHERE c.relnamespace = 'storage'::regnamespace AND c.relkind = 'S'
                AND c.relowner <> 'supabase_storage_admin'::regrole
                AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                  AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
    LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNER TO supabase_storage_admin', r.name);
    END LOOP;
    FOR r IN SELECT p.oid::regprocedure AS name FROM pg_proc p
              WHERE p.pronamespace = 'storage'::regnamespace AND p.proowner <> 'supabase_storage_admin'::regrole
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO supabase_storage_admin', r.name);
    END LOOP;
    FOR r IN SELECT t.oid::regtype AS name FROM pg_type t
              WHERE t.typnamespace = 'storage'::regnamespace AND t.typowner <> 'supabase_storage_admin'::regrole
                AND t.typelem = 0 AND t.typtype IN ('e', 'd', 'r', 'm', 'b')
    LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO supabase_storage_admin', r.name);
    END LOOP;
END
$$;
"""

_LEFT_TO_SUPERUSER = """
SELECT 'relation ' || c.oid::regclass::text FROM pg_class c
 WHERE c.relnamespace = 'storage'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND c.relowner <> 'supabase_storage_admin'::regrole
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text FROM pg_proc p
 WHERE p.pronamespace = 'storage'::regnamespace AND p.proowner <> 'supabase_storage_admin'::regrole
"""


class StorageServerError(RuntimeError):
    """The Storage server did not build or start; the message ends with its log's tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def prepare(log: Path) -> Path:
    """Build the server once per snapshot (cached); its directory. Done apart from start so that its minute
    of npm does not count against the start timeout."""
    try:
        with log.open("ab") as out:
            result = subprocess.run(
                ["bash", str(STORAGE_DIR / "prepare.sh")],
                stdout=subprocess.PIPE,
                stderr=out,
                timeout=PREPARE_TIMEOUT,
                check=False,
            )
    except subprocess.TimeoutExpired:
        raise StorageServerError(f"prepare.sh ran past {PREPARE_TIMEOUT:.0f} s; {log}:\n{log_tail(log)}") from None
    if result.returncode != 0:
        raise StorageServerError(f"{STORAGE_DIR / 'prepare.sh'} failed ({result.returncode}); {log}:\n{log_tail(log)}")
    return Path(result.stdout.decode().strip().splitlines()[-1])


class StorageServer:
    """One Storage API server process (``start.sh``), stopped by its process group."""

    def __init__(self, *, database_url: str, jwt_secret: str, workdir: Path, port: int | None = None) -> None:
        self.database_url = database_url
        self.jwt_secret = jwt_secret
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log = workdir / "storage.log"
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server itself, which serves at ``/`` (a Supabase gateway strips ``/storage/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        prepare(self.log)
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "PORT": str(self.port),
            "DATA_DIR": str(self.data_dir),
            "JWT_SECRET": self.jwt_secret,
            "DB_SUPER_USER": "supabase_storage_admin",
            "DB_INSTALL_ROLES": "false",
        }
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                ["bash", str(STORAGE_DIR / "start.sh")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: stop() ends node with it
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    self.fail(f"the Storage server exited with {self.process.returncode} before it was ready")
                try:
                    if client.get(f"{self.url}/status").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        self.fail(f"the Storage server did not answer GET /status with 200 within {START_TIMEOUT:.0f} s")

    def fail(self, reason: str) -> None:
        self.stop()
        raise StorageServerError(f"{reason}; {self.log}:\n{log_tail(self.log)}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=STOP_TIMEOUT)
                return
            except subprocess.TimeoutExpired:
                continue


@dataclass(frozen=True)
class StorageStack:
    """A hosted-like database with Supabase Storage and dhgq's migrations, and the running Storage server."""

    database_url: str  # the project role (postgres), as users and dhgq connect
    superuser_url: str  # supabase_admin
    authenticator_url: str  # what PostgREST logs in as
    storage_url: str  # the Storage server itself, at / (no /storage/v1 prefix)
    jwt_secret: str
    log: Path
    bucket: str = BUCKET

    def anon_key(self) -> str:
        return tokens.anon_key(self.jwt_secret)

    def service_key(self) -> str:
        return tokens.service_key(self.jwt_secret)

    def user_token(self, user_id: uuid.UUID | str) -> str:
        return tokens.user_token(self.jwt_secret, user_id)

    def expired_token(self, user_id: uuid.UUID | str) -> str:
        return tokens.expired_user_token(self.jwt_secret, user_id)

    def new_user(self, email: str | None = None) -> uuid.UUID:
        """A row in auth.users (what signing up makes), so that a request's user_id may refer to it."""
        user_id = uuid.uuid4()
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO auth.users (id, aud, role, email) VALUES (%s, 'authenticated', 'authenticated', %s)",
                (user_id, email or f"{user_id}@example.test"),
            )
        return user_id

    def storage(self, token: str | None = None) -> SyncStorageClient:
        """storage3 straight at the server, with ``token`` (the anon key when None) as supabase-js sends it."""
        bearer = token or self.anon_key()
        return SyncStorageClient(
            self.storage_url + "/", {"apikey": self.anon_key(), "Authorization": f"Bearer {bearer}"}
        )


def _setup_storage_schema(superuser_url: str) -> None:
    with psycopg.connect(superuser_url, autocommit=True) as conn:
        conn.execute(_SETUP)


def _hand_storage_to_its_admin(superuser_url: str) -> None:
    with psycopg.connect(superuser_url, autocommit=True) as conn:
        conn.execute(_OWNERSHIP)
        left = [row[0] for row in conn.execute(_LEFT_TO_SUPERUSER)]
    if left:
        raise StorageServerError(f"not owned by supabase_storage_admin after the hand-over: {', '.join(left)}")


def _check_dhgq_policies(superuser_url: str) -> None:
    """dhgq's storage migration warns (and creates nothing) where the project role may not: fail loudly here."""
    with psycopg.connect(superuser_url, autocommit=True) as conn:
        found = {
            row[0]
            for row in conn.execute(
                "SELECT policyname FROM pg_policies WHERE schemaname = 'storage' AND tablename = 'objects'"
            )
        }
        bucket = conn.execute("SELECT public FROM storage.buckets WHERE id = %s", (BUCKET,)).fetchone()
    missing = [name for name in DHGQ_POLICIES if name not in found]
    if missing or bucket is None:
        raise StorageServerError(
            f"dhgq's migration 20261130000300_storage_policies.sql, run as the project role, left out "
            f"{missing or 'nothing'} (bucket {BUCKET!r}: {'missing' if bucket is None else 'present'})"
        )


@contextmanager
def running_storage(
    *, project_url: str, superuser_url: str, authenticator_url: str, workdir: Path
) -> Iterator[StorageStack]:
    """Storage on the (hosted-like, unmigrated) database, then dhgq's migrations; the server stops after."""
    secret = secrets.token_urlsafe(48)  # HS256 wants at least 32 characters
    _setup_storage_schema(superuser_url)
    server = StorageServer(database_url=superuser_url, jwt_secret=secret, workdir=workdir)
    server.start()
    try:
        _hand_storage_to_its_admin(superuser_url)
        migrations.migrate(project_url)
        _check_dhgq_policies(superuser_url)
        yield StorageStack(
            database_url=project_url,
            superuser_url=superuser_url,
            authenticator_url=authenticator_url,
            storage_url=server.url,
            jwt_secret=secret,
            log=server.log,
        )
    finally:
        server.stop()
