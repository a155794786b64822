"""``dhgq eval DIR``: word and speaker error rates on recordings with references."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from dhgq.cli.common import JsonOption, emit_json, settings_of, stderr, stdout

BEGIN, END = "<!-- dhgq eval: begin -->", "<!-- dhgq eval: end -->"


def evaluate(
    ctx: typer.Context,
    directory: Annotated[
        Path,
        typer.Argument(
            help="Recordings with references (NAME.txt words, NAME.rttm speaker turns).",
            exists=True,
            file_okay=False,
            resolve_path=True,
        ),
    ],
    write: Annotated[
        Path | None,
        typer.Option("--write", help="Also put the table in this markdown file (e.g. docs/benchmarks.md)."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Score the local engines: WER, DER (pyannote.metrics, no collar, overlap scored), speakers, speed."""
    from dhgq.evaluation import evaluate_directory, render_markdown

    report = evaluate_directory(directory, settings=settings_of(ctx))
    if json_output:
        emit_json(dataclasses.asdict(report))
    else:
        stdout.print(render_markdown(report), highlight=False, markup=False)
    if write is not None:
        section = (
            f"{BEGIN}\n## Accuracy on real recordings\n\n`dhgq eval {directory.name}` on "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, local engines (faster-whisper tiny.en int8, the local "
            f"diarizer). WER after lower-casing, removing punctuation and spelling out numbers; DER with "
            f"pyannote.metrics, collar 0, overlapped speech scored.\n\n{render_markdown(report)}{END}\n"
        )
        replace_section(write, section)
        stderr.print(f"wrote the accuracy table to {write}")


def replace_section(path: Path, section: str) -> None:
    """Put the section in the file, replacing an earlier one (other content stays as it is)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")
