"""``dhgq eval DIR [DIR...] [--split FILE]``: word and speaker error rates on recordings with references."""

from __future__ import annotations

import dataclasses
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dhgq.cli.common import JsonOption, emit_json, settings_of, stderr, stdout

if TYPE_CHECKING:
    from dhgq.evaluation import EvaluationReport

BEGIN, END = "<!-- dhgq eval: begin -->", "<!-- dhgq eval: end -->"


def evaluate(
    ctx: typer.Context,
    directories: Annotated[
        list[Path],
        typer.Argument(
            help="Folders of recordings with references (NAME.txt words, NAME.rttm speaker turns, "
            "NAME.stm speaker-attributed words).",
            exists=True,
            file_okay=False,
            resolve_path=True,
        ),
    ],
    split: Annotated[
        Path | None,
        typer.Option(
            "--split",
            help="TOML file naming the recordings of the tuning and validation parts "
            "(tuning = [...], validation = [...]); figures are pooled per part.",
            exists=True,
            dir_okay=False,
            resolve_path=True,
        ),
    ] = None,
    write: Annotated[
        Path | None,
        typer.Option("--write", help="Also put the table in this markdown file (e.g. docs/benchmarks.md)."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Score the local engines: WER, cpWER, DER (pyannote.metrics, no collar, overlap scored), speakers, speed."""
    from dhgq.evaluation import evaluate_directory, load_split, render_markdown

    try:
        parts = load_split(split) if split is not None else None
    except (ValueError, OSError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise typer.BadParameter(str(exc), param_hint="--split") from exc
    report = evaluate_directory(directories, settings=settings_of(ctx), split=parts)
    if json_output:
        emit_json(dataclasses.asdict(report))
    else:
        stdout.print(render_markdown(report), highlight=False, markup=False)
    if write is not None:
        replace_section(write, section(directories, split, report))
        stderr.print(f"wrote the accuracy table to {write}")


def section(directories: list[Path], split: Path | None, report: EvaluationReport) -> str:
    """The markdown section ``--write`` puts between the markers."""
    from dhgq.evaluation import render_markdown

    command = "dhgq eval " + " ".join(_shown(d) for d in directories)
    command += f" --split {_shown(split)}" if split is not None else ""
    return (
        f"{BEGIN}\n## Accuracy on real recordings\n\n`{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        "local engines (faster-whisper tiny.en int8, the local diarizer). WER after lower-casing, removing "
        "punctuation and spelling out numbers; cpWER (meeteval) scores the same words labelled with the "
        "diarizer's speakers, as the exports label them, against the speaker-attributed reference (NAME.stm): "
        "who said which word; DER with pyannote.metrics, collar 0, overlapped speech scored. `sure` is the "
        "diarizer's own probability for the speaker count it gave. Pooled figures add up errors over the "
        "part's files.\n\n"
        f"{render_markdown(report)}{END}\n"
    )


def _shown(path: Path) -> str:
    """The path as seen from the working directory (what a reader types to rerun the command)."""
    return os.path.relpath(path)


def replace_section(path: Path, section: str) -> None:
    """Put the section in the file, replacing an earlier one (other content stays as it is)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")
