"""The monitor: Pilot tests against a real database (NOTIFY-driven updates, retry from the keyboard)
and SVG snapshots of the main screens built from fixed data with a frozen clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from textual.pilot import Pilot

from dhgq.settings import Settings
from dhgq.status import (
    Line,
    QueueSnapshot,
    SourceDetail,
    SourceRow,
    StageCount,
    StageRow,
    StageState,
    WorkerInfo,
)
from dhgq.tui.app import DetailScreen, MonitorApp, create_app
from dhgq.tui.backend import FixedBackend
from dhgq.tui.widgets import DetailView, SourcesTable, StatusHeader
from tests.conftest import PROJECT_PASSWORD
from tests.support.rows import add_source, failed_source, set_stage

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
DONE = StageState("completed", 100)


def row(
    source_id: str, name: str, state: str, progress: float, error: str | None = None, **stages: StageState
) -> SourceRow:
    return SourceRow(source_id, name, state, progress, stages, error, f"/talks/{name}")


SOURCES = (
    row(
        "6f1c2d3e-0000-4000-8000-000000000001",
        "panel-discussion.mkv",
        "processing",
        56.2,
        extraction=DONE,
        transcription=StageState("processing", 45),
        diarization=StageState("processing", 80),
    ),
    row(
        "2b7e9a10-0000-4000-8000-000000000002",
        "standup-0412.m4a",
        "queued",
        0,
        extraction=StageState("queued"),
    ),
    row(
        "9d0e4c55-0000-4000-8000-000000000003",
        "broken-upload.mp4",
        "failed",
        0,
        "extraction: broken-upload.mp4: no audio stream",
        extraction=StageState("failed"),
    ),
    row(
        "a4b3c2d1-0000-4000-8000-000000000004",
        "workshop-part-2.mov",
        "failed",
        75,
        "summarization: rate limited (3 attempts)",
        extraction=DONE,
        transcription=DONE,
        diarization=DONE,
        summarization=StageState("failed"),
    ),
    row(
        "c0ffee00-0000-4000-8000-000000000005",
        "keynote-2025.mp4",
        "completed",
        100,
        extraction=DONE,
        transcription=DONE,
        diarization=DONE,
        summarization=DONE,
    ),
)
SNAPSHOT = QueueSnapshot(
    taken_at=T0,
    stages=(
        StageCount("extraction", 1, 0, 3, 1, 2),
        StageCount("transcription", 0, 1, 2, 0, 1),
        StageCount("diarization", 0, 1, 2, 0, 1),
        StageCount("summarization", 0, 0, 1, 1, 0),
    ),
    sources=SOURCES,
    workers=2,
    jobs_last_minute=4,
)


def stage_row(stage: str, status: str, seconds: float | None, **extra: object) -> StageRow:
    started = T0 - timedelta(minutes=5)
    return StageRow(
        stage,
        status,
        100 if status == "completed" else 0,
        extra.pop("attempts", 1),  # type: ignore[arg-type]
        started_at=started,
        completed_at=started + timedelta(seconds=seconds or 0),
        seconds=seconds,
        **extra,
    )  # type: ignore[arg-type]


DETAILS = {
    SOURCES[4].source_id: SourceDetail(
        SOURCES[4],
        (
            stage_row("extraction", "completed", 1.4),
            stage_row("transcription", "completed", 12.8),
            stage_row("diarization", "completed", 9.1),
            stage_row("summarization", "completed", 0.6),
        ),
        (
            Line(0.3, "Speaker 1", "Good morning everyone and welcome to our weekly engineering talk."),
            Line(5.9, "Speaker 2", "Thank you for having me."),
            Line(8.2, "Speaker 1", "Let us start with the basics."),
        ),
        {
            "summary": "An engineering talk about the new media pipeline.",
            "key_points": ["Jobs live in Postgres"],
            "topics": ["pipelines", "transcription"],
            "document_type": "talk",
            "method": "extractive",
        },
    ),
    SOURCES[3].source_id: SourceDetail(
        SOURCES[3],
        (
            stage_row("extraction", "completed", 2.0),
            stage_row("transcription", "completed", 30.5),
            stage_row("diarization", "completed", 21.0),
            stage_row(
                "summarization",
                "failed",
                4.2,
                attempts=3,
                error_class="transient",
                error="rate limited by the summarization API (429)",
            ),
        ),
    ),
}


def fixed_app() -> MonitorApp:
    backend = FixedBackend(SNAPSHOT, dict(DETAILS))
    return MonitorApp(backend, database="postgresql://dhgq:***@db.example:5432/dhgq", poll_interval=None, listen=False)


async def settle(pilot: Pilot) -> None:
    """Let loads finish and their messages be handled."""
    for _ in range(3):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


async def wait_until(pilot: Pilot, condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def cell(app: MonitorApp, source_id: str, column: str) -> str | None:
    table = app.screen_stack[0].query_one(SourcesTable)
    if source_id not in {key.value for key in table.rows}:
        return None
    return table.get_cell(source_id, column).plain


# -- snapshots from fixed data ---------------------------------------------------------------------


def test_snapshot_main_screen(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=settle)


def test_snapshot_failed_only(snap_compare: Callable[..., bool]) -> None:
    async def run_before(pilot: Pilot) -> None:
        await settle(pilot)
        await pilot.press("f")

    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=run_before)


def test_snapshot_detail_of_a_completed_source(snap_compare: Callable[..., bool]) -> None:
    async def run_before(pilot: Pilot) -> None:
        await settle(pilot)
        await pilot.press("down", "down", "down", "down", "enter")
        await settle(pilot)

    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=run_before)


def test_snapshot_detail_of_a_failed_source(snap_compare: Callable[..., bool]) -> None:
    async def run_before(pilot: Pilot) -> None:
        await settle(pilot)
        await pilot.press("down", "down", "down", "enter")
        await settle(pilot)

    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=run_before)


# -- behaviour on fixed data -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_filters_search_and_keys_on_fixed_data() -> None:
    app = fixed_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        table = app.query_one(SourcesTable)
        assert table.row_count == 5
        await pilot.press("f")
        assert [key.value for key in table.rows] == [SOURCES[2].source_id, SOURCES[3].source_id]
        await pilot.press("s")  # stage: extraction, failed only
        assert [key.value for key in table.rows] == [SOURCES[2].source_id]
        await pilot.press("escape")  # clears every filter
        await pilot.press("slash", *"key", "enter")
        assert [key.value for key in table.rows] == [SOURCES[4].source_id]
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, DetailScreen)
        assert "rate limited" not in str(app.screen.query_one(DetailView).render())
        await pilot.press("r", "c")
        await settle(pilot)
        assert app.backend.actions == [("retry", SOURCES[4].source_id), ("cancel", SOURCES[4].source_id)]
        await pilot.press("escape", "q")
    assert app.return_code == 0


@pytest.mark.asyncio
async def test_the_header_names_the_machines_the_live_workers_run_on() -> None:
    fleet = (
        WorkerInfo("w1", "cpu-1", 11, ("extraction",), "storage", T0, T0, True),
        WorkerInfo("w2", "gpu-1", 12, ("transcription", "diarization"), "storage", T0, T0, True, 1),
        WorkerInfo("w3", "lost-1", 13, ("extraction",), "storage", T0, T0, False),
    )
    app = MonitorApp(
        FixedBackend(replace(SNAPSHOT, workers=2, fleet=fleet), dict(DETAILS)),
        database="db",
        poll_interval=None,
        listen=False,
    )
    async with app.run_test(size=(100, 24)) as pilot:
        await settle(pilot)
        text = str(app.query_one(StatusHeader).render())
        assert "workers 2 on cpu-1, gpu-1" in text and "lost-1" not in text
        await pilot.press("q")


# -- against the database --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_monitor_shows_a_source_moving_through_the_stages(db_url: str, conn: psycopg.Connection) -> None:
    app = create_app(Settings(database_url=db_url), db_url, poll_interval=60)  # only NOTIFY can refresh in time
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.snapshot is not None, 5, "the first snapshot")
        assert PROJECT_PASSWORD not in app.database and "postgres" in app.database
        source_id = add_source(conn, "moving.mp4")
        await wait_until(pilot, lambda: cell(app, source_id, "extraction") == "… wait", 3, "queued extraction")
        set_stage(conn, source_id, "extraction", "processing", progress=40)
        await wait_until(pilot, lambda: cell(app, source_id, "extraction") == "▶ 40%", 3, "extraction at 40%")
        set_stage(conn, source_id, "extraction", "completed", progress=100)
        set_stage(conn, source_id, "transcription", "processing", progress=10)
        set_stage(conn, source_id, "diarization", "queued")
        await wait_until(pilot, lambda: cell(app, source_id, "transcription") == "▶ 10%", 3, "transcribing")
        assert cell(app, source_id, "extraction") == "✔" and cell(app, source_id, "diarization") == "… wait"
        for stage in ("transcription", "diarization", "summarization"):
            set_stage(conn, source_id, stage, "completed", progress=100)
        await wait_until(pilot, lambda: cell(app, source_id, "state") == "completed", 3, "completed")
        assert cell(app, source_id, "progress") == "██████ 100%"
        await pilot.press("enter")
        await wait_until(
            pilot,
            lambda: isinstance(app.screen, DetailScreen) and app.screen.detail is not None,
            3,
            "the detail pane",
        )
        assert [s.stage for s in app.screen.detail.stages] == [
            "extraction",
            "transcription",
            "diarization",
            "summarization",
        ]


@pytest.mark.asyncio
async def test_retry_key_requeues_a_failed_stage(db_url: str, conn: psycopg.Connection) -> None:
    source_id = failed_source(conn)
    app = create_app(Settings(database_url=db_url), db_url, poll_interval=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: cell(app, source_id, "state") == "failed", 5, "the failed source")
        await pilot.press("r")

        def requeued() -> bool:
            status, job = conn.execute(
                """SELECT st.status, j.status::text FROM dhgq.audio_processing_stages st
                                          JOIN dhgq.procrastinate_jobs j ON j.id = st.job_id::bigint
                                          WHERE st.source_id = %s AND st.stage = 'extraction'""",
                (source_id,),
            ).fetchone()
            return status == "queued" and job == "todo"

        await wait_until(pilot, requeued, 3, "the stage row queued with a todo job")
        await wait_until(pilot, lambda: cell(app, source_id, "state") == "queued", 3, "the table to follow")
        await pilot.press("c")
        await wait_until(pilot, lambda: cell(app, source_id, "state") == "failed", 3, "cancelled")
