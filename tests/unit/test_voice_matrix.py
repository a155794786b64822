"""Speaker counting on voices nobody tuned for: the local diarizer, without a hint, on the generated
voice matrix (tests/support/voices.py).

The validation part (31 conversations in espeak-ng variant voices drawn at random, never tuned
on) is what the targets are judged on: the right count on at least 90% of them, every pair of a
man and a woman among them (the case issue 24 reported as one speaker), and a low DER. The tuning
part's groups of three and four and its voices alone check that the count holds at its edges; its
28 pairs and 31 variant conversations are left to ``python -m bench.voice_matrix``, which scores
all 101 conversations. Each conversation is 15-35 s, generated once per session into pytest's
temporary directory and diarized once per module, one test per conversation (the aggregate tests
then read what those found): about two minutes on two idle cores.
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
from tests.support.voices import (
    DISTINCT_VOICES,
    LINES,
    Case,
    held_out_cases,
    matrix_cases,
    similarity_table,
    tuning_cases,
    variant_tuning_cases,
)

pytestmark = pytest.mark.slow

VALIDATION = held_out_cases()
EDGES = [case for case in tuning_cases() if len(case.speakers) != 2]  # threes, fours, voices alone


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


Scored = tuple[Case, Diarization, float]


@pytest.fixture(scope="module")
def scored() -> dict[str, Scored]:
    """Each case's diarization, filled once per module by ``score`` (so that no single test pays
    for all 42 conversations under the per-test timeout)."""
    return {}


def score(case: Case, diarizer: DiarizationEngine, matrix_dir: Path, scored: dict[str, Scored]) -> Scored:
    if case.name not in scored:
        reference = case.generate(matrix_dir)
        result = diarizer.diarize(reference.audio)
        scored[case.name] = (case, result, der(reference, result))
    return scored[case.name]


@pytest.mark.parametrize("case", VALIDATION + EDGES, ids=[case.name for case in VALIDATION + EDGES])
def test_each_conversation_is_diarized_and_says_how_sure(
    case: Case, diarizer: DiarizationEngine, matrix_dir: Path, scored: dict[str, Scored]
) -> None:
    _, result, _ = score(case, diarizer, matrix_dir, scored)
    assert result.turns and result.count_confidence is not None and 0.0 < result.count_confidence <= 1.0
    assert result.count_probabilities[str(len(result.speakers))] == result.count_confidence
    assert sum(result.count_probabilities.values()) == pytest.approx(1.0, abs=0.02)


@pytest.fixture
def results(diarizer: DiarizationEngine, matrix_dir: Path, scored: dict[str, Scored]) -> dict[str, Scored]:
    """Every case of the validation part and the tuning part's edges, diarized without a hint."""
    return {case.name: score(case, diarizer, matrix_dir, scored) for case in VALIDATION + EDGES}


def _miscounted(rows: list[tuple[Case, Diarization, float]]) -> list[str]:
    return [f"{case.name}: {len(result.speakers)} found" for case, result, _ in rows if _wrong(case, result)]


def _wrong(case: Case, result: Diarization) -> bool:
    return len(result.speakers) != len(case.speakers)


def test_the_validation_part_is_counted_right_on_at_least_nine_in_ten(results: dict) -> None:
    rows = [results[case.name] for case in VALIDATION]
    right = sum(not _wrong(case, result) for case, result, _ in rows)
    assert right >= 0.9 * len(rows), _miscounted(rows)
    assert np.mean([error for _, _, error in rows]) <= 0.10


def test_a_man_and_a_woman_in_variant_voices_are_two_speakers(results: dict) -> None:
    """Issue 24's report: a dialogue of a male and a female espeak-ng variant voice came out as one."""
    rows = [
        results[case.name] for case in VALIDATION if sorted(v[0].split("+")[1][0] for _, v in case.voices) == ["f", "m"]
    ]
    assert len(rows) == 14
    assert not _miscounted(rows)
    assert max(error for _, _, error in rows) <= 0.15


def test_the_tuning_edges_hold(results: dict) -> None:
    """Groups of three and four, and voices alone (one speaker must stay one)."""
    rows = [results[case.name] for case in EDGES]
    assert sum(not _wrong(case, result) for case, result, _ in rows) >= len(rows) - 1, _miscounted(rows)
    alone = [results[case.name] for case in EDGES if len(case.speakers) == 1]
    assert not _miscounted(alone)


def test_the_matrix_voices_are_different_people_to_cam_plus_plus(tmp_path: Path) -> None:
    """The first matrix's premise: each voice is closer to itself than to any other by a wide
    margin (a pair at ~0.9, one espeak variant in two accents, would be one voice to the models).
    The variant voices are different people by a listener's rule instead (voices.py)."""
    names, table = similarity_table(tmp_path)
    similarity = np.array(table)
    itself = np.diag(similarity)
    assert len(names) >= 8 and itself.min() > 0.8
    for a, b in itertools.combinations(range(len(names)), 2):
        assert similarity[a, b] < min(itself[a], itself[b]) - 0.2, (names[a], names[b], similarity[a, b])


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


def test_hints_always_win(diarizer: DiarizationEngine, matrix_dir: Path) -> None:
    four = next(case for case in EDGES if len(case.speakers) == 4)
    audio = four.generate(matrix_dir).audio
    exact = diarizer.diarize(audio, speakers=SpeakerCount(exact=3))
    assert len(exact.speakers) == 3 and exact.count_confidence is None
    assert len(diarizer.diarize(audio, speakers=SpeakerCount(at_most=2)).speakers) <= 2
    at_least = diarizer.diarize(audio, speakers=SpeakerCount(at_least=4))
    assert len(at_least.speakers) == 4 and min(int(k) for k in at_least.count_probabilities) >= 4
    alone = next(case for case in EDGES if len(case.speakers) == 1).generate(matrix_dir).audio
    assert len(diarizer.diarize(alone, speakers=SpeakerCount(exact=2)).speakers) == 2


def test_the_matrix_is_the_one_documented() -> None:
    cases = matrix_cases()
    assert len(DISTINCT_VOICES) == 8 and len(cases) == 101
    assert [case.part for case in cases].count("validation") == 31
    assert {len(case.speakers) for case in VALIDATION} == {1, 2, 3, 4}
    tuned = {voice for case in tuning_cases() + variant_tuning_cases() for voice, _, _ in case.voice_table().values()}
    held_out = {voice for case in VALIDATION for voice, _, _ in case.voice_table().values()}
    assert not tuned & held_out  # no espeak-ng voice (accent + variant) of the validation part was tuned on
