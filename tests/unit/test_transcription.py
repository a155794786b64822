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
