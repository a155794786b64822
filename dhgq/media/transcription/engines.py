"""Transcription: one engine interface, two implementations of Whisper.

``faster-whisper`` (CTranslate2, int8 on CPU) is the default because it is several times faster
than PyTorch on the CPU workers; ``openai-whisper`` runs the same weights (converted once by
``convert``) where PyTorch is the better fit, e.g. a GPU backend. Engines are cached per
process by ``load_engine`` so a worker loads its model once, not once per job.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import soundfile as sf

from dhgq.errors import ConfigurationError, PermanentError
from dhgq.media.transcription.chunking import quiet_cut, stitch
from dhgq.media.transcription.models import AUTO, ENGLISH_MODEL, MULTILINGUAL_MODEL, choose_model
from dhgq.media.types import Progress, Segment, Transcript, Word

SAMPLE_RATE = 16_000
BEAM_SIZE = 5
WINDOW_SECONDS = 600.0  # a long WAV is transcribed in windows of at most this much audio...
CUT_SEARCH_SECONDS = 20.0  # ...each cut at a silence in its last this-many seconds


@runtime_checkable
class TranscriptionEngine(Protocol):
    """Anything that turns a 16 kHz WAV into a Transcript."""

    name: str
    model_name: str

    def transcribe(
        self,
        wav_path: Path,
        *,
        language: str | None = None,
        progress: Progress | None = None,
        prompt: Prompt | None = None,
    ) -> Transcript: ...


@dataclass(frozen=True)
class Prompt:
    """A user's hints: text that conditions the decoder (Whisper's ``initial_prompt``: spelling, style,
    context) and terms to favour (names, jargon: faster-whisper's ``hotwords``)."""

    text: str | None = None
    vocabulary: tuple[str, ...] = ()

    @property
    def hotwords(self) -> str | None:
        return ", ".join(self.vocabulary) if self.vocabulary else None

    def as_text(self) -> str | None:
        """Both as one prompt, for engines without hotwords (openai-whisper): the text, then the terms."""
        parts = [self.text.strip()] if self.text and self.text.strip() else []
        if self.vocabulary:
            parts.append(f"Glossary: {', '.join(self.vocabulary)}.")
        return " ".join(parts) or None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Prompt | None:
        """The hints of a request's options (``initial_prompt``, ``vocabulary``), or None when it gave none."""
        text = options.get("initial_prompt")
        vocabulary = tuple(str(term) for term in options.get("vocabulary") or ())
        if not text and not vocabulary:
            return None
        return cls(str(text) if text else None, vocabulary)


def load_audio(wav_path: Path) -> np.ndarray:
    """float32 mono samples at 16 kHz; extraction's WAV is read directly, anything else decoded."""
    path = Path(wav_path)
    if not path.is_file():
        raise PermanentError(f"{path}: audio file not found", file=str(path))
    try:
        info = sf.info(str(path))
        if info.samplerate == SAMPLE_RATE and info.channels == 1:
            return sf.read(str(path), dtype="float32")[0]
    except sf.LibsndfileError:
        pass
    from faster_whisper.audio import decode_audio

    try:
        return np.asarray(decode_audio(str(path), sampling_rate=SAMPLE_RATE), dtype=np.float32)
    except Exception as exc:  # PyAV raises many kinds; all mean the file is unreadable
        raise PermanentError(f"{path}: cannot read audio ({exc})", file=str(path)) from exc


def has_speech(audio: np.ndarray) -> bool:
    """Silero VAD (shipped in faster-whisper) finds any speech: silence must give no text."""
    if audio.size == 0 or float(np.max(np.abs(audio))) < 1e-4:
        return False
    from faster_whisper.vad import get_speech_timestamps

    return bool(get_speech_timestamps(audio))


def _reporting(pieces: Iterable[Any], duration: float, progress: Progress | None) -> Iterator[Any]:
    """faster-whisper's segments as they are decoded, each telling ``progress`` how far the audio is done."""
    for piece in pieces:
        if progress is not None:
            progress(min(float(piece.end), duration), duration)
        yield piece


def join_text(segments: list[Segment]) -> str:
    return " ".join(segment.text for segment in segments if segment.text).strip()


class FasterWhisperEngine:
    """Whisper on CTranslate2: int8 on CPU, VAD-filtered, with word timestamps."""

    name = "faster-whisper"
    window_seconds = WINDOW_SECONDS

    def __init__(
        self, model: str, *, compute_type: str = "int8", models_dir: Path | None = None, cpu_threads: int = 0
    ) -> None:
        from faster_whisper import WhisperModel

        from dhgq.media.transcription.features import BlockwiseFeatureExtractor
        from dhgq.media.transcription.models import resolve_ct2_model

        self.model_name = model
        device = "cuda" if _cuda_devices() else "cpu"
        self._model = WhisperModel(
            str(resolve_ct2_model(model, models_dir)),
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
        )
        # same features, a block at a time: memory stays flat however long the talk
        self._model.feature_extractor = BlockwiseFeatureExtractor(**self._model.feat_kwargs)

    def language_probabilities(self, wav_path: Path) -> list[tuple[str, float]]:
        """The most probable languages of the first 30 s (an English-only model knows one)."""
        if not self._model.model.is_multilingual:
            return [("en", 1.0)]
        audio = load_audio(wav_path)[: 30 * SAMPLE_RATE]
        _language, _probability, ranked = self._model.detect_language(audio=audio)
        return [(code, float(probability)) for code, probability in ranked[:5]]

    def transcribe(
        self,
        wav_path: Path,
        *,
        language: str | None = None,
        progress: Progress | None = None,
        prompt: Prompt | None = None,
    ) -> Transcript:
        """The WAV in windows of at most ``WINDOW_SECONDS`` cut at silences, so that memory stays
        flat however long the talk (faster-whisper holds a window's samples, its VAD copy and its
        features at once: about 1.5 GB for an hour in one piece). Windows after the first are
        decoded in the language the first one found, unless one was asked for; the first one's
        detection (language and probability) is the transcript's. Each window gets the prompt."""
        path = Path(wav_path)
        detected: float | None = None
        total = streamed_seconds(path)  # known up front for extraction's WAV; else one window, decoded whole
        results: list[tuple[float, Transcript]] = []
        end = 0.0
        for offset, audio in audio_windows(path, self.window_seconds):  # lazily: one window in memory
            end = offset + audio.size / SAMPLE_RATE
            report = _offset_progress(progress, offset, total if total is not None else end)
            part = self._transcribe_samples(audio, language=language, progress=report, prompt=prompt)
            if language is None and part.language is not None:
                language, detected = part.language, part.language_probability
            results.append((offset, part))
            del audio
        if len(results) == 1:
            return results[0][1]
        stitched = stitch(results, boundaries=[offset for offset, _ in results[1:]])
        return replace(stitched, language=language, duration_seconds=end, language_probability=detected)

    def _transcribe_samples(
        self, audio: np.ndarray, *, language: str | None, progress: Progress | None, prompt: Prompt | None
    ) -> Transcript:
        duration = audio.size / SAMPLE_RATE
        if not has_speech(audio):
            return Transcript("", language, [], self.model_name, self.name, duration)
        pieces, info = self._model.transcribe(
            audio,
            language=language,
            beam_size=BEAM_SIZE,
            vad_filter=True,
            word_timestamps=True,
            initial_prompt=prompt.text if prompt else None,
            hotwords=prompt.hotwords if prompt else None,
        )
        segments = [
            Segment(
                start=_seconds(piece.start),
                end=_seconds(piece.end),
                text=piece.text.strip(),
                confidence=round(math.exp(float(piece.avg_logprob)), 4),
                words=[
                    Word(_seconds(w.start), _seconds(w.end), w.word.strip(), round(float(w.probability), 4))
                    for w in piece.words or []
                ],
            )
            for piece in _reporting(pieces, duration, progress)  # a generator: decoding happens here
        ]
        probability = None if language else round(float(info.language_probability), 4)
        return Transcript(
            join_text(segments), info.language, segments, self.model_name, self.name, duration, probability
        )


def _offset_progress(progress: Progress | None, offset: float, total: float) -> Progress | None:
    """``progress`` for a window that starts ``offset`` seconds into a file of ``total`` seconds."""
    if progress is None:
        return None
    return lambda done, _window: progress(min(total, offset + done), total)


def streamed_seconds(path: Path) -> float | None:
    """The length of a 16 kHz mono sound file, which ``audio_windows`` reads a window at a time;
    None for anything else (decoded whole)."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return None
    if info.samplerate != SAMPLE_RATE or info.channels != 1:
        return None
    return info.frames / SAMPLE_RATE


def audio_windows(
    path: Path, window: float = WINDOW_SECONDS, search: float = CUT_SEARCH_SECONDS
) -> Iterator[tuple[float, np.ndarray]]:
    """(offset in seconds, float32 16 kHz samples) of consecutive windows of the file, each at most
    ``window`` seconds long and cut at a silence in its last ``search`` seconds. A 16 kHz mono WAV is
    read a window at a time; anything else is decoded whole (files a user hands in directly)."""
    if not path.is_file():
        raise PermanentError(f"{path}: audio file not found", file=str(path))
    if streamed_seconds(path) is None:
        yield 0.0, load_audio(path)
        return
    size, reach = int(window * SAMPLE_RATE), int(search * SAMPLE_RATE)
    with sf.SoundFile(str(path)) as handle:
        total, start = handle.frames, 0
        while True:
            handle.seek(start)
            samples = handle.read(min(size, total - start), dtype="float32")
            if start + len(samples) >= total:
                yield start / SAMPLE_RATE, samples
                return
            tail = len(samples) - reach
            cut = tail + int(round(quiet_cut(samples[tail:], SAMPLE_RATE) * SAMPLE_RATE))
            cut = max(cut, SAMPLE_RATE)  # always forward
            yield start / SAMPLE_RATE, samples[:cut]
            start += cut


class OpenAIWhisperEngine:
    """openai-whisper (PyTorch) on a checkpoint converted from the same CTranslate2 weights."""

    name = "openai-whisper"

    def __init__(self, model: str, *, models_dir: Path | None = None) -> None:
        import torch
        import whisper

        from dhgq.media.transcription.convert import openai_checkpoint

        self.model_name = model
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        checkpoint_path = openai_checkpoint(model, models_dir)
        checkpoint = torch.load(checkpoint_path, map_location=self._device, weights_only=True)
        self._model = whisper.Whisper(whisper.ModelDimensions(**checkpoint["dims"]))
        self._model.load_state_dict(checkpoint["model_state_dict"])
        if checkpoint.get("alignment_heads"):
            self._model.set_alignment_heads(checkpoint["alignment_heads"])
        self._model.to(self._device).eval()

    def transcribe(
        self,
        wav_path: Path,
        *,
        language: str | None = None,
        progress: Progress | None = None,
        prompt: Prompt | None = None,
    ) -> Transcript:
        audio = load_audio(wav_path)
        duration = audio.size / SAMPLE_RATE
        if not has_speech(audio):  # openai-whisper has no VAD and may hallucinate on silence
            return Transcript("", language, [], self.model_name, self.name, duration)
        if not self._model.is_multilingual:
            language = "en"
        result: dict[str, Any] = self._model.transcribe(
            audio,
            language=language,
            word_timestamps=True,
            fp16=self._device == "cuda",
            beam_size=BEAM_SIZE,
            best_of=BEAM_SIZE,
            verbose=None,
            initial_prompt=prompt.as_text() if prompt else None,
            carry_initial_prompt=prompt is not None,  # every window, not only the first
        )
        segments = segments_of_openai_result(result)
        return Transcript(join_text(segments), result.get("language"), segments, self.model_name, self.name, duration)


def segments_of_openai_result(result: dict[str, Any]) -> list[Segment]:
    """openai-whisper's ``transcribe()`` result as dhgq's segments (here and in the Modal app)."""
    return [
        Segment(
            start=_seconds(piece["start"]),
            end=_seconds(piece["end"]),
            text=str(piece["text"]).strip(),
            confidence=_probability(math.exp(float(piece["avg_logprob"])))
            if piece.get("avg_logprob") is not None
            else None,
            words=[
                Word(
                    _seconds(w["start"]), _seconds(w["end"]), str(w["word"]).strip(), _probability(w.get("probability"))
                )
                for w in piece.get("words", [])
            ],
        )
        for piece in result["segments"]
    ]


def _probability(value: Any) -> float | None:
    return None if value is None else round(float(value), 4)


def _confidence(avg_logprob: Any) -> float | None:
    """A segment's mean token probability, from the mean log-probability Whisper reports."""
    return None if avg_logprob is None else _probability(math.exp(float(avg_logprob)))


@lru_cache(maxsize=4)
def load_engine(
    engine: str, model: str, compute_type: str, models_dir: Path | None, cpu_threads: int = 0
) -> TranscriptionEngine:
    """The engine for these settings, built once per worker process (``cpu_threads`` 0: default). ``auto``
    without a language to go by (a caller that knows it asks ``models.choose_model``) is the multilingual
    model, else the English one."""
    if model == AUTO:
        model = choose_model(None, AUTO, None, english=ENGLISH_MODEL, multilingual=MULTILINGUAL_MODEL).model
    if engine == "faster-whisper":
        return FasterWhisperEngine(model, compute_type=compute_type, models_dir=models_dir, cpu_threads=cpu_threads)
    if engine == "openai-whisper":
        try:
            import whisper  # noqa: F401
        except ImportError as exc:
            raise ConfigurationError(
                "openai-whisper is not installed: pip install -c constraints.txt --no-deps openai-whisper "
                "and its dependencies more-itertools tiktoken numba tqdm (or the [gpu] extra)"
            ) from exc
        return OpenAIWhisperEngine(model, models_dir=models_dir)
    raise ConfigurationError(f"unknown whisper engine {engine!r}: use faster-whisper or openai-whisper")


def _seconds(value: Any) -> float:
    """A plain float (numpy scalars are not JSON) at millisecond precision."""
    return round(float(value), 3)


def _cuda_devices() -> int:
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count())
    except (ImportError, RuntimeError):
        return 0
