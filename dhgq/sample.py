"""A sample talk for ``dhgq demo``: two synthetic voices (espeak-ng), joined by sox, muxed by ffmpeg."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import soundfile as sf

from dhgq.errors import ConfigurationError
from dhgq.media.extraction.ffmpeg import ffmpeg_binary

# (espeak voice, pitch 0-99, words per minute): clearly different voices.
VOICES: dict[str, tuple[str, int, int]] = {"alice": ("en-us+f3", 70, 165), "bob": ("en-gb+m3", 25, 150)}
SCRIPT: list[tuple[str, str]] = [
    (
        "alice",
        "Good morning everyone and welcome to our weekly engineering talk about the new media pipeline.",
    ),
    (
        "bob",
        "Thank you for having me. Today I want to explain how we turn recorded talks into searchable transcripts.",
    ),
    (
        "alice",
        "Let us start with the basics. What happens when a new video file arrives in the storage bucket?",
    ),
    (
        "bob",
        "The database notices the new row and queues an extraction job that pulls the audio out of the video.",
    ),
]


def require_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise ConfigurationError(
            f"making the sample talk needs {' and '.join(missing)} "
            "(apt install espeak-ng sox), or pass your own recording: dhgq demo PATH"
        )


def _run(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ConfigurationError(
            f"{Path(args[0]).name} failed making the sample talk: "
            f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}"
        )


def _say(text: str, speaker: str, out: Path) -> float:
    voice, pitch, speed = VOICES[speaker]
    raw = out.with_suffix(".raw.wav")
    _run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(raw), text])
    _run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)])
    return float(sf.info(str(out)).duration)


def _silence(seconds: float, out: Path) -> Path:
    _run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(out), "trim", "0", f"{seconds}"])
    return out


def two_speaker_talk(out: Path, script: list[tuple[str, str]] = SCRIPT) -> Path:
    """The script as an MP4 with a test-pattern video track (kept: made once per path)."""
    if out.is_file():
        return out
    require_tools()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as work_dir:
        work = Path(work_dir)
        pause = _silence(0.5, work / "pause.wav")
        parts = [_silence(0.3, work / "lead.wav")]
        for index, (speaker, text) in enumerate(script):
            _say(text, speaker, work / f"{index:02d}.wav")
            parts += [work / f"{index:02d}.wav", pause]
        _run(["sox", *map(str, parts), str(work / "talk.wav")])
        partial = work / out.name
        _run(
            [
                ffmpeg_binary(),
                "-y",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=320x240:rate=10",
                "-i",
                str(work / "talk.wav"),
                "-map",
                "0:v",
                "-map",
                "1:a",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                "-c:a",
                "aac",
                "-b:a",
                "64k",
                "-shortest",
                str(partial),
            ]
        )
        partial.replace(out)
    return out
