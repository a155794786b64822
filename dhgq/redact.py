"""Credentials out of text that others read: log lines and the errors written to stage rows.

A signed Storage URL (``...?token=<JWT>``), a presigned S3 or GCS URL, a callback URL with a
receiver's token in its query or ``user:pass@`` in front of its host, an ``Authorization``
header, a JWT, a ``whsec_`` webhook secret or a ``password=`` in a connection string each grant
access to whoever reads them. They are replaced before the text leaves the process: a URL keeps
its scheme, host, path and query parameter names; the values go.
"""

from __future__ import annotations

import re

REDACTED = "REDACTED"

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"<>]+@")
_QUERY = re.compile(r"(?i)(\bhttps?://[^\s?#'\"<>]*\?)([^\s#'\"<>]*?)(?=[:,;.)\]]*(?:[\s#'\"<>]|$))")
_QUERY_PAIR = re.compile(r"([^&=;]+)=([^&;]*)")
_SECRET_PAIR = re.compile(
    r"(?i)\b((?:access_|refresh_|id_)?token|apikey|api_key|sig|signature|secret|password|passwd"
    r"|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential)"
    r"(\s*[=:]\s*)(?!REDACTED)([^\s&,;'\"<>)]+)"
)
_AUTHORIZATION = re.compile(r"(?i)\b(authorization|apikey)(\"?\s*[:=]\s*\"?)(bearer\s+|basic\s+)?[^\s,;'\"<>]+")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+(?!REDACTED)[A-Za-z0-9._~+/=-]{8,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_WEBHOOK_SECRET = re.compile(r"\bwhsec_[A-Za-z0-9+/=_-]+")


def redact(text: str) -> str:
    """``text`` with every credential it carries replaced by REDACTED."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    text = _QUERY.sub(lambda m: m.group(1) + _QUERY_PAIR.sub(lambda p: f"{p.group(1)}={REDACTED}", m.group(2)), text)
    text = _AUTHORIZATION.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _JWT.sub(REDACTED, text)
    text = _WEBHOOK_SECRET.sub(f"whsec_{REDACTED}", text)
    return _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
