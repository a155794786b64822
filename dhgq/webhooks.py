"""Webhooks: the signed POST that tells a request's callback URL how the request ended.

Signed as Standard Webhooks signs (https://www.standardwebhooks.com, the ``standardwebhooks``
package), so a receiver verifies with that library in any language::

    webhook-id: <request_id>:<outcome>          the same on every attempt: the receiver's idempotency key
    webhook-timestamp: <unix seconds>            receivers refuse one more than 5 minutes off
    webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<raw body>">  (one per key, space-separated)

The key is the request owner's own secret (``whsec_...``: ``dhgq_rotate_webhook_secret_v1``) when
they set the callback URL; when the operator set it (the service role, the CLI), Settings'
``webhook_secret`` if the worker has one, else the owner's. For 24 hours after a rotation the
previous secret signs too (a second signature in the header). No key, nothing sent: an unsigned
body could not be told from a forged one.

The body is JSON (UTF-8, compact, keys sorted), in Standard Webhooks' envelope::

    {"type": "processing_job.completed", "timestamp": "...Z",
     "data": {"request_id": "...", "source_id": "...", "status": "completed", "error": null,
              "result": {...}, "completed_at": "...Z"}}

A 2xx answer is delivered. 408, 429, 5xx, timeouts and connection errors are transient (retried on
Settings' webhook_retry_schedule); any other answer, a redirect (never followed: the URL was
checked, its target was not), an address that is not public, or no key are permanent. One attempt
has ``webhook_timeout`` seconds in all: a receiver that trickles its answer is cut off.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from dhgq.errors import PermanentError, TransientError
from dhgq.guarded_http import guarded_client
from dhgq.netguard import Guard
from dhgq.settings import Settings

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
USER_AGENT = "dhgq-webhook"


class ReceiverUnavailable(TransientError):
    """The receiver did not answer in time, or answered 408, 429 or 5xx; try again later."""

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
    signer: str = "operator"  # who set the URL: "user" or "operator"
    owner_secrets: Sequence[str] = field(default=(), repr=False)  # the owner's current secret, then the previous

    @property
    def key(self) -> str:
        """The webhook-id: the same on every attempt and redelivery, the receiver's idempotency key."""
        return f"{self.request_id}:{self.outcome}"


def signing_secrets(delivery: Delivery, settings: Settings) -> list[str]:
    """The keys that sign ``delivery``: whose depends on who set its URL (see the module's docstring)."""
    operator = settings.webhook_secret.get_secret_value() if settings.webhook_secret is not None else ""
    if delivery.signer == "operator" and operator:
        return [operator]
    if delivery.owner_secrets:
        return list(delivery.owner_secrets)
    if delivery.signer == "user":
        raise PermanentError(
            "the request's owner has no webhook secret (dhgq_rotate_webhook_secret_v1 makes one): nothing is sent "
            "unsigned"
        )
    raise PermanentError(
        "neither DHGQ_WEBHOOK_SECRET nor a secret of the request's owner is set: webhooks are only sent signed"
    )


def body(delivery: Delivery, delivered_at: datetime) -> bytes:
    """The JSON body: compact and with sorted keys, so that the bytes signed are the bytes sent."""
    document = {
        "type": f"processing_job.{delivery.outcome}",
        "timestamp": _iso(delivered_at),
        "data": {
            "request_id": delivery.request_id,
            "source_id": delivery.event.get("source_id"),
            "status": delivery.event.get("status", delivery.outcome),
            "error": delivery.event.get("error"),
            "result": delivery.event.get("result"),
            "completed_at": delivery.event.get("completed_at"),
        },
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), default=str).encode()


def signer_of(secret: str) -> Webhook:
    """Standard Webhooks' signer: a ``whsec_`` secret is base64, anything else is used as its UTF-8 bytes."""
    return Webhook(secret) if secret.startswith("whsec_") else Webhook(secret.encode())


def headers_for(delivery: Delivery, secrets: Sequence[str], timestamp: int, payload: bytes) -> dict[str, str]:
    """Standard Webhooks' three headers: one ``v1,<base64>`` signature per secret."""
    when = datetime.fromtimestamp(timestamp, UTC)
    return {
        ID_HEADER: delivery.key,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: " ".join(signer_of(secret).sign(delivery.key, when, payload) for secret in secrets),
    }


def verify(secret: str, headers: Mapping[str, str], payload: bytes) -> bool:
    """A receiver's check, as the standardwebhooks library does it: signature and a 5-minute tolerance."""
    try:
        signer_of(secret).verify(payload, dict(headers), json_parse=False)
    except WebhookVerificationError:
        return False
    return True


def deliver(
    delivery: Delivery,
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    guard: Guard | None = None,
) -> int:
    """POST the signed body to the delivery's URL once; the 2xx status, or a Transient/PermanentError."""
    secrets = signing_secrets(delivery, settings)
    guard = guard or Guard(settings.allow_private_hosts, "webhook")
    guard.check_url(delivery.url)  # early and clear; the connection is checked again (guarded_http)
    timestamp = int(clock())
    payload = body(delivery, datetime.fromtimestamp(timestamp, UTC))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **headers_for(delivery, secrets, timestamp, payload),
    }
    return _judge(_post(delivery.url, payload, headers, guard, settings.webhook_timeout), delivery.url)


def _post(url: str, payload: bytes, headers: dict[str, str], guard: Guard, seconds: float) -> httpx.Response:
    """One POST within ``seconds`` in all, redirects not followed; the answer's body is not read."""
    shown = _shown(url)
    deadline = time.monotonic() + seconds
    try:
        with (
            guarded_client(guard, timeout=seconds, deadline=deadline) as client,
            client.stream("POST", url, content=payload, headers=headers) as response,
        ):
            return response
    except httpx.TimeoutException as exc:
        raise ReceiverUnavailable(f"webhook {shown}: no answer within {seconds:g} s ({type(exc).__name__})") from None
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
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
