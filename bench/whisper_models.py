"""What the multilingual default costs: tiny.en against base (faster-whisper, int8, CPU) on the real recordings
with references (../shared/testdata/real-speech) and on a Spanish espeak-ng clip: load time, seconds per file,
realtime factor, WER (Whisper's English normaliser for English; lower case, no punctuation otherwise) and the
process's peak memory. Each model runs in a process of its own, so that its memory is its own.

    python -m bench.whisper_models --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REAL = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "real-speech"
FILES = {"jfk.flac": "jfk.txt", "goforward.wav": "goforward.txt", "sample.wav": "sample.txt"}
SPANISH = (
    "Buenos días a todos. Hoy vamos a hablar de las colas de trabajo en una base de datos relacional, "
    "y de cómo procesar grabaciones de conferencias. Cada etapa guarda su resultado en la misma transacción."
)
BEGIN, END = "<!-- whisper models: begin -->", "<!-- whisper models: end -->"


def spanish_clip(folder: Path) -> Path:
    raw, out = folder / "es.raw.wav", folder / "es.wav"
    subprocess.run(["espeak-ng", "-v", "es", "-w", str(raw), SPANISH], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(out)], check=True)
    return out


def normalise(text: str, english: bool) -> str:
    if english:
        from whisper.normalizers import EnglishTextNormalizer

        return EnglishTextNormalizer()(text)
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def run_model(model: str, clips: dict[str, tuple[Path, str, bool]]) -> dict[str, Any]:
    """In this process: load ``model`` once, transcribe every clip, and measure."""
    import jiwer
    import soundfile as sf

    from dhgq.media.transcription.engines import load_engine

    started = time.perf_counter()
    engine = load_engine("faster-whisper", model, "int8", None, os.cpu_count() or 1)
    load_s = time.perf_counter() - started
    rows = []
    for name, (path, reference, english) in clips.items():
        began = time.perf_counter()
        transcript = engine.transcribe(path)
        seconds = time.perf_counter() - began
        audio_s = sf.info(str(path)).duration
        wer = jiwer.wer(normalise(reference, english), normalise(transcript.text, english))
        rows.append(
            {
                "file": name,
                "audio_s": round(audio_s, 1),
                "seconds": round(seconds, 2),
                "rtf": round(audio_s / seconds, 1),
                "wer": round(wer, 3),
                "language": transcript.language,
                "probability": transcript.language_probability,
            }
        )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": model, "load_s": round(load_s, 2), "peak_mib": round(peak_mib), "rows": rows}


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | file | audio s | seconds | x realtime | WER | language (probability) |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for result in results:
        for row in result["rows"]:
            said = row["language"] + (f" ({row['probability']:.2f})" if row["probability"] is not None else "")
            lines.append(
                f"| {result['model']} | {row['file']} | {row['audio_s']} | {row['seconds']} | {row['rtf']} | "
                f"{row['wer']:.1%} | {said} |"
            )
    loads = ", ".join(f"{r['model']} {r['load_s']} s and {r['peak_mib']} MiB peak" for r in results)
    return "\n".join(lines) + f"\n\nModel load and the process's peak memory: {loads}.\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.whisper_models", description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to put the table in")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one model, print JSON
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dhgq-whisper-models-") as folder:
        clips = {name: (REAL / name, (REAL / ref).read_text(encoding="utf-8"), True) for name, ref in FILES.items()}
        clips["spanish (espeak-ng)"] = (spanish_clip(Path(folder)), SPANISH, False)
        if args.one:
            print(json.dumps(run_model(args.one, clips)))
            return
        results = []
        for model in ("tiny.en", "base"):
            done = subprocess.run(
                [sys.executable, "-m", "bench.whisper_models", "--one", model],
                capture_output=True,
                text=True,
                check=True,
            )
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    text = (
        f"{BEGIN}\n## Whisper models: the multilingual default's cost\n\n`python -m bench.whisper_models` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPU cores, faster-whisper int8, every core: "
        "`DHGQ_WHISPER_MODEL=auto` runs tiny.en (English only) when the language is given as English and base "
        "(multilingual) otherwise. The real recordings are English; the last clip is Spanish espeak-ng speech, "
        "which the English model can only turn into English words.\n\n"
        f"{render(results)}{END}\n"
    )
    print(text)
    if args.out is not None:
        old = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
        new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
        args.out.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    main()
