"""Extraction on real generated media: a two-speaker talk as MP4, broken files and odd valid ones."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile as sf

from dhgq.errors import PermanentError, StageTimeout
from dhgq.media.extraction import extract as extraction
from dhgq.media.extraction.extract import extract_audio, probe
from dhgq.media.extraction.ffmpeg import ffmpeg_binary
from tests.support.speech import TWO_SPEAKER_SCRIPT, Reference, dialogue, silence, to_mp4, video_without_audio


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def talk(media: Path) -> tuple[Reference, Path]:
    reference = dialogue(TWO_SPEAKER_SCRIPT, media / "talk.wav")
    return reference, to_mp4(reference.audio, media / "talk.mp4")


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_binary(), "-y", "-loglevel", "error", *args], check=True, capture_output=True)


def test_two_speaker_mp4_gives_16k_mono_wav_compact_copy_and_metrics(
    talk: tuple[Reference, Path], tmp_path: Path
) -> None:
    reference, mp4 = talk
    result = extract_audio(mp4, tmp_path, stem="talk")
    info = sf.info(result.wav_path)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert abs(info.duration - sf.info(str(reference.audio)).duration) < 0.1
    assert result.compact_path and Path(result.compact_path).stat().st_size > 0
    assert Path(result.compact_path).stat().st_size < Path(result.wav_path).stat().st_size / 2
    assert (result.probe.audio_codec, result.probe.video_codec) == ("aac", "h264")
    assert result.probe.size_bytes == mp4.stat().st_size and result.probe.duration_seconds > 60
    metrics = result.quality_metrics
    assert -30 < metrics["integrated_loudness_lufs"] < -10
    assert -6 < metrics["peak_dbfs"] <= 0
    assert 0.05 < metrics["silence_ratio"] < 0.4  # the 0.5 s pauses between turns
    assert metrics["clipping_ratio"] < 0.001
    assert not list(tmp_path.glob("*.part"))


def _truncated_mp4(talk: tuple[Reference, Path], media: Path) -> Path:
    out = media / "truncated.mp4"
    out.write_bytes(talk[1].read_bytes()[: talk[1].stat().st_size // 2])
    return out


def _faststart_truncated_mp4(talk: tuple[Reference, Path], media: Path) -> Path:
    """Index first, data cut: the header promises more audio than the file holds."""
    whole = media / "faststart.mp4"
    _ffmpeg("-i", str(talk[1]), "-c", "copy", "-movflags", "+faststart", str(whole))
    out = media / "faststart-truncated.mp4"
    out.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return out


def _text_as_mp4(media: Path) -> Path:
    out = media / "notes.mp4"
    out.write_text("These are meeting notes, not a video.\n")
    return out


def _empty(media: Path) -> Path:
    out = media / "empty.mp4"
    out.write_bytes(b"")
    return out


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda talk, media: media / "does-not-exist.mp4", "file not found"),
        (lambda talk, media: _empty(media), "empty"),
        (lambda talk, media: _text_as_mp4(media), "not a media file"),
        (_truncated_mp4, "truncated"),
        (_faststart_truncated_mp4, "truncated"),
        (lambda talk, media: video_without_audio(media / "silent-film.mp4"), "no audio track"),
    ],
    ids=["missing", "empty", "text-named-mp4", "truncated", "truncated-faststart", "no-audio-track"],
)
def test_broken_inputs_are_permanent_errors_naming_file_and_reason(
    make, reason: str, talk: tuple[Reference, Path], media: Path, tmp_path: Path
) -> None:
    source = make(talk, media)
    with pytest.raises(PermanentError) as caught:
        extract_audio(source, tmp_path, stem="x")
    assert str(source) in str(caught.value) and reason in str(caught.value)
    assert caught.value.file == str(source)
    assert caught.value.error_class == "permanent"
    assert not list(tmp_path.iterdir())


def test_pure_silence(media: Path, tmp_path: Path) -> None:
    quiet = to_mp4(silence(5.0, media / "quiet.wav"), media / "quiet.mp4", video=False)
    result = extract_audio(quiet, tmp_path, stem="quiet")
    assert abs(sf.info(result.wav_path).duration - 5.0) < 0.1
    assert result.quality_metrics["silence_ratio"] == 1.0
    assert result.quality_metrics["integrated_loudness_lufs"] is None


def test_name_with_spaces_and_non_ascii(talk: tuple[Reference, Path], media: Path, tmp_path: Path) -> None:
    odd = media / "Ünïcode talk – Łódź 会议.mp4"
    shutil.copy(talk[1], odd)
    result = extract_audio(odd, tmp_path / "out dir ü", stem="Ünïcode talk – Łódź 会议")
    assert Path(result.wav_path).name == "Ünïcode talk – Łódź 会议.wav"
    assert sf.info(result.wav_path).duration > 60


def test_mp3_named_mp4(talk: tuple[Reference, Path], media: Path, tmp_path: Path) -> None:
    fake = media / "really-an-mp3.mp4"
    _ffmpeg("-i", str(talk[0].audio), "-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3", str(fake))
    result = extract_audio(fake, tmp_path, stem="mp3")
    assert result.probe.audio_codec == "mp3" and result.probe.format_name == "mp3"
    assert abs(sf.info(result.wav_path).duration - sf.info(str(talk[0].audio)).duration) < 0.1


def test_lossless_source_gets_encoded_compact_copy(talk: tuple[Reference, Path], tmp_path: Path) -> None:
    result = extract_audio(talk[0].audio, tmp_path, stem="wav")
    assert result.compact_path and result.compact_path.endswith((".opus", ".m4a"))
    assert Path(result.compact_path).stat().st_size < Path(result.wav_path).stat().st_size / 5


def test_timeout_kills_ffmpeg_and_is_transient(talk: tuple[Reference, Path], tmp_path: Path) -> None:
    with pytest.raises(StageTimeout) as caught:
        extract_audio(talk[1], tmp_path, stem="slow", timeout=0.001)
    assert caught.value.error_class == "transient" and caught.value.file == str(talk[1])
    assert not list(tmp_path.glob("*"))


def test_probe_without_ffprobe_uses_pyav(talk: tuple[Reference, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    with_ffprobe = probe(talk[1])
    monkeypatch.setattr(extraction, "ffprobe_binary", lambda: None)
    with_av = probe(talk[1])
    assert (with_av.audio_codec, with_av.video_codec, with_av.channels, with_av.sample_rate) == (
        with_ffprobe.audio_codec,
        with_ffprobe.video_codec,
        with_ffprobe.channels,
        with_ffprobe.sample_rate,
    )
    assert abs(with_av.duration_seconds - with_ffprobe.duration_seconds) < 0.1
