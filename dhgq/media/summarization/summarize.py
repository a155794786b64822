"""Summaries of transcripts: Claude (map-reduce within the context window) or, without an API
key, the offline extractive summary of ``dhgq.media.summarization.extractive``.

Retries belong to the queue alone: the SDK is built with ``max_retries=0`` and every API failure
is translated into a ``TransientError`` (retried by the queue) or a ``PermanentError``.

Every call can go through a ``CallCache`` (the worker's is the ledger, ``dhgq/ledger.py``): it is
told before and after each call, and answers a request it has seen succeed, so that a summary
retried after a crash halfway through its chunks pays only for the chunks it had not got. The
cache is a protocol so that this module stays free of databases.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Any, Protocol

import anthropic

from dhgq.errors import ApiBusy, PermanentError, TransientError
from dhgq.media.summarization.extractive import no_speech_summary, summarize_extractive
from dhgq.media.summarization.prices import PRICES_PER_MTOK, PriceTable
from dhgq.media.types import Summary, Transcript

DOCUMENT_TYPES = ("presentation", "interview", "panel", "lecture", "meeting", "other")
DEFAULT_MAX_INPUT_TOKENS = 150_000
MAX_OUTPUT_TOKENS = 2048
REQUEST_TIMEOUT_S = 300.0
CHARS_PER_TOKEN = 4  # a conservative estimate for English text

TRANSIENT_STATUSES = frozenset({408, 409, 429})
WAIT_STATUSES = frozenset({429, 529})  # rate limited, overloaded: with Retry-After, the stage waits instead


@dataclass(frozen=True)
class Usage:
    """What one call consumed, as the API reported it."""

    input_tokens: int
    output_tokens: int


class CallCache(Protocol):
    """Told about every Messages API call before and after it is made; answers requests seen to succeed.

    ``get`` returns the answer ``finished`` was given for that fingerprint (then no request is
    made), or None. ``failed`` carries the usage when the API answered but the answer was unusable
    (it was paid for all the same).
    """

    def get(self, fingerprint: str) -> dict[str, Any] | None: ...

    def started(self, fingerprint: str, request: dict[str, Any]) -> None: ...

    def finished(self, fingerprint: str, answer: dict[str, Any], usage: Usage, latency_s: float) -> None: ...

    def failed(self, fingerprint: str, error: str, latency_s: float, usage: Usage | None = None) -> None: ...


@dataclass(frozen=True)
class CallPlan:
    """What a summary will probably cost before it is made: calls and tokens, estimated from the text."""

    calls: int
    input_tokens: int
    output_tokens: int


def summarize(
    transcript: Transcript,
    *,
    api_key: str | None,
    model: str,
    base_url: str | None = None,
    max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
    calls: CallCache | None = None,
    prices: PriceTable = PRICES_PER_MTOK,
) -> Summary:
    """Summarise with Claude when a key is given, else extractively offline; ``calls`` sees every call."""
    if not transcript_lines(transcript):
        return no_speech_summary("claude" if api_key else "extractive")
    if not api_key:
        return summarize_extractive(transcript)
    summarizer = ClaudeSummarizer(client(api_key, base_url), model, max_input_tokens, calls=calls, prices=prices)
    return summarizer.run(transcript)


def fingerprint(request: dict[str, Any]) -> str:
    """sha256 of the canonical request (model, system, messages, max_tokens, ...): equal requests, equal prints."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def text_budget(max_input_tokens: int) -> int:
    """Tokens left for transcript text once the instructions and the answer are counted."""
    prompts = prompt_sections()
    overhead = estimate_tokens(prompts["system"] + prompts["chunk"]) + MAX_OUTPUT_TOKENS
    return max(max_input_tokens - overhead, 256)


def plan_calls(transcript: Transcript, max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS) -> CallPlan:
    """An upper estimate of a summary's calls and tokens (~4 characters a token, every answer at
    ``max_tokens``), so that a budget can refuse a summary before any of it is paid for."""
    lines = transcript_lines(transcript)
    if not lines:
        return CallPlan(0, 0, 0)
    prompts = prompt_sections()
    chunks = chunk_lines(lines, text_budget(max_input_tokens))
    instructions = estimate_tokens(prompts["system"] + prompts["chunk"])
    input_tokens = sum(estimate_tokens(chunk) + instructions for chunk in chunks)
    reduces = 0 if len(chunks) == 1 else len(chunks) - 1  # pairwise at worst
    reduce_input = estimate_tokens(prompts["system"] + prompts["reduce"]) + 2 * MAX_OUTPUT_TOKENS
    calls = len(chunks) + reduces
    return CallPlan(calls, input_tokens + reduces * reduce_input, calls * MAX_OUTPUT_TOKENS)


@lru_cache(maxsize=8)
def client(api_key: str, base_url: str | None) -> anthropic.Anthropic:
    """One SDK client per (key, base URL), reused across summaries; the SDK never retries."""
    return anthropic.Anthropic(api_key=api_key, base_url=base_url, max_retries=0, timeout=REQUEST_TIMEOUT_S)


@lru_cache(maxsize=1)
def prompt_sections() -> dict[str, str]:
    """The sections of ``prompts/summarize.md``, keyed by the name in ``<!-- section: NAME -->``."""
    text = files("dhgq").joinpath("prompts/summarize.md").read_text(encoding="utf-8")
    parts = re.split(r"<!--\s*section:\s*(\w+)\s*-->", text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def estimate_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def speaker_prefix(speaker: str | None) -> str:
    return f"{speaker}: " if speaker else ""


def transcript_lines(transcript: Transcript) -> list[str]:
    """One line per segment (``SPEAKER_1: text``); the whole text when there are no segments."""
    lines = [f"{speaker_prefix(s.speaker)}{s.text.strip()}" for s in transcript.segments if s.text.strip()]
    if not lines and transcript.text.strip():
        lines = [transcript.text.strip()]
    return lines


def split_long_line(line: str, budget: int) -> list[str]:
    """Cut a line longer than ``budget`` tokens at word boundaries."""
    pieces: list[str] = []
    current: list[str] = []
    for word in line.split():
        if current and estimate_tokens(" ".join([*current, word])) > budget:
            pieces.append(" ".join(current))
            current = []
        current.append(word)
    if current:
        pieces.append(" ".join(current))
    return pieces


def chunk_lines(lines: list[str], budget: int) -> list[str]:
    """Consecutive lines packed into chunks of at most ``budget`` estimated tokens."""
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for piece in (piece for line in lines for piece in split_long_line(line, budget)):
        cost = estimate_tokens(piece)
        if current and used + cost > budget:
            chunks.append("\n".join(current))
            current, used = [], 0
        current.append(piece)
        used += cost
    if current:
        chunks.append("\n".join(current))
    return chunks


def price(model: str, input_tokens: int, output_tokens: int, table: PriceTable = PRICES_PER_MTOK) -> float | None:
    """Estimated cost in USD, or None for a model family not in the table."""
    for prefix, input_price, output_price in table:
        if model.startswith(prefix):
            return round((input_tokens * input_price + output_tokens * output_price) / 1e6, 6)
    return None


def api_error_message(exc: anthropic.APIStatusError) -> str:
    """The API's own error message, from the body when it has one."""
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return exc.message


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """How long the API asks to wait, as the anthropic SDK reads it: ``retry-after-ms`` first, then
    ``retry-after`` in seconds (a float is accepted) or as an HTTP date; None when absent or unreadable."""
    try:
        return max(float(headers["retry-after-ms"]) / 1000, 0.0)
    except (KeyError, TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(email.utils.mktime_tz(parsed) - (time.time() if now is None else now), 0.0)


def translate_error(exc: anthropic.AnthropicError) -> TransientError | PermanentError:
    """Rate limits, overload, server errors and network failures are transient; the rest is not."""
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        message = f"Anthropic API returned {status}: {api_error_message(exc)}"
        if status in TRANSIENT_STATUSES or status >= 500:
            retry_after = retry_after_seconds(exc.response.headers)
            if retry_after is None:
                return TransientError(message)
            message = f"{message} (retry after {retry_after:g}s)"
            if status in WAIT_STATUSES:
                return ApiBusy(message, retry_after=retry_after, api="Anthropic API")
            return TransientError(message)
        return PermanentError(message)
    if isinstance(exc, anthropic.APITimeoutError):
        return TransientError("Anthropic API request timed out")
    if isinstance(exc, anthropic.APIConnectionError):
        return TransientError(f"Cannot reach the Anthropic API: {exc}")
    return PermanentError(f"Anthropic API call failed: {exc}")


def strip_code_fences(text: str) -> str:
    match = re.search(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
    return match.group(1) if match else text.strip()


def parse_summary_json(text: str) -> dict[str, Any]:
    """The model's JSON object, fences stripped; PermanentError if it is not one."""
    candidate = strip_code_fences(text)
    start, end = candidate.find("{"), candidate.rfind("}")
    try:
        data = json.loads(candidate[start : end + 1] if start >= 0 and end > start else candidate)
    except json.JSONDecodeError as exc:
        raise PermanentError(f"The model's answer is not valid JSON ({exc.msg}): {text[:200]!r}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("summary"), str):
        raise PermanentError(f"The model's JSON has no 'summary' string: {text[:200]!r}")
    return data


def string_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [str(item).strip() for item in value if str(item).strip()]


def normalise(data: dict[str, Any]) -> dict[str, Any]:
    """The four fields with the right types; an unknown document type becomes "other"."""
    document_type = str(data.get("document_type", "other")).strip().lower()
    return {
        "summary": data["summary"].strip(),
        "key_points": string_list(data.get("key_points")),
        "topics": string_list(data.get("topics")),
        "document_type": document_type if document_type in DOCUMENT_TYPES else "other",
    }


class ClaudeSummarizer:
    """One summary's calls to Claude, with the usage they add up to."""

    def __init__(
        self,
        sdk: anthropic.Anthropic,
        model: str,
        max_input_tokens: int,
        *,
        calls: CallCache | None = None,
        prices: PriceTable = PRICES_PER_MTOK,
    ) -> None:
        self.sdk = sdk
        self.model = model
        self.max_input_tokens = max_input_tokens
        self.calls = calls
        self.prices = prices
        self.prompts = prompt_sections()
        self.usage = {"input_tokens": 0, "output_tokens": 0, "calls": 0, "reused_calls": 0, "latency_s": 0.0}
        self.response_model = model

    @property
    def budget(self) -> int:
        """Tokens left for transcript text once the instructions and the answer are counted."""
        return text_budget(self.max_input_tokens)

    def run(self, transcript: Transcript) -> Summary:
        chunks = chunk_lines(transcript_lines(transcript), self.budget)
        if len(chunks) == 1:
            result = self.ask(self.prompts["single"].format(transcript=chunks[0]), {"kind": "single"})
        else:
            parts = [
                self.ask(
                    self.prompts["chunk"].format(part=i, parts=len(chunks), transcript=chunk),
                    {"kind": "chunk", "part": i, "parts": len(chunks)},
                )
                for i, chunk in enumerate(chunks, start=1)
            ]
            result = self.reduce(parts)
        return Summary(**result, method="claude", details=self.details(len(chunks)))

    def reduce(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        """Combine partial summaries, in groups that fit the budget when there are many."""
        if len(parts) == 1:
            return parts[0]
        groups: list[list[dict[str, Any]]] = [[]]
        for part in parts:
            if len(groups[-1]) >= 2 and estimate_tokens(json.dumps(groups[-1] + [part])) > self.budget:
                groups.append([])
            groups[-1].append(part)
        combined = [self.combine(group) if len(group) > 1 else group[0] for group in groups]
        return combined[0] if len(combined) == 1 else self.reduce(combined)

    def combine(self, group: list[dict[str, Any]]) -> dict[str, Any]:
        summaries = "\n".join(json.dumps(part, ensure_ascii=False) for part in group)
        return self.ask(self.prompts["reduce"].format(parts=len(group), summaries=summaries), {"kind": "reduce"})

    def ask(self, user_prompt: str, label: dict[str, Any]) -> dict[str, Any]:
        """One Messages API call, answered with the normalised JSON summary; an answer the cache
        has for the same request is used instead of making the call again."""
        system = self.prompts["system"]
        request = {  # exactly what is sent: its fingerprint keys the cache
            "model": self.model,
            "max_tokens": MAX_OUTPUT_TOKENS,
            "system": system,
            "messages": [{"role": "user", "content": user_prompt}],
        }
        key = fingerprint(request)
        cached = self.calls.get(key) if self.calls is not None else None
        if cached is not None:
            return self.reuse(cached)
        if self.calls is not None:
            self.calls.started(key, self.describe(label, user_prompt))
        started = time.monotonic()
        try:
            message = self.sdk.messages.create(
                model=self.model,
                max_tokens=MAX_OUTPUT_TOKENS,
                system=system,
                messages=[{"role": "user", "content": user_prompt}],
            )
        except anthropic.AnthropicError as exc:
            error, latency = translate_error(exc), time.monotonic() - started
            self.usage["latency_s"] += latency
            if self.calls is not None:
                self.calls.failed(key, error.message, latency)
            raise error from exc
        latency = time.monotonic() - started
        usage = Usage(message.usage.input_tokens, message.usage.output_tokens)
        self.count(usage, latency, message.model or self.model)
        text = "".join(block.text for block in message.content if block.type == "text")
        answer = {"text": text, "model": self.response_model, "id": message.id, "usage": asdict(usage)}
        try:
            result = normalise(parse_summary_json(text))
        except PermanentError as exc:
            if self.calls is not None:
                self.calls.failed(key, exc.message, latency, usage)
            raise
        if self.calls is not None:
            self.calls.finished(key, answer, usage, latency)
        return result

    def describe(self, label: dict[str, Any], user_prompt: str) -> dict[str, Any]:
        """What the cache records of a request: its place in the summary and its size, not its text."""
        return {
            **label,
            "model": self.model,
            "max_tokens": MAX_OUTPUT_TOKENS,
            "prompt_chars": len(user_prompt),
            "input_tokens_estimate": estimate_tokens(self.prompts["system"] + user_prompt),
        }

    def reuse(self, answer: dict[str, Any]) -> dict[str, Any]:
        """A cached answer, counted in the summary's usage as the call it stands for."""
        usage = answer.get("usage") or {}
        self.usage["reused_calls"] += 1
        self.usage["input_tokens"] += int(usage.get("input_tokens") or 0)
        self.usage["output_tokens"] += int(usage.get("output_tokens") or 0)
        self.response_model = str(answer.get("model") or self.response_model)
        return normalise(parse_summary_json(str(answer.get("text", ""))))

    def count(self, usage: Usage, latency_s: float, model: str) -> None:
        self.usage["calls"] += 1
        self.usage["latency_s"] += latency_s
        self.usage["input_tokens"] += usage.input_tokens
        self.usage["output_tokens"] += usage.output_tokens
        self.response_model = model

    def details(self, chunks: int) -> dict[str, Any]:
        input_tokens, output_tokens = int(self.usage["input_tokens"]), int(self.usage["output_tokens"])
        return {
            "method": "claude",
            "model": self.response_model,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "latency_s": round(float(self.usage["latency_s"]), 3),
            "cost_estimate_usd": price(self.response_model, input_tokens, output_tokens, self.prices),
            "calls": int(self.usage["calls"]),
            "reused_calls": int(self.usage["reused_calls"]),
            "chunks": chunks,
        }
