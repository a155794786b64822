"""The top line: snapshot time, live workers, jobs per minute, paused queues, the database (password masked)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from dhgq.status import QueueSnapshot


class StatusHeader(Static):
    def __init__(self, database: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.database = database
        self.problem: str | None = None

    def show(self, snapshot: QueueSnapshot | None, problem: str | None = None) -> None:
        """Time, workers and throughput first, so a narrow terminal cuts the URL, not the numbers."""
        line = Text("dhgq ", style="bold")
        if snapshot is not None:
            line.append(f"{snapshot.taken_at:%H:%M:%S}", style="dim")
            line.append(f"  workers {snapshot.workers}", style="green" if snapshot.workers else "red")
            hosts = snapshot.hosts
            if hosts:  # the machines they run on: names while they fit, else how many
                line.append(f" on {', '.join(hosts)}" if len(hosts) <= 3 else f" on {len(hosts)} hosts", style="dim")
            line.append(f"  {snapshot.jobs_last_minute} jobs/min  ")
            if snapshot.paused:
                line.append(f"paused: {', '.join(p.queue for p in snapshot.paused)}  ", style="bold yellow")
        if problem:
            line.append(f"! {problem}  ", style="bold red")
        line.append(self.database)
        self.update(line)
