"""One source in detail: its stage rows, the start of its transcript by speaker, its summary."""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from dhgq.media.export import timestamp
from dhgq.status import SourceDetail
from dhgq.status_text import progress_bar, state_text


def took(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


class DetailView(Static):
    def show(self, detail: SourceDetail | None) -> None:
        self.update(render_detail(detail) if detail else Text("loading…", style="dim"))


def render_detail(detail: SourceDetail) -> RenderableType:
    source = detail.source
    title = Text.assemble(
        (source.name, "bold"),
        "  ",
        (source.source_id, "dim"),
        "\n",
        state_text(source.state),
        "  ",
        progress_bar(source.progress, source.state, width=12),
    )
    stages = Table(box=box.SIMPLE_HEAD, expand=True, padding=(0, 1), show_edge=False)
    for column in ("stage", "status", "tries", "took", "error"):
        stages.add_column(column, overflow="fold")
    for s in detail.stages:
        error = Text(f"{s.error_class}: {s.error}", style="red") if s.error else Text("")
        status = (
            Text(f"processing {s.progress:.0f}%", style="yellow") if s.status == "processing" else state_text(s.status)
        )
        if s.media is not None:
            status.append(f"\n{s.media.describe()}", style="dim")
        if s.host:
            status.append(f"\non {s.host}", style="dim")
        if s.notes():
            status.append(f"\n{s.notes()}", style="magenta" if s.stale else "dim")
        stages.add_row(s.stage, status, str(s.attempts), took(s.seconds), error)
    parts: list[RenderableType] = [title, stages]
    if detail.excerpt:
        parts.append(Text("Transcript", style="bold underline"))
        for line in detail.excerpt:
            parts.append(
                Text.assemble(
                    (f"[{timestamp(line.start)}] ", "dim"),
                    (f"{line.speaker or '?'}: ", "bold cyan"),
                    line.text,
                )
            )
    if detail.summary:
        parts += [Text("\nSummary", style="bold underline"), Text(detail.summary.get("summary", ""))]
        parts += [Text(f" • {point}") for point in detail.summary.get("key_points", [])]
        if detail.summary.get("topics"):
            parts.append(Text(f"topics: {', '.join(detail.summary['topics'])}", style="dim"))
    return Group(*parts)
