"""Extraction on real generated media: a two-speaker talk as MP4, broken files and odd valid ones,
and clips whose audio track has holes or starts late (joined clips, screen recordings)."""

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
from dhgq.media.types import ExtractionResult
from tests.support.speech import (
    TWO_SPEAKER_SCRIPT,
    Reference,
    clip_with_audio,
    concat_copy,
    dialogue,
    silence,
    speech_onsets,
    speech_track,
    to_mp4,
    video_without_audio,
)

CLIP_SECONDS = 10.0  # each joined clip's video
CLIP_AUDIO_SECONDS = 8.5  # ... and its audio track, 1.5 s shorter: a hole in the joined track
LEAD = 0.5  # silence before each clip's sentence
CLIPS = [
    ("alice", "Hello and welcome. This first clip introduces the speakers."),
    ("bob", "Second clip. Here we talk about storage and search."),
]


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
    # All the audio, then silence to the end of the video (to_mp4's -shortest lets it run on a little).
    assert info.duration > sf.info(str(reference.audio)).duration - 0.05
    assert abs(info.duration - result.probe.duration_seconds) < 0.1
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


# --- the media's clock: holes in the audio track and audio that starts late ---------------------


@pytest.fixture(scope="module")
def joined(media: Path) -> Path:
    """Two clips, each with 8.5 s of audio under 10 s of video, joined by concat and stream copy."""
    clips = []
    for index, (speaker, text) in enumerate(CLIPS):
        track = speech_track(text, speaker, media / f"clip{index}.wav", lead=LEAD, seconds=CLIP_AUDIO_SECONDS)
        clips.append(clip_with_audio(track, media / f"clip{index}.mp4", video_seconds=CLIP_SECONDS))
    return concat_copy(clips, media / "joined.mp4")


@pytest.fixture(scope="module")
def joined_result(joined: Path, tmp_path_factory: pytest.TempPathFactory) -> ExtractionResult:
    return extract_audio(joined, tmp_path_factory.mktemp("joined-out"), stem="joined")


def _plain_decode(source: Path, out: Path) -> Path:
    """The audio as a plain ffmpeg call decodes it (the GPU stages' decode): packets back to back."""
    _ffmpeg("-i", str(source), "-vn", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", str(out))
    return out


def test_joined_clips_fixture_really_has_holes(joined: Path, tmp_path: Path) -> None:
    """What the user's file does to a decoder: the holes vanish and the audio runs short."""
    plain = sf.info(str(_plain_decode(joined, tmp_path / "plain.wav"))).duration
    assert plain < 2 * CLIP_AUDIO_SECONDS + 0.3 < 2 * CLIP_SECONDS - 1


def test_joined_clips_with_audio_holes_keep_the_videos_clock(joined_result: ExtractionResult) -> None:
    wav = Path(joined_result.wav_path)
    assert abs(sf.info(str(wav)).duration - 2 * CLIP_SECONDS) < 0.2
    first, second = speech_onsets(wav)
    assert abs(first - LEAD) < 0.3
    assert abs((second - first) - CLIP_SECONDS) < 0.5  # one clip length later, not 8.5 s
    assert joined_result.quality_metrics["duration_seconds"] == pytest.approx(2 * CLIP_SECONDS, abs=0.2)


def test_joined_clips_words_are_transcribed_at_the_videos_time(joined_result: ExtractionResult) -> None:
    """The project's engine hears the second clip's sentence where the video plays it."""
    from dhgq.media.transcription.engines import load_engine

    transcript = load_engine("faster-whisper", "tiny.en", "int8", None).transcribe(Path(joined_result.wav_path))
    second = [segment for segment in transcript.segments if "second" in segment.text.lower()]
    assert second, transcript.text
    assert abs(second[0].start - (CLIP_SECONDS + LEAD)) < 0.5


def test_joined_clips_compact_copy_keeps_the_wavs_clock(joined_result: ExtractionResult, tmp_path: Path) -> None:
    """Decoded plainly, as the GPU stages do, the compact copy lines up with the WAV."""
    assert joined_result.compact_path
    decoded = _plain_decode(Path(joined_result.compact_path), tmp_path / "compact.wav")
    assert abs(sf.info(str(decoded)).duration - sf.info(joined_result.wav_path).duration) < 0.2
    ours, theirs = speech_onsets(Path(joined_result.wav_path)), speech_onsets(decoded)
    assert len(ours) == len(theirs) == 2
    assert all(abs(a - b) < 0.1 for a, b in zip(ours, theirs, strict=True))


def test_audio_that_starts_after_the_video_starts_late_in_the_wav(media: Path, tmp_path: Path) -> None:
    track = speech_track(CLIPS[0][1], CLIPS[0][0], media / "late.wav", lead=0.0, seconds=6.0)
    late = clip_with_audio(track, media / "late.mp4", video_seconds=CLIP_SECONDS, audio_delay=2.0)
    result = extract_audio(late, tmp_path, stem="late")
    assert abs(speech_onsets(Path(result.wav_path))[0] - 2.0) < 0.3
    assert abs(sf.info(result.wav_path).duration - CLIP_SECONDS) < 0.2
    assert result.compact_path
    decoded = _plain_decode(Path(result.compact_path), tmp_path / "compact.wav")
    assert abs(speech_onsets(decoded)[0] - 2.0) < 0.3


def _cut_in_half(source: Path, out: Path) -> Path:
    out.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return out


@pytest.mark.parametrize("faststart", [False, True], ids=["moov-at-end", "faststart"])
def test_joined_clips_cut_in_half_are_still_truncated(
    faststart: bool, joined: Path, media: Path, tmp_path: Path
) -> None:
    """Filling the holes must not hide a file whose data ends early."""
    source = joined
    if faststart:
        source = media / "joined-faststart.mp4"
        _ffmpeg("-i", str(joined), "-c", "copy", "-movflags", "+faststart", str(source))
    cut = _cut_in_half(source, media / f"joined-cut-{faststart}.mp4")
    with pytest.raises(PermanentError) as caught:
        extract_audio(cut, tmp_path, stem="x")
    assert str(cut) in str(caught.value) and "truncated" in str(caught.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("suffix", "codec"), [("flac", "flac"), ("mkv", "aac")])
def test_other_containers_cut_in_half_are_truncated(
    suffix: str, codec: str, talk: tuple[Reference, Path], media: Path, tmp_path: Path
) -> None:
    """FLAC's header promises a length (the duration check); a cut Matroska says so itself (ffmpeg's message)."""
    whole = media / f"talk.{suffix}"
    _ffmpeg("-i", str(talk[1] if suffix == "mkv" else talk[0].audio), "-c:v", "copy", "-c:a", codec, str(whole))
    cut = _cut_in_half(whole, media / f"talk-cut.{suffix}")
    with pytest.raises(PermanentError) as caught:
        extract_audio(cut, tmp_path, stem="x")
    assert str(cut) in str(caught.value) and "truncated" in str(caught.value)


def test_joined_clips_keep_their_clock_when_pyav_probes(
    joined: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ffprobe (imageio's ffmpeg alone), PyAV's probe gives the same start, length and frame count."""
    monkeypatch.setattr(extraction, "ffprobe_binary", lambda: None)
    result = extract_audio(joined, tmp_path, stem="joined")
    assert abs(sf.info(result.wav_path).duration - 2 * CLIP_SECONDS) < 0.2
    first, second = speech_onsets(Path(result.wav_path))
    assert abs((second - first) - CLIP_SECONDS) < 0.5
