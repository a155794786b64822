"""``dhgq eval DIR``: word and speaker error rates on recordings with references."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from dhgq.cli.common import JsonOption, emit_json, settings_of, stdout
from dhgq.errors import ConfigurationError

ENTRY_POINTS = ("evaluate_directory", "evaluate_dir", "evaluate")


def evaluate(
    ctx: typer.Context,
    directory: Annotated[
        Path,
        typer.Argument(
            help="Recordings with reference transcripts and RTTM files.",
            exists=True,
            file_okay=False,
            resolve_path=True,
        ),
    ],
    json_output: JsonOption = False,
) -> None:
    """Score transcription (WER) and diarization (DER) against the references in DIR."""
    run = _entry_point()
    kwargs = {"settings": settings_of(ctx)} if "settings" in inspect.signature(run).parameters else {}
    report = _plain(run(directory, **kwargs))
    if json_output:
        return emit_json(report)
    if isinstance(report, dict):
        for key, value in report.items():
            stdout.print(f"{key:>24}: {value}", highlight=False, markup=False)
    else:
        stdout.print(report, highlight=False, markup=False)


def _entry_point() -> Any:
    try:
        module = importlib.import_module("dhgq.media.evaluate")
    except ImportError as exc:
        raise ConfigurationError(f"evaluation is not available in this installation ({exc})") from None
    for name in ENTRY_POINTS:
        if callable(getattr(module, name, None)):
            return getattr(module, name)
    raise ConfigurationError(f"dhgq.media.evaluate has none of {', '.join(ENTRY_POINTS)}")


def _plain(report: Any) -> Any:
    if dataclasses.is_dataclass(report) and not isinstance(report, type):
        return dataclasses.asdict(report)
    return report.to_dict() if hasattr(report, "to_dict") else report
