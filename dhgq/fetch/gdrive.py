"""``gdrive://FILE_ID``: a Google Drive file, read as a service account.

The worker has no user to ask for consent, so it signs in as a service account (OAuth 2.0's JWT
bearer grant, RFC 7523): it signs a short assertion with the account's private key, trades it at
Google's token endpoint for an access token, and keeps that token for the hour it lasts. A file is
readable when it was shared with the account's email (or lies in a shared drive the account is a
member of). The file's metadata is read first, so that a folder, a Google Doc or a file over the
size limit is refused before any byte is downloaded; the content then streams to disk through
``http.download``, and Drive's md5 checksum is checked against what arrived.

The metadata goes back under the ``sources_google`` column names, ready to be stored as they are.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from dhgq.errors import ConfigurationError, PermanentError, TransientError
from dhgq.fetch.files import CHUNK, Fetched, target_name
from dhgq.fetch.http import download
from dhgq.netguard import Guard
from dhgq.settings import Settings

DRIVE_SCOPE = "https://www.googleapis.com/auth/drive.readonly"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
ASSERTION_SECONDS = 3600  # the longest Google accepts
REFRESH_MARGIN = 300.0  # seconds before expiry a cached token is replaced, so none expires mid-request
FILE_ID = re.compile(r"[A-Za-z0-9_-]{10,200}")
GOOGLE_APPS = "application/vnd.google-apps."
METADATA_FIELDS = "id,name,mimeType,size,md5Checksum,modifiedTime,webViewLink,thumbnailLink,parents,driveId"
# 403s that Drive documents as "back off and retry", unlike a refusal
RATE_LIMIT_REASONS = frozenset({"userRateLimitExceeded", "rateLimitExceeded"})
# Drive's field -> the sources_google column it fills
COLUMNS = {
    "name": "name",
    "mimeType": "mime_type",
    "md5Checksum": "md5_checksum",
    "modifiedTime": "modified_time",
    "webViewLink": "web_view_link",
    "thumbnailLink": "thumbnail_link",
    "driveId": "root_drive_id",
}
KEY_FIX = (
    "set DHGQ_GDRIVE_SERVICE_ACCOUNT_FILE to a service account's JSON key (Google Cloud console: IAM & Admin > "
    "Service accounts > Keys > Add key > JSON) and share the Drive files with that account's email"
)


@dataclass(frozen=True)
class ServiceAccount:
    """What a service account's JSON key holds that the token request needs; the key never shows in a repr."""

    client_email: str
    private_key_id: str | None
    token_uri: str
    key_file: Path
    private_key: RSAPrivateKey = field(repr=False, compare=False)


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float  # time.monotonic()


_tokens: dict[tuple[str, str, str | None], _Token] = {}
_tokens_lock = threading.Lock()


def download_drive_file(uri: str, scratch: Path, settings: Settings) -> Fetched:
    """Download the Drive file ``uri`` names into ``scratch``; its metadata under sources_google's column names."""
    file_id = parse_drive_uri(uri)
    account = load_service_account(settings)
    token = access_token(account, settings.fetch_timeout, source=uri)
    meta = file_metadata(file_id, token, account, settings, source=uri)
    check_downloadable(meta, settings.max_source_bytes, source=uri)
    target = scratch / target_name(str(meta.get("name") or ""), fallback=file_id)
    media_url = f"{api_base(settings)}/drive/v3/files/{file_id}?alt=media&supportsAllDrives=true"
    sha256, size = download(
        media_url,
        target,
        source=uri,
        max_bytes=settings.max_source_bytes,
        timeout=settings.fetch_timeout,
        guard=Guard(settings.allow_private_hosts, "redirect to"),
        headers=bearer(token),  # to the Drive API's own origin only, never to a host it redirects to
        trusted=True,
    )
    try:
        verify_download(target, size, meta, source=uri)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return Fetched(target, sha256, size, remote=True, metadata=sources_google_columns(file_id, meta))


def parse_drive_uri(uri: str) -> str:
    """The file id of ``gdrive://FILE_ID``; PermanentError for anything else, since no retry can fix a bad URI."""
    scheme, sep, rest = uri.partition("://")
    file_id = rest.rstrip("/")
    if not sep or scheme.lower() != "gdrive" or not FILE_ID.fullmatch(file_id):
        raise PermanentError(
            f"{uri}: not a gdrive://FILE_ID URI (a Drive file id is 10 to 200 letters, digits, '-' or '_')", file=uri
        )
    return file_id


def api_base(settings: Settings) -> str:
    return settings.gdrive_api_url.rstrip("/")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- the service account -------------------------------------------------------------------------


def load_service_account(settings: Settings) -> ServiceAccount:
    """The configured service account; ConfigurationError (never the key's text) when it is missing or unusable."""
    path = settings.gdrive_service_account_file
    if path is None:
        raise ConfigurationError(f"gdrive:// sources need a Google service account: {KEY_FIX}")
    data = _read_key_file(path)
    kind = data.get("type")
    if kind != "service_account":
        raise ConfigurationError(
            f"{path} is a {kind or 'untyped'} credentials file, not a service account key: {KEY_FIX}"
        )
    email, pem = data.get("client_email"), data.get("private_key")
    if not isinstance(email, str) or not email or not isinstance(pem, str) or not pem:
        raise ConfigurationError(f"{path}: the key lacks client_email or private_key: {KEY_FIX}")
    key_id = data.get("private_key_id")
    token_uri = data.get("token_uri") or DEFAULT_TOKEN_URI
    return ServiceAccount(
        client_email=email,
        private_key_id=key_id if isinstance(key_id, str) and key_id else None,
        token_uri=str(token_uri),
        key_file=path,
        private_key=_private_key(pem, path),
    )


def _read_key_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the service account key ({exc.strerror}): {KEY_FIX}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigurationError(f"{path}: not a JSON key file: {KEY_FIX}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path}: not a JSON key file: {KEY_FIX}")
    return data


def _private_key(pem: str, path: Path) -> RSAPrivateKey:
    """The key parsed once, here, so that a damaged key is a configuration error and not a failed request."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, RSAPrivateKey):
        raise ConfigurationError(f"{path}: private_key is not an unencrypted PEM RSA key: {KEY_FIX}")
    return key


# --- the access token ----------------------------------------------------------------------------


def access_token(account: ServiceAccount, timeout: float, *, source: str) -> str:
    """A valid access token for ``account``: the cached one while it has time left, else a new one.

    One token serves every download of the process for its hour: the token endpoint is rate
    limited and a round trip slower than the cache. The lock keeps concurrent stages from each
    asking for their own.
    """
    cache_key = _cache_key(account)
    with _tokens_lock:
        cached = _tokens.get(cache_key)
        if cached is not None and cached.expires_at - REFRESH_MARGIN > time.monotonic():
            return cached.value
        token = request_token(account, timeout, source=source)
        _tokens[cache_key] = token
        return token.value


def forget_token(account: ServiceAccount) -> None:
    """Drop the cached token (Drive rejected it: revoked, or the clock lied), so the retry asks for a new one."""
    with _tokens_lock:
        _tokens.pop(_cache_key(account), None)


def clear_token_cache() -> None:
    """Forget every cached token (tests, and a key rotated under a running worker)."""
    with _tokens_lock:
        _tokens.clear()


def _cache_key(account: ServiceAccount) -> tuple[str, str, str | None]:
    return (account.token_uri, account.client_email, account.private_key_id)


def signed_assertion(account: ServiceAccount, now: int) -> str:
    """The RS256-signed JWT that asks ``token_uri`` for a Drive read-only token on the account's behalf."""
    claims = {
        "iss": account.client_email,
        "scope": DRIVE_SCOPE,
        "aud": account.token_uri,
        "iat": now,
        "exp": now + ASSERTION_SECONDS,
    }
    headers = {"kid": account.private_key_id} if account.private_key_id else None
    return jwt.encode(claims, account.private_key, algorithm="RS256", headers=headers)


def request_token(account: ServiceAccount, timeout: float, *, source: str) -> _Token:
    """Trade a fresh assertion for an access token (RFC 7523 section 2.1)."""
    form = {"grant_type": JWT_BEARER_GRANT, "assertion": signed_assertion(account, int(time.time()))}
    try:
        response = httpx.post(account.token_uri, data=form, headers={"accept": "application/json"}, timeout=timeout)
    except httpx.TimeoutException as exc:
        raise TransientError(
            f"{source}: Google's token endpoint timed out ({type(exc).__name__})", file=source
        ) from None
    except httpx.TransportError as exc:
        raise TransientError(f"{source}: Google's token endpoint failed: {exc}", file=source) from None
    if response.status_code != 200:
        _raise_token_error(response, account, source)
    return _token_from(response, source)


def _token_from(response: httpx.Response, source: str) -> _Token:
    """The access token of a 200 answer and when it expires (``expires_in``, an hour when not said)."""
    try:
        payload = response.json()
        value = payload["access_token"]
        expires_in = float(payload.get("expires_in", ASSERTION_SECONDS))
    except (ValueError, KeyError, TypeError, AttributeError):
        value = None
    if not isinstance(value, str) or not value:
        raise TransientError(f"{source}: Google's token endpoint answered without an access token", file=source)
    return _Token(value, time.monotonic() + expires_in)


def _raise_token_error(response: httpx.Response, account: ServiceAccount, source: str) -> NoReturn:
    """A refused grant (bad or deleted key, unknown account, clock skew) is permanent; an outage is transient."""
    status = response.status_code
    error, description = _oauth_error(response)
    said = f"HTTP {status}" + (f" {error}" if error else "") + (f": {description}" if description else "")
    if status in (408, 429) or status >= 500:
        raise TransientError(f"{source}: Google's token endpoint failed ({said})", file=source)
    raise PermanentError(
        f"{source}: Google refused the service account {account.client_email} ({said}); check that the key in "
        f"{account.key_file} is current (not deleted or disabled) and that this machine's clock is right",
        file=source,
    )


def _oauth_error(response: httpx.Response) -> tuple[str, str]:
    """(error, error_description) of an OAuth error body (RFC 6749 section 5.2), empty when there is none."""
    try:
        body = response.json()
    except ValueError:
        return "", ""
    if not isinstance(body, dict):
        return "", ""
    return str(body.get("error") or ""), str(body.get("error_description") or "")


# --- the file ------------------------------------------------------------------------------------


def file_metadata(
    file_id: str, token: str, account: ServiceAccount, settings: Settings, *, source: str
) -> dict[str, Any]:
    """Drive's ``files.get`` for the fields sources_google keeps (shared drives included)."""
    url = f"{api_base(settings)}/drive/v3/files/{file_id}"
    params = {"fields": METADATA_FIELDS, "supportsAllDrives": "true"}
    try:
        response = httpx.get(url, params=params, headers=bearer(token), timeout=settings.fetch_timeout)
    except httpx.TimeoutException as exc:
        raise TransientError(f"{source}: Drive timed out ({type(exc).__name__})", file=source) from None
    except httpx.TransportError as exc:
        raise TransientError(f"{source}: Drive failed: {exc}", file=source) from None
    if response.status_code != 200:
        _raise_drive_error(response, file_id, account, source)
    try:
        meta = response.json()
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise TransientError(f"{source}: Drive answered with no file metadata", file=source)
    return meta


def _raise_drive_error(response: httpx.Response, file_id: str, account: ServiceAccount, source: str) -> NoReturn:
    status = response.status_code
    reason, message = _drive_error(response)
    said = f"HTTP {status}" + (f" {reason}" if reason else "") + (f": {message}" if message else "")
    if status == 404:
        raise PermanentError(
            f"{source}: no such Drive file {file_id} (or not shared with the service account {account.client_email})",
            file=source,
        )
    if status == 401:
        forget_token(account)
        raise TransientError(f"{source}: Drive rejected the access token ({said}); a new one is asked for", file=source)
    if status in (408, 429) or status >= 500 or reason in RATE_LIMIT_REASONS:
        raise TransientError(f"{source}: Drive failed ({said})", file=source)
    if status == 403:
        raise PermanentError(
            f"{source}: Drive refused the service account {account.client_email} access to {file_id} ({said})",
            file=source,
        )
    raise PermanentError(f"{source}: Drive refused the request ({said})", file=source)


def _drive_error(response: httpx.Response) -> tuple[str, str]:
    """(reason, message) of a Google API error body: ``{"error": {"errors": [{"reason": ...}], "message": ...}}``."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return "", ""
    if not isinstance(error, dict):
        return "", ""
    errors = error.get("errors")
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    return str(first.get("reason") or ""), str(error.get("message") or "")


def declared_size(meta: dict[str, Any]) -> int | None:
    """Drive's ``size`` (an int64, sent as a string); None when absent (Google-native documents have none)."""
    try:
        return int(meta["size"])
    except (KeyError, TypeError, ValueError):
        return None


def check_downloadable(meta: dict[str, Any], max_bytes: int, *, source: str) -> None:
    """Refuse, before downloading, what ``alt=media`` cannot give or what would be too large."""
    mime = str(meta.get("mimeType") or "")
    if mime == GOOGLE_APPS + "folder":
        raise PermanentError(f"{source}: is a Drive folder, not a file", file=source)
    if mime.startswith(GOOGLE_APPS):
        raise PermanentError(
            f"{source}: is a Google-native document ({mime}), which has no file content to download; "
            "save or export it to a regular file in Drive and use that file's id",
            file=source,
        )
    size = declared_size(meta)
    if size is not None and size > max_bytes:
        raise PermanentError(
            f"{source}: {size:,} bytes, more than the {max_bytes:,} a source may have (DHGQ_MAX_SOURCE_BYTES)",
            file=source,
        )


def verify_download(path: Path, size: int, meta: dict[str, Any], *, source: str) -> None:
    """The bytes are Drive's: the declared size and md5 match; a mismatch is a broken transfer, so retried."""
    expected_size = declared_size(meta)
    if expected_size is not None and expected_size != size:
        raise TransientError(
            f"{source}: download truncated ({size:,} of {expected_size:,} bytes), will retry", file=source
        )
    expected_md5 = meta.get("md5Checksum")
    if expected_md5 and file_md5(path) != str(expected_md5).lower():
        raise TransientError(f"{source}: download corrupted (md5 differs from Drive's), will retry", file=source)


def file_md5(path: Path) -> str:
    """The md5 Drive publishes for a file; a checksum of integrity, not of security."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sources_google_columns(file_id: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Drive's metadata under the sources_google column names, only what Drive returned."""
    columns: dict[str, Any] = {"drive_id": file_id}
    for drive_field, column in COLUMNS.items():
        if meta.get(drive_field) is not None:
            columns[column] = meta[drive_field]
    size = declared_size(meta)
    if size is not None:
        columns["size"] = size
    parents = meta.get("parents")
    if isinstance(parents, list) and parents:
        columns["parent_folder_id"] = parents[0]
    return columns
