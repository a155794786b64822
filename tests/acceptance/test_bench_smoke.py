"""The benchmark harness runs end to end at tiny sizes (figures are not checked: benchmarks are not tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_smoke_run_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    command = [sys.executable, "-m", "bench", "--smoke", "--only", "queue,dispatch", "--skip-bullmq", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]
    report = out.read_text()
    for heading in ("## Machine", "## Queue overhead", "## Dispatch latency", "## Media stages", "## Scale"):
        assert heading in report
    assert "| dhgq (stage rows, triggers, fan-in) |" in report
    assert "| plain Procrastinate (no stage rows) |" in report
    assert "pgbench ceiling" in report
    assert "stage commit → next stage start p50" in report
    assert "_Not run this time" in report  # media and scale were left out
    # BullMQ is left out here: once, in a CI-like run, its contender hung on shutdown (not reproduced since).
    assert "skipped: left out of this run (--skip-bullmq)" in report


def test_report_keeps_sections_other_tools_wrote(tmp_path: Path) -> None:
    from bench.report import write

    path = tmp_path / "benchmarks.md"
    theirs = "<!-- dhgq eval: begin -->\n## Accuracy on real recordings\n\n| WER |\n<!-- dhgq eval: end -->\n"
    path.write_text("# Benchmarks\n\nold figures\n\n" + theirs)
    write(path, "# Benchmarks\n\nnew figures\n")
    text = path.read_text()
    assert "new figures" in text and "old figures" not in text
    assert text.count(theirs) == 1
