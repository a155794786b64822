"""Small renderings shared by the widgets: a stage's status cell and a progress bar."""

from __future__ import annotations

from rich.text import Text

from dhgq.status import StageState

STATE_STYLES = {
    "completed": "green",
    "failed": "red",
    "processing": "yellow",
    "queued": "cyan",
    "not started": "dim",
}


def stage_cell(state: StageState | None) -> Text:
    """✔ done, ▶ 45%, … queued, ✖ failed."""
    if state is None:
        return Text("·", style="dim")
    if state.status == "completed":
        return Text("✔", style="green")
    if state.status == "processing":
        return Text(f"▶ {state.progress:.0f}%", style="yellow")
    if state.status == "failed":
        return Text("✖ fail", style="bold red")
    return Text("… wait", style="cyan")


def progress_bar(percent: float, state: str, width: int = 6) -> Text:
    filled = max(0, min(width, round(percent / 100 * width)))
    style = STATE_STYLES.get(state, "")
    bar = Text("█" * filled, style=style)
    bar.append("░" * (width - filled), style="dim")
    bar.append(f" {percent:3.0f}%")
    return bar


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))
