"""Streaming downloads over HTTP: the status codes sorted into dhgq's error classes, redirects
followed by hand, bytes written by ``files.write_stream``.

Every connection goes through ``guarded_http``: a user's URL reaches public addresses only (the
address checked is the address connected to). The operator's own first URL (a Storage signed URL,
the Drive API) is ``trusted``: its host connects as usual, but a redirect to another host is
checked like a user's URL. Credentials (``headers``) go to the first URL's origin only: a redirect
elsewhere is followed without them (a Drive token must never reach a host Drive points to).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from dhgq.errors import PermanentError, TransientError
from dhgq.fetch.files import CHUNK, write_stream
from dhgq.guarded_http import guarded_client
from dhgq.netguard import Guard

MAX_REDIRECTS = 5


def download(
    url: str,
    target: Path,
    *,
    source: str,
    max_bytes: int,
    timeout: float,
    guard: Guard,
    headers: dict[str, str] | None = None,
    trusted: bool = False,
) -> tuple[str, int]:
    """GET ``url`` into ``target``; (sha256, size). ``trusted``: ``url``'s own host is the operator's."""
    origin = _origin(url)
    exempt = [urlsplit(url).hostname or ""] if trusted else []
    try:
        with guarded_client(guard, timeout=timeout, exempt=exempt) as client:
            for _ in range(MAX_REDIRECTS + 1):
                if urlsplit(url).scheme not in ("https", "http"):
                    raise PermanentError(f"{source}: redirected to a URL that is not http(s)", file=source)
                sent = headers if _origin(url) == origin else None
                with client.stream("GET", url, headers=sent) as response:
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
    except PermanentError as exc:
        exc.with_context(file=source)
        raise
    except httpx.TimeoutException as exc:
        raise TransientError(f"{source}: download timed out ({type(exc).__name__})", file=source) from None
    except httpx.TransportError as exc:
        raise TransientError(f"{source}: download failed: {exc}", file=source) from None
    raise PermanentError(f"{source}: more than {MAX_REDIRECTS} redirects", file=source)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


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
