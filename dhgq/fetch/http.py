"""Streaming downloads over HTTP: the status codes sorted into dhgq's error classes, redirects
followed by hand (each hop checked when the URL is a user's), bytes written by ``files.write_stream``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urljoin

import httpx

from dhgq.errors import PermanentError, TransientError
from dhgq.fetch.files import CHUNK, write_stream
from dhgq.netguard import check_public_url

MAX_REDIRECTS = 5


def download(
    url: str,
    target: Path,
    *,
    source: str,
    max_bytes: int,
    timeout: float,
    headers: dict[str, str] | None = None,
    guard: tuple[str, ...] | None = None,
) -> tuple[str, int]:
    """GET ``url`` into ``target``; (sha256, size). ``guard``: refuse private addresses but these (a user's URL)."""
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout)) as client:
            for _ in range(MAX_REDIRECTS + 1):
                if guard is not None:
                    check_public_url(url, guard, what="source")
                with client.stream("GET", url, headers=headers) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    raise_for_status(response, source)
                    declared = int(response.headers.get("content-length") or 0)
                    if declared > max_bytes:
                        raise PermanentError(
                            f"{source}: {declared:,} bytes, more than the {max_bytes:,} a source may have "
                            "(DHGQ_MAX_SOURCE_BYTES)",
                            file=source,
                        )
                    return write_stream(response.iter_bytes(CHUNK), target, max_bytes=max_bytes, source=source)
    except httpx.TimeoutException as exc:
        raise TransientError(f"{source}: download timed out ({type(exc).__name__})", file=source) from None
    except httpx.TransportError as exc:
        raise TransientError(f"{source}: download failed: {exc}", file=source) from None
    raise PermanentError(f"{source}: more than {MAX_REDIRECTS} redirects", file=source)


def raise_for_status(response: httpx.Response, source: str) -> None:
    """4xx (but 408 and 429) is permanent: missing, refused, malformed; 408, 429 and 5xx are transient."""
    status = response.status_code
    if status < 400:
        return
    reason = f"{source}: HTTP {status} {response.reason_phrase}".rstrip()
    if status in (401, 403):
        raise PermanentError(f"{reason}: access refused (check the credentials)", file=source)
    if status in (404, 410):
        raise PermanentError(f"{reason}: not found", file=source)
    if status in (408, 429) or status >= 500:
        raise TransientError(reason, file=source)
    raise PermanentError(reason, file=source)
