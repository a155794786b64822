"""Functions for model-host tests: module-level, so they travel to the host's child by name."""

from __future__ import annotations

import os
import time
from typing import Any

from dhgq.runner import report_progress


def sleep_and_report(settings: Any, seconds: float, steps: int = 4) -> int:
    """Report progress ``steps`` times over ``seconds``, then return the child's pid."""
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        report_progress(step * 10.0, steps * 10.0)
    return os.getpid()


def child_pid(settings: Any) -> int:
    return os.getpid()
