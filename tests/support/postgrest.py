"""Requests as PostgREST makes them: log in as ``authenticator``, then one transaction with
``SET LOCAL ROLE`` and the JWT claims in ``request.jwt.claims`` (PostgREST 10+)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

DENIED = (psycopg.errors.InsufficientPrivilege,)


@contextmanager
def request(authenticator_url: str, role: str, user: uuid.UUID | str | None = None) -> Iterator[psycopg.Connection]:
    """One API request's transaction, as ``role`` (anon, authenticated, service_role) and ``user``."""
    claims: dict[str, Any] = {"role": role, "aud": role}
    if user is not None:
        claims["sub"] = str(user)
    with psycopg.connect(authenticator_url) as conn, conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        yield conn


def rows_or_refused(
    authenticator_url: str, role: str, user: uuid.UUID | str | None, query: str, params: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]] | str:
    """The rows a request reads, or "refused" when the database says it may not."""
    try:
        with request(authenticator_url, role, user) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]
    except DENIED:
        return "refused"


def error_of(
    authenticator_url: str, role: str, user: uuid.UUID | str | None, query: str, params: tuple[Any, ...] = ()
) -> psycopg.Error | None:
    """The error a request ends with (its transaction rolled back), or None when it succeeded."""
    try:
        with request(authenticator_url, role, user) as conn:
            conn.execute(query, params)  # type: ignore[arg-type]
    except psycopg.Error as exc:
        return exc
    return None
