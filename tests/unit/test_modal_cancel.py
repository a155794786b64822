"""Modal calls that stop billing: spawned, awaited in slices, cancelled on the stage's time limit,
and cancelled by the model host's parent when it kills the child that waited on them.

The FunctionCall is a stand-in (Modal's cloud cannot be reached) that raises what modal's client
raises (``modal/_functions.py``, ``_Invocation.poll_function``: Python's own ``TimeoutError`` while the
call runs, ``OutputExpiredError`` when its output is gone); the waiting loop, the model host and its
child process are the real ones.
"""

from __future__ import annotations

import builtins
import inspect
import time
from pathlib import Path
from typing import Any

import pytest
from modal import exception as mx

from dhgq import gpu
from dhgq.errors import StageCancelled, StageTimeout, TransientError
from dhgq.runner import ModelHost
from dhgq.settings import Settings


class PendingCall:
    """A spawned call that finishes after ``seconds`` (never, when None), as ``FunctionCall.get`` behaves."""

    def __init__(
        self, seconds: float | None, output: Any = None, error: BaseException | None = None, lost: int = 0
    ) -> None:
        self.object_id, self.done_at = "fc-test", None if seconds is None else time.monotonic() + seconds
        self.output, self.error, self.cancels, self.waits, self.lost = output, error, [], [], lost

    def get(self, timeout: float | None = None) -> Any:
        self.waits.append(timeout)
        if self.lost:  # the client lost its connection to Modal for this poll
            self.lost -= 1
            raise mx.ConnectionError("Deadline exceeded")
        if self.done_at is None or time.monotonic() + (timeout or 0) < self.done_at:
            time.sleep(timeout or 0)
            raise TimeoutError()  # as modal 1.x's poll_function: the builtin, not modal.exception.TimeoutError
        time.sleep(max(0.0, self.done_at - time.monotonic()))
        if self.error is not None:
            raise self.error
        return self.output

    def cancel(self, terminate_containers: bool = False) -> None:
        self.cancels.append(terminate_containers)


def test_a_call_is_awaited_in_slices_until_it_answers() -> None:
    call = PendingCall(0.25, output={"ok": 1})
    assert gpu.wait_for(call, time.monotonic() + 5, "transcription", poll=0.1) == {"ok": 1}
    assert len(call.waits) >= 2 and all(w <= 0.1 for w in call.waits) and call.cancels == []


def test_a_call_past_the_time_limit_is_cancelled() -> None:
    call = PendingCall(None)
    started = time.monotonic()
    with pytest.raises(StageTimeout, match="cancelled"):
        gpu.wait_for(call, time.monotonic() + 0.3, "diarization", poll=0.1)
    assert time.monotonic() - started < 2 and call.cancels == [True]


def test_the_stand_in_raises_what_modal_raises_while_a_call_runs() -> None:
    """modal's poll_function raises ``TimeoutError()`` with no such name imported: Python's own class."""
    import modal._functions as functions

    assert "raise TimeoutError()" in inspect.getsource(functions._Invocation.poll_function)
    assert vars(functions).get("TimeoutError", builtins.TimeoutError) is builtins.TimeoutError
    with pytest.raises(builtins.TimeoutError):
        PendingCall(None).get(timeout=0.01)


def test_the_remote_s_own_errors_pass_and_the_call_is_left_cancelled() -> None:
    call = PendingCall(0.0, error=mx.FunctionTimeoutError("the function ran past its timeout"))
    with pytest.raises(mx.FunctionTimeoutError):
        gpu.wait_for(call, time.monotonic() + 5, "transcription", poll=0.1)
    assert call.cancels == [True]  # a no-op on a finished call; never an abandoned one


def test_a_lost_connection_waits_on_the_same_call_again() -> None:
    call = PendingCall(0.3, output={"ok": 2}, lost=2)
    assert gpu.wait_for(call, time.monotonic() + 10, "diarization", poll=0.1) == {"ok": 2}
    assert call.cancels == [] and len(call.waits) >= 3  # re-attached: no second call, nothing cancelled


def test_a_coordinator_is_cancelled_gently_so_it_cancels_its_chunks() -> None:
    call = PendingCall(None)
    with pytest.raises(StageTimeout):
        gpu.wait_for(call, time.monotonic() + 0.2, "transcription", poll=0.1, terminate=False)
    assert call.cancels == [False]


def test_the_cold_start_allowance_is_added_to_model_stages_on_modal() -> None:
    local = Settings(_env_file=None, gpu_backend="local")
    modal = Settings(_env_file=None, gpu_backend="modal", modal_cold_start_seconds=240)
    assert local.stage_timeout(60) == 120 + 2 * 60
    assert modal.stage_timeout(60) == 120 + 2 * 60 + 240
    assert modal.stage_timeout(None) == local.stage_timeout(None) == 120  # extraction: no GPU, no allowance


# ---- the model host: its parent cancels what a killed child started ---------------------------------


def stop_remote(marker: str) -> None:
    """Run in the parent after it killed the child: records that the remote work was stopped."""
    Path(marker).write_text("cancelled")


def start_remote_then_hang(settings: Settings, marker: str) -> None:
    """In the child: report remote work, as ``wait_for`` does, then wait on it forever."""
    from dhgq.runner import report_remote_work

    report_remote_work(stop_remote, marker)
    time.sleep(600)


def start_remote_and_finish(settings: Settings, marker: str) -> str:
    from dhgq.runner import report_remote_work

    report_remote_work(stop_remote, marker)
    report_remote_work(None)
    return "done"


@pytest.fixture
def host() -> Any:
    host = ModelHost("dhgq-test-remote", Settings(_env_file=None))
    yield host
    host.kill()


def test_a_timed_out_host_cancels_its_remote_call(host: ModelHost, tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    with pytest.raises(StageTimeout):
        host.call(start_remote_then_hang, 3.0, marker=str(marker))
    assert marker.read_text() == "cancelled"


def test_a_cancelled_job_cancels_the_remote_call(host: ModelHost, tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    stop_at = time.monotonic() + 2.0
    with pytest.raises(StageCancelled):
        host.call(start_remote_then_hang, 60.0, should_stop=lambda: time.monotonic() > stop_at, marker=str(marker))
    assert marker.read_text() == "cancelled"


def test_a_finished_call_leaves_nothing_to_cancel(host: ModelHost, tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    assert host.call(start_remote_and_finish, 30.0, marker=str(marker)) == "done"
    host.kill()
    assert not marker.exists()


def test_cancel_failures_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    class Unreachable:
        object_id = "fc-gone"

        def cancel(self, terminate_containers: bool = False) -> None:
            raise TransientError("Modal unreachable")

    gpu.cancel_call(Unreachable())
    assert "fc-gone" in caplog.text
