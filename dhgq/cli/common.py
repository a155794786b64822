"""What every command group shares: settings from the context, output helpers, error exits."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from dhgq.db import connect, database_url
from dhgq.errors import DhgqError
from dhgq.settings import Settings, get_settings

stdout = Console()
stderr = Console(stderr=True)
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def settings_of(ctx: typer.Context) -> Settings:
    """The Settings the root callback put in the context (or fresh ones, in tests)."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Settings) else get_settings()


def emit_json(data: Any) -> None:
    """Machine-readable output: one JSON document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one clear line on stderr; return the Exit to raise."""
    stderr.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def database_error(exc: psycopg.Error) -> str:
    """A psycopg error as one line, with the fix where there is an obvious one."""
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedFunction):
        return "the database schema is missing or old: run `dhgq db migrate`"
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"database error: {text}"


class DhgqGroup(TyperGroup):
    """Turns dhgq's and psycopg's errors into one line on stderr and exit 1, in every command."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except DhgqError as exc:
            raise fail(str(exc)) from None
        except psycopg.Error as exc:
            raise fail(database_error(exc)) from None


@contextmanager
def connected(ctx: typer.Context) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the configured (or embedded) database."""
    settings = settings_of(ctx)
    conn = connect(database_url(settings), autocommit=True, timeout=settings.db_connect_timeout)
    try:
        yield conn
    finally:
        conn.close()


def seconds(value: float | None) -> str:
    """A duration for people: 0.8s, 12.3s, 2m05s."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, rest = divmod(int(round(value)), 60)
    return f"{minutes}m{rest:02d}s"


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"
