"""Heavy work in processes that can be stopped: a long-lived child per slot keeps models loaded.

Procrastinate runs sync tasks in threads, and a thread cannot be killed, so a model call that runs
past its stage timeout would hold a slot forever. Here each call goes to a child process; the
child keeps whatever models it loaded (``lru_cache`` in the engines) across jobs, and a call that
times out kills the child, which is started afresh on the next call.

A call names a module-level function (it travels pickled, by its qualified name), so an editor
follows a task to the code its host runs. The child is started with the worker's Settings and
passes them to every function as its first argument: one Settings object, built once.

Work the child starts elsewhere (a Modal call, billed while it runs) would outlive a killed child,
so the child tells the parent how to stop it (``report_remote_work``): a module-level function and
its argument, which the parent calls after it kills the child for a timeout or a cancel.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from dhgq.errors import StageCancelled, StageTimeout, TransientError
from dhgq.media.types import Progress
from dhgq.settings import Settings

logger = logging.getLogger(__name__)
_SPAWN = multiprocessing.get_context("spawn")
Result = TypeVar("Result")
HostFunction = Callable[..., Result]  # called as function(settings, **kwargs) in the child


_reporter: Progress | None = None  # the child's link to its parent, while a call runs
_conn: Connection | None = None
Stopper = tuple[Callable[[str], Any], str]  # (module-level function, its argument): stops remote work


def report_progress(done_seconds: float, total_seconds: float) -> None:
    """From inside a host function: tell the parent how far the work is (a no-op outside a model host)."""
    if _reporter is not None:
        _reporter(done_seconds, total_seconds)


def report_remote_work(stop: Callable[[str], Any] | None, argument: str = "") -> None:
    """From inside a host function: ``stop(argument)`` ends work started elsewhere, should this child be
    killed before it returns (None: nothing to stop any more). A no-op outside a model host."""
    if _conn is not None:
        _conn.send(("remote", (stop, argument) if stop is not None else None))


def _child_main(conn: Connection, settings: Settings) -> None:
    """The child's loop: call what it is asked, send back progress, then the value or the exception."""
    global _reporter, _conn
    _reporter = lambda done, total: conn.send(("progress", (float(done), float(total))))  # noqa: E731
    _conn = conn
    while True:
        try:
            function, kwargs = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        try:
            conn.send(("done", True, function(settings, **kwargs)))
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
            try:
                conn.send(("done", False, exc))
            except Exception:  # an exception that does not pickle
                conn.send(("done", False, TransientError(f"{type(exc).__name__}: {exc}")))


class ModelHost:
    """One child process and the pipe to it."""

    POLL_SECONDS = 0.5  # how often a running call checks whether it should stop

    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._remote: Stopper | None = None  # what the running call started elsewhere

    def _ensure_started(self) -> Connection:
        if self._process is None or not self._process.is_alive() or self._conn is None:
            parent, child = _SPAWN.Pipe()
            self._process = _SPAWN.Process(target=_child_main, args=(child, self.settings), name=self.name, daemon=True)
            self._process.start()
            child.close()
            self._conn = parent
        return self._conn

    def call(
        self,
        function: HostFunction[Result],
        timeout: float,
        *,
        should_stop: Callable[[], bool] | None = None,
        on_progress: Progress | None = None,
        **kwargs: Any,
    ) -> Result:
        """Run ``function(settings, **kwargs)`` in the child.

        StageTimeout after ``timeout`` seconds; StageCancelled within POLL_SECONDS of ``should_stop()``
        turning true (the job was cancelled): either way the child is killed, so the work stops and the
        next call starts a fresh one. Progress the function reports reaches ``on_progress``.
        """
        conn = self._ensure_started()
        conn.send((function, kwargs))
        deadline = time.monotonic() + timeout
        self._remote = None
        while True:
            if not conn.poll(min(self.POLL_SECONDS, max(0.0, deadline - time.monotonic()))):
                if should_stop is not None and should_stop():
                    self.kill()
                    raise StageCancelled(f"{function.__name__} was cancelled and its model process stopped")
                if time.monotonic() >= deadline:
                    self.kill()
                    raise StageTimeout(f"{function.__name__} ran past its {timeout:.0f} s limit and was stopped")
                continue
            try:
                message = conn.recv()
            except EOFError:
                self.kill()
                raise TransientError(f"the model process died while running {function.__name__}") from None
            if message[0] == "progress":
                if on_progress is not None:
                    on_progress(*message[1])
                continue
            if message[0] == "remote":
                self._remote = message[1]
                continue
            self._remote = None
            _, ok, value = message
            if ok:
                return value  # type: ignore[no-any-return]
            raise value

    def stop(self, timeout: float = 10.0) -> None:
        """End an idle child the way it ends by itself: its pipe closes, its loop returns, and its exit
        runs the finalizers that unlink what it made (tqdm's and torch's multiprocessing locks). A
        killed child cannot, and the resource tracker then warns of leaked semaphores at the parent's
        exit. A child that does not end in ``timeout`` seconds is killed."""
        process, conn = self._process, self._conn
        if process is not None and process.is_alive() and conn is not None and self._remote is None:
            conn.close()
            process.join(timeout)
        self.kill()

    def kill(self) -> None:
        """Kill the child, then stop the remote work it reported and had not finished."""
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None
        remote, self._remote = self._remote, None
        if remote is not None:
            stop, argument = remote
            try:
                stop(argument)
            except Exception as exc:  # noqa: BLE001 - best effort: the stage fails or is cancelled either way
                logger.warning("could not stop the remote work of %s (%s): %s", self.name, argument, exc)


class ModelPool:
    """A fixed number of model hosts for one stage, one per concurrent job."""

    def __init__(self, name: str, size: int, settings: Settings) -> None:
        self._idle: queue.Queue[ModelHost] = queue.Queue()
        self._all = [ModelHost(f"dhgq-{name}-{i}", settings) for i in range(size)]
        for host in self._all:
            self._idle.put(host)
        self._lock = threading.Lock()

    def call(
        self,
        function: HostFunction[Result],
        timeout: float,
        *,
        should_stop: Callable[[], bool] | None = None,
        on_progress: Progress | None = None,
        **kwargs: Any,
    ) -> Result:
        host = self._idle.get()
        try:
            return host.call(function, timeout, should_stop=should_stop, on_progress=on_progress, **kwargs)
        finally:
            self._idle.put(host)

    def warm(self, function: HostFunction[Any], timeout: float = 600.0, **kwargs: Any) -> None:
        """Load models in one host ahead of the first job (numba and model loading take a while)."""
        try:
            self.call(function, timeout, **kwargs)
        except Exception as exc:  # warming is best effort; the job will report a real failure
            logger.warning("warm-up of %s failed: %s", function.__name__, exc)

    def close(self) -> None:
        """Stop every host; an idle one ends by itself, a busy one (a worker stopped mid-job) is killed."""
        for host in self._all:
            host.stop()
