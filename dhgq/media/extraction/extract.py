"""Extraction: probe a recording and pull its audio out in one ffmpeg pass.

One pass decodes the first audio stream once and writes both outputs: the 16 kHz mono
pcm_s16le WAV the models read, and a compact copy to keep (the original AAC/MP3/Opus stream
copied when it is already small and its samples already are its timeline, else Opus encoded
from the 16 kHz branch). The ebur128 filter rides along in the same pass for integrated
loudness; the cheap metrics (peak, silence, clipping) come from numpy on the WAV, which costs
far less than a second ffmpeg run.

The WAV follows the media's clock, not the audio packets: a word 40 s into the video is 40 s
into the WAV, and so into the transcript. Joined clips, screen recordings and live captures
have audio tracks with holes (stretches of the timeline no packet covers) or that start after
the video; decoding the packets back to back would drop those stretches and pull every later
word early. ``aresample``'s timestamp compensation fills them with silence instead.

Every refusal is a ``PermanentError`` naming the file and the reason, because retrying a
broken file cannot help; only a timeout is transient.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from dhgq.errors import PermanentError
from dhgq.media.extraction.ffmpeg import (
    ffmpeg_binary,
    ffmpeg_input,
    ffprobe_binary,
    last_error_line,
    run_tool,
)
from dhgq.media.types import ExtractionResult, ProbeInfo

PRIVATE_DIR = 0o700  # extracted audio: readable by the user running dhgq only, whatever the umask
PRIVATE_FILE = 0o600

SAMPLE_RATE = 16_000
SILENCE_DBFS = -50.0  # a 20 ms frame quieter than this counts as silent
SILENCE_MIN_SECONDS = 0.5  # ... when it is part of a run at least this long (as silencedetect's d=)
COMPACT_MAX_BITRATE = 192_000  # copy the source stream as the compact copy below this bitrate
# aresample pads a hole (or drops an overlap) in the audio timestamps longer than this; shorter
# jitter is left alone, so the WAV never drifts further than this from the media's clock.
TIMESTAMP_TOLERANCE = 0.05
# A stream copy keeps the compact copy's clock equal to the WAV's only when the track starts at
# the media's start, has no holes and ends with it, each to within this (under a syllable).
COPY_TOLERANCE = 0.1
# Demuxers' own words for data that ends before their index does, as ffmpeg prints them at line
# start (so a file *named* "partial file.mp4" matches nothing): ``partial file``, an MP4 sample
# past the end of the file; ``File ended prematurely``, a cut Matroska/WebM; ``Packet corrupt``
# from these demuxers, a short read at the end of the file (mpegts says it for a mid-stream
# continuity error instead, so it is not listed); the missing moov, an MP4 whose index never
# arrived. A decoding error alone ("Invalid data found") is no sign either: live captures have
# those mid-stream and their data does not end early.
_TRUNCATION_MESSAGES = re.compile(
    r"^\[(?:mov|matroska|wav)\b[^]]* @ [^]]*\] "
    r"(?:stream \d+, offset 0x[0-9a-f]+: partial file|File ended prematurely|Packet corrupt|moov atom not found).*$",
    re.M,
)
# Containers whose timestamps count samples (MP3 and ADTS frames, Ogg granule positions): with
# no video beside them their tracks have no holes to lose; ffprobe gives no frame count for them.
_SAMPLE_CLOCKED_FORMATS = {"mp3", "aac", "ogg"}
# Source codec -> (file suffix, ffmpeg muxer) for a stream copy that needs no re-encoding.
_COPYABLE: dict[str, tuple[str, str]] = {
    "aac": ("m4a", "ipod"),
    "mp3": ("mp3", "mp3"),
    "opus": ("opus", "opus"),
}


COMPACT_TYPES = {"opus": "audio/ogg", "m4a": "audio/mp4", "mp3": "audio/mpeg"}


def compact_copy_of(wav: Path) -> Path | None:
    """The compact copy ``extract_audio`` wrote beside ``wav`` (same stem, a compressed suffix), if any."""
    for suffix in COMPACT_TYPES:
        candidate = wav.with_suffix(f".{suffix}")
        if candidate.is_file():
            return candidate
    return None


def probe(path: Path, *, timeout: float | None = None) -> ProbeInfo:
    """Describe a media file, refusing (PermanentError) one that is missing, empty or unreadable."""
    return _probe_info(Path(path), _probe_raw(Path(path), timeout))


def extract_audio(source: Path, out_dir: Path, *, stem: str, timeout: float | None = None) -> ExtractionResult:
    """Write ``<stem>.wav`` (16 kHz mono s16) and a compact copy into ``out_dir``; measure quality.

    ``timeout`` bounds the whole extraction; ffmpeg is killed and ``StageTimeout`` raised past it.
    """
    source = Path(source)
    started = time.monotonic()
    raw = _probe_raw(source, timeout)
    info = _probe_info(source, raw)
    audio = _first_stream(raw, "audio")
    if audio is None:
        kinds = ", ".join(f"{s.get('codec_type')} {s.get('codec_name')}" for s in raw.get("streams", []))
        raise PermanentError(f"{source}: has no audio track (streams: {kinds or 'none'})", file=str(source))
    timeline = _timeline(raw, audio)
    private_dir(out_dir)
    wav = out_dir / f"{stem}.wav"
    compact, args = _plan_outputs(source, audio, timeline, out_dir, stem, wav)
    partials = [_partial(wav)] + ([_partial(compact)] if compact else [])
    try:
        done = run_tool(args, timeout=_remaining(timeout, started), file=source)
        if done.returncode != 0:
            raise PermanentError(
                f"{source}: ffmpeg could not decode the audio ({last_error_line(done.stderr)})",
                file=str(source),
            )
        metrics = _quality_metrics(_partial(wav), source, done.stderr)
        _refuse_truncated(source, timeline, metrics["duration_seconds"], done.stderr)
        for path in [wav] + ([compact] if compact else []):
            _partial(path).chmod(PRIVATE_FILE)
            _partial(path).replace(path)
    finally:
        for partial in partials:
            partial.unlink(missing_ok=True)
    metrics["extraction_seconds"] = round(time.monotonic() - started, 3)
    return ExtractionResult(
        wav_path=str(wav), compact_path=str(compact) if compact else None, probe=info, quality_metrics=metrics
    )


# --- probing -----------------------------------------------------------------------------------


def _probe_raw(path: Path, timeout: float | None) -> dict[str, Any]:
    """ffprobe's JSON (``-show_format -show_streams``), or the same shape built with PyAV."""
    _refuse_unusable_path(path)
    ffprobe = ffprobe_binary()
    if ffprobe is None:
        return _probe_with_av(path)
    args = [ffprobe, "-v", "error", "-show_format", "-show_streams", "-of", "json", ffmpeg_input(path)]
    done = run_tool(args, timeout=timeout, file=path)
    if done.returncode != 0:
        raise PermanentError(f"{path}: {_unreadable_reason(path, done.stderr)}", file=str(path))
    raw: dict[str, Any] = json.loads(done.stdout.decode("utf-8", errors="replace") or "{}")
    if not raw.get("streams"):
        raise PermanentError(f"{path}: not a media file (ffprobe found no streams)", file=str(path))
    return raw


def _refuse_unusable_path(path: Path) -> None:
    if not path.exists():
        raise PermanentError(f"{path}: file not found", file=str(path))
    if not path.is_file():
        raise PermanentError(f"{path}: not a regular file", file=str(path))
    if path.stat().st_size == 0:
        raise PermanentError(f"{path}: file is empty (0 bytes)", file=str(path))


def _unreadable_reason(path: Path, stderr: str) -> str:
    """Why ffprobe gave up, in words: a truncated MP4 and a renamed text file fail alike."""
    with path.open("rb") as handle:
        head = handle.read(512)
    if head[4:8] == b"ftyp":  # an MP4 whose index (moov, written last) never arrived
        return "truncated or unfinished MP4 (its moov index is missing or damaged)"
    if _looks_like_text(head):
        return "not a media file (it contains text)"
    return f"not a media file ffmpeg can read ({last_error_line(stderr)})"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _probe_with_av(path: Path) -> dict[str, Any]:
    """The ffprobe-shaped description through PyAV, for when only imageio's ffmpeg exists."""
    import av

    try:
        with av.open(str(path)) as container:
            streams = [
                {
                    "codec_type": stream.type,
                    "codec_name": stream.codec_context.codec.canonical_name,
                    "channels": getattr(stream.codec_context, "channels", None),
                    "sample_rate": getattr(stream.codec_context, "sample_rate", None),
                    "bit_rate": stream.codec_context.bit_rate,
                    "duration": _av_seconds(stream.duration, stream.time_base),
                    "start_time": _av_seconds(stream.start_time, stream.time_base),
                    "nb_frames": stream.frames or None,
                    "profile": getattr(stream.codec_context, "profile", None),
                    "disposition": {"attached_pic": int(bool(stream.disposition & av.stream.Disposition.attached_pic))},
                }
                for stream in container.streams
            ]
            duration = container.duration / 1_000_000 if container.duration else None
            start = container.start_time / 1_000_000 if container.start_time is not None else None
            fmt = {
                "format_name": container.format.name,
                "duration": duration,
                "start_time": start,
                "bit_rate": container.bit_rate,
            }
    except av.FFmpegError as exc:
        raise PermanentError(f"{path}: {_unreadable_reason(path, str(exc))}", file=str(path)) from exc
    if not streams:
        raise PermanentError(f"{path}: not a media file (no streams found)", file=str(path))
    return {"format": fmt, "streams": streams}


def _av_seconds(value: int | None, time_base: Any) -> float | None:
    """A PyAV stream time (in its time base) in seconds, as ffprobe prints it; None when unknown."""
    return float(value * time_base) if value is not None and time_base else None


def _probe_info(path: Path, raw: dict[str, Any]) -> ProbeInfo:
    fmt = raw.get("format", {})
    audio = _first_stream(raw, "audio") or {}
    video = _first_stream(raw, "video") or {}
    return ProbeInfo(
        duration_seconds=_number(fmt.get("duration"), float) or _number(audio.get("duration"), float) or 0.0,
        format_name=str(fmt.get("format_name") or "unknown"),
        audio_codec=audio.get("codec_name"),
        video_codec=video.get("codec_name"),
        channels=_number(audio.get("channels"), int),
        sample_rate=_number(audio.get("sample_rate"), int),
        bitrate=_number(fmt.get("bit_rate"), int),
        size_bytes=path.stat().st_size,
    )


def _first_stream(raw: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The first stream of a kind; cover art (an attached picture) is not a video track."""
    for stream in raw.get("streams", []):
        if stream.get("codec_type") == kind and not stream.get("disposition", {}).get("attached_pic"):
            return dict(stream)
    return None


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    try:
        return kind(float(value)) if value not in (None, "N/A", "") else None
    except (TypeError, ValueError):
        return None


# --- the media's clock -------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """Where the audio track sits on the media's clock, in seconds from the container's start.

    That start is a player's 0:00 and ffmpeg's input time 0 (it subtracts the container's start
    time), so it is also the WAV's 0. Read from the probe before the pass, because one ffmpeg
    run must already know how far to pad the WAV and whether a stream copy keeps its clock.
    """

    audio_start: float  # the track's first packet (a later start is leading silence)
    audio_end: float | None  # where the track's index says it ends; None where the container does not say
    media_end: float | None  # the container's duration: where the last track ends
    gapless: bool  # the track's frames fill its duration: no stretch of the timeline without packets

    @property
    def trailing_silence(self) -> float:
        """Seconds between the end of the audio and the end of the media (a video that runs on)."""
        if self.audio_end is None or self.media_end is None:
            return 0.0
        return max(0.0, self.media_end - self.audio_end)

    @property
    def expected_seconds(self) -> float | None:
        """The WAV's length when every packet the index lists decodes; None when the index does not say."""
        return None if self.audio_end is None else self.audio_end + self.trailing_silence

    @property
    def samples_are_clock(self) -> bool:
        """Whether the track's decoded samples, played back to back, are already the media's clock.

        Only then can the compact copy be a stream copy: the GPU stages decode it with a plain
        ffmpeg call that, like any decoder, drops timestamp holes and leading offsets.
        """
        return (
            self.gapless
            and self.audio_start <= COPY_TOLERANCE
            and self.audio_end is not None
            and self.trailing_silence <= COPY_TOLERANCE
        )


def _timeline(raw: dict[str, Any], audio: dict[str, Any]) -> Timeline:
    """The audio track's place on the media's clock, from the probe (ffprobe's or PyAV's)."""
    fmt = raw.get("format", {})
    origin = _number(fmt.get("start_time"), float)
    first = _number(audio.get("start_time"), float)
    start = max(0.0, first - origin) if first is not None and origin is not None else 0.0
    length = _number(audio.get("duration"), float)
    return Timeline(
        audio_start=start,
        audio_end=None if length is None else start + length,
        media_end=_number(fmt.get("duration"), float),
        gapless=_gapless(fmt, audio, length, video=_first_stream(raw, "video") is not None),
    )


def _gapless(fmt: dict[str, Any], audio: dict[str, Any], length: float | None, *, video: bool) -> bool:
    """Whether the packets cover the track's duration (frames x samples per frame), as far as the index shows.

    A concat-joined MP4 stores each hole as one long sample duration, so its track runs longer
    than its frames fill. Where the frame count or frame size is unknown (Matroska, Opus), the
    answer is no: the copy is then encoded, which is only slower, never wrong.
    """
    if str(fmt.get("format_name")) in _SAMPLE_CLOCKED_FORMATS and not video:
        return True
    frames = _number(audio.get("nb_frames"), int)
    rate = _number(audio.get("sample_rate"), int)
    per_frame = _samples_per_frame(audio, rate)
    if not (frames and rate and per_frame and length):
        return False
    return frames * per_frame / rate >= length - COPY_TOLERANCE


def _samples_per_frame(audio: dict[str, Any], rate: int | None) -> int | None:
    """Samples each packet decodes to, for the codecs whose frames are a fixed size (the copyable ones)."""
    codec = audio.get("codec_name")
    if codec == "aac":
        return 2048 if str(audio.get("profile") or "").startswith("HE") else 1024  # SBR doubles the rate
    if codec == "mp3":
        return 1152 if (rate or 0) >= 32_000 else 576  # MPEG-1 layer III, else MPEG-2/2.5
    return None


# --- the ffmpeg pass ---------------------------------------------------------------------------


def _plan_outputs(
    source: Path, audio: dict[str, Any], timeline: Timeline, out_dir: Path, stem: str, wav: Path
) -> tuple[Path | None, list[str]]:
    """The ffmpeg command: decode once, put on the media's clock, split to WAV (+ loudness) and the compact copy."""
    chain = _wav_chain(timeline)
    codec = audio.get("codec_name")
    bitrate = _number(audio.get("bit_rate"), int) or 0
    copy = codec in _COPYABLE and bitrate <= COMPACT_MAX_BITRATE and timeline.samples_are_clock
    encoder = _compact_encoder()
    graph = f"[0:a:0]{chain}[wav]" if copy or encoder is None else f"[0:a:0]{chain},asplit=2[wav][cmp]"
    args = [ffmpeg_binary(), "-nostdin", "-hide_banner", "-nostats", "-loglevel", "info", "-y"]
    args += ["-vn", "-sn", "-dn", "-i", ffmpeg_input(source), "-filter_complex", graph]
    args += ["-map", "[wav]", "-c:a", "pcm_s16le", "-f", "wav", str(_partial(wav))]
    if copy:
        suffix, muxer = _COPYABLE[str(codec)]
        compact = out_dir / f"{stem}.{suffix}"
        args += ["-map", "0:a:0", "-c:a", "copy", "-map_metadata", "-1", "-f", muxer, str(_partial(compact))]
        return compact, args
    if encoder is None:
        return None, args  # a stream copy off the clock would mistime the GPU stages; they read the WAV
    compact = out_dir / f"{stem}.{encoder[0]}"
    args += ["-map", "[cmp]", *encoder[2:], "-f", encoder[1], str(_partial(compact))]
    return compact, args


def _wav_chain(timeline: Timeline) -> str:
    """The filters from decoded audio to the 16 kHz mono WAV on the media's clock.

    ``async=1`` makes aresample compare each frame's timestamp with the samples written so far
    and pad a hole with silence (or drop an overlap) once they differ by ``min_hard_comp``;
    ``first_pts=0`` starts that count at the container's start, so audio that begins later
    gets leading silence instead of being pulled to 0. ``apad`` then runs the WAV on to the end
    of the media (a video whose audio stops early). A fixed ``pad_dur`` where the index gives the
    track's end, so a file cut short still decodes short and is refused; ``whole_dur`` where it
    does not (Matroska), and only ffmpeg's own messages tell truncation there.
    """
    resample = f"aresample={SAMPLE_RATE}:async=1:min_hard_comp={TIMESTAMP_TOLERANCE}:first_pts=0"
    chain = f"{resample},aformat=channel_layouts=mono"
    if timeline.audio_end is not None and timeline.trailing_silence > 1 / SAMPLE_RATE:
        chain += f",apad=pad_dur={timeline.trailing_silence:.6f}"
    elif timeline.audio_end is None and timeline.media_end:
        chain += f",apad=whole_dur={timeline.media_end:.6f}"
    return chain + ",ebur128=framelog=verbose"


@lru_cache(maxsize=1)
def _compact_encoder() -> tuple[str, ...] | None:
    """(suffix, muxer, *codec options): Opus at speech bitrate, else AAC, else none."""
    done = run_tool([ffmpeg_binary(), "-hide_banner", "-encoders"], timeout=30, file=Path(ffmpeg_binary()))
    if re.search(r"^\s*A\S*\s+libopus\b", done.stdout.decode(errors="replace"), re.M):
        # Complexity 0 with 60 ms frames encodes ~1000x realtime (voip mode is half as fast);
        # at 24 kb/s speech stays clear.
        opus = ["-c:a", "libopus", "-b:a", "24k", "-application", "audio", "-compression_level", "0"]
        return ("opus", "opus", *opus, "-frame_duration", "60")
    if re.search(r"^\s*A\S*\s+aac\b", done.stdout.decode(errors="replace"), re.M):
        return ("m4a", "ipod", "-c:a", "aac", "-b:a", "32k")
    return None


def private_dir(path: Path) -> None:
    """``path``, and the parents it lacks, made for this user only (0700): a talk's audio is its owner's."""
    for directory in reversed([p for p in (path, *path.parents) if not p.exists()]):
        directory.mkdir(mode=PRIVATE_DIR, exist_ok=True)
    path.chmod(PRIVATE_DIR)


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _remaining(timeout: float | None, started: float) -> float | None:
    return None if timeout is None else max(0.1, timeout - (time.monotonic() - started))


def _wav_blocks(path: Path, source: Path, block: int = 60 * SAMPLE_RATE) -> Iterator[np.ndarray]:
    """The extracted WAV's int16 samples, a minute at a time (an hour whole would be 115 MB, and
    its float copies several times that)."""
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise PermanentError(f"{source}: ffmpeg wrote no readable audio ({exc})", file=str(source)) from exc
    with handle:
        if handle.samplerate != SAMPLE_RATE or handle.channels != 1:
            raise PermanentError(f"{source}: extracted audio is not 16 kHz mono", file=str(source))
        while True:
            samples = handle.read(block, dtype="int16")
            if samples.size == 0:
                return
            yield samples


def _refuse_truncated(source: Path, timeline: Timeline, decoded: float, stderr: str) -> None:
    """Refuse a file whose data ends before its index does: it was cut off in transfer.

    Two signs count: the demuxer saying so, and a WAV (holes already filled, tail already
    padded) far shorter than the track's index promises. Fewer decoded samples than the track's
    duration is no sign on its own: that is a track with holes, which the pass has filled.
    """
    said = [match.group(0).strip() for match in _TRUNCATION_MESSAGES.finditer(stderr)]
    if said:  # the last is the most telling: an MP4 says "Packet corrupt", then "partial file"
        line = re.sub(r" @ 0x[0-9a-f]+\]", "]", said[-1])  # the demuxer's name, not its address
        raise PermanentError(f"{source}: truncated file, its data ends early (ffmpeg: {line})", file=str(source))
    expected = timeline.expected_seconds
    if expected and decoded < expected - max(0.5, 0.02 * expected):
        raise PermanentError(
            f"{source}: truncated file (decoded {decoded:.1f} s of the {expected:.1f} s its header promises)",
            file=str(source),
        )


# --- quality metrics ---------------------------------------------------------------------------


def _quality_metrics(wav: Path, source: Path, ffmpeg_stderr: str) -> dict[str, Any]:
    """Loudness from ebur128's summary; peak, RMS, silence and clipping from the samples, read a
    block at a time so that memory does not grow with the talk."""
    lufs, lra = _ebur128_summary(ffmpeg_stderr)
    count, peak, squares, clipped = 0, 0, 0.0, 0
    frame = SAMPLE_RATE // 50
    levels: list[np.ndarray] = []  # mean square of each 20 ms frame
    carry = np.zeros(0, dtype=np.int16)
    for block in _wav_blocks(wav, source):
        wide = block.astype(np.int32)
        count += block.size
        peak = max(peak, int(np.max(np.abs(wide))))
        squares += float(np.sum(np.square(wide, dtype=np.float64)))
        clipped += int(np.count_nonzero(np.abs(wide) >= 32767))
        joined = np.concatenate([carry, block])
        whole = joined.size - joined.size % frame
        x = joined[:whole].astype(np.float64) / 32768.0
        levels.append(np.mean(np.square(x.reshape(-1, frame)), axis=1))
        carry = joined[whole:]
    rms = float(np.sqrt(squares / count)) / 32768.0 if count else 0.0
    return {
        "duration_seconds": round(count / SAMPLE_RATE, 3),
        "integrated_loudness_lufs": lufs,
        "loudness_range_lu": lra,
        "peak_dbfs": _dbfs(min(peak, 32768) / 32768.0),
        "rms_dbfs": _dbfs(rms),
        "silence_ratio": round(_silence_ratio(np.concatenate(levels) if levels else np.zeros(0)), 4),
        "clipping_ratio": round(clipped / max(1, count), 6),
    }


def _ebur128_summary(stderr: str) -> tuple[float | None, float | None]:
    """Integrated loudness (None when all gated out as silence) and loudness range."""
    summary = stderr.rsplit("Summary:", 1)[-1]
    lufs = re.search(r"I:\s*(-?[\d.]+) LUFS", summary)
    lra = re.search(r"LRA:\s*(-?[\d.]+) LU", summary)
    loudness = float(lufs.group(1)) if lufs else None
    if loudness is not None and loudness <= -70.0:
        return None, None
    return loudness, float(lra.group(1)) if lra else None


def _dbfs(amplitude: float) -> float | None:
    """dBFS rounded for storage; None for digital silence (``-inf`` is not JSON)."""
    return round(20.0 * float(np.log10(amplitude)), 2) if amplitude > 0 else None


def _silence_ratio(levels: np.ndarray) -> float:
    """Share of the audio inside quiet runs of at least SILENCE_MIN_SECONDS (as silencedetect),
    from the mean square of each 20 ms frame."""
    if levels.size == 0:
        return 1.0
    quiet = levels < 10 ** (SILENCE_DBFS / 10)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], quiet.astype(np.int8), [0]))))
    runs = edges[1::2] - edges[::2]
    min_frames = int(SILENCE_MIN_SECONDS * 50)
    return float(runs[runs >= min_frames].sum()) / levels.size
