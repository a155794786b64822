"""Transcription with the packaged tiny.en model on generated and real speech."""

from __future__ import annotations

import re
from pathlib import Path

import jiwer
import pytest

from dhgq.errors import ConfigurationError
from dhgq.media.transcription.engines import TranscriptionEngine, load_engine
from tests.support.speech import TWO_SPEAKER_SCRIPT, Reference, dialogue, silence

REAL_SPEECH = Path(__file__).parents[3] / "shared" / "testdata" / "real-speech"


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


@pytest.fixture(scope="module")
def engine() -> TranscriptionEngine:
    return load_engine("faster-whisper", "tiny.en", "int8", None)


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return dialogue(TWO_SPEAKER_SCRIPT, tmp_path_factory.mktemp("talk") / "talk.wav")


@pytest.mark.slow
def test_tiny_en_on_generated_dialogue(engine: TranscriptionEngine, talk: Reference) -> None:
    transcript = engine.transcribe(talk.audio)
    wer = jiwer.wer(normalise(talk.words), normalise(transcript.text))
    assert wer <= 0.15, f"WER {wer:.1%}: {transcript.text}"
    assert (transcript.engine, transcript.model, transcript.language) == ("faster-whisper", "tiny.en", "en")
    assert transcript.text == " ".join(segment.text for segment in transcript.segments)
    assert transcript.duration_seconds and abs(transcript.duration_seconds - talk.turns[-1][1]) < 1.0
    starts = [word.start for segment in transcript.segments for word in segment.words]
    assert starts == sorted(starts) and len(starts) > 100
    assert all(0 < (segment.confidence or 0) <= 1 for segment in transcript.segments)
    assert all(isinstance(segment.start, float) for segment in transcript.segments)


@pytest.mark.slow
def test_jfk_word_perfect(engine: TranscriptionEngine) -> None:
    if not (REAL_SPEECH / "jfk.flac").is_file():
        pytest.skip(f"real-speech test data not found at {REAL_SPEECH}")
    transcript = engine.transcribe(REAL_SPEECH / "jfk.flac")
    assert normalise(transcript.text) == normalise((REAL_SPEECH / "jfk.txt").read_text())


@pytest.mark.slow
def test_silence_gives_empty_transcript(engine: TranscriptionEngine, tmp_path: Path) -> None:
    transcript = engine.transcribe(silence(5.0, tmp_path / "quiet.wav"))
    assert (transcript.text, transcript.segments) == ("", [])
    assert transcript.duration_seconds == pytest.approx(5.0, abs=0.01)


@pytest.mark.slow
def test_engine_is_loaded_once_per_process(engine: TranscriptionEngine) -> None:
    assert load_engine("faster-whisper", "tiny.en", "int8", None) is engine
    assert isinstance(engine, TranscriptionEngine)


def test_unknown_engine_and_model_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="unknown whisper engine"):
        load_engine("vosk", "tiny.en", "int8", None)
    with pytest.raises(ConfigurationError, match="unknown Whisper model 'huge-v9'"):
        load_engine("faster-whisper", "huge-v9", "int8", None)


@pytest.mark.parametrize("seconds", [0.0, 0.005, 3.0, 71.3])
def test_blockwise_features_equal_faster_whispers(seconds: float) -> None:
    """Same log-mel spectrogram, block boundaries and global clamp included."""
    import numpy as np
    from faster_whisper.feature_extractor import FeatureExtractor

    from dhgq.media.transcription.features import BlockwiseFeatureExtractor

    rng = np.random.default_rng(1)
    t = np.arange(int(seconds * 16000)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) * (t % 7 < 5) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    ours, theirs = BlockwiseFeatureExtractor()(audio), FeatureExtractor()(audio)
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 1e-5


@pytest.mark.slow
def test_a_long_wav_is_transcribed_in_windows_cut_at_silences(
    engine: TranscriptionEngine, talk: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an hour goes through (10-minute windows, memory flat), on the talk with 20 s windows:
    the windows tile the file, every cut lies in a pause, and the words and their times come out
    as well as from one piece."""
    import soundfile as sf

    from dhgq.media.transcription.engines import SAMPLE_RATE, audio_windows

    whole = engine.transcribe(talk.audio)
    windows = list(audio_windows(talk.audio, window=20.0, search=8.0))
    assert len(windows) >= 3
    offsets = [offset for offset, _ in windows]
    ends = [offset + samples.size / SAMPLE_RATE for offset, samples in windows]
    assert offsets[0] == 0 and ends[:-1] == pytest.approx(offsets[1:])
    assert max(end - offset for offset, end in zip(offsets, ends, strict=True)) <= 20
    assert ends[-1] == pytest.approx(sf.info(str(talk.audio)).duration)
    for cut in offsets[1:]:  # no word of the script is cut in two
        assert not any(start + 0.05 < cut < end - 0.05 for start, end, _ in talk.turns), cut

    monkeypatch.setattr(engine, "window_seconds", 20.0)
    reports: list[tuple[float, float]] = []
    windowed = engine.transcribe(talk.audio, progress=lambda *r: reports.append(r))
    assert windowed.duration_seconds == pytest.approx(whole.duration_seconds)
    times = [(w.start, w.end) for s in windowed.segments for w in s.words]
    assert times == sorted(times)
    # as good as in one piece (the 10-minute windows of real use restart Whisper's context 6 times an hour)
    assert jiwer.wer(normalise(talk.words), normalise(windowed.text)) <= 0.15
    done = [d for d, _ in reports]
    assert done == sorted(done) and max(done) > ends[0] and {total for _, total in reports} == {ends[-1]}
