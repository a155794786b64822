"""``dhgq rerun --where`` on a hosted-like database: each way an expression used to do more than select
is refused, and the server shows it did nothing: no large object, no NOTIFY, no session killed, no
deleted source let through. (A READ ONLY transaction alone allowed all of them.)"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from dhgq.cli.rerun import where_ids
from dhgq.errors import PermanentError
from tests.support.pipeline import insert_source


@pytest.fixture
def sources(db_url: str) -> Iterator[tuple[str, str]]:
    """A live source and a deleted one: (live id, deleted id)."""
    live = insert_source(db_url, "/talks/keynote.mp4")
    deleted = insert_source(db_url, "/talks/withdrawn.mp4")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE sources_google SET is_deleted = true WHERE id = %s", (deleted,))
    yield live, deleted


def test_a_filter_selects_what_it_says(db_url: str, sources: tuple[str, str]) -> None:
    live, _ = sources
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert where_ids(conn, "name LIKE 'key%' AND created_at > now() - interval '1 day'") == [live]
        assert where_ids(conn, "name = 'withdrawn.mp4'") == []  # deleted sources are never selected


def test_escapes_are_refused_and_change_nothing(db_url: str, sources: tuple[str, str]) -> None:
    with (
        psycopg.connect(db_url, autocommit=True) as conn,
        psycopg.connect(db_url, autocommit=True) as listener,
        psycopg.connect(db_url, autocommit=True) as victim,
    ):
        listener.execute("LISTEN dhgq_where_test")
        pid = victim.info.backend_pid
        escapes = [
            "lo_create(0) > 0",
            "lo_from_bytea(0, 'x') > 0",
            "lo_import('/etc/hostname') > 0",
            "pg_notify('dhgq_where_test', 'sent') IS NULL",
            f"pg_terminate_backend({pid})",
            "false) UNION SELECT id::text FROM public.sources_google WHERE is_deleted --",
            "false) UNION SELECT id::text FROM public.sources_google WHERE is_deleted /*",
            "true; SELECT lo_create(0)",
            "id IN (SELECT id FROM public.sources_google)",
        ]
        for expression in escapes:
            with pytest.raises(PermanentError, match="^--where"):
                where_ids(conn, expression)
        assert conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone() == (0,)
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        assert victim.execute("SELECT 1").fetchone() == (1,)  # still connected
