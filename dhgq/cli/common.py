"""What every command group shares: settings from the context, output helpers, error exits."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

from dhgq.settings import Settings, get_settings

stdout = Console()
stderr = Console(stderr=True)


def settings_of(ctx: typer.Context) -> Settings:
    """The Settings the root callback put in the context (or fresh ones, in tests)."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Settings) else get_settings()


def emit_json(data: Any) -> None:
    """Machine-readable output: one JSON document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one clear line on stderr; return the Exit to raise."""
    stderr.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)
