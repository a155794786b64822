"""Long audio diarized in chunks (``diarize_long``), the chunks' speakers linked by their embeddings.

The linking alone on made-up embeddings, then the whole body through Modal's ``.local()`` on a
generated four-speaker talk cut into chunks shorter than the talk, so every voice crosses a
chunk boundary: each chunk's diarizer names its speakers as it likes, and only the global
clustering can tell that SPEAKER_1 of one chunk is SPEAKER_3 of the next.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from dhgq.errors import PermanentError
from dhgq.media.serialize import diarization_from_dict
from dhgq.media.transcription.chunking import split_at_silences
from dhgq.media.types import SpeakerCount
from modal_gpu import app, linking
from tests.support.speech import Reference, converse
from tests.support.voices import DISTINCT_VOICES, LINES

pytestmark = pytest.mark.filterwarnings("ignore:.*executing locally.*")
VOICES = ("us_male", "british_female", "scottish_male", "us_female")


def speaker(chunk: int, label: str, direction: np.ndarray, seconds: float = 5.0) -> linking.ChunkSpeaker:
    noise = np.random.default_rng(chunk * 10 + len(label)).standard_normal(len(direction)) * 0.05
    return linking.ChunkSpeaker(chunk, label, direction + noise, seconds)


def test_linking_joins_one_voice_across_chunks_never_within_one() -> None:
    a, b, c = np.eye(3)[0], np.eye(3)[1], np.eye(3)[2]
    speakers = [speaker(0, "S1", a), speaker(0, "S2", b), speaker(1, "S1", b), speaker(1, "S2", a), speaker(2, "S1", c)]
    assert linking.link_speakers(speakers) == [0, 1, 1, 0, 2]
    # two speakers of one chunk stay apart even when their voices look alike
    same = [speaker(0, "S1", a), speaker(0, "S2", a)]
    assert linking.link_speakers(same) == [0, 1]
    # a count goes past the threshold (closest first) or stops short of it
    assert len(set(linking.link_speakers(speakers, SpeakerCount(exact=2)))) == 2
    assert len(set(linking.link_speakers(speakers, SpeakerCount(at_least=4)))) == 4
    assert linking.link_speakers([]) == []


def test_a_chunk_count_hint_bounds_the_chunks_from_above() -> None:
    assert linking.chunk_hint(SpeakerCount(exact=4)) == SpeakerCount(at_most=4)
    assert linking.chunk_hint(SpeakerCount(at_least=2)) == SpeakerCount()


@pytest.fixture(scope="module")
def four_speakers(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """About 60 s: four voices in turn, each talking in every part of the talk."""
    order = [VOICES[i % 4] for i in range(13)]
    order[4:8] = [VOICES[2], VOICES[0], VOICES[3], VOICES[1]]  # not one fixed rotation
    script = list(zip(order, LINES[:13], strict=True))
    pauses = [0.5, 0.8, 0.4, 0.9, 0.6, 0.5, 0.7, 0.45, 0.85, 0.5, 0.6, 0.75, 0.5]
    return converse(script, DISTINCT_VOICES, tmp_path_factory.mktemp("four") / "four.wav", pauses)


def agreement(reference: Reference, turns: list[tuple[float, float, str]]) -> tuple[float, dict[str, str]]:
    """Share of the reference's speech (10 ms frames) labelled with the best one-to-one speaker mapping."""
    from scipy.optimize import linear_sum_assignment

    step = 0.01
    duration = sf.info(str(reference.audio)).duration
    frames = np.arange(0, duration, step)
    truth = sorted(reference.speakers)
    found = sorted({label for _, _, label in turns})
    overlap = np.zeros((len(truth), max(1, len(found))))
    for i, name in enumerate(truth):
        mine = np.zeros(len(frames), bool)
        for start, end, who in reference.turns:
            mine |= (frames >= start) & (frames < end) & (who == name)
        for j, label in enumerate(found):
            theirs = np.zeros(len(frames), bool)
            for start, end, who in turns:
                theirs |= (frames >= start) & (frames < end) & (who == label)
            overlap[i, j] = (mine & theirs).sum()
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    speech = sum(end - start for start, end, _ in reference.turns) / step
    return float(overlap[rows, cols].sum() / speech), {truth[r]: found[c] for r, c in zip(rows, cols, strict=True)}


@pytest.mark.slow
def test_diarize_long_links_four_speakers_across_chunk_boundaries(four_speakers: Reference) -> None:
    audio = four_speakers.audio.read_bytes()
    max_chunk = 22.0
    chunks = split_at_silences(audio, max_chunk=max_chunk, overlap=linking.CHUNK_OVERLAP)
    assert len(chunks) >= 3
    for name in VOICES:  # every voice talks in at least two chunks' cores
        spans = [(s, e) for s, e, who in four_speakers.turns if who == name]
        owners = {i for s, e in spans for i, c in enumerate(chunks) if c.core_start <= (s + e) / 2 < c.core_end}
        assert len(owners) >= 2, name

    output = app.diarize_long.local(audio, SpeakerCount(), max_chunk=max_chunk, device="cpu")  # type: ignore[attr-defined]
    assert output["chunks"] == len(chunks) and output["device"] == "cpu"
    diarization = diarization_from_dict(output["diarization"])
    assert len(diarization.speakers) == 4, diarization.speakers
    assert set(diarization.embeddings) == set(diarization.speakers)
    turns = [(t.start, t.end, t.speaker) for t in diarization.turns]
    assert all(b[0] >= 0 and b[1] > b[0] for b in turns) and turns == sorted(turns)
    share, mapping = agreement(four_speakers, turns)
    assert share > 0.85, (share, mapping)
    # each reference voice's lines, in every chunk, carry its one global label
    for name, label in mapping.items():
        labels = Counter(
            next((t.speaker for t in diarization.turns if t.start <= (s + e) / 2 < t.end), None)
            for s, e, who in four_speakers.turns
            if who == name
        )
        assert labels.most_common(1)[0][0] == label and labels[label] >= sum(labels.values()) - 1, (name, labels)


def test_a_failed_chunk_runs_once_more(four_speakers: Reference) -> None:
    """The retry alone: a stand-in for the GPU fan-out whose first chunk is lost once."""
    from dhgq.media.serialize import diarization_to_dict
    from dhgq.media.types import Diarization, SpeakerTurn

    calls: list[int] = []
    voice = [1.0, 0.0, 0.0]

    def flaky(chunks: list[bytes]) -> list[object]:
        calls.append(len(chunks))
        one = Diarization([SpeakerTurn(0.5, 2.0, "SPEAKER_1")], ["SPEAKER_1"], {"SPEAKER_1": voice})
        done = {"diarization": diarization_to_dict(one), "device": "stand-in", "seconds": 1.0}
        return [TimeoutError("GPU container lost") if len(calls) == 1 and i == 0 else done for i in range(len(chunks))]

    output = linking.run_long_diarization(four_speakers.audio.read_bytes(), flaky, max_chunk=30.0)
    assert calls[1:] == [1] and output["chunks"] == calls[0] and output["gpu_seconds"] == calls[0]
    assert diarization_from_dict(output["diarization"]).speakers == ["SPEAKER_1"]  # one voice in every chunk

    calls.clear()
    always = lambda chunks: [PermanentError("not audio")] * len(chunks)  # noqa: E731
    with pytest.raises(PermanentError, match="chunks failed"):
        linking.run_long_diarization(four_speakers.audio.read_bytes(), always, max_chunk=30.0)
