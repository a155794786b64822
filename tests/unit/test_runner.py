"""Model hosts: a call that is cancelled stops within a second and frees its process; progress the
function reports reaches the caller; a stopped host is replaced by a fresh one on the next call."""

from __future__ import annotations

import os
import time

import pytest

from dhgq.errors import StageCancelled, StageTimeout
from dhgq.runner import ModelHost
from dhgq.settings import Settings
from tests.support.host_functions import child_pid, sleep_and_report


@pytest.fixture
def host() -> ModelHost:
    return ModelHost("dhgq-test", Settings(_env_file=None, database_url="postgresql://unused/none"))  # type: ignore[call-arg]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_progress_reaches_the_caller(host: ModelHost) -> None:
    seen: list[tuple[float, float]] = []
    pid = host.call(sleep_and_report, 30, on_progress=lambda done, total: seen.append((done, total)), seconds=0.4)
    assert seen == [(10.0, 40.0), (20.0, 40.0), (30.0, 40.0), (40.0, 40.0)]
    assert host.call(child_pid, 30) == pid  # the same process serves the next call: models stay loaded
    host.kill()


def test_a_cancelled_call_stops_its_process_within_a_second(host: ModelHost) -> None:
    pid = host.call(child_pid, 30)
    cancel_at = time.monotonic() + 1.0
    started = time.monotonic()
    with pytest.raises(StageCancelled, match="cancelled"):
        host.call(sleep_and_report, 60, should_stop=lambda: time.monotonic() > cancel_at, seconds=30)
    assert time.monotonic() - started < 2.5
    assert not alive(pid)
    assert host.call(child_pid, 30) != pid  # a fresh process for the next job
    host.kill()


def test_a_call_past_its_limit_is_stopped(host: ModelHost) -> None:
    with pytest.raises(StageTimeout, match="limit"):
        host.call(sleep_and_report, 1.0, seconds=30)
    host.kill()
