"""``gdrive://FILE_ID``: a Google Drive file, read with Google credentials (``google_credentials.py``).

The worker has no user to ask for consent, so it reads as a service account (its JSON key) or as
the machine's Application Default Credentials, through google-auth. A file is readable when it was
shared with the account's email (or lies in a shared drive the account is a member of). The file's
metadata is read first, so that a folder, a Google Doc or a file over the size limit is refused
before any byte is downloaded; the content then streams to disk through ``http.download``, and
Drive's md5 checksum is checked against what arrived.

The metadata goes back under the ``sources_google`` column names, ready to be stored as they are.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, NoReturn

import httpx

from dhgq.errors import PermanentError, TransientError
from dhgq.fetch.files import CHUNK, Fetched, target_name
from dhgq.fetch.google_credentials import DRIVE_SCOPE, DriveCredentials, drive_credentials
from dhgq.fetch.http import download
from dhgq.netguard import Guard
from dhgq.settings import Settings

__all__ = ["DRIVE_SCOPE", "download_drive_file", "parse_drive_uri"]

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


def download_drive_file(uri: str, scratch: Path, settings: Settings) -> Fetched:
    """Download the Drive file ``uri`` names into ``scratch``; its metadata under sources_google's column names."""
    file_id = parse_drive_uri(uri)
    account = drive_credentials(settings)
    token = account.token(source=uri)
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


# --- the file ------------------------------------------------------------------------------------


def file_metadata(
    file_id: str, token: str, account: DriveCredentials, settings: Settings, *, source: str
) -> dict[str, Any]:
    """Drive's ``files.get`` for the fields sources_google keeps (shared drives included)."""
    params = {"fields": METADATA_FIELDS, "supportsAllDrives": "true"}
    return drive_json(f"files/{file_id}", params, token, account, settings, source=source, item=file_id)


def drive_json(
    path: str,
    params: dict[str, str],
    token: str,
    account: DriveCredentials,
    settings: Settings,
    *,
    source: str,
    item: str,
) -> dict[str, Any]:
    """One GET of the Drive v3 API (``/drive/v3/<path>``) and its JSON object; Drive's errors as dhgq's
    (``item`` names the file or folder a 404 is about)."""
    url = f"{api_base(settings)}/drive/v3/{path}"
    try:
        response = httpx.get(url, params=params, headers=bearer(token), timeout=settings.fetch_timeout)
    except httpx.TimeoutException as exc:
        raise TransientError(f"{source}: Drive timed out ({type(exc).__name__})", file=source) from None
    except httpx.TransportError as exc:
        raise TransientError(f"{source}: Drive failed: {exc}", file=source) from None
    if response.status_code != 200:
        raise_drive_error(response, item, account, source)
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise TransientError(f"{source}: Drive answered without a JSON object", file=source)
    return body


def raise_drive_error(response: httpx.Response, file_id: str, account: DriveCredentials, source: str) -> NoReturn:
    status = response.status_code
    reason, message = _drive_error(response)
    said = f"HTTP {status}" + (f" {reason}" if reason else "") + (f": {message}" if message else "")
    if status == 404:
        raise PermanentError(
            f"{source}: no such Drive file {file_id} (or not shared with {account.who})",
            file=source,
        )
    if status == 401:
        account.forget()
        raise TransientError(f"{source}: Drive rejected the access token ({said}); a new one is asked for", file=source)
    if status in (408, 429) or status >= 500 or reason in RATE_LIMIT_REASONS:
        raise TransientError(f"{source}: Drive failed ({said})", file=source)
    if status == 403:
        raise PermanentError(
            f"{source}: Drive refused {account.who} access to {file_id} ({said})",
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
