"""Audio in for the local diarizer: any WAV (16-bit, 24-bit, float) at any rate -> 16 kHz mono
float32, with its loudness normalised so that quiet recordings reach the models at speech level.

Long recordings are never held whole: ``open_audio`` gives an ``AudioSource`` that reads a 16 kHz
file a block at a time (an hour of float32 samples is 230 MB, and the float64 energy of
``normalise_loudness`` four times that), and ``source_gain`` finds the loudness gain in one pass
over the blocks, so a source's samples are those of ``normalise_loudness(read_audio(path))``."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from dhgq.errors import PermanentError

SAMPLE_RATE = 16000
TARGET_DBFS = -20.0  # loudness of the speech frames after normalisation
PEAK_LIMIT = 0.99
HOP = SAMPLE_RATE // 20  # 50 ms loudness frames


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
    usable = len(audio) // HOP * HOP
    if usable == 0:
        return audio
    gain = loudness_gain(_frame_energy(audio[:usable]), float(np.max(np.abs(audio))), target_dbfs)
    return audio if gain is None else (audio * gain).astype(np.float32)


def _frame_energy(audio: np.ndarray) -> np.ndarray:
    """Mean square of each 50 ms frame (``len(audio)`` a multiple of ``HOP``), in float64."""
    return np.mean(audio.reshape(-1, HOP).astype(np.float64) ** 2, axis=1)


def loudness_gain(energy: np.ndarray, peak: float, target_dbfs: float = TARGET_DBFS) -> float | None:
    """The gain of ``normalise_loudness`` from the frames' energy and the peak (None: leave as is)."""
    if energy.size == 0:
        return None
    loud = energy[energy >= np.percentile(energy, 70)]
    rms = float(np.sqrt(np.mean(loud))) if loud.size else 0.0
    if rms < 1e-6 or peak < 1e-6:
        return None
    return float(min(10 ** (target_dbfs / 20) / rms, PEAK_LIMIT / peak))


class AudioSource:
    """16 kHz mono float32 samples of a recording, read a block at a time, times ``gain``.

    ``length`` is at least ``min_length``: reads past the real end give zeros, as padding would.
    """

    def __init__(self, real_length: int, min_length: int = 0) -> None:
        self.real_length = real_length
        self.length = max(real_length, min_length)
        self.gain: float | None = None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``start:stop`` (zeros outside the recording), with the gain applied."""
        out = np.zeros(max(0, stop - start), dtype=np.float32)
        lo, hi = max(start, 0), min(stop, self.real_length)
        if hi > lo:
            out[lo - start : hi - start] = self._raw(lo, hi)
            if self.gain is not None:
                out[lo - start : hi - start] *= np.float32(self.gain)
        return out

    def _raw(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file, if any."""

    def __enter__(self) -> AudioSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArraySource(AudioSource):
    """Samples already in memory (short recordings, other sample rates, tests)."""

    def __init__(self, audio: np.ndarray, min_length: int = 0) -> None:
        super().__init__(len(audio), min_length)
        self.audio = np.ascontiguousarray(audio, dtype=np.float32)

    def _raw(self, start: int, stop: int) -> np.ndarray:
        return self.audio[start:stop]


class FileSource(AudioSource):
    """A 16 kHz sound file, read from disk a block at a time (channels averaged, as ``read_audio``)."""

    def __init__(self, path: str | Path, min_length: int = 0) -> None:
        try:
            self.file = sf.SoundFile(str(path))
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise PermanentError(f"cannot read audio {path}: {exc}", file=str(path)) from exc
        super().__init__(self.file.frames, min_length)

    def _raw(self, start: int, stop: int) -> np.ndarray:
        self.file.seek(start)
        return self.file.read(stop - start, dtype="float32", always_2d=True).mean(axis=1)

    def close(self) -> None:
        self.file.close()


def open_audio(path: str | Path, min_length: int = 0) -> AudioSource:
    """The recording as a source: streamed from disk when it is 16 kHz, else read and resampled."""
    try:
        rate = sf.info(str(path)).samplerate
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise PermanentError(f"cannot read audio {path}: {exc}", file=str(path)) from exc
    if rate == SAMPLE_RATE:
        return FileSource(path, min_length)
    return ArraySource(read_audio(path), min_length)


def source_gain(source: AudioSource, block: int = 600 * SAMPLE_RATE) -> float | None:
    """``normalise_loudness``'s gain for a whole source, from one pass over its blocks."""
    block -= block % HOP
    usable = source.real_length // HOP * HOP
    energies, peak = [], 0.0
    saved, source.gain = source.gain, None
    try:
        for start in range(0, source.real_length, block):
            samples = source.read(start, min(start + block, source.real_length))
            peak = max(peak, float(np.max(np.abs(samples))) if samples.size else 0.0)
            whole = samples[: max(0, min(len(samples), usable - start)) // HOP * HOP]
            energies.append(_frame_energy(whole))
    finally:
        source.gain = saved
    return loudness_gain(np.concatenate(energies) if energies else np.zeros(0), peak)


def highpass(audio: np.ndarray, cutoff_hz: float) -> np.ndarray:
    """Remove rumble and hum below ``cutoff_hz`` (4th-order Butterworth), which would otherwise
    dominate the segmentation model's per-window normalisation on distant-microphone meetings."""
    if cutoff_hz <= 0 or len(audio) < 64:
        return audio
    from scipy.signal import butter, sosfilt

    sos = butter(4, cutoff_hz, btype="highpass", fs=SAMPLE_RATE, output="sos")
    return sosfilt(sos, audio).astype(np.float32)
