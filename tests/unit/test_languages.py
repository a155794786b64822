"""Languages: the ``auto`` model choice, detection with its probability, and a user's hints (initial_prompt,
vocabulary), on the packaged models (tiny.en, English only; base, multilingual) and espeak-ng speech."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import jiwer
import pytest

from dhgq import gpu
from dhgq.gpu import AudioInput
from dhgq.media.transcription.engines import Prompt, load_engine
from dhgq.media.transcription.models import ModelChoice, choose_model, installed_models
from dhgq.settings import Settings
from tests.support.speech import require_tools

SPANISH = (
    "Buenos días a todos. Hoy vamos a hablar de las colas de trabajo en una base de datos relacional, "
    "y de cómo procesar grabaciones de conferencias."
)
JARGON = "Today we deploy our app on Supabase, and the queue runs on Procrastinate with PG vector for search."


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def spoken(text: str, voice: str, out: Path) -> Path:
    require_tools()
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("languages")
    return {"es": spoken(SPANISH, "es", folder / "es.wav"), "jargon": spoken(JARGON, "en-us", folder / "en.wav")}


def settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, database_url="postgresql://unused/none", **overrides)  # type: ignore[call-arg]


def test_auto_picks_the_english_model_only_for_english() -> None:
    pick = lambda requested, language: choose_model(  # noqa: E731
        requested, "auto", language, english="tiny.en", multilingual="base"
    )
    assert pick(None, "en") == ModelChoice("tiny.en", "auto: the language is English")
    assert pick(None, None).model == "base" and "detected" in pick(None, None).reason
    assert pick(None, "fr").model == "base"
    assert pick("tiny.en", None) == ModelChoice("tiny.en", "asked for")  # a request's model wins
    assert choose_model(None, "tiny.en", None, english="tiny.en", multilingual="base").reason == "DHGQ_WHISPER_MODEL"
    missing = choose_model(None, "auto", None, english="tiny.en", multilingual="/no/such/model")
    assert missing.model == "tiny.en" and "not installed" in missing.reason
    assert {"tiny.en", "base"} <= set(installed_models())  # the dev install has the base-model extra


@pytest.mark.slow
def test_a_talk_in_another_language_is_detected_and_transcribed_in_it(clips: dict[str, Path]) -> None:
    """The default (auto) on a talk whose language nobody gave: the multilingual model, the language it
    found and how sure it was; tiny.en alone would have written English words over Spanish speech."""
    transcript, info = gpu.transcribe(settings(), AudioInput("", None, path=str(clips["es"])))
    assert (transcript.model, transcript.language) == ("base", "es")
    assert transcript.language_probability is not None and transcript.language_probability > 0.5
    wer = jiwer.wer(normalise(SPANISH), normalise(transcript.text))
    assert wer < 0.3 and "buenos días" in normalise(transcript.text), (wer, transcript.text)
    assert info["model_choice"].startswith("auto") and info["language_detected"] is True
    assert info["language_probability"] == transcript.language_probability

    given, given_info = gpu.transcribe(settings(), AudioInput("", None, path=str(clips["jargon"])), language="en")
    assert given.model == "tiny.en" and given.language_probability is None and given_info["language_detected"] is False


@pytest.mark.slow
def test_vocabulary_and_prompt_spell_the_terms_of_the_talk(clips: dict[str, Path]) -> None:
    engine = load_engine("faster-whisper", "tiny.en", "int8", None)
    plain = engine.transcribe(clips["jargon"]).text
    terms = ("Supabase", "Procrastinate", "pgvector")
    hinted = engine.transcribe(clips["jargon"], prompt=Prompt(vocabulary=terms)).text
    prompted = engine.transcribe(
        clips["jargon"], prompt=Prompt("A talk about Supabase, Procrastinate and pgvector.")
    ).text
    assert "pgvector" not in plain and "Supabase" not in plain, plain
    assert "pgvector" in hinted, hinted
    assert "Supabase" in prompted and "pgvector" in prompted, prompted


def test_hints_from_a_requests_options() -> None:
    assert Prompt.from_options({"language": "en"}) is None
    hints = Prompt.from_options({"initial_prompt": "A keynote.", "vocabulary": ["pgvector", "Supabase"]})
    assert hints == Prompt("A keynote.", ("pgvector", "Supabase"))
    assert hints.hotwords == "pgvector, Supabase"
    assert hints.as_text() == "A keynote. Glossary: pgvector, Supabase."
