"""The sources table: one row per source, each stage's status and the whole pipeline's progress."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from dhgq.settings import STAGES
from dhgq.status import SourceRow
from dhgq.status_text import progress_bar, stage_cell, state_text

COLUMNS = (
    ("source", "name", 18),
    ("state", "state", 10),
    ("extract", "extraction", 7),
    ("transcr", "transcription", 7),
    ("diarize", "diarization", 7),
    ("summary", "summarization", 7),
    ("progress", "progress", 11),
)


@dataclass(frozen=True)
class SourceFilter:
    """Which sources the table shows: failed only, stuck at or working on a stage, a text search."""

    failed_only: bool = False
    stage: str | None = None
    text: str = ""

    def matches(self, row: SourceRow) -> bool:
        if self.failed_only and row.state != "failed":
            return False
        if self.stage is not None:
            state = row.stages.get(self.stage)
            if state is None or state.status == "completed":
                return False
            if self.failed_only and state.status != "failed":
                return False
        needle = self.text.lower()
        return (
            not needle
            or needle in row.name.lower()
            or row.source_id.startswith(needle)
            or needle in (row.error or "").lower()
        )

    def next_stage(self) -> str | None:
        order: list[str | None] = [None, *STAGES]
        return order[(order.index(self.stage) + 1) % len(order)]

    def describe(self) -> str:
        parts = ["failed only" if self.failed_only else "all"]
        parts.append(f"stage: {self.stage}" if self.stage else "stage: any")
        if self.text:
            parts.append(f"search: {self.text!r}")
        return " · ".join(parts)


def cells(row: SourceRow) -> list[Text]:
    name = row.name if len(row.name) <= 18 else row.name[:17] + "…"
    return [
        Text(name),
        state_text(row.state),
        *(stage_cell(row.stages.get(s)) for s in STAGES),
        progress_bar(row.progress, row.state),
    ]


class SourcesTable(DataTable[Text]):
    """Rows keyed by source id; a refresh keeps the cursor on the same source."""

    BINDINGS = [Binding("enter", "select_cursor", "Details")]

    def on_mount(self) -> None:
        self.cursor_type = "row"
        for label, key, width in COLUMNS:
            self.add_column(label, key=key, width=width)

    @property
    def selected_source(self) -> str | None:
        if self.row_count == 0:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    def show(self, rows: list[SourceRow]) -> None:
        keys = [row.source_id for row in rows]
        current = [key.value for key in self.rows]
        if keys == current:
            for row in rows:
                for (_, column, _), value in zip(COLUMNS, cells(row), strict=True):
                    if self.get_cell(row.source_id, column) != value:
                        self.update_cell(row.source_id, column, value)
            return
        selected = self.selected_source
        self.clear()
        for row in rows:
            self.add_row(*cells(row), key=row.source_id)
        if selected in keys:
            self.move_cursor(row=keys.index(selected), animate=False)
