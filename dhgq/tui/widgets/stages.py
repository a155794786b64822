"""Per-stage counts: queued, processing, completed, failed, and completions in the last 5 minutes."""

from __future__ import annotations

from rich import box
from rich.table import Table
from textual.widgets import Static

from dhgq.status import StageCount


class StagePanel(Static):
    def show(self, stages: tuple[StageCount, ...]) -> None:
        table = Table(box=box.SIMPLE_HEAD, expand=True, padding=(0, 1), show_edge=False)
        table.add_column("stage")
        for name, style in (
            ("queued", "cyan"),
            ("processing", "yellow"),
            ("completed", "green"),
            ("failed", "red"),
            ("done 5 min", ""),
        ):
            table.add_column(name, justify="right", style=style)
        for s in stages:
            table.add_row(
                s.stage,
                str(s.queued),
                str(s.processing),
                str(s.completed),
                str(s.failed),
                f"{s.completed_last_5_min} ({s.completed_last_5_min / 5:.1f}/min)",
            )
        self.update(table)
