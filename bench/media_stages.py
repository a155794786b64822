"""The four stage functions of ``dhgq.media``, one per call, for a fresh child process to run so
its wall time and peak RSS are the stage's own; and ``python -m bench.media_stages`` runs all four
in one process, one after the other: the plain script the pipeline is compared with."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """The largest resident set of this process or any child it waited for (ffmpeg, say)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def extraction(media: str, out_dir: str) -> dict[str, Any]:
    from dhgq.media.extraction.extract import extract_audio

    started = time.perf_counter()
    result = extract_audio(Path(media), Path(out_dir), stem="audio")
    return {
        "seconds": time.perf_counter() - started,
        "load_seconds": 0.0,
        "wav": result.wav_path,
        "audio_seconds": result.probe.duration_seconds,
        "peak_rss_mb": peak_rss_mb(),
    }


def transcription(wav: str, engine: str = "faster-whisper", model: str = "tiny.en") -> dict[str, Any]:
    from dhgq.media.serialize import transcript_to_dict
    from dhgq.media.transcription.engines import load_engine

    extra: dict[str, Any] = {}
    if engine == "openai-whisper":
        from dhgq.media.transcription.convert import openai_checkpoint

        started = time.perf_counter()
        extra["checkpoint"] = str(openai_checkpoint(model))
        extra["convert_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    loaded = load_engine(engine, model, "int8", None)
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    transcript = loaded.transcribe(Path(wav))
    return {
        "seconds": time.perf_counter() - started,
        "load_seconds": load_seconds,
        "words": len(transcript.text.split()),
        "transcript": transcript_to_dict(transcript),
        "peak_rss_mb": peak_rss_mb(),
        **extra,
    }


def diarization(wav: str) -> dict[str, Any]:
    from dhgq.media.diarization.engines import load_diarizer

    started = time.perf_counter()
    diarizer = load_diarizer("local")
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result = diarizer.diarize(Path(wav))
    return {
        "seconds": time.perf_counter() - started,
        "load_seconds": load_seconds,
        "speakers": len(result.speakers),
        "peak_rss_mb": peak_rss_mb(),
    }


def summarization(transcript: dict[str, Any]) -> dict[str, Any]:
    from dhgq.media.serialize import transcript_from_dict
    from dhgq.media.summarization.extractive import embedding_model, summarize_extractive

    started = time.perf_counter()
    embedding_model()
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    summary = summarize_extractive(transcript_from_dict(transcript))
    return {
        "seconds": time.perf_counter() - started,
        "load_seconds": load_seconds,
        "summary_words": len(summary.summary.split()),
        "peak_rss_mb": peak_rss_mb(),
    }


def whole(media: str, out_dir: str) -> dict[str, Any]:
    """The four stages one after another in this process, as a script without a queue would."""
    extracted = extraction(media, out_dir)
    transcribed = transcription(extracted["wav"])
    diarized = diarization(extracted["wav"])
    summarized = summarization(transcribed["transcript"])
    return {
        "audio_seconds": extracted["audio_seconds"],
        "peak_rss_mb": peak_rss_mb(),
        "stages": {
            name: round(r["seconds"] + r["load_seconds"], 3)
            for name, r in (
                ("extraction", extracted),
                ("transcription", transcribed),
                ("diarization", diarized),
                ("summarization", summarized),
            )
        },
    }


if __name__ == "__main__":
    print(json.dumps(whole(sys.argv[1], sys.argv[2])))
