"""Row-level security on processing_jobs, tried as the roles a Supabase client uses."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest


def add_user(conn: psycopg.Connection) -> uuid.UUID:
    return conn.execute("INSERT INTO auth.users (email) VALUES (%s) RETURNING id",
                        (f"{uuid.uuid4().hex}@example.com",)).fetchone()[0]


def act_as(conn: psycopg.Connection, role: str, user: uuid.UUID | None = None) -> None:
    """What PostgREST does for each request: SET ROLE and the JWT claims."""
    claims = {"role": role, **({"sub": str(user)} if user else {})}
    conn.execute(f"SET ROLE {role}")
    conn.execute("SELECT set_config('request.jwt.claims', %s, false)", (json.dumps(claims),))


def test_users_see_and_insert_only_their_own(conn: psycopg.Connection) -> None:
    alice, bob = add_user(conn), add_user(conn)
    act_as(conn, "authenticated", alice)
    conn.execute("INSERT INTO processing_jobs (user_id, file_path) VALUES (%s, '/talks/a.mp4')", (alice,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("INSERT INTO processing_jobs (user_id, file_path) VALUES (%s, '/talks/b.mp4')", (bob,))
    act_as(conn, "authenticated", bob)
    conn.execute("INSERT INTO processing_jobs (file_path) VALUES ('/talks/c.mp4')")  # user_id defaults to auth.uid()
    assert [r[0] for r in conn.execute("SELECT file_path FROM processing_jobs")] == ["/talks/c.mp4"]
    act_as(conn, "authenticated", alice)
    assert [r[0] for r in conn.execute("SELECT file_path FROM processing_jobs")] == ["/talks/a.mp4"]
    act_as(conn, "anon")
    assert conn.execute("SELECT count(*) FROM processing_jobs").fetchone() == (0,)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("INSERT INTO processing_jobs (user_id, file_path) VALUES (%s, '/x.mp4')", (alice,))


def test_service_role_updates_statuses(conn: psycopg.Connection) -> None:
    alice = add_user(conn)
    act_as(conn, "authenticated", alice)
    conn.execute("INSERT INTO processing_jobs (file_path) VALUES ('/talks/a.mp4')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # users cannot change statuses
        conn.execute("UPDATE processing_jobs SET status='failed'")
    act_as(conn, "service_role")
    assert conn.execute("UPDATE processing_jobs SET status='processing'").rowcount == 1
    assert conn.execute("SELECT count(*) FROM processing_jobs").fetchone() == (1,)
