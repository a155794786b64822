"""The embedded PostgreSQL server dhgq starts when no ``DHGQ_DATABASE_URL`` is set.

It is a real server (Debian's or any other PostgreSQL binaries on the machine, else the ones
shipped in the ``pgserver`` wheel), kept under ``DHGQ_HOME/pg`` and left running between dhgq
processes: the first process starts it, the next ones find it and reuse it. A file lock makes
starting safe from several processes at once. PostgreSQL refuses to run as root, so as root the
server runs as an unprivileged system user.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dhgq.errors import ConfigurationError, DatabaseUnavailable

DATABASE_NAME = "dhgq"
SUPERUSER = "postgres"
SERVICE_USERS = ("postgres", "dhgq")


@dataclass(frozen=True)
class ServerInfo:
    """Where a running embedded server listens."""

    data_dir: Path
    port: int
    pid: int | None
    bin_dir: Path

    def url(self, database: str = DATABASE_NAME) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"


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
        "no PostgreSQL server binaries found: install PostgreSQL 15+ or the pgserver wheel, "
        "or set DHGQ_DATABASE_URL"
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
    """Start, find and stop the server that lives in ``home/pg``."""

    def __init__(self, home: Path, bin_dir: Path | None = None) -> None:
        self.home = home
        self.root = home / "pg"
        self.data_dir = self.root / "data"
        self.state_file = self.root / "server.json"
        self.log_file = self.root / "server.log"
        self._bin_dir = bin_dir

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_bin_dir()
        return self._bin_dir

    def status(self) -> ServerInfo | None:
        """The running server, or None when it is not running."""
        state = self._read_state()
        pid = self._postmaster_pid()
        if state is None or pid is None or not _pid_alive(pid):
            return None
        if not _port_open(state["port"]):
            return None
        return ServerInfo(self.data_dir, state["port"], pid, Path(state["bin_dir"]))

    def start(self, timeout: float = 60.0) -> ServerInfo:
        """Start the server unless it runs already; safe to call from many processes at once."""
        with self._lock():
            running = self.status()
            if running:
                return running
            user = _service_user()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(user)
            elif user is not None:
                _make_traversable(self.root, user)  # a parent's mode may have changed since initdb
            previous = (self._read_state() or {}).get("port")
            port = previous if previous and not _port_open(previous) else _free_port()
            self._run(
                [str(self.bin_dir / "pg_ctl"), "start", "-D", str(self.data_dir), "-l", str(self.log_file),
                 "-w", "-t", str(int(timeout)),
                 "-o", f"-p {port} -k {self.data_dir} -c listen_addresses=127.0.0.1"],
                user, "start the embedded PostgreSQL server",
            )
            self.state_file.write_text(json.dumps({"port": port, "bin_dir": str(self.bin_dir)}))
            self._create_database(port)
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
            self._run([str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w"],
                      user, "stop the embedded PostgreSQL server")
            return True

    def _initdb(self, user: pwd.struct_passwd | None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _make_traversable(self.root, user)
        self._run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "-A", "trust",
             "-E", "UTF8", "--no-instructions"],
            user, "initialise the embedded PostgreSQL data directory",
        )

    def _create_database(self, port: int) -> None:
        import psycopg

        with psycopg.connect(ServerInfo(self.data_dir, port, None, self.bin_dir).url("postgres"),
                             autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')

    def _run(self, cmd: list[str], user: pwd.struct_passwd | None, what: str) -> None:
        if user is not None:  # the binaries may sit in a venv below a private directory
            _allow_traversal(Path(cmd[0]).parent)
        result = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_demote(user),
                                cwd=str(self.root), env={**os.environ, "LC_ALL": "C.UTF-8"})
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
            raise DatabaseUnavailable(f"could not {what}: {detail[0]} (log: {self.log_file})")

    def _read_state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError, PermissionError):
            return None

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "server.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


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
    """Let the service user reach ``path``: own it, and allow traversal (x only) of its parents."""
    os.chown(path, user.pw_uid, user.pw_gid)
    _allow_traversal(path.parent)


def _allow_traversal(path: Path) -> None:
    """Add search permission (x only, no listing) for others on ``path`` and its parents."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)


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
