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


# -- speakers on recordings never tuned on (tests/data/accuracy-split.toml) ----------------------

REPO = Path(__file__).resolve().parents[2]
MEETINGS = REPO / "tests" / "data" / "real-meetings"
SPLIT = REPO / "tests" / "data" / "accuracy-split.toml"


@pytest.fixture(scope="module")
def validation_scores(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The local diarizer on every validation recording (all in tests/data/real-meetings), scored
    as `dhgq eval --split` scores them."""
    from dhgq.evaluation import evaluate_folder, load_split
    from dhgq.media.diarization.engines import load_diarizer

    split = load_split(SPLIT)
    diarizer = load_diarizer("local")
    validation = {name for name, part in split.items() if part == "validation"}
    folder = tmp_path_factory.mktemp("validation")
    for name in validation:  # the validation recordings alone (the tuning ones need no time here)
        for path in (MEETINGS / name, (MEETINGS / name).with_suffix(".rttm")):
            (folder / path.name).symlink_to(path)
    report = evaluate_folder(folder, diarize=lambda path: diarizer.diarize(path), split=split)
    assert validation <= {f.name for f in report.files}
    return {f.name: f for f in report.files if f.name in validation}, report.parts["validation"]


def test_the_validation_recordings_are_all_scored(validation_scores) -> None:  # type: ignore[no-untyped-def]
    files, part = validation_scores
    assert len(files) == 8 and all(f.error is None and f.der is not None for f in files.values())
    assert part.counts_scored == 8


def test_pooled_der_on_recordings_never_tuned_on(validation_scores) -> None:  # type: ignore[no-untyped-def]
    """39.4% when measured (38.7% before issue 24's count, 48.5% with the right count forced on
    every file: most of it is overlapped and quiet speech the segmentation misses)."""
    _, part = validation_scores
    assert part.der is not None and part.der <= 0.43


def test_no_speaker_is_invented_on_a_recording_never_tuned_on(validation_scores) -> None:  # type: ignore[no-untyped-def]
    """At most one speaker more than the reference, and every count says how sure it is."""
    files, _ = validation_scores
    for f in files.values():
        assert f.speakers_found is not None and f.speakers_reference is not None
        assert f.speakers_found <= f.speakers_reference + 1, f.name
        assert f.count_confidence is None or 0.0 < f.count_confidence <= 1.0


@pytest.mark.parametrize(
    "name",
    [
        "trn03.opus",  # one man talks for 29 s, the other for 1.2 s
        pytest.param(
            "dev01.opus",
            marks=pytest.mark.xfail(reason="known miss: 3 of 2 (posterior flat over 2-4 at 27-29%)", strict=False),
        ),
    ],
)
def test_two_speakers_never_tuned_on_are_two(validation_scores, name: str) -> None:  # type: ignore[no-untyped-def]
    files, _ = validation_scores
    assert (files[name].speakers_found, files[name].speakers_reference) == (2, 2)


def test_who_said_which_word_on_a_real_conversation(real_speech: Path, tmp_path: Path) -> None:
    """cpWER (meeteval) on sample.wav's speaker-attributed reference: the transcript's words
    labelled with the diarizer's speakers. It counts what WER does not: words given to the
    wrong person (24.7% against WER 16.0% when measured)."""
    import shutil

    from dhgq.evaluation import evaluate_directory

    for suffix in (".wav", ".stm", ".txt", ".rttm"):
        shutil.copy(real_speech / f"sample{suffix}", tmp_path / f"sample{suffix}")
    (score,) = evaluate_directory(tmp_path).files
    assert score.wer is not None and score.cpwer is not None and score.cp_words >= 50
    assert score.wer <= score.cpwer <= score.wer + 0.15
    assert score.speakers_found == 2 and score.count_confidence is not None
