"""``dhgq monitor``: the pipeline live in a terminal.

Database work happens only in thread workers that post messages; handlers change state and
widgets render it. A LISTEN thread wakes a refresh within a second of any stage change; a
poll, scheduled only after the previous one finished, is the fallback.
"""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Input, Static
from textual.worker import get_current_worker

from dhgq.db import mask_url
from dhgq.settings import Settings
from dhgq.status import QueueSnapshot, SourceDetail
from dhgq.tui.backend import Backend, PostgresBackend
from dhgq.tui.widgets import DetailView, SourceFilter, SourcesTable, StagePanel, StatusHeader


class SnapshotLoaded(Message):
    def __init__(self, snapshot: QueueSnapshot, detail: SourceDetail | None) -> None:
        super().__init__()
        self.snapshot = snapshot
        self.detail = detail


class LoadFailed(Message):
    def __init__(self, problem: str) -> None:
        super().__init__()
        self.problem = problem


class StagesChanged(Message):
    """A NOTIFY on dhgq_stages arrived."""


class ActionDone(Message):
    def __init__(self, text: str, ok: bool = True) -> None:
        super().__init__()
        self.text = text
        self.ok = ok


class DetailScreen(Screen[None]):
    """One source: stage rows with attempts, durations and errors; transcript excerpt; summary."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, source_id: str, detail: SourceDetail | None = None) -> None:
        super().__init__()
        self.source_id = source_id
        self.detail = detail

    def compose(self) -> ComposeResult:
        yield StatusHeader(self.app.database if isinstance(self.app, MonitorApp) else "", id="header")
        with VerticalScroll(id="detail-scroll"):
            yield DetailView(id="detail")
        yield Footer()

    def on_mount(self) -> None:
        self.show(self.detail)

    def show(self, detail: SourceDetail | None) -> None:
        self.detail = detail
        self.query_one(DetailView).show(detail)
        app = self.app
        if isinstance(app, MonitorApp):
            self.query_one(StatusHeader).show(app.snapshot, app.problem)


class MonitorApp(App[None]):
    CSS_PATH = Path(__file__).with_name("monitor.tcss")
    TITLE = "dhgq monitor"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("enter", "details", "Details", show=False),
        Binding("r", "retry", "Retry"),
        Binding("c", "cancel", "Cancel"),
        Binding("f", "failed_only", "Failed"),
        Binding("s", "stage", "Stage"),
        Binding("slash", "search", "Search"),
        Binding("escape", "clear", "Clear", show=False),
    ]

    def __init__(
        self, backend: Backend, *, database: str, poll_interval: float | None = 3.0, listen: bool = True
    ) -> None:
        super().__init__()
        self.backend = backend
        self.database = database
        self.poll_interval = poll_interval
        self.listen_enabled = listen
        self.snapshot: QueueSnapshot | None = None
        self.problem: str | None = None
        self.source_filter = SourceFilter()
        self.loads = 0
        self._polling = False
        self._dirty = False
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield StatusHeader(self.database, id="header")
        yield StagePanel(id="stages")
        yield Static(id="filters")
        yield Input(placeholder="search sources (enter to keep, esc to close)", id="search")
        yield SourcesTable(id="sources")
        yield Footer()

    def on_unmount(self) -> None:
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()

    def on_mount(self) -> None:
        self.query_one(StatusHeader).show(None)
        self.query_one(SourcesTable).focus()
        self.request_refresh()
        if self.listen_enabled:
            self._listen()

    # -- loading -------------------------------------------------------------------------------

    @property
    def detail_source(self) -> str | None:
        return self.screen.source_id if isinstance(self.screen, DetailScreen) else None

    def request_refresh(self) -> None:
        """Load now, unless a load is running: then once more right after it."""
        if self._polling:
            self._dirty = True
            return
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._polling = True
        self._load(self.detail_source)

    @work(thread=True, exclusive=True, group="load")
    def _load(self, detail_source: str | None) -> None:
        try:
            snapshot = self.backend.snapshot()
            detail = self.backend.detail(detail_source) if detail_source else None
        except Exception as exc:  # shown in the header; the next poll tries again
            self.post_message(LoadFailed((str(exc).strip().splitlines() or [type(exc).__name__])[0]))
            return
        self.post_message(SnapshotLoaded(snapshot, detail))

    @work(thread=True, group="listen")
    def _listen(self) -> None:
        worker = get_current_worker()
        self.backend.listen(lambda: self.post_message(StagesChanged()), lambda: worker.is_cancelled)

    def _loaded(self) -> None:
        self._polling = False
        self.loads += 1
        if self._dirty:
            self._dirty = False
            self.request_refresh()
        elif self.poll_interval:
            self._timer = self.set_timer(self.poll_interval, self.request_refresh)

    @on(SnapshotLoaded)
    def _on_snapshot(self, message: SnapshotLoaded) -> None:
        self.snapshot = message.snapshot
        self.problem = None
        self.render_snapshot()
        screen = self.screen
        if isinstance(screen, DetailScreen) and message.detail and message.detail.source.source_id == screen.source_id:
            screen.show(message.detail)
        self._loaded()

    @on(LoadFailed)
    def _on_failed(self, message: LoadFailed) -> None:
        self.problem = message.problem
        self.query_one("#header", StatusHeader).show(self.snapshot, self.problem)
        self._loaded()

    @on(StagesChanged)
    def _on_changed(self) -> None:
        self.request_refresh()

    def render_snapshot(self) -> None:
        """Render the current snapshot through the current filter."""
        main = self.screen_stack[0]
        main.query_one("#header", StatusHeader).show(self.snapshot, self.problem)
        if self.snapshot is None:
            return
        main.query_one(StagePanel).show(self.snapshot.stages)
        rows = [row for row in self.snapshot.sources if self.source_filter.matches(row)]
        main.query_one(SourcesTable).show(rows)
        main.query_one("#filters", Static).update(
            f"{self.source_filter.describe()} · {len(rows)}/{len(self.snapshot.sources)} sources"
        )

    # -- actions -------------------------------------------------------------------------------

    def _target(self) -> str | None:
        return self.detail_source or self.screen_stack[0].query_one(SourcesTable).selected_source

    def _source_name(self, source_id: str) -> str:
        names = {row.source_id: row.name for row in (self.snapshot.sources if self.snapshot else ())}
        return names.get(source_id, source_id[:8])

    def action_retry(self) -> None:
        if (target := self._target()) is not None:
            self._act("retry", target, self._source_name(target))

    def action_cancel(self) -> None:
        if (target := self._target()) is not None:
            self._act("cancel", target, self._source_name(target))

    @work(thread=True, group="act")
    def _act(self, kind: str, source_id: str, name: str) -> None:
        try:
            count = self.backend.retry(source_id) if kind == "retry" else self.backend.cancel(source_id)
        except Exception as exc:
            self.post_message(ActionDone(f"{kind} {name} failed: {exc}", ok=False))
            return
        verb = "queued again" if kind == "retry" else "cancelled"
        self.post_message(ActionDone(f"{name}: {count} stage(s) {verb}" if count else f"{name}: nothing to {kind}"))

    @on(ActionDone)
    def _on_action(self, message: ActionDone) -> None:
        self.notify(message.text, severity="information" if message.ok else "error")
        self.request_refresh()

    def action_details(self) -> None:
        if isinstance(self.screen, DetailScreen):
            return
        if (target := self.screen_stack[0].query_one(SourcesTable).selected_source) is not None:
            self.push_screen(DetailScreen(target))
            self.request_refresh()

    @on(DataTable.RowSelected)
    def _on_row_selected(self) -> None:
        self.action_details()

    def action_failed_only(self) -> None:
        self._set_filter(
            SourceFilter(not self.source_filter.failed_only, self.source_filter.stage, self.source_filter.text)
        )

    def action_stage(self) -> None:
        self._set_filter(
            SourceFilter(self.source_filter.failed_only, self.source_filter.next_stage(), self.source_filter.text)
        )

    def action_search(self) -> None:
        search = self.query_one("#search", Input)
        search.add_class("visible")
        search.focus()

    def action_clear(self) -> None:
        search = self.query_one("#search", Input)
        if search.has_class("visible"):
            search.remove_class("visible")
            self.query_one(SourcesTable).focus()
        elif self.source_filter != SourceFilter():
            search.value = ""
            self._set_filter(SourceFilter())

    @on(Input.Changed, "#search")
    def _on_search(self, event: Input.Changed) -> None:
        self._set_filter(SourceFilter(self.source_filter.failed_only, self.source_filter.stage, event.value.strip()))

    @on(Input.Submitted, "#search")
    def _on_search_done(self) -> None:
        self.action_clear()

    def _set_filter(self, new: SourceFilter) -> None:
        self.source_filter = new
        self.render_snapshot()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if isinstance(self.screen, DetailScreen) and action in {"failed_only", "stage", "search", "details"}:
            return False
        return True


def create_app(settings: Settings, url: str, *, poll_interval: float | None = 3.0, listen: bool = True) -> MonitorApp:
    """The monitor on a database: used by ``dhgq monitor`` and by the tests."""
    backend = PostgresBackend(url, stalled_after=settings.stalled_after, timeout=settings.db_connect_timeout)
    return MonitorApp(backend, database=mask_url(url), poll_interval=poll_interval, listen=listen)
