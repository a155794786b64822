"""Audio in for the local diarizer: any WAV (16-bit, 24-bit, float) at any rate -> 16 kHz mono
float32, with its loudness normalised so that quiet recordings reach the models at speech level."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from dhgq.errors import PermanentError

SAMPLE_RATE = 16000
TARGET_DBFS = -20.0  # loudness of the speech frames after normalisation
PEAK_LIMIT = 0.99


def read_audio(path: str | Path) -> np.ndarray:
    """The file's samples as 16 kHz mono float32 in [-1, 1]."""
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise PermanentError(f"cannot read audio {path}: {exc}", file=str(path)) from exc
    mono = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        from scipy.signal import resample_poly

        common = gcd(int(rate), SAMPLE_RATE)
        mono = resample_poly(mono, SAMPLE_RATE // common, int(rate) // common)
    return np.ascontiguousarray(mono, dtype=np.float32)


def normalise_loudness(audio: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Scale so the loud (speech) 50 ms frames sit at ``target_dbfs`` RMS, the peak kept below 0 dBFS.

    The loudness is the RMS of the frames above the 70th percentile of frame energy, so long
    silences do not make a quiet meeting look louder than it is.
    """
    hop = SAMPLE_RATE // 20
    usable = len(audio) // hop * hop
    if usable == 0:
        return audio
    energy = np.mean(audio[:usable].reshape(-1, hop).astype(np.float64) ** 2, axis=1)
    loud = energy[energy >= np.percentile(energy, 70)]
    rms = float(np.sqrt(np.mean(loud))) if loud.size else 0.0
    peak = float(np.max(np.abs(audio)))
    if rms < 1e-6 or peak < 1e-6:
        return audio
    gain = min(10 ** (target_dbfs / 20) / rms, PEAK_LIMIT / peak)
    return (audio * gain).astype(np.float32)


def highpass(audio: np.ndarray, cutoff_hz: float) -> np.ndarray:
    """Remove rumble and hum below ``cutoff_hz`` (4th-order Butterworth), which would otherwise
    dominate the segmentation model's per-window normalisation on distant-microphone meetings."""
    if cutoff_hz <= 0 or len(audio) < 64:
        return audio
    from scipy.signal import butter, sosfilt

    sos = butter(4, cutoff_hz, btype="highpass", fs=SAMPLE_RATE, output="sos")
    return sosfilt(sos, audio).astype(np.float32)
