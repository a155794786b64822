"""``dhgq models ...``: local speech models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dhgq.cli.common import JsonOption, emit_json, settings_of, stdout
from dhgq.errors import ConfigurationError

app = typer.Typer(no_args_is_help=True, help="Speech models: convert them for other engines.")


@app.command()
def convert(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A model name (tiny.en, base, ...) or a CTranslate2 model directory.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the converted checkpoint.", file_okay=False)] = Path(
        "."
    ),
    json_output: JsonOption = False,
) -> None:
    """Convert a faster-whisper (CTranslate2) model to an openai-whisper checkpoint (.pt)."""
    try:
        from dhgq.media.transcription.convert import convert_named_model
    except ImportError as exc:
        raise ConfigurationError(f"model conversion is not available in this installation ({exc})") from None
    out.mkdir(parents=True, exist_ok=True)
    written = convert_named_model(name, out, models_dir=settings_of(ctx).models_dir)
    if json_output:
        emit_json({"model": name, "checkpoint": str(written)})
    else:
        stdout.print(f"wrote {written}", highlight=False)
