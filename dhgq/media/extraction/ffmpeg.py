"""Locating and running the ffmpeg tools.

Debian's ffmpeg (with ffprobe) is preferred because it is what the system packages keep up to
date; imageio-ffmpeg's bundled static binary is the fallback so a bare ``pip install`` still
works. That bundle has no ffprobe, so ``ffprobe_binary()`` may return ``None`` and callers
probe with PyAV instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from dhgq.errors import PermanentError, StageTimeout


@dataclass(frozen=True)
class Completed:
    """What a finished ffmpeg/ffprobe run left: its exit status and both outputs."""

    returncode: int
    stdout: bytes
    stderr: str


@lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    """The ffmpeg executable: the one on PATH, else imageio-ffmpeg's bundled binary."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise PermanentError("ffmpeg is not installed: apt-get install ffmpeg or pip install imageio-ffmpeg") from exc
    return str(imageio_ffmpeg.get_ffmpeg_exe())


@lru_cache(maxsize=1)
def ffprobe_binary() -> str | None:
    """ffprobe on PATH or beside the chosen ffmpeg; ``None`` when only the bundled ffmpeg exists."""
    found = shutil.which("ffprobe")
    if found:
        return found
    sibling = Path(ffmpeg_binary()).with_name("ffprobe")
    return str(sibling) if sibling.is_file() and os.access(sibling, os.X_OK) else None


def ffmpeg_input(path: Path) -> str:
    """A path ffmpeg cannot mistake for an option or a protocol (``-x.mp4``, ``http:a.mp4``)."""
    return "file:" + str(path.resolve())


def run_tool(args: list[str], *, timeout: float | None, file: Path) -> Completed:
    """Run an ffmpeg tool as a subprocess so a timeout can kill it (its whole process group).

    Raises ``StageTimeout`` naming ``file`` when it runs past ``timeout`` seconds.
    """
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise StageTimeout(
            f"{Path(args[0]).name} on {file} ran past its {timeout:.0f} s limit and was stopped",
            file=str(file),
        ) from None
    except BaseException:
        _kill(proc)
        raise
    return Completed(proc.returncode, out, err.decode("utf-8", errors="replace"))


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.communicate()


def last_error_line(stderr: str) -> str:
    """The most telling line of ffmpeg's stderr (its last non-empty one), for error messages."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
