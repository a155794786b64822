"""Webhooks: the signed POST that tells a request's callback URL how the request ended.

The body is JSON (UTF-8, compact, keys sorted)::

    {"event": "processing_job.completed", "request_id": "...", "source_id": "...",
     "status": "completed", "error": null, "result": {...}, "completed_at": "...Z", "delivered_at": "...Z"}

``event`` is ``processing_job.completed``, ``processing_job.failed`` or ``processing_job.cancelled``.

Signature, as Stripe signs its webhooks: the header ``X-Dhgq-Signature: t=<unix seconds>,v1=<hex>``
where ``<hex>`` is the HMAC-SHA256, keyed with ``DHGQ_WEBHOOK_SECRET``, of ``"<t>.<raw body>"``.
A receiver recomputes it over the raw bytes it received (before parsing the JSON), compares in
constant time, and refuses a ``t`` older than a few minutes (a replayed request); :func:`verify`
does all three. Without a secret nothing is delivered: an unsigned body could not be told from
a forged one.

``X-Dhgq-Delivery: <request_id>:<outcome>`` is the same on every attempt of one delivery, so a
receiver that saw it already can answer 2xx and do nothing (a delivery is at least once: a worker
killed after the receiver answered sends it again).

A 2xx answer is delivered. 408, 429, 5xx, timeouts and connection errors are transient (the task
retries with backoff); any other answer, a redirect (never followed: the URL was checked, its
target was not), a private address or a missing secret are permanent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from dhgq.errors import PermanentError, TransientError
from dhgq.netguard import check_public_url
from dhgq.settings import Settings

SIGNATURE_HEADER = "X-Dhgq-Signature"
DELIVERY_HEADER = "X-Dhgq-Delivery"
USER_AGENT = "dhgq-webhook"
TIMEOUT_SECONDS = 10.0
TOLERANCE_SECONDS = 300  # how old a signature verify() accepts


class ReceiverUnavailable(TransientError):
    """The receiver did not answer, or answered 408, 429 or 5xx; try again later."""

    def __init__(self, message: str | None = None, response_status: int | None = None, **context: str | None) -> None:
        super().__init__(message, **context)
        self.response_status = response_status


class ReceiverRefused(PermanentError):
    """The receiver answered with a status that retrying will not change."""

    def __init__(self, message: str | None = None, response_status: int | None = None, **context: str | None) -> None:
        super().__init__(message, **context)
        self.response_status = response_status


def response_status_of(exc: BaseException) -> int | None:
    """The HTTP status a failed delivery got, if the receiver answered at all."""
    return exc.response_status if isinstance(exc, ReceiverUnavailable | ReceiverRefused) else None


@dataclass(frozen=True)
class Delivery:
    """One announcement: a request's outcome, as the database recorded it when the request ended."""

    request_id: str
    outcome: str  # completed, failed or cancelled
    url: str
    event: Mapping[str, Any]  # source_id, status, error, result, completed_at

    @property
    def key(self) -> str:
        """The same on every attempt: the receiver's idempotency key."""
        return f"{self.request_id}:{self.outcome}"


def body(delivery: Delivery, delivered_at: datetime) -> bytes:
    """The JSON body: compact and with sorted keys, so that the bytes signed are the bytes sent."""
    document = {
        "event": f"processing_job.{delivery.outcome}",
        "request_id": delivery.request_id,
        "source_id": delivery.event.get("source_id"),
        "status": delivery.event.get("status", delivery.outcome),
        "error": delivery.event.get("error"),
        "result": delivery.event.get("result"),
        "completed_at": delivery.event.get("completed_at"),
        "delivered_at": delivered_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), default=str).encode()


def sign(secret: str, timestamp: int, payload: bytes) -> str:
    """The X-Dhgq-Signature value: ``t=<timestamp>,v1=<HMAC-SHA256 of "<timestamp>.<payload>">``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(
    secret: str, header: str, payload: bytes, *, tolerance: int = TOLERANCE_SECONDS, now: float | None = None
) -> bool:
    """A receiver's check: the header signs ``payload`` with ``secret`` and is at most ``tolerance`` seconds old."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, payload).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, candidate) for candidate in fields.get("v1", []))


def deliver(delivery: Delivery, settings: Settings, *, clock: Callable[[], float] = time.time) -> int:
    """POST the signed body to the delivery's URL once; the 2xx status, or a Transient/PermanentError."""
    if settings.webhook_secret is None or not settings.webhook_secret.get_secret_value():
        raise PermanentError("DHGQ_WEBHOOK_SECRET is not set: webhooks are only sent signed")
    check_public_url(delivery.url, settings.allow_private_hosts, what="webhook")
    timestamp = int(clock())
    payload = body(delivery, datetime.fromtimestamp(timestamp, UTC))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        DELIVERY_HEADER: delivery.key,
        SIGNATURE_HEADER: sign(settings.webhook_secret.get_secret_value(), timestamp, payload),
    }
    return _judge(_post(delivery.url, payload, headers), delivery.url)


def _post(url: str, payload: bytes, headers: dict[str, str]) -> httpx.Response:
    """One POST, redirects not followed; the answer's body is not read (only its status counts)."""
    shown = _shown(url)
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(TIMEOUT_SECONDS), follow_redirects=False) as client,
            client.stream("POST", url, content=payload, headers=headers) as response,
        ):
            return response
    except httpx.TimeoutException as exc:
        raise ReceiverUnavailable(f"webhook {shown}: timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise ReceiverUnavailable(f"webhook {shown}: {type(exc).__name__}: {exc}") from None
    except httpx.InvalidURL as exc:
        raise ReceiverRefused(f"webhook {shown}: invalid URL ({exc})") from None


def _judge(response: httpx.Response, url: str) -> int:
    """2xx is delivered; 408, 429 and 5xx are worth another try; anything else is final."""
    status = response.status_code
    if 200 <= status < 300:
        return status
    answer = f"webhook {_shown(url)}: HTTP {status} {response.reason_phrase}".rstrip()
    if status in (408, 429) or status >= 500:
        raise ReceiverUnavailable(answer, status)
    if 300 <= status < 400:
        raise ReceiverRefused(f"{answer}: redirects are not followed; give the final URL", status)
    raise ReceiverRefused(answer, status)


def _shown(url: str) -> str:
    """The URL without its query or fragment (which may carry a receiver's token), for messages."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
