"""Speaker counting on voices nobody tuned for: the local diarizer, without a hint, on a matrix
of generated conversations (tests/support/voices.py): every pair of eight espeak-ng voices that
CAM++ hears as different people, groups of three and four, and voices alone.

Each conversation is 20-30 s, generated once per session into pytest's temporary directory;
the whole module takes about two minutes on two cores.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dhgq.media.diarization.engines import DiarizationEngine, load_diarizer
from dhgq.media.types import Diarization, SpeakerCount
from tests.support.speech import Reference, converse
from tests.support.voices import DISTINCT_VOICES, LINES, Case, matrix_cases, similarity_table

pytestmark = pytest.mark.slow

CASES = matrix_cases()


def der(reference: Reference, diarization: Diarization) -> float:
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    from dhgq.evaluation import read_rttm, to_annotation

    rttm = reference.audio.with_suffix(".rttm")
    rttm.write_text(reference.rttm())
    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    duration = sf.info(str(reference.audio)).duration
    return float(metric(read_rttm(rttm), to_annotation(diarization), uem=Timeline([Segment(0.0, duration)])))


@pytest.fixture(scope="session")
def matrix_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("voice-matrix")


@pytest.fixture(scope="module")
def diarizer() -> DiarizationEngine:
    return load_diarizer("local")


def test_the_matrix_voices_are_different_people_to_cam_plus_plus(tmp_path: Path) -> None:
    """The premise: each voice is closer to itself than to any other by a wide margin (a pair
    at ~0.9, one espeak variant in two accents, would be one voice to the models)."""
    names, table = similarity_table(tmp_path)
    similarity = np.array(table)
    itself = np.diag(similarity)
    assert len(names) >= 8 and itself.min() > 0.8
    for a, b in itertools.combinations(range(len(names)), 2):
        assert similarity[a, b] < min(itself[a], itself[b]) - 0.2, (names[a], names[b], similarity[a, b])


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_speaker_count_without_a_hint(diarizer: DiarizationEngine, matrix_dir: Path, case: Case) -> None:
    reference = case.generate(matrix_dir)
    result = diarizer.diarize(reference.audio)
    assert len(result.speakers) == len(case.speakers)
    assert der(reference, result) <= 0.10


@pytest.mark.xfail(reason="known limit: two voices of one espeak variant are one voice to CAM++", strict=False)
def test_two_close_voices_of_one_espeak_variant(diarizer: DiarizationEngine, tmp_path: Path) -> None:
    """A known limit, kept in sight: a US and a higher-pitched Scottish voice of espeak's default
    variant, 4 s turns. CAM++ puts them at 0.83 and the split check scores their halves 0.41,
    which one generated voice alone can reach (0.38): without a hint they are one speaker, and
    even with ``num_speakers=2`` a quarter of the speech goes to the wrong one (DER 27%)."""
    voices = {"us": ("en-us", 40, 160), "scottish": ("en-gb-scotland", 65, 160)}
    script = [("us" if i % 2 == 0 else "scottish", line) for i, line in enumerate(LINES[:6])]
    reference = converse(script, voices, tmp_path / "close.wav", [0.5, 0.8, 0.4, 0.9, 0.6, 0.5])
    assert len(diarizer.diarize(reference.audio).speakers) == 2
    hinted = diarizer.diarize(reference.audio, speakers=SpeakerCount(exact=2))
    assert len(hinted.speakers) == 2 and der(reference, hinted) <= 0.10


def test_hints_still_bound_the_count(diarizer: DiarizationEngine, matrix_dir: Path) -> None:
    four = next(case for case in CASES if len(case.speakers) == 4)
    reference = four.generate(matrix_dir)
    assert len(diarizer.diarize(reference.audio, speakers=SpeakerCount(exact=3)).speakers) == 3
    assert len(diarizer.diarize(reference.audio, speakers=SpeakerCount(at_most=2)).speakers) <= 2
    assert len(diarizer.diarize(reference.audio, speakers=SpeakerCount(at_least=4)).speakers) == 4


def test_voices_in_the_matrix_are_the_ones_documented() -> None:
    assert len(DISTINCT_VOICES) == 8
    assert {len(case.speakers) for case in CASES} == {1, 2, 3, 4}
    assert sum(len(case.speakers) == 2 for case in CASES) == 28
