"""Extraction: probe a recording and pull its audio out in one ffmpeg pass.

One pass decodes the first audio stream once and writes both outputs: the 16 kHz mono
pcm_s16le WAV the models read, and a compact copy to keep (the original AAC/MP3/Opus stream
copied when it is already small, else Opus encoded from the 16 kHz branch). The ebur128 filter
rides along in the same pass for integrated loudness; the cheap metrics (peak, silence,
clipping) come from numpy on the WAV, which costs far less than a second ffmpeg run.

Every refusal is a ``PermanentError`` naming the file and the reason, because retrying a
broken file cannot help; only a timeout is transient.
"""

from __future__ import annotations

import json
import re
import time
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

SAMPLE_RATE = 16_000
SILENCE_DBFS = -50.0  # a 20 ms frame quieter than this counts as silent
SILENCE_MIN_SECONDS = 0.5  # ... when it is part of a run at least this long (as silencedetect's d=)
COMPACT_MAX_BITRATE = 192_000  # copy the source stream as the compact copy below this bitrate
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
    out_dir.mkdir(parents=True, exist_ok=True)
    wav = out_dir / f"{stem}.wav"
    compact, args = _plan_outputs(source, audio, out_dir, stem, wav)
    partials = [_partial(wav)] + ([_partial(compact)] if compact else [])
    try:
        done = run_tool(args, timeout=_remaining(timeout, started), file=source)
        if done.returncode != 0:
            raise PermanentError(
                f"{source}: ffmpeg could not decode the audio ({last_error_line(done.stderr)})",
                file=str(source),
            )
        samples = _read_wav(_partial(wav), source)
        _refuse_truncated(source, audio, info, samples.size / SAMPLE_RATE, done.stderr)
        for path in [wav] + ([compact] if compact else []):
            _partial(path).replace(path)
    finally:
        for partial in partials:
            partial.unlink(missing_ok=True)
    metrics = _quality_metrics(samples, done.stderr)
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
                    "duration": float(stream.duration * stream.time_base)
                    if stream.duration and stream.time_base
                    else None,
                    "disposition": {"attached_pic": int(bool(stream.disposition & av.stream.Disposition.attached_pic))},
                }
                for stream in container.streams
            ]
            duration = container.duration / 1_000_000 if container.duration else None
            fmt = {"format_name": container.format.name, "duration": duration, "bit_rate": container.bit_rate}
    except av.FFmpegError as exc:
        raise PermanentError(f"{path}: {_unreadable_reason(path, str(exc))}", file=str(path)) from exc
    if not streams:
        raise PermanentError(f"{path}: not a media file (no streams found)", file=str(path))
    return {"format": fmt, "streams": streams}


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


# --- the ffmpeg pass ---------------------------------------------------------------------------


def _plan_outputs(
    source: Path, audio: dict[str, Any], out_dir: Path, stem: str, wav: Path
) -> tuple[Path | None, list[str]]:
    """The ffmpeg command: decode once, split to WAV (+ loudness) and the compact copy."""
    chain = f"aresample={SAMPLE_RATE},aformat=channel_layouts=mono,ebur128=framelog=verbose"
    codec = audio.get("codec_name")
    bitrate = _number(audio.get("bit_rate"), int) or 0
    copy = codec in _COPYABLE and bitrate <= COMPACT_MAX_BITRATE
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
        return None, args
    compact = out_dir / f"{stem}.{encoder[0]}"
    args += ["-map", "[cmp]", *encoder[2:], "-f", encoder[1], str(_partial(compact))]
    return compact, args


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


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _remaining(timeout: float | None, started: float) -> float | None:
    return None if timeout is None else max(0.1, timeout - (time.monotonic() - started))


def _read_wav(path: Path, source: Path) -> np.ndarray:
    try:
        samples, rate = sf.read(str(path), dtype="int16", always_2d=False)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise PermanentError(f"{source}: ffmpeg wrote no readable audio ({exc})", file=str(source)) from exc
    if rate != SAMPLE_RATE or samples.ndim != 1:
        raise PermanentError(f"{source}: extracted audio is not 16 kHz mono", file=str(source))
    return samples


def _refuse_truncated(source: Path, audio: dict[str, Any], info: ProbeInfo, decoded: float, stderr: str) -> None:
    """A file whose index promises more audio than its data holds was cut off in transfer."""
    expected = _number(audio.get("duration"), float) or info.duration_seconds
    short = expected > 0 and decoded < expected - max(0.5, 0.02 * expected)
    if "partial file" in stderr or short:
        raise PermanentError(
            f"{source}: truncated file (decoded {decoded:.1f} s of the {expected:.1f} s its header promises)",
            file=str(source),
        )


# --- quality metrics ---------------------------------------------------------------------------


def _quality_metrics(samples: np.ndarray, ffmpeg_stderr: str) -> dict[str, Any]:
    """Loudness from ebur128's summary; peak, RMS, silence and clipping from the samples."""
    lufs, lra = _ebur128_summary(ffmpeg_stderr)
    x = samples.astype(np.float32) / 32768.0
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    return {
        "duration_seconds": round(samples.size / SAMPLE_RATE, 3),
        "integrated_loudness_lufs": lufs,
        "loudness_range_lu": lra,
        "peak_dbfs": _dbfs(peak),
        "rms_dbfs": _dbfs(rms),
        "silence_ratio": round(_silence_ratio(x), 4),
        "clipping_ratio": round(
            float(np.count_nonzero(np.abs(samples.astype(np.int32)) >= 32767)) / max(1, samples.size), 6
        ),
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


def _silence_ratio(x: np.ndarray) -> float:
    """Share of the audio inside quiet runs of at least SILENCE_MIN_SECONDS (as silencedetect)."""
    frame = SAMPLE_RATE // 50
    frames = x[: x.size - x.size % frame].reshape(-1, frame)
    if frames.shape[0] == 0:
        return 1.0
    quiet = np.mean(np.square(frames), axis=1) < 10 ** (SILENCE_DBFS / 10)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], quiet.astype(np.int8), [0]))))
    runs = edges[1::2] - edges[::2]
    min_frames = int(SILENCE_MIN_SECONDS * 50)
    return float(runs[runs >= min_frames].sum()) / frames.shape[0]
