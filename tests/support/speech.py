"""Real speech and video made by the tests: espeak-ng voices joined with sox, muxed by ffmpeg.

Every generator returns the reference along with the media (the script's words and the
speaker turns), so tests can score WER and DER against what was actually said.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

# Voices: language variant, espeak voice variant, pitch (0-99) and speed (wpm). Alice and bob
# are clearly different. Carol is similar to alice and dave to bob, on purpose: CAM++ puts one
# utterance of carol at cosine 0.72 to one of alice and dave at 0.82 to bob, against 0.93-0.95
# between two utterances of the same voice (and 0.42 between alice and bob). Closer than that
# espeak voices are one voice to CAM++: en-gb+m1 p35 sits at 0.94 to bob, as bob to himself.
VOICES: dict[str, tuple[str, int, int]] = {
    "alice": ("en-us+f3", 70, 165),
    "bob": ("en-gb+m3", 25, 150),
    "carol": ("en-us+f4", 55, 155),
    "dave": ("en-us+m2", 30, 160),
    "erin": ("en-us+f2", 80, 170),
}

TWO_SPEAKER_SCRIPT: list[tuple[str, str]] = [
    ("alice", "Good morning everyone and welcome to our weekly engineering talk about the new media pipeline."),
    ("bob", "Thank you for having me. Today I want to explain how we turn recorded talks into searchable transcripts."),
    ("alice", "Let us start with the basics. What happens when a new video file arrives in the storage bucket?"),
    ("bob", "The database notices the new row and queues an extraction job that pulls the audio out of the video."),
    ("alice", "And after the audio is extracted, which steps run next in the pipeline?"),
    ("bob", "Transcription and speaker detection run side by side, and when both are finished we write a summary."),
    ("alice", "That sounds efficient. How do you make sure that no job is lost when a worker crashes?"),
    ("bob", "Every job lives in the same database as the results, so a crashed job is simply picked up again."),
    ("alice", "Thank you very much for this clear explanation of the system."),
    ("bob", "It was a pleasure. I hope the team enjoys using the new tools."),
]

FOUR_SPEAKER_SCRIPT: list[tuple[str, str]] = [
    ("alice", "Welcome to the panel. Each of our guests will introduce their work on speech technology."),
    ("bob", "I build systems that recognise speech in noisy rooms and long meetings."),
    ("carol", "My research looks at how people take turns when they talk in small groups."),
    ("dave", "I work on storage and search, so that every recorded word can be found again quickly."),
    ("alice", "Great. Let me ask the first question. What is the hardest problem in your field today?"),
    ("bob", "Overlapping speech is still very hard, because two voices mix into one signal."),
    ("carol", "For me it is the number of speakers, which changes from one meeting to the next."),
    ("dave", "In search the hard part is scale, with millions of hours of audio to index."),
    ("alice", "Thank you all. We will now take questions from the audience."),
]


@dataclass
class Reference:
    """What a generated recording contains: its words and its speaker turns (seconds)."""

    audio: Path
    words: str
    turns: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def speakers(self) -> set[str]:
        return {speaker for _, _, speaker in self.turns}

    def rttm(self, uri: str = "generated") -> str:
        return "".join(
            f"SPEAKER {uri} 1 {start:.3f} {end - start:.3f} <NA> <NA> {speaker} <NA> <NA>\n"
            for start, end, speaker in self.turns
        )


def require_tools() -> None:
    """Fail loudly (not skip) when the project's setup did not install the media tools."""
    missing = [tool for tool in ("espeak-ng", "sox", "ffmpeg") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: run .ci/run (it installs them)")


def say(text: str, speaker: str, out: Path) -> Path:
    """One utterance as 16 kHz mono 16-bit WAV."""
    voice, pitch, speed = VOICES[speaker]
    raw = out.with_suffix(".raw.wav")
    subprocess.run(
        ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(raw), text],
        check=True,
        capture_output=True,
    )
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True, capture_output=True)
    raw.unlink()
    return out


def silence(seconds: float, out: Path) -> Path:
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(out), "trim", "0", f"{seconds}"],
        check=True,
        capture_output=True,
    )
    return out


def dialogue(script: list[tuple[str, str]], out: Path, gap: float = 0.5, repeat: int = 1) -> Reference:
    """Join the script's utterances with pauses; the reference turns come from the real lengths."""
    require_tools()
    work = out.parent / f"{out.stem}_parts"
    work.mkdir(parents=True, exist_ok=True)
    pause = silence(gap, work / "pause.wav")
    parts: list[Path] = [silence(0.3, work / "lead.wav")]
    turns: list[tuple[float, float, str]] = []
    words: list[str] = []
    clock = 0.3
    for index, (speaker, text) in enumerate(script * repeat):
        part = say(text, speaker, work / f"{index:03d}.wav")
        length = sf.info(str(part)).duration
        turns.append((clock, clock + length, speaker))
        words.append(text)
        parts += [part, pause]
        clock += length + gap
    subprocess.run(["sox", *map(str, parts), str(out)], check=True, capture_output=True)
    shutil.rmtree(work)
    return Reference(audio=out, words=" ".join(words), turns=turns)


def to_mp4(audio: Path, out: Path, video: bool = True) -> Path:
    """Mux the audio with a synthetic video track (or none) into an MP4, as a recorded talk."""
    require_tools()
    cmd = ["ffmpeg", "-y", "-loglevel", "error"]
    if video:
        cmd += ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=10"]
    cmd += ["-i", str(audio)]
    if video:
        cmd += ["-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    cmd += ["-c:a", "aac", "-b:a", "64k", "-shortest", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def video_without_audio(out: Path, seconds: float = 3.0) -> Path:
    subprocess.run(
        [
            "ffmpeg",
            "-y",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            f"testsrc=size=160x120:rate=10:d={seconds}",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out


def speech_track(text: str, speaker: str, out: Path, *, lead: float, seconds: float) -> Path:
    """One utterance after ``lead`` s of silence, padded or cut to exactly ``seconds`` (16 kHz mono WAV)."""
    spoken = say(text, speaker, out.with_suffix(".said.wav"))
    subprocess.run(
        ["sox", str(spoken), str(out), "pad", f"{lead}", f"{seconds}", "trim", "0", f"{seconds}"],
        check=True,
        capture_output=True,
    )
    spoken.unlink()
    return out


def clip_with_audio(audio: Path, out: Path, *, video_seconds: float, audio_delay: float = 0.0) -> Path:
    """A clip as cameras and screen recorders leave one: ``video_seconds`` of H.264 video and the AAC
    track as long as ``audio`` (no ``-shortest``, so it may stop before the video), starting
    ``audio_delay`` s after the video (an MP4 edit list)."""
    require_tools()
    cmd = ["ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc=size=160x120:rate=10:d={video_seconds}"]
    cmd += ["-itsoffset", f"{audio_delay}"] if audio_delay else []
    cmd += ["-i", str(audio), "-map", "0:v", "-map", "1:a"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def concat_copy(clips: list[Path], out: Path) -> Path:
    """Clips joined the way users join them: ffmpeg's concat demuxer and a stream copy, no re-encoding.

    Each clip's audio track that stops before its video leaves a hole in the joined audio track,
    which the MP4 stores as one long sample duration.
    """
    require_tools()
    quoted = [str(clip.resolve()).replace("'", "'\\''") for clip in clips]
    listing = out.with_suffix(".txt")
    listing.write_text("".join(f"file '{path}'\n" for path in quoted))
    joining = ["ffmpeg", "-y", "-loglevel", "error", "-f", "concat", "-safe", "0", "-i", str(listing)]
    subprocess.run([*joining, "-c", "copy", str(out)], check=True, capture_output=True)
    return out


def speech_onsets(wav: Path, *, quiet_before: float = 1.0, threshold_dbfs: float = -40.0) -> list[float]:
    """Seconds at which sound starts after at least ``quiet_before`` s of quiet: where utterances begin.

    20 ms frames louder than ``threshold_dbfs`` count as sound; the pauses between an espeak
    voice's words are far shorter than a second, so each utterance gives one onset.
    """
    import numpy as np

    samples, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    frame = rate // 50
    mono = samples.mean(axis=1)
    frames = mono[: mono.size - mono.size % frame].reshape(-1, frame)
    loud = np.mean(np.square(frames), axis=1) > 10 ** (threshold_dbfs / 10)
    onsets: list[float] = []
    quiet_run = int(quiet_before * 50)  # the file's start counts as quiet
    for index, is_loud in enumerate(loud):
        if is_loud and quiet_run >= quiet_before * 50:
            onsets.append(index / 50)
        quiet_run = 0 if is_loud else quiet_run + 1
    return onsets


# -- dialogues in any espeak-ng voice (tests/support/voices.py: the voice matrix) ----------------

Voice = tuple[str, int, int]  # espeak-ng voice (language+variant), pitch 0-99, speed in wpm


def say_with(text: str, voice: Voice, out: Path) -> Path:
    """One utterance in the given voice as 16 kHz mono 16-bit WAV (``say`` for voices not in VOICES)."""
    name, pitch, speed = voice
    raw = out.with_suffix(".raw.wav")
    subprocess.run(
        ["espeak-ng", "-v", name, "-p", str(pitch), "-s", str(speed), "-w", str(raw), text],
        check=True,
        capture_output=True,
    )
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True, capture_output=True)
    raw.unlink()
    return out


def converse(
    script: list[tuple[str, str]],
    voices: dict[str, Voice],
    out: Path,
    pauses: list[float],
    lead: float = 0.3,
) -> Reference:
    """Like ``dialogue``, with each speaker's voice given and a pause of its own after each line."""
    require_tools()
    if len(pauses) < len(script):
        raise ValueError("one pause per line of the script")
    work = out.parent / f"{out.stem}_parts"
    work.mkdir(parents=True, exist_ok=True)
    parts: list[Path] = [silence(lead, work / "lead.wav")]
    turns: list[tuple[float, float, str]] = []
    clock = lead
    for index, ((speaker, text), pause) in enumerate(zip(script, pauses, strict=False)):
        part = say_with(text, voices[speaker], work / f"{index:03d}.wav")
        length = sf.info(str(part)).duration
        turns.append((clock, clock + length, speaker))
        parts += [part, silence(pause, work / f"{index:03d}-pause.wav")]
        clock += length + pause
    subprocess.run(["sox", *map(str, parts), str(out)], check=True, capture_output=True)
    shutil.rmtree(work)
    return Reference(audio=out, words=" ".join(text for _, text in script), turns=turns)
