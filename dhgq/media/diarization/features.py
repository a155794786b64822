"""CAM++ frame-level features of a whole recording, kept where they cost no memory.

The local diarizer pools these features (the network's output before its statistics pooling,
512 channels at 50 frames per second) three times: per (window, local speaker), per short
stretch for resegmentation, per 2 s piece for the split check. Stored as float16 they take
51 kB per second of audio: 31 MB for ten minutes, 184 MB for an hour. Up to ``spill_bytes``
they stay in memory; beyond it they go to an unnamed temporary file as they are computed and
are read back a span at a time, so a worker's memory does not grow with the recording.
"""

from __future__ import annotations

import bisect
import tempfile
from typing import IO

import numpy as np
import torch

SPILL_BYTES = 64 * 1024 * 1024  # ~21 minutes of audio


class FeatureStore:
    """Rows of frame-level features, appended in order and read back by row range."""

    def __init__(self, channels: int, *, spill: bool) -> None:
        self.channels = channels
        self._rows = 0
        self._starts: list[int] = []  # first row of each block kept in memory
        self._blocks: list[torch.Tensor] = []
        self._file: IO[bytes] | None = tempfile.TemporaryFile(prefix="dhgq-features-") if spill else None  # noqa: SIM115
        self._row_bytes = channels * 2  # float16

    @classmethod
    def for_rows(cls, rows: int, channels: int, spill_bytes: int = SPILL_BYTES) -> FeatureStore:
        return cls(channels, spill=rows * channels * 2 > spill_bytes)

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def __len__(self) -> int:
        return self._rows

    def append(self, block: torch.Tensor) -> None:
        block = block.to(torch.float16).contiguous()
        if self._file is not None:
            self._file.seek(0, 2)
            self._file.write(block.numpy().tobytes())
        else:
            self._starts.append(self._rows)
            self._blocks.append(block)
        self._rows += len(block)

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        """Rows ``lo:hi`` (clipped to what has been appended), float16."""
        lo, hi = max(0, lo), min(hi, self._rows)
        if hi <= lo:
            return torch.zeros((0, self.channels), dtype=torch.float16)
        if self._file is not None:
            self._file.seek(lo * self._row_bytes)
            data = self._file.read((hi - lo) * self._row_bytes)
            return torch.from_numpy(np.frombuffer(data, dtype=np.float16).reshape(hi - lo, self.channels).copy())
        first = bisect.bisect_right(self._starts, lo) - 1
        parts = []
        for start, block in zip(self._starts[first:], self._blocks[first:], strict=True):
            if start >= hi:
                break
            parts.append(block[max(lo - start, 0) : hi - start])
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._blocks, self._starts = [], []


def pooled_statistics(store: FeatureStore, selections: list[np.ndarray], span: int = 3000) -> torch.Tensor:
    """(selections, 2 x channels) mean and standard deviation of each selection's rows, float32.

    Rows are read a span (``span`` rows, 60 s) at a time; selections that come in time order, as
    all of the diarizer's do, read each span once.
    """
    out = torch.empty((len(selections), 2 * store.channels), dtype=torch.float32)
    lo = hi = -1
    chunk = torch.zeros((0, store.channels))
    for k, index in enumerate(selections):
        index = np.asarray(index)
        first, last = int(index.min()), int(index.max()) + 1
        if first < lo or last > hi:
            lo, hi = first, max(last, first + span)
            chunk = store.rows(lo, hi).float()
        chosen = chunk[torch.from_numpy(index - lo)]
        out[k, : store.channels] = chosen.mean(dim=0)
        out[k, store.channels :] = chosen.std(dim=0)
    return out
