"""Google credentials for the Drive API, through google-auth (the library Google's own clients use).

Which credentials: a service account's JSON key when ``DHGQ_GDRIVE_SERVICE_ACCOUNT_FILE`` names one
(the token endpoint is the key file's ``token_uri``), else Application Default Credentials, found
as google-auth finds them: ``GOOGLE_APPLICATION_CREDENTIALS`` (a service account key, an external
account for workload identity federation, or an impersonated account), gcloud's user credentials,
then the metadata server of a Google Cloud machine (GCE, GKE workload identity, Cloud Run). A file
is readable when it was shared with the account (or lies in a shared drive it is a member of).

One credentials object per process and configuration: google-auth keeps its token and refreshes it
before it expires; the lock keeps concurrent stages from refreshing it together. A refused
credential is permanent (a deleted key, an unknown account, a wrong clock); an outage of the token
endpoint, after google-auth's own retries, is transient.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
from google.oauth2 import service_account

from dhgq.errors import ConfigurationError, PermanentError, TransientError
from dhgq.settings import Settings

DRIVE_SCOPE = "https://www.googleapis.com/auth/drive.readonly"
KEY_FIX = (
    "set DHGQ_GDRIVE_SERVICE_ACCOUNT_FILE to a service account's JSON key (Google Cloud console: IAM & Admin > "
    "Service accounts > Keys > Add key > JSON), or give the machine Application Default Credentials "
    "(GOOGLE_APPLICATION_CREDENTIALS, or a Google Cloud service account), and share the Drive files with that account"
)


@dataclass
class DriveCredentials:
    """google-auth credentials, who they are (for messages) and how to refresh them."""

    credentials: google.auth.credentials.Credentials
    who: str  # the service account's email, or what ADC found
    timeout: float
    lock: threading.Lock

    def token(self, *, source: str) -> str:
        """A valid access token: google-auth's own while it has time left, else a fresh one."""
        with self.lock:
            if not self.credentials.valid:
                self._refresh(source)
            token = self.credentials.token
        if not isinstance(token, str) or not token:
            raise TransientError(f"{source}: Google's token endpoint answered without an access token", file=source)
        return token

    def forget(self) -> None:
        """Drop the token (Drive rejected it: revoked, or the clock lied), so the next call refreshes it."""
        with self.lock:
            self.credentials.token = None

    def _refresh(self, source: str) -> None:
        request = TimedRequest(self.timeout)
        try:
            self.credentials.refresh(request)
        except google.auth.exceptions.RefreshError as exc:
            said = _said(exc)
            if exc.retryable:
                raise TransientError(f"{source}: Google's token endpoint failed ({said})", file=source) from None
            raise PermanentError(
                f"{source}: Google refused the credentials of {self.who} ({said}); check that the key is current "
                "(not deleted or disabled) and that this machine's clock is right",
                file=source,
            ) from None
        except google.auth.exceptions.TransportError as exc:
            raise TransientError(f"{source}: Google's token endpoint failed: {exc}", file=source) from None


class TimedRequest(google.auth.transport.requests.Request):
    """google-auth's requests transport with dhgq's timeout (its own default is two minutes)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def __call__(
        self, url: Any, method: Any = "GET", body: Any = None, headers: Any = None, timeout: Any = None, **kwargs: Any
    ) -> Any:
        timeout = timeout or self.timeout
        return super().__call__(url, method=method, body=body, headers=headers, timeout=timeout, **kwargs)


_cache: dict[tuple[str | None, float], DriveCredentials] = {}
_cache_lock = threading.Lock()


def drive_credentials(settings: Settings) -> DriveCredentials:
    """This process's credentials for ``settings`` (built once; ConfigurationError, never the key's text)."""
    key_file = settings.gdrive_service_account_file
    cache_key = (str(key_file) if key_file is not None else None, settings.fetch_timeout)
    with _cache_lock:
        found = _cache.get(cache_key)
        if found is None:
            credentials, who = _from_key_file(key_file) if key_file is not None else _default()
            found = DriveCredentials(credentials, who, settings.fetch_timeout, threading.Lock())
            _cache[cache_key] = found
        return found


def clear_cache() -> None:
    """Forget every credentials object (tests, and a key rotated under a running worker)."""
    with _cache_lock:
        _cache.clear()


def _from_key_file(path: Path) -> tuple[google.auth.credentials.Credentials, str]:
    data = _read_key_file(path)
    kind = data.get("type")
    if kind != "service_account":
        raise ConfigurationError(
            f"{path} is a {kind or 'untyped'} credentials file, not a service account key: {KEY_FIX}"
        )
    if not data.get("client_email") or not data.get("private_key"):
        raise ConfigurationError(f"{path}: the key lacks client_email or private_key: {KEY_FIX}")
    data.setdefault("token_uri", "https://oauth2.googleapis.com/token")
    try:
        credentials = service_account.Credentials.from_service_account_info(data, scopes=[DRIVE_SCOPE])
    except (ValueError, TypeError):  # google-auth's MalformedError, or the key's parser: never the key in the message
        raise ConfigurationError(f"{path}: private_key is not an unencrypted PEM RSA key: {KEY_FIX}") from None
    return credentials, credentials.service_account_email


def _default() -> tuple[google.auth.credentials.Credentials, str]:
    """Application Default Credentials, as google-auth finds them."""
    try:
        credentials, project = google.auth.default(scopes=[DRIVE_SCOPE])
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise ConfigurationError(f"gdrive:// sources need Google credentials ({exc}): {KEY_FIX}") from None
    email = getattr(credentials, "service_account_email", None)
    who = email if isinstance(email, str) and "@" in email else "the application default credentials"
    return credentials, who + (f" (project {project})" if project else "")


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


def _said(exc: google.auth.exceptions.RefreshError) -> str:
    """The OAuth error of a refused refresh (RFC 6749 section 5.2), as google-auth carries it."""
    details = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    error, description = details.get("error"), details.get("error_description")
    if error:
        return f"{error}" + (f": {description}" if description else "")
    return str(exc.args[0]) if exc.args else type(exc).__name__
