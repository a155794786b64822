"""The diarization engines, their building blocks, and the accuracy evaluation.

Model tests (``slow``) run dhgq's local CPU diarizer on generated espeak dialogue and on the real
recordings of ../shared/testdata/real-speech, scored with pyannote.metrics as the field does.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dhgq.errors import ConfigurationError
from dhgq.evaluation import (
    EvaluationReport,
    evaluate_folder,
    load_split,
    normalise_text,
    read_rttm,
    render_markdown,
    speaker_attributed_errors,
    word_errors,
)
from dhgq.media.diarization import clustering
from dhgq.media.diarization.audio import (
    ArraySource,
    FileSource,
    normalise_loudness,
    open_audio,
    read_audio,
    source_gain,
)
from dhgq.media.diarization.count import MERGE_MODEL, SATURATION, count_posterior, cut_top, merge_features
from dhgq.media.diarization.engines import DiarizationEngine, load_diarizer
from dhgq.media.diarization.features import FeatureStore, pooled_statistics
from dhgq.media.diarization.resegment import resegment
from dhgq.media.diarization.split import SplitCheck, separation, split_merged_speakers, turn_agreement
from dhgq.media.types import Diarization, Segment, SpeakerCount, SpeakerTurn, Transcript, Word
from tests.support.speech import FOUR_SPEAKER_SCRIPT, TWO_SPEAKER_SCRIPT, Reference, dialogue

REPO = Path(__file__).resolve().parents[2]
MEETINGS = REPO / "tests" / "data" / "real-meetings"  # AMI excerpts never tuned on (its README)

# -- audio in ------------------------------------------------------------------------------------


def test_any_wav_becomes_16k_mono_float(tmp_path: Path) -> None:
    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
    sf.write(tmp_path / "cd.wav", stereo, 44100, subtype="PCM_16")
    sf.write(tmp_path / "float.wav", stereo[:, 0].astype(np.float32) * 0.1, 44100, subtype="FLOAT")

    for name in ("cd.wav", "float.wav"):
        audio = read_audio(tmp_path / name)
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert abs(len(audio) - 16000) <= 1


def test_quiet_audio_is_brought_to_speech_level_without_clipping() -> None:
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(16000 * 5) * 0.005).astype(np.float32)  # about -46 dBFS
    louder = normalise_loudness(quiet)
    assert 20 * np.log10(np.sqrt(np.mean(louder**2))) > -25
    assert np.max(np.abs(louder)) < 1.0
    assert np.array_equal(normalise_loudness(np.zeros(100, np.float32)), np.zeros(100, np.float32))


def test_a_streamed_file_reads_as_the_normalised_whole(tmp_path: Path) -> None:
    """Blocks of a 16 kHz file, with the gain found in one pass, are the samples of
    normalise_loudness(read_audio(...)); other rates are read whole and resampled."""
    rng = np.random.default_rng(2)
    t = np.arange(16000 * 7 + 123) / 16000
    quiet = 0.02 * np.sin(2 * np.pi * 220 * t) * (t > 2) + 0.002 * rng.standard_normal(len(t))
    sf.write(tmp_path / "talk.wav", quiet, 16000, subtype="PCM_16")
    sf.write(tmp_path / "cd.wav", quiet[:16000], 16000 * 2, subtype="PCM_16")
    whole = normalise_loudness(read_audio(tmp_path / "talk.wav"))
    with open_audio(tmp_path / "talk.wav", min_length=16000 * 8) as source:
        assert isinstance(source, FileSource) and source.real_length == len(whole)
        source.gain = source_gain(source, block=16000 * 2)
        streamed = np.concatenate([source.read(s, s + 5000) for s in range(0, source.length, 5000)])
    assert len(streamed) == 16000 * 8 + 5000 - (16000 * 8) % 5000
    assert np.array_equal(streamed[: len(whole)], whole) and not streamed[len(whole) :].any()
    with open_audio(tmp_path / "cd.wav") as other:
        assert isinstance(other, ArraySource) and abs(other.length - 8000) <= 1
    silent = ArraySource(np.zeros(3000, np.float32))
    assert source_gain(silent) is None


@pytest.mark.parametrize("spill", [False, True])
def test_feature_store_reads_back_what_was_appended(spill: bool) -> None:
    rng = np.random.default_rng(4)
    blocks = [torch.from_numpy(rng.standard_normal((n, 6)).astype(np.float32)) for n in (5, 1, 7, 3)]
    store = FeatureStore(6, spill=spill)
    for block in blocks:
        store.append(block)
    everything = torch.cat(blocks).to(torch.float16)
    try:
        assert len(store) == 16 and store.spilled == spill
        for lo, hi in ((0, 16), (3, 9), (5, 6), (14, 40), (9, 9)):
            assert torch.equal(store.rows(lo, hi), everything[lo:hi])
        selections = [np.array([0, 2, 4]), np.array([6, 7, 8, 9]), np.array([1, 15])]
        stats = pooled_statistics(store, selections, span=4)
        for row, index in zip(stats, selections, strict=True):
            chosen = everything[torch.from_numpy(index)].float()
            assert torch.allclose(row, torch.cat([chosen.mean(dim=0), chosen.std(dim=0)]))
    finally:
        store.close()
    assert FeatureStore.for_rows(1000, 512, spill_bytes=10**6).spilled
    assert not FeatureStore.for_rows(10, 512, spill_bytes=10**6).spilled


def test_filterbank_matches_senkos_extractor() -> None:
    """The torch port agrees with senko's C filterbank (which only takes ~1.5 s sub-segments)."""
    import ctypes

    from senko import config

    from dhgq.media.diarization.models import SpeakerEmbedder

    class Features(ctypes.Structure):
        _fields_ = [
            ("data", ctypes.POINTER(ctypes.c_float)),
            ("frames_per_subsegment", ctypes.POINTER(ctypes.c_size_t)),
            ("subsegment_offsets", ctypes.POINTER(ctypes.c_size_t)),
            ("num_subsegments", ctypes.c_size_t),
            ("total_frames", ctypes.c_size_t),
            ("feature_dim", ctypes.c_size_t),
        ]

    lib = ctypes.CDLL(config.get_fbank_lib_path())
    lib.create_fbank_extractor.restype = ctypes.c_void_p
    lib.destroy_fbank_extractor.argtypes = [ctypes.c_void_p]
    floats = ctypes.POINTER(ctypes.c_float)
    lib.extract_fbank_features_from_memory.argtypes = [
        ctypes.c_void_p,
        floats,
        ctypes.c_size_t,
        floats,
        ctypes.c_size_t,
    ]
    lib.extract_fbank_features_from_memory.restype = Features
    lib.free_fbank_features.argtypes = [ctypes.POINTER(Features)]

    rng = np.random.default_rng(3)
    t = np.arange(16000 * 3) / 16000
    audio = 0.3 * np.sin(2 * np.pi * 180 * t * (1 + 0.2 * t)) + 0.02 * rng.standard_normal(len(t))
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    span = np.array([1.0, 2.45], dtype=np.float32)
    extractor = lib.create_fbank_extractor()
    try:
        out = lib.extract_fbank_features_from_memory(
            extractor, audio.ctypes.data_as(floats), len(audio), span.ctypes.data_as(floats), 1
        )
        theirs = np.ctypeslib.as_array(out.data, shape=(out.total_frames * 80,)).copy().reshape(-1, 80)
        lib.free_fbank_features(ctypes.byref(out))
    finally:
        lib.destroy_fbank_extractor(extractor)
    ours = SpeakerEmbedder().fbank(audio[16000 : int(2.45 * 16000)]).numpy()
    ours -= ours.mean(axis=0)  # senko's extractor subtracts each sub-segment's mean
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() < 1e-3


# -- clustering and resegmentation -----------------------------------------------------------------


def _blobs(centres: np.ndarray, per: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    points = np.concatenate([c + rng.standard_normal((per, centres.shape[1])) * spread for c in centres])
    return points, np.repeat(np.arange(len(centres)), per)


def test_clustering_finds_the_speaker_count_says_how_sure_and_honours_a_hint() -> None:
    centres = np.eye(3, 16) * 3
    points, truth = _blobs(centres, 15, 0.1)
    found = clustering.cluster_by_count(points, min_cluster_size=5)
    assert len(set(found.labels)) == 3 and found.confidence is not None and found.confidence > 0.9
    assert all(len(set(found.labels[truth == k])) == 1 for k in range(3))
    assert sum(found.probabilities.values()) == pytest.approx(1.0, abs=0.01)
    exact = clustering.cluster_by_count(points, min_cluster_size=5, num_clusters=2)
    assert len(set(exact.labels)) == 2 and exact.confidence is None  # the hint fixed it
    at_most = clustering.cluster_by_count(points, min_cluster_size=5, max_clusters=2)
    assert len(set(at_most.labels)) == 2 and set(at_most.probabilities) <= {1, 2}
    at_least = clustering.cluster_by_count(points, min_cluster_size=5, min_clusters=4)
    assert len(set(at_least.labels)) == 4 and min(at_least.probabilities) >= 4
    assert list(clustering.cluster_by_count(points[:1], min_cluster_size=5).labels) == [0]


def test_an_exact_hint_keeps_a_sparse_voice_and_folds_a_lone_outlier() -> None:
    """With the count given, a second voice heard in one clean window of a short recording is that
    voice (not half of the first one), while a lone odd window among hundreds does not take a
    speaker the caller asked for (issue 24)."""
    centres = np.eye(3, 16) * 3
    short, truth = _blobs(centres[:2], 22, 0.1)
    short, truth = short[:23], truth[:23]  # 22 windows of one voice, one of the other
    found = clustering.cluster_by_count(short, min_cluster_size=12, num_clusters=2).labels
    assert len(set(found[truth == 0])) == 1 and found[truth == 1][0] != found[0]
    long, truth = _blobs(centres[:2], 200, 0.1)
    outlier = centres[2:3] + 0.1
    labels = clustering.cluster_by_count(np.vstack([long, outlier]), min_cluster_size=12, num_clusters=2).labels
    assert len(set(labels)) == 2 and all(len(set(labels[:-1][truth == k])) == 1 for k in range(2))


def test_one_voice_is_one_speaker_with_confidence() -> None:
    points, _ = _blobs(np.eye(1, 16) * 3, 40, 0.1)
    found = clustering.cluster_by_count(points, min_cluster_size=5)
    assert set(found.labels) == {0} and found.confidence is not None and found.confidence > 0.9


def test_count_posterior_reads_the_top_merges() -> None:
    """P(k): the top k-1 merges joined different people, the others the same person."""
    sure_two = count_posterior(np.array([0.01, 0.01, 0.01, 0.99]))
    assert sure_two.argmax() == 1 and sure_two[1] > 0.9 and len(sure_two) == 5
    torn = count_posterior(np.array([0.01, 0.01, 0.5, 0.99]))
    assert torn[1] == pytest.approx(torn[2]) and torn[1] + torn[2] > 0.95
    assert count_posterior(np.array([0.01, 0.01, 0.5, 0.99]), at_least=3).argmax() == 2
    capped = count_posterior(np.array([0.99, 0.99, 0.99, 0.99]), at_most=2)
    assert len(capped) == 2 and capped.argmax() == 1
    assert count_posterior(np.zeros(0)).tolist() == [1.0]


def test_the_cut_undoes_the_top_merges_even_below_an_earlier_height() -> None:
    """Centroid linkage can merge below an earlier merge's height; the posterior's cut into k
    clusters undoes the last k-1 merges, whatever their heights."""
    from scipy.cluster.hierarchy import fcluster, linkage

    points = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 0.9]])  # the last merge is lower than the first
    tree = linkage(points, method="centroid")
    assert tree[1, 2] < tree[0, 2]
    assert len(set(fcluster(tree, 2, criterion="maxclust"))) == 1  # a cut by height gives one
    labels = cut_top(tree, 3, 2)
    assert set(labels) == {0, 1} and labels[0] == labels[1] != labels[2]
    assert list(cut_top(tree, 3, 1)) == [0, 0, 0] and sorted(cut_top(tree, 3, 3)) == [0, 1, 2]


def test_merge_features_saturate_with_evidence() -> None:
    """A group's evidence stops growing at SATURATION windows: an hour of one voice must not
    make a moderate distance look certain."""
    from scipy.cluster.hierarchy import linkage

    points, _ = _blobs(np.eye(2, 16) * 3, 200, 0.3)
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    features = merge_features(unit, linkage(unit, method="centroid", metric="euclidean"))
    assert features.shape == (399, 3) and features[:, 2].max() == pytest.approx(np.log(SATURATION))
    assert MERGE_MODEL.p_different(features[-1:])[0] > 0.99  # the two voices
    assert MERGE_MODEL.p_different(features[:-1]).max() < 0.5  # within each voice


def test_two_local_speakers_of_one_window_never_share_a_cluster() -> None:
    centroids = np.eye(2, 8)
    embeddings = np.full((2, 3, 8), np.nan)
    embeddings[0, 0] = [1, 0.1, 0, 0, 0, 0, 0, 0]
    embeddings[0, 1] = [1, 0.2, 0, 0, 0, 0, 0, 0]  # both look like speaker 0
    embeddings[1, 0] = [0, 1, 0, 0, 0, 0, 0, 0]
    active = ~np.isnan(embeddings).any(axis=2)
    hard = clustering.assign_local_speakers(embeddings, active, centroids)
    assert sorted(hard[0, :2]) == [0, 1] and hard[0, 2] == clustering.UNASSIGNED
    assert list(hard[1]) == [1, clustering.UNASSIGNED, clustering.UNASSIGNED]


def test_resegmentation_relabels_one_speaker_frames_by_their_short_embeddings() -> None:
    frames = 400
    times = np.arange(frames) * 0.02
    truth = (times >= 4.0).astype(int)  # speaker 1 from 4 s on
    first_pass = np.zeros((frames, 2))
    first_pass[:, 0] = times < 6.0  # the first pass followed speaker 0 two seconds too long
    first_pass[:, 1] = times >= 6.0
    voices = np.eye(2, 4)

    def pool(selections: list[np.ndarray]) -> np.ndarray:
        return np.stack([voices[truth[s]].mean(axis=0) for s in selections])

    out = resegment(first_pass, times, times, pool, span=50, hop=10)
    assert np.mean(out.argmax(axis=1) == truth) > 0.95


def _merged_voices(spread_a: float, spread_b: float, offset: float, seed: int = 0):
    """One first-pass speaker over 40 s that is really voice A (0-20 s) then voice B (20-40 s).

    Each 2 s piece's embedding is its voice's direction plus noise of the given spread.
    """
    rng = np.random.default_rng(seed)
    times = np.arange(2000) * 0.02
    truth = (times >= 20.0).astype(int)
    voice_a = np.eye(1, 32)[0]
    voice_b = voice_a + offset * np.eye(1, 32, 1)[0]
    spreads = (spread_a, spread_b)

    def pool(selections: list[np.ndarray]) -> np.ndarray:
        out = []
        for s in selections:
            k = int(np.bincount(truth[s]).argmax())
            out.append((voice_a, voice_b)[k] + spreads[k] * rng.standard_normal(32))
        return np.stack(out)

    return times, truth, np.ones((len(times), 1)), pool


def test_split_check_parts_two_voices_that_clustering_merged() -> None:
    times, truth, binary, pool = _merged_voices(0.05, 0.05, offset=0.8)
    out, profiles = split_merged_speakers(binary, times, times, pool, feature_step=0.02)
    assert out.shape[1] == 2 and set(profiles) == {0, 1}
    assert np.mean(out.argmax(axis=1) == truth) > 0.95 or np.mean(out.argmax(axis=1) != truth) > 0.95
    assert (out.sum(axis=1) == 1).all()  # every frame still has exactly one speaker


def test_split_check_keeps_one_varied_voice_whole() -> None:
    """A real voice varies from piece to piece about as much as two similar voices differ."""
    times, _, binary, pool = _merged_voices(0.6, 0.6, offset=0.0)
    out, profiles = split_merged_speakers(binary, times, times, pool, feature_step=0.02)
    assert out.shape[1] == 1 and profiles == {}


def test_split_check_honours_the_speaker_limit_and_needs_enough_speech() -> None:
    times, _, binary, pool = _merged_voices(0.05, 0.05, offset=0.8)
    assert split_merged_speakers(binary, times, times, pool, feature_step=0.02, max_speakers=1)[0].shape[1] == 1
    short = SplitCheck(min_seconds=30.0)  # each voice has only 20 s
    assert split_merged_speakers(binary, times, times, pool, feature_step=0.02, check=short)[0].shape[1] == 1


def _conversation(turns: list[int], voice_of_piece, turn_seconds: float = 5.0, gap: float = 0.5):
    """One first-pass speaker over turns of ``turn_seconds`` separated by silent ``gap``s; the
    embedding of a piece is ``voice_of_piece(turn index, piece's first frame)`` plus a little noise."""
    step = 0.02
    rng = np.random.default_rng(1)
    per_turn, per_gap = int(turn_seconds / step), int(gap / step)
    frames = len(turns) * (per_turn + per_gap)
    times = np.arange(frames) * step
    binary = np.zeros((frames, 1))
    turn_of = np.full(frames, -1)
    for t in range(len(turns)):
        start = t * (per_turn + per_gap)
        binary[start : start + per_turn, 0] = 1
        turn_of[start : start + per_turn] = t
    truth = np.array([turns[t] if t >= 0 else -1 for t in turn_of])

    def pool(selections: list[np.ndarray]) -> np.ndarray:
        return np.stack([voice_of_piece(turn_of[s[0]], s[0]) + 0.01 * rng.standard_normal(32) for s in selections])

    return times, truth, binary, pool


def test_split_check_parts_close_voices_when_the_halves_follow_the_turns() -> None:
    """Two voices CAM++ puts at cosine ~0.9 (above the absolute 0.8), taking turns: every stretch
    of speech lies in one half, so they are two people."""
    turns = [0, 1] * 4
    voices = np.stack([np.eye(1, 32)[0], (np.eye(1, 32)[0] + 0.5 * np.eye(1, 32, 1)[0])])
    times, truth, binary, pool = _conversation(turns, lambda turn, frame: voices[turns[turn]])
    out, profiles = split_merged_speakers(binary, times, times, pool, feature_step=0.02)
    assert out.shape[1] == 2 and set(profiles) == {0, 1}
    spoken = truth >= 0
    labels = out[spoken].argmax(axis=1)
    assert max(np.mean(labels == truth[spoken]), np.mean(labels != truth[spoken])) > 0.95


def test_split_check_keeps_one_voice_whose_halves_cut_through_the_turns() -> None:
    """The same two directions, but alternating from piece to piece within every turn (one voice
    parted by what it says): as far apart, yet no turn lies in one half."""
    directions = np.stack([np.eye(1, 32)[0], (np.eye(1, 32)[0] + 0.5 * np.eye(1, 32, 1)[0])])
    times, _, binary, pool = _conversation([0] * 8, lambda turn, frame: directions[(frame // 100) % 2])
    out, profiles = split_merged_speakers(binary, times, times, pool, feature_step=0.02)
    assert out.shape[1] == 1 and profiles == {}


def test_split_check_with_little_speech_needs_a_clear_split() -> None:
    """Two clearly different voices with 4 s each (a four-person conversation of half a minute)."""
    turns = [0, 1, 0, 1]
    voices = np.eye(2, 32)
    times, _, binary, pool = _conversation(turns, lambda turn, frame: voices[turns[turn]], turn_seconds=2.0)
    assert split_merged_speakers(binary, times, times, pool, feature_step=0.02)[0].shape[1] == 2
    strict = SplitCheck(min_score_little=1e6)
    assert split_merged_speakers(binary, times, times, pool, feature_step=0.02, check=strict)[0].shape[1] == 1
    too_little = SplitCheck(min_seconds=5.0)
    assert split_merged_speakers(binary, times, times, pool, feature_step=0.02, check=too_little)[0].shape[1] == 1


def test_split_check_on_many_pieces_splits_a_sample_and_assigns_the_rest() -> None:
    times, truth, binary, pool = _merged_voices(0.05, 0.05, offset=0.8)
    out, _ = split_merged_speakers(binary, times, times, pool, feature_step=0.02, check=SplitCheck(max_pieces=8))
    assert out.shape[1] == 2
    assert np.mean(out.argmax(axis=1) == truth) > 0.95 or np.mean(out.argmax(axis=1) != truth) > 0.95


def test_turn_agreement_counts_pairs_within_stretches_only() -> None:
    halves = np.array([0, 0, 1, 1, 0, 1])
    stretch = np.array([0, 0, 0, 1, 2, 2])
    assert turn_agreement(halves, stretch) == (pytest.approx(1 / 3), 3)
    assert turn_agreement(np.array([0, 1]), np.array([0, 1])) == (0.0, 0)


def test_separation_is_relative_to_the_spread_within_each_half() -> None:
    tight = np.array([[1.0, 0.0], [0.999, 0.045], [0.6, 0.8], [0.58, 0.815]])
    tight /= np.linalg.norm(tight, axis=1, keepdims=True)
    score, across = separation(tight, np.array([0, 0, 1, 1]))
    assert score > 5 and across < 0.8
    assert separation(tight, np.array([0, 1, 0, 1]))[0] < 0


# -- engines -------------------------------------------------------------------------------------


def test_pyannote_engine_here_is_a_clear_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="pyannote.audio.*not installed"):
        load_diarizer("pyannote")


def test_unknown_engine_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown diarization engine"):
        load_diarizer("whisperx")


# -- evaluation ----------------------------------------------------------------------------------


def test_text_normalisation_for_word_error_rate_is_whispers() -> None:
    assert normalise_text("Go forward ten meters!") == normalise_text("go forward 10 metres") == "go forward 10 meters"
    assert normalise_text('Hello? I didn\'t, "know" 1,000 - 20%') == "hello i did not know 1000 20%"
    assert normalise_text("Um, Mr. Smith said twenty-one.") == "mister smith said 21"
    assert word_errors("Go forward ten meters.", "go forward 10 metres") == (0, 4)
    assert word_errors("the talk ends here", "the talk end here") == (1, 4)


def test_evaluate_folder_scores_each_file_and_pools(tmp_path: Path) -> None:
    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", np.zeros(16000 * 4, np.float32), 16000)
    (tmp_path / "a.txt").write_text("Go forward ten meters.")
    (tmp_path / "a.rttm").write_text(
        "SPEAKER a 1 0.000 2.000 <NA> <NA> x <NA> <NA>\nSPEAKER a 1 2.000 2.000 <NA> <NA> y <NA> <NA>\n"
    )
    (tmp_path / "a.stm").write_text("a 1 y 2.0 4.0 ten meters.\na 1 x 0.0 2.0 Go forward\n")
    (tmp_path / "b.rttm").write_text("SPEAKER b 1 0.000 4.000 <NA> <NA> x <NA> <NA>\n")
    (tmp_path / "c.wav").write_bytes(b"no reference, so not scored")

    def transcribe(path: Path) -> Transcript:
        words = [Word(0.2, 0.6, " go"), Word(0.8, 1.4, " forward"), Word(2.2, 2.6, " 10"), Word(2.8, 3.5, " matters")]
        return Transcript(
            "go forward 10 matters", "en", [Segment(0.2, 3.5, "go forward 10 matters", words=words)], "t", "t"
        )

    def diarize(path: Path) -> Diarization:
        half = [SpeakerTurn(0.0, 2.0, "S1"), SpeakerTurn(2.0, 4.0, "S2")]
        return Diarization(turns=half, speakers=["S1", "S2"], count_confidence=0.75)

    report = evaluate_folder(tmp_path, transcribe=transcribe, diarize=diarize, split={"b.wav": "validation"})
    a, b = report.files
    assert (a.name, a.wer, a.der, a.speakers_found, a.speakers_reference) == ("a.wav", 0.25, 0.0, 2, 2)
    assert (a.cp_errors, a.cp_words, a.cpwer) == (1, 4, 0.25)  # "matters": the speakers are right
    assert (b.wer, b.der, b.speakers_found, b.speakers_reference) == (None, 0.5, 2, 1)
    assert (a.part, b.part, a.count_confidence) == ("unassigned", "validation", 0.75)
    assert report.wer == 0.25 and report.der == pytest.approx(2.0 / 8.0)
    assert report.parts["validation"].der == 0.5 and report.parts["unassigned"].der == 0.0
    assert (report.parts["all"].counts_right, report.parts["all"].counts_scored) == (1, 2)
    assert report.peak_memory_mb > 0 and a.speed is not None
    table = render_markdown(report)
    assert "| b.wav | validation | 4.0 |  |  | 50.0% | 2/1 | 75% |" in table
    assert "| a.wav | unassigned | 4.0 | 25.0% | 25.0% | 0.0% | 2/2 | 75% |" in table
    assert "| **pooled** | **validation** | 4.0 |  |  | 50.0% | 0/1 right |" in table
    assert "| **pooled** | **all** | 8.0 | 25.0% | 25.0% | 25.0% | 1/2 right |" in table
    assert table.index("| b.wav |") < table.index("| a.wav |")  # by part: validation before unassigned
    assert isinstance(report, EvaluationReport) and report.to_dict()["files"][0]["speed"] > 0


def test_speaker_attributed_errors_count_a_word_of_the_wrong_speaker_twice() -> None:
    reference = [("x", "hello there"), ("y", "how are you")]
    words = [Word(0.0, 0.5, " hello"), Word(0.5, 1.0, " there"), Word(1.0, 1.5, " how"), Word(1.5, 2.0, " are")]
    words.append(Word(2.0, 2.5, " you"))
    text = "hello there how are you"
    transcript = Transcript(text, "en", [Segment(0.0, 2.5, text, words=words)], "t", "t")
    right = Diarization([SpeakerTurn(0.0, 1.0, "A"), SpeakerTurn(1.0, 2.5, "B")], ["A", "B"])
    late = Diarization([SpeakerTurn(0.0, 1.5, "A"), SpeakerTurn(1.5, 2.5, "B")], ["A", "B"])  # "how" goes to A
    alone = Diarization([SpeakerTurn(0.0, 2.5, "A")], ["A"])
    assert speaker_attributed_errors(reference, transcript, right) == (0, 5)
    assert speaker_attributed_errors(reference, transcript, late) == (2, 5)
    # one speaker for two: x's words are missed, and inserted in y's (which WER does not see)
    assert speaker_attributed_errors(reference, transcript, alone) == (4, 5)
    assert word_errors(text, transcript.text) == (0, 5)


def test_split_file_names_each_recording_once(tmp_path: Path) -> None:
    split = tmp_path / "split.toml"
    split.write_text('tuning = ["a.wav", "b.wav"]\nvalidation = ["c.opus"]\n')
    assert load_split(split) == {"a.wav": "tuning", "b.wav": "tuning", "c.opus": "validation"}
    split.write_text('tuning = ["a.wav"]\nvalidation = ["a.wav"]\n')
    with pytest.raises(ValueError, match="a.wav is in both"):
        load_split(split)
    split.write_text('tuning = ["a.wav"]\ntest = ["b.wav"]\n')
    with pytest.raises(ValueError, match="unknown part"):
        load_split(split)


def test_the_repository_split_keeps_validation_apart(real_speech: Path) -> None:
    """Every real recording with a speaker reference is in exactly one part, and no AMI meeting
    speaker of the validation meetings appears in a tuning file (dev01 and tst01 excepted: later
    excerpts of the dev00 and tst00 meetings, declared in the split's README)."""
    parts = load_split(REPO / "tests" / "data" / "accuracy-split.toml")
    recordings = [*real_speech.glob("*.rttm"), *MEETINGS.glob("*.rttm")]
    assert {r.stem for r in recordings} <= {Path(name).stem for name in parts}
    speakers = {part: set() for part in ("tuning", "validation")}  # type: ignore[var-annotated]
    for rttm in recordings:
        name = next(n for n in parts if Path(n).stem == rttm.stem)
        if rttm.stem not in ("dev01", "tst01"):
            speakers[parts[name]] |= {line.split()[7] for line in rttm.read_text().splitlines()}
    assert not speakers["tuning"] & speakers["validation"]
    assert sum(part == "validation" for part in parts.values()) >= 8


# -- the local engine on speech (slow: loads the models) -----------------------------------------


def der(reference_rttm: str | Path, diarization: Diarization, uem_end: float) -> float:
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    from dhgq.evaluation import to_annotation

    path = Path(reference_rttm)
    reference = read_rttm(path)
    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    return float(metric(reference, to_annotation(diarization), uem=Timeline([Segment(0.0, uem_end)])))


@pytest.fixture(scope="module")
def diarizer() -> DiarizationEngine:
    return load_diarizer("local")


@pytest.fixture(scope="module")
def two_speakers(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return dialogue(TWO_SPEAKER_SCRIPT, tmp_path_factory.mktemp("two") / "two.wav")


@pytest.fixture(scope="module")
def four_speakers(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return dialogue(FOUR_SPEAKER_SCRIPT, tmp_path_factory.mktemp("four") / "four.wav")


def _score(reference: Reference, diarization: Diarization, tmp_path: Path) -> float:
    rttm = tmp_path / "reference.rttm"
    rttm.write_text(reference.rttm())
    return der(rttm, diarization, sf.info(str(reference.audio)).duration)


@pytest.mark.slow
def test_loader_is_cached_and_warm(diarizer: DiarizationEngine) -> None:
    assert load_diarizer("local") is diarizer
    assert isinstance(diarizer, DiarizationEngine) and diarizer.name == "local"


@pytest.mark.slow
def test_two_speaker_dialogue(diarizer: DiarizationEngine, two_speakers: Reference, tmp_path: Path) -> None:
    result = diarizer.diarize(two_speakers.audio)

    assert result.speakers == ["SPEAKER_1", "SPEAKER_2"] and result.engine == "local"
    assert _score(two_speakers, result, tmp_path) <= 0.05
    assert set(result.embeddings) == set(result.speakers) and len(result.embeddings["SPEAKER_1"]) == 192
    assert all(t.end > t.start for t in result.turns)


@pytest.mark.slow
def test_two_speaker_dialogue_from_a_cd_quality_stereo_file(
    diarizer: DiarizationEngine, two_speakers: Reference, tmp_path: Path
) -> None:
    stereo = tmp_path / "stereo.wav"
    subprocess.run(
        ["sox", str(two_speakers.audio), "-r", "44100", "-c", "2", "-b", "24", str(stereo)],
        check=True,
        capture_output=True,
    )
    result = diarizer.diarize(stereo)
    assert len(result.speakers) == 2 and _score(two_speakers, result, tmp_path) <= 0.05


@pytest.mark.slow
def test_long_recording_path_gives_the_same_speakers(two_speakers: Reference, tmp_path: Path) -> None:
    """What an hour goes through, on a minute: 10 s chunks, features in a temporary file, and
    clustering on every third window embedding only."""
    from dhgq.media.diarization.local import LocalDiarizer, LocalDiarizerConfig

    config = LocalDiarizerConfig(chunk_seconds=10.0, feature_spill_bytes=0, max_cluster_seeds=40)
    reports: list[tuple[float, float]] = []
    result = LocalDiarizer(config=config).diarize(two_speakers.audio, progress=lambda *r: reports.append(r))
    assert result.speakers == ["SPEAKER_1", "SPEAKER_2"]
    assert _score(two_speakers, result, tmp_path) <= 0.05
    # media-aware progress: audio seconds analysed after each chunk, rising to the whole file
    duration = sf.info(str(two_speakers.audio)).duration
    done = [seconds for seconds, _ in reports]
    assert len(reports) >= 3 and done == sorted(done) and done[0] < duration / 2
    assert all(total == pytest.approx(duration, abs=0.01) for _, total in reports)
    assert done[-1] == pytest.approx(duration, abs=0.01)


@pytest.mark.slow
def test_a_hint_fixes_the_speaker_count(diarizer: DiarizationEngine, four_speakers: Reference) -> None:
    assert len(diarizer.diarize(four_speakers.audio, speakers=SpeakerCount(exact=4)).speakers) == 4
    assert len(diarizer.diarize(four_speakers.audio, speakers=SpeakerCount(at_most=1)).speakers) == 1


@pytest.mark.slow
def test_four_speaker_talk(diarizer: DiarizationEngine, four_speakers: Reference, tmp_path: Path) -> None:
    """Two pairs of similar voices: clustering merges each pair, the split check parts them."""
    result = diarizer.diarize(four_speakers.audio)
    assert len(result.speakers) == 4
    assert _score(four_speakers, result, tmp_path) <= 0.10  # 3.2% here
    assert len(result.embeddings) == 4 and all(len(v) == 192 for v in result.embeddings.values())


@pytest.mark.slow
def test_silence_has_no_speakers(diarizer: DiarizationEngine, tmp_path: Path) -> None:
    sf.write(tmp_path / "silence.wav", np.zeros(16000 * 3, np.int16), 16000, subtype="PCM_16")
    result = diarizer.diarize(tmp_path / "silence.wav")
    assert result.turns == [] and result.speakers == []


@pytest.mark.slow
def test_real_recordings(diarizer: DiarizationEngine, real_speech: Path) -> None:
    """sample (2 speakers), dev00 (quiet AMI meeting, 2) and tst00 (4, heavy overlap), pooled."""
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    from dhgq.evaluation import to_annotation

    pooled = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    found = {}
    for name in ("sample", "dev00", "tst00"):
        result = diarizer.diarize(real_speech / f"{name}.wav")
        pooled(read_rttm(real_speech / f"{name}.rttm"), to_annotation(result), uem=Timeline([Segment(0, 30)]))
        found[name] = len(result.speakers)
    assert found["sample"] == 2 and found["dev00"] == 2
    assert abs(pooled) <= 0.35  # 31.7% (tuned on these files); pyannote's recipe on these models: 40%
