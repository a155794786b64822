"""A real local HTTP server that speaks enough of the Anthropic Messages API for the real SDK.

Point ``anthropic.Anthropic(base_url=server.url)`` at it. Each test scripts the answers:
``server.fail(429, times=1, retry_after=2)`` queues failures that are served first, in order
(``after=2``: only once two requests have come in, so a long summary fails halfway); after
them every request succeeds with the text that ``server.reply`` returns for it (by default a
fixed JSON summary). ``server.hold(after=2)`` keeps every later request waiting, unanswered,
until ``server.release()`` (a worker can be killed mid-call). Every request body is kept in
``server.requests``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_SUMMARY = {
    "summary": "Two engineers discuss how the media pipeline turns talks into transcripts.",
    "key_points": ["Jobs live in the database", "Transcription and diarization run in parallel"],
    "topics": ["media pipeline", "job queues"],
    "document_type": "interview",
}

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class ScriptedFailure:
    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    after: int = 0  # served to a request only once this many requests came in before it


def default_reply(request: dict[str, Any]) -> str:
    return json.dumps(DEFAULT_SUMMARY)


class FakeAnthropic:
    """The server's script and record; the handler reads and writes it under a lock."""

    def __init__(self) -> None:
        self.failures: list[ScriptedFailure] = []
        self.reply: Callable[[dict[str, Any]], str] = default_reply
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.times: list[float] = []  # time.time() of each request, in order
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.held_after: int | None = None
        self.released = threading.Event()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_port}"

    def fail(
        self,
        status: int,
        *,
        times: int = 1,
        message: str | None = None,
        retry_after: int | None = None,
        retry_after_ms: int | None = None,
        after: int = 0,
    ) -> None:
        """Answer the next ``times`` requests with an error of this status (the first of them being
        the one after the first ``after`` requests). ``retry_after`` (seconds) and ``retry_after_ms``
        are sent as the real API sends them on a 429 or 529: ``retry-after`` and ``retry-after-ms``."""
        headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        text = message or f"scripted {status} error"
        self.failures.extend(ScriptedFailure(status, text, headers, after) for _ in range(times))

    def next_failure(self, number: int = 1 << 30) -> ScriptedFailure | None:
        """The failure for request ``number`` (1-based), if one is due."""
        with self.lock:
            if self.failures and self.failures[0].after < number:
                return self.failures.pop(0)
            return None

    def hold(self, *, after: int) -> None:
        """Leave every request after the first ``after`` unanswered until ``release()``."""
        self.released.clear()
        self.held_after = after

    def release(self) -> None:
        self.held_after = None
        self.released.set()

    def wait_if_held(self, number: int) -> None:
        if self.held_after is not None and number > self.held_after:
            self.released.wait(timeout=600)

    def record(self, body: dict[str, Any], headers: dict[str, str]) -> int:
        with self.lock:
            self.requests.append(body)
            self.headers.append(headers)
            self.times.append(time.time())
            return len(self.requests)

    def message(self, request: dict[str, Any], number: int) -> dict[str, Any]:
        """A Messages API response object for a successful request."""
        text = self.reply(request)
        prompt_chars = len(json.dumps(request.get("messages", []))) + len(str(request.get("system", "")))
        return {
            "id": f"msg_fake_{number:04d}",
            "type": "message",
            "role": "assistant",
            "model": request.get("model", "claude-sonnet-4-5"),
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": prompt_chars // 4 + 1, "output_tokens": len(text) // 4 + 1},
        }


def make_handler(fake: FakeAnthropic) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass

        def send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", "req_fake")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            length = int(self.headers.get("content-length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path.split("?")[0] != "/v1/messages":
                error = {"type": "not_found_error", "message": f"no route {self.path}"}
                self.send_json(404, {"type": "error", "error": error}, {})
                return
            number = fake.record(body, {k.lower(): v for k, v in self.headers.items()})
            fake.wait_if_held(number)
            failure = fake.next_failure(number)
            if failure is not None:
                error = {"type": ERROR_TYPES.get(failure.status, "api_error"), "message": failure.message}
                self.send_json(failure.status, {"type": "error", "error": error}, failure.headers)
                return
            self.send_json(200, fake.message(body, number), {})

    return Handler


@contextmanager
def fake_anthropic_server() -> Iterator[FakeAnthropic]:
    """A started server on a free localhost port, stopped on exit."""
    fake = FakeAnthropic()
    fake.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(fake))
    fake.server.daemon_threads = True
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.release()
        fake.server.shutdown()
        fake.server.server_close()
        thread.join(timeout=5)
