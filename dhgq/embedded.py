"""The embedded PostgreSQL server dhgq starts when no ``DHGQ_DATABASE_URL`` is set.

It is a real server (Debian's or any other PostgreSQL binaries on the machine, else the ones
shipped in the ``pgserver`` wheel), kept under ``DHGQ_HOME/pg`` and left running between dhgq
processes: the first process starts it, the next ones find it and reuse it. A file lock makes
starting safe from several processes at once. PostgreSQL refuses to run as root, so as root the
server runs as an unprivileged system user, which reaches ``DHGQ_HOME/pg`` (0700, its own) through
an ACL entry for it alone on the parents it could not pass (``dhgq/traversal.py``): no parent of
DHGQ_HOME is opened to the machine's other accounts.

Every connection needs the superuser's password (scram-sha-256): initdb sets a random one, kept in
``DHGQ_HOME/pg/password`` (mode 0600, readable by the user running dhgq only), so other users of the
machine cannot connect as the superuser. Data directories made by older versions with ``trust`` are
switched over on their next ``start()``.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from dhgq.errors import ConfigurationError, DatabaseUnavailable
from dhgq.traversal import grant_traversal

if TYPE_CHECKING:
    import psycopg

DATABASE_NAME = "dhgq"
SUPERUSER = "postgres"
SERVICE_USERS = ("postgres", "dhgq")
PRIVATE_DIR = 0o700
AUTH_METHOD = "scram-sha-256"


@dataclass(frozen=True)
class ServerInfo:
    """Where a running embedded server listens, and the superuser's credentials (the password kept out of repr)."""

    data_dir: Path
    port: int
    pid: int | None
    bin_dir: Path
    user: str
    password: str = field(repr=False)

    def url(self, database: str = DATABASE_NAME) -> str:
        """A libpq URL with the credentials in it: the server asks every client for the password."""
        auth = quote(self.user, safe="")
        if self.password:  # empty only for a data directory still on trust, before start() upgrades it
            auth += ":" + quote(self.password, safe="")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(database, safe='')}"


def find_bin_dir() -> Path:
    """PostgreSQL binaries: the newest on the machine, else those of the ``pgserver`` wheel."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    wheel = _pgserver_bin_dir()
    if wheel is not None:
        return wheel
    raise ConfigurationError(
        "no PostgreSQL server binaries found: install PostgreSQL 15+ or the pgserver wheel, or set DHGQ_DATABASE_URL"
    )


def _pgserver_bin_dir() -> Path | None:
    """The PostgreSQL build inside the ``pgserver`` wheel, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        return None
    directory = Path(spec.origin).parent / "pginstall" / "bin"
    return directory if (directory / "initdb").exists() else None


def _version_key(path: Path) -> float:
    try:
        return float(path.parent.name)
    except ValueError:
        return 0.0


class EmbeddedServer:
    """Start, find and stop the server that lives in ``home/pg``.

    ``superuser`` names the superuser of a new data directory (hosted Supabase calls it ``supabase_admin``, so
    that an ordinary role ``postgres`` can exist). It is recorded in ``server.json``: later objects made with the
    default find the data directory's own name there.
    """

    def __init__(self, home: Path, bin_dir: Path | None = None, *, superuser: str = SUPERUSER) -> None:
        self.home = home
        self.root = home / "pg"
        self.data_dir = self.root / "data"
        self.state_file = self.root / "server.json"
        self.log_file = self.root / "server.log"
        self.password_file = self.root / "password"
        self._bin_dir = bin_dir
        self._requested_superuser = superuser

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_bin_dir()
        return self._bin_dir

    @property
    def superuser(self) -> str:
        """The data directory's superuser: the one asked for until initdb ran, then the one it recorded."""
        if not (self.data_dir / "PG_VERSION").exists():
            return self._requested_superuser
        return str((self._read_state() or {}).get("superuser", SUPERUSER))  # unrecorded: made before the option

    def status(self) -> ServerInfo | None:
        """The running server, or None when it is not running."""
        state = self._read_state()
        pid = self._postmaster_pid()
        if state is None or pid is None or not _pid_alive(pid):
            return None
        if not _port_open(state["port"]):
            return None
        return self._info(state["port"], pid, Path(state["bin_dir"]))

    def start(self, timeout: float = 60.0) -> ServerInfo:
        """Start the server unless it runs already; safe to call from many processes at once."""
        with self._lock():
            self._check_superuser()
            if self.status() is None:
                self._launch(_service_user(), timeout)
            if self._hba_trusts():
                self._require_password()
            info = self.status()
            if info is None:
                raise DatabaseUnavailable(f"embedded PostgreSQL did not start; see {self.log_file}")
            return info

    def stop(self) -> bool:
        """Stop the server (fast shutdown); False when it was not running."""
        with self._lock():
            if self.status() is None:
                return False
            user = _service_user()
            if user is not None:
                _make_traversable(self.root, user)
            self._run(
                [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w"],
                user,
                "stop the embedded PostgreSQL server",
            )
            return True

    def _info(self, port: int, pid: int | None, bin_dir: Path) -> ServerInfo:
        return ServerInfo(self.data_dir, port, pid, bin_dir, self.superuser, self._read_password())

    def _check_superuser(self) -> None:
        """A superuser asked for by name that the existing data directory does not have is an error, not a guess."""
        actual = self.superuser
        if self._requested_superuser not in (SUPERUSER, actual):
            raise ConfigurationError(
                f"the embedded server in {self.root} was created with superuser {actual!r}, "
                f"not {self._requested_superuser!r}"
            )

    def _launch(self, user: pwd.struct_passwd | None, timeout: float) -> None:
        """initdb when there is no data directory yet, then pg_ctl start, on the previous port while it is free."""
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(user)
        elif user is not None:
            _make_traversable(self.root, user)  # a parent's mode may have changed since initdb
        previous = (self._read_state() or {}).get("port")
        port = previous if previous and not _port_open(previous) else _free_port()
        self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(int(timeout)),
                "-o",
                f"-p {port} -k {self.data_dir} -c listen_addresses=127.0.0.1",
            ],
            user,
            "start the embedded PostgreSQL server",
        )
        self._write_state(port=port, bin_dir=str(self.bin_dir), superuser=self.superuser)
        self._create_database(port)

    def _initdb(self, user: pwd.struct_passwd | None) -> None:
        """A new data directory whose superuser has a random password (stored first: a crash leaves no orphan)."""
        _private_dirs(self.root)
        if user is not None:
            _make_traversable(self.root, user)
        password = secrets.token_urlsafe(24)
        _write_private(self.password_file, password)
        self._write_state(superuser=self._requested_superuser)
        with self._pwfile(password, user) as pwfile:
            self._run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self._requested_superuser,
                    f"--auth={AUTH_METHOD}",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ],
                user,
                "initialise the embedded PostgreSQL data directory",
            )

    @contextmanager
    def _pwfile(self, password: str, user: pwd.struct_passwd | None) -> Iterator[Path]:
        """The password for initdb, in a file the service user alone can read, deleted right after."""
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".initdb-pwfile-")
        try:
            with os.fdopen(fd, "w") as handle:
                if user is not None:
                    os.fchown(handle.fileno(), user.pw_uid, user.pw_gid)
                handle.write(password + "\n")
            yield Path(name)
        finally:
            Path(name).unlink(missing_ok=True)

    def _create_database(self, port: int) -> None:
        from psycopg import sql

        with _connect(self._info(port, None, self.bin_dir), "postgres", "create the dhgq database") as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))

    def _hba_trusts(self) -> bool:
        """Whether pg_hba.conf still lets clients in without a password (a data directory from before passwords)."""
        try:
            text = (self.data_dir / "pg_hba.conf").read_text()
        except FileNotFoundError:
            return False
        return _without_trust(text) != text

    def _require_password(self) -> None:
        """Upgrade a running server made with trust: give the superuser a password, then make pg_hba.conf ask for it.

        Each step can be repeated, so a crash half-way is mended by the next start (pg_hba.conf still trusts).
        """
        password = self._read_password()
        if not password:
            _write_private(self.password_file, secrets.token_urlsafe(24))
        info = self.status()
        if info is None:
            raise DatabaseUnavailable(f"embedded PostgreSQL is not running; see {self.log_file}")
        with _connect(info, "postgres", "set the embedded server's superuser password") as conn:
            _set_password(conn, info.user, info.password)
            self._rewrite_hba()
            _reload(conn, info)

    def _rewrite_hba(self) -> None:
        hba = self.data_dir / "pg_hba.conf"
        _write_atomically(hba, _without_trust(hba.read_text()), like=hba.stat())

    def _read_password(self) -> str:
        """The superuser's password; empty for a data directory still on trust (made before passwords)."""
        try:
            fd = os.open(self.password_file, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return ""
        except OSError as exc:
            raise DatabaseUnavailable(
                f"cannot read the embedded server's password in {self.password_file}: {exc.strerror}"
            ) from None
        with os.fdopen(fd) as handle:
            return handle.read().strip()

    def _run(self, cmd: list[str], user: pwd.struct_passwd | None, what: str) -> None:
        if user is not None:  # the binaries may sit in a venv below a private directory
            grant_traversal(Path(cmd[0]).parent, user)
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            preexec_fn=_demote(user),
            cwd=str(self.root),
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
            raise DatabaseUnavailable(f"could not {what}: {detail[0]} (log: {self.log_file})")

    def _read_state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _write_state(self, **values: Any) -> None:
        self.state_file.write_text(json.dumps({**(self._read_state() or {}), **values}))

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError, PermissionError):
            return None

    @contextmanager
    def _lock(self) -> Iterator[None]:
        _private_dirs(self.root)
        with open(self.root / "server.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _connect(info: ServerInfo, database: str, what: str) -> Iterator[psycopg.Connection]:
    """An autocommit superuser connection; its errors become one-line DatabaseUnavailable without the password."""
    import psycopg

    try:
        with psycopg.connect(info.url(database), autocommit=True, connect_timeout=10) as conn:
            yield conn
    except psycopg.Error as exc:
        reason = _one_line(exc, info.password)
        raise DatabaseUnavailable(f"could not {what} on 127.0.0.1:{info.port}: {reason}") from None


def _one_line(exc: BaseException, secret: str) -> str:
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text.replace(secret, "***") if secret else text


def _set_password(conn: psycopg.Connection, role: str, password: str) -> None:
    """Send a SCRAM verifier made here: the plain password reaches neither the server nor its log."""
    from psycopg import sql

    conn.execute("SET password_encryption = 'scram-sha-256'")
    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), AUTH_METHOD.encode()).decode()
    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier)))


def _reload(conn: psycopg.Connection, info: ServerInfo, timeout: float = 10.0) -> None:
    """Reload the configuration and wait until the postmaster has: connections made after it get the new rules.

    pg_reload_conf() only signals the postmaster; a new session's pg_conf_load_time() moves once it has reloaded.
    """
    before = _scalar(conn, "SELECT pg_conf_load_time()")
    conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + timeout
    while True:
        with _connect(info, "postgres", "reload the embedded server's configuration") as probe:
            if _scalar(probe, "SELECT pg_conf_load_time()") > before:
                break
        if time.monotonic() > deadline:
            log = info.data_dir.parent / "server.log"
            raise DatabaseUnavailable(f"embedded PostgreSQL did not reload pg_hba.conf; see {log}")
        time.sleep(0.05)
    if _scalar(conn, "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL OR auth_method = 'trust'"):
        raise DatabaseUnavailable(f"pg_hba.conf in {info.data_dir} still lets clients in without a password")


def _scalar(conn: psycopg.Connection, query: str) -> Any:
    row = conn.execute(query).fetchone()
    return None if row is None else row[0]


def _without_trust(text: str) -> str:
    """pg_hba.conf with every ``trust`` method made scram-sha-256 (comments left as they are)."""
    lines = []
    for line in text.splitlines(keepends=True):
        rule, hash_, comment = line.partition("#")
        lines.append(re.sub(r"(?<!\S)trust(?!\S)", AUTH_METHOD, rule) + hash_ + comment)
    return "".join(lines)


def _write_private(path: Path, text: str) -> None:
    """A file only the user running dhgq can read (mode 0600), replaced at once: readers see all of it or none."""
    _write_atomically(path, text)


def _write_atomically(path: Path, text: str, *, like: os.stat_result | None = None) -> None:
    """Write through a temporary file (mode 0600, or the mode and owner of ``like``) renamed over ``path``."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            if like is not None:
                os.fchmod(handle.fileno(), stat.S_IMODE(like.st_mode))
                if os.geteuid() == 0:
                    os.fchown(handle.fileno(), like.st_uid, like.st_gid)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _service_user() -> pwd.struct_passwd | None:
    """As root, the unprivileged account the server runs as (created when none exists)."""
    if os.geteuid() != 0:
        return None
    for name in SERVICE_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "dhgq"], check=True, capture_output=True)
    return pwd.getpwnam("dhgq")


def _make_traversable(path: Path, user: pwd.struct_passwd) -> None:
    """Let the service user reach ``path``: own it (0700), and pass through its parents, it alone (an ACL
    entry where it could not: dhgq/traversal.py); no parent is opened to other users."""
    os.chown(path, user.pw_uid, user.pw_gid)
    path.chmod(PRIVATE_DIR)
    grant_traversal(path.parent, user)


def _private_dirs(path: Path) -> None:
    """``path`` and the parents it lacks, created for their owner only (0700)."""
    for directory in reversed([p for p in (path, *path.parents) if not p.exists()]):
        directory.mkdir(mode=PRIVATE_DIR, exist_ok=True)


def _demote(user: pwd.struct_passwd | None) -> Callable[[], None] | None:
    if user is None:
        return None

    def switch() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return switch


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_accepting(url: str, timeout: float = 30.0) -> None:
    """Block until the server accepts connections (after a restart, for example)."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
