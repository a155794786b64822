"""The markdown that ``python -m bench`` writes: the machine, then one section per benchmark."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Section:
    title: str
    body: str


def skipped(title: str, reason: str) -> Section:
    return Section(title, f"_Skipped: {reason}._\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def ratio(value: float | None, reference: float | None) -> str:
    if value is None or reference is None or reference == 0 or math.isnan(value) or math.isnan(reference):
        return "—"
    return f"{value / reference:.2f}×"


def verdict(met: bool) -> str:
    return "**met**" if met else "**missed**"


def document(command: str, when: str, machine: list[tuple[str, str]], sections: list[Section]) -> str:
    parts = [
        "# Benchmarks\n",
        f"Written by `{command}` on {when}. Every figure comes from that one run on the machine below; "
        "each ratio compares contenders measured in the same run, on the same PostgreSQL server. "
        "Benchmarks are not tests: figures that miss a target are reported as they are.\n",
        "## Machine\n",
        table(("", ""), machine),
    ]
    for section in sections:
        parts += [f"## {section.title}\n", section.body]
    return "\n".join(parts)


# Sections other tools keep in the same file (``dhgq eval --write``), between their own markers.
KEPT = re.compile(r"<!-- (?P<tool>[^>]+?): begin -->.*?<!-- (?P=tool): end -->\n?", re.DOTALL)


def write(path: Path, text: str) -> None:
    """Write the report, keeping the sections other tools put in the file between their markers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = path.read_text(encoding="utf-8") if path.exists() else ""
    kept = [match.group(0).rstrip("\n") + "\n" for match in KEPT.finditer(previous)]
    path.write_text("\n".join([text.rstrip("\n") + "\n", *kept]), encoding="utf-8")
