"""The pipeline's transcription against faster-whisper alone, on real recordings.

The pipeline adds a VAD filter, word timestamps and speech-level checks around faster-whisper;
on real speech that must never cost words compared with the library's defaults on the same model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dhgq.evaluation import normalise_text, word_errors
from dhgq.media.transcription.engines import load_engine
from dhgq.media.transcription.models import resolve_ct2_model

pytestmark = pytest.mark.slow
FILES = ("jfk.flac", "goforward.wav", "sample.wav")


def wer(reference: str, hypothesis: str) -> float:
    errors, words = word_errors(normalise_text(reference), normalise_text(hypothesis))
    return errors / max(words, 1)


@pytest.fixture(scope="module")
def plain_faster_whisper():  # type: ignore[no-untyped-def]
    from faster_whisper import WhisperModel

    return WhisperModel(str(resolve_ct2_model("tiny.en")), device="cpu", compute_type="int8")


@pytest.mark.parametrize("name", FILES)
def test_pipeline_engine_is_no_worse_than_faster_whisper_alone(
    name: str, real_speech: Path, plain_faster_whisper
) -> None:  # type: ignore[no-untyped-def]
    audio = real_speech / name
    reference = audio.with_suffix(".txt").read_text()
    segments, _info = plain_faster_whisper.transcribe(str(audio))
    plain = wer(reference, " ".join(s.text for s in segments))
    ours = wer(reference, load_engine("faster-whisper", "tiny.en", "int8", None).transcribe(audio).text)
    assert ours <= plain + 1e-9, f"{name}: pipeline WER {ours:.1%} vs faster-whisper alone {plain:.1%}"
