"""A real local HTTP server that speaks Google's service-account OAuth and Drive v3 ``files.get``.

Two endpoints, on the wire as Google has them:

- ``POST /token``: the JWT bearer grant (RFC 7523). The assertion's RS256 signature is checked
  with the PUBLIC key of a service account the server trusts (``FakeDrive.trust``), as are its
  ``kid``, ``aud`` (Google's token endpoint, ``https://oauth2.googleapis.com/token``, which Google
  requires whatever URL the request went to), ``scope``, ``iat``/``exp`` (at most an hour apart).
  A refused grant is ``400 {"error": "invalid_grant", ...}``, as Google answers.
- ``GET /drive/v3/files/{id}``: metadata (``fields`` honoured for top-level names) or, with
  ``alt=media``, the content; the Bearer token must be one this server issued with a Drive scope.
  Errors come in Google's JSON error format, with Drive's reasons (notFound, fileNotDownloadable...).
- ``GET /drive/v3/files?q='FOLDER' in parents and trashed = false``: ``files.list`` of a folder, in pages.
- ``GET /drive/v3/changes/startPageToken`` and ``GET /drive/v3/changes?pageToken=``: Drive's change log
  (every ``add``, ``trash`` and ``replace`` is one change), in pages of ``pageSize``, the last one with
  ``newStartPageToken``; a token from the future is Drive's 400 ``invalid``.

``new_service_account()`` makes a real RSA key pair and ``ServiceAccountKey.write`` a JSON key file
as the Cloud console gives it, with ``token_uri`` pointing here. Each ``DriveFile`` scripts one
file: its bytes, a declared size or md5 that may lie, a Google-native mimeType, a shared drive, or
``failures`` 503s served before it succeeds. Counters record what was asked.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DRIVE_SCOPES = frozenset({"https://www.googleapis.com/auth/drive", "https://www.googleapis.com/auth/drive.readonly"})
FILES_PATH = "/drive/v3/files/"
DEFAULT_FIELDS = ("kind", "id", "name", "mimeType")  # what files.get returns when no fields are asked for
MAX_ASSERTION_SECONDS = 3600
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"  # "always", says Google's service-account guide


@dataclass(frozen=True)
class ServiceAccountKey:
    """A service account with a real RSA key pair; the server is given only its public half."""

    client_email: str
    private_key_id: str
    private_key: rsa.RSAPrivateKey = field(repr=False)
    project_id: str = "dhgq-tests"

    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    def pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    def key_json(self, token_uri: str) -> dict[str, str]:
        """The JSON key file's fields, as the Cloud console writes them."""
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": self.pem(),
            "client_email": self.client_email,
            "client_id": str(secrets.randbelow(10**20)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        }

    def write(self, path: Path, token_uri: str) -> Path:
        path.write_text(json.dumps(self.key_json(token_uri), indent=2), encoding="utf-8")
        return path


def new_service_account(name: str = "dhgq-worker", project: str = "dhgq-tests") -> ServiceAccountKey:
    """A fresh 2048-bit RSA service account key (generate once per session: it takes a few tens of ms)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ServiceAccountKey(f"{name}@{project}.iam.gserviceaccount.com", secrets.token_hex(20), key, project)


@dataclass
class DriveFile:
    """One file the fake Drive holds; ``size`` and ``md5`` are what Drive declares (default: the truth)."""

    id: str
    name: str
    content: bytes = b""
    mime_type: str = "video/mp4"
    size: int | None = None
    md5: str | None = None
    parents: list[str] = field(default_factory=lambda: ["1FolderOfTalks0000000"])
    drive_id: str | None = None  # set: the file lies in this shared drive
    modified_time: str = "2024-05-01T12:34:56.789Z"
    failures: int = 0  # requests answered 503 before this file is served
    trashed: bool = False

    @property
    def native(self) -> bool:
        return self.mime_type.startswith("application/vnd.google-apps.")

    def resource(self) -> dict[str, Any]:
        """The full Drive v3 File resource; Google-native documents have no size nor md5."""
        resource: dict[str, Any] = {
            "kind": "drive#file",
            "id": self.id,
            "name": self.name,
            "mimeType": self.mime_type,
            "modifiedTime": self.modified_time,
            "webViewLink": f"https://drive.google.com/file/d/{self.id}/view?usp=drivesdk",
            "thumbnailLink": f"https://lh3.googleusercontent.com/drive-storage/{self.id}=s220",
            "parents": list(self.parents),
            "trashed": self.trashed,
        }
        if self.drive_id is not None:
            resource["driveId"] = self.drive_id
        if not self.native:
            resource["size"] = str(self.size if self.size is not None else len(self.content))
            resource["md5Checksum"] = self.md5 or hashlib.md5(self.content).hexdigest()
        return resource


class FakeDrive:
    """The server's accounts, files and counters; handlers read and write them under a lock."""

    def __init__(self) -> None:
        self.accounts: dict[str, ServiceAccountKey] = {}
        self.files: dict[str, DriveFile] = {}
        self.change_log: list[tuple[str, str]] = []  # (file id, time) per change, in order; tokens are 1-based
        self.tokens: dict[str, frozenset[str]] = {}  # issued token -> its scopes
        self.token_failures = 0  # token requests answered 503 before the grant is looked at
        self.token_requests = 0
        self.metadata_requests = 0
        self.media_requests = 0
        self.assertions: list[dict[str, Any]] = []  # verified claims, header under "_header"
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_port}"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def trust(self, account: ServiceAccountKey) -> None:
        """Know this account's public key, as Google knows the keys of accounts that exist."""
        self.accounts[account.client_email] = account

    def add(self, *files: DriveFile) -> None:
        with self.lock:
            for item in files:
                self.files[item.id] = item
                self.change_log.append((item.id, item.modified_time))

    def trash(self, file_id: str) -> None:
        with self.lock:
            self.files[file_id].trashed = True
            self.change_log.append((file_id, self.files[file_id].modified_time))

    def replace(self, file_id: str, content: bytes, modified_time: str) -> None:
        """A new version of a file: new bytes, so a new md5 and size."""
        with self.lock:
            item = self.files[file_id]
            item.content, item.size, item.md5, item.modified_time = content, None, None, modified_time
            self.change_log.append((file_id, modified_time))

    # --- changes and listings ---

    def start_page_token(self) -> dict[str, Any]:
        with self.lock:
            return {"kind": "drive#startPageToken", "startPageToken": str(len(self.change_log) + 1)}

    def changes(self, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """``changes.list`` from ``pageToken``: each change with its file as it is now (removed when it is gone)."""
        token = query.get("pageToken", [""])[0]
        size = max(1, min(1000, int(query.get("pageSize", ["100"])[0])))
        with self.lock:
            if not token.isdigit() or not 1 <= int(token) <= len(self.change_log) + 1:
                return google_error(400, "invalid", f"Invalid Value: pageToken {token!r}")
            start = int(token) - 1
            entries = self.change_log[start : start + size]
            changes = []
            for file_id, time_of in entries:
                item = self.files.get(file_id)
                change: dict[str, Any] = {
                    "kind": "drive#change",
                    "changeType": "file",
                    "time": time_of,
                    "removed": item is None,
                    "fileId": file_id,
                }
                if item is not None:
                    change["file"] = item.resource()
                changes.append(change)
            body: dict[str, Any] = {"kind": "drive#changeList", "changes": changes}
            if start + size < len(self.change_log):
                body["nextPageToken"] = str(start + size + 1)
            else:
                body["newStartPageToken"] = str(len(self.change_log) + 1)
        return 200, body

    def listing(self, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """``files.list`` for the one query a folder listing asks: ``'ID' in parents and trashed = false``."""
        q = query.get("q", [""])[0]
        parent = q.split("'")[1] if q.count("'") >= 2 and "in parents" in q else None
        if parent is None:
            return google_error(400, "invalid", f"Invalid Value: q {q!r}")
        size = max(1, min(1000, int(query.get("pageSize", ["100"])[0])))
        start = int(query.get("pageToken", ["0"])[0] or 0)
        with self.lock:
            found = [f for f in self.files.values() if parent in f.parents and not (f.trashed and "trashed" in q)]
        page = found[start : start + size]
        body: dict[str, Any] = {"kind": "drive#fileList", "files": [f.resource() for f in page]}
        if start + size < len(found):
            body["nextPageToken"] = str(start + size)
        return 200, body

    # --- the token endpoint ---

    def grant(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """(status, body) for a token request."""
        with self.lock:
            self.token_requests += 1
            if self.token_failures > 0:
                self.token_failures -= 1
                return 503, {"error": "internal_failure", "error_description": "Backend Error"}
        if form.get("grant_type", [""])[0] != JWT_BEARER_GRANT:
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."}
        assertion = form.get("assertion", [""])[0]
        if not assertion:
            return 400, {"error": "invalid_request", "error_description": "Missing required parameter: assertion"}
        try:
            claims = self.verify(assertion)
        except ValueError as exc:
            return 400, {"error": "invalid_grant", "error_description": str(exc)}
        scopes = frozenset(str(claims.get("scope", "")).split())
        if not scopes:
            return 400, {"error": "invalid_scope", "error_description": "Empty or missing scope not allowed."}
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = scopes
            self.assertions.append(claims)
        return 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    def verify(self, assertion: str) -> dict[str, Any]:
        """The assertion's claims, checked as Google checks them; ValueError with Google's wording otherwise."""
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise ValueError("Invalid JWT: malformed") from None
        account = self.accounts.get(str(unverified.get("iss")))
        if account is None:
            raise ValueError("Invalid grant: account not found")
        if header.get("alg") != "RS256" or header.get("kid") not in (None, account.private_key_id):
            raise ValueError("Invalid JWT Signature.")
        try:
            claims = jwt.decode(
                assertion,
                account.public_key(),
                algorithms=["RS256"],
                audience=GOOGLE_TOKEN_AUDIENCE,
                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
            )
        except jwt.InvalidSignatureError:
            raise ValueError("Invalid JWT Signature.") from None
        except jwt.ExpiredSignatureError:
            raise ValueError("Invalid JWT: Token must be a short-lived token and in a reasonable timeframe") from None
        except jwt.PyJWTError as exc:
            raise ValueError(f"Invalid JWT: {exc}") from None
        if claims["exp"] - claims["iat"] > MAX_ASSERTION_SECONDS or claims["iat"] > time.time() + 300:
            raise ValueError(
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe"
            )
        claims["_header"] = header
        return claims

    # --- Drive ---

    def authorized(self, authorization: str | None) -> tuple[int, dict[str, Any]] | None:
        """None when the Bearer token may read Drive, else the error to answer."""
        scheme, _, token = (authorization or "").partition(" ")
        with self.lock:
            scopes = self.tokens.get(token) if scheme.lower() == "bearer" else None
        if scopes is None:
            return google_error(
                401,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
                "or other valid authentication credential.",
                status="UNAUTHENTICATED",
            )
        if not scopes & DRIVE_SCOPES:
            return google_error(403, "insufficientPermissions", "Request had insufficient authentication scopes.")
        return None

    def lookup(self, file_id: str, query: dict[str, list[str]], media: bool) -> DriveFile | tuple[int, dict[str, Any]]:
        """The file to serve, or the error Drive would give (after counting the request)."""
        with self.lock:
            if media:
                self.media_requests += 1
            else:
                self.metadata_requests += 1
            item = self.files.get(file_id)
            all_drives = query.get("supportsAllDrives", ["false"])[0].lower() == "true"
            if item is None or (item.drive_id is not None and not all_drives):
                return google_error(404, "notFound", f"File not found: {file_id}.")
            if item.failures > 0:
                item.failures -= 1
                return google_error(503, "backendError", "Backend Error", status="UNAVAILABLE")
        if media and item.native:
            return google_error(
                403,
                "fileNotDownloadable",
                "Only files with binary content can be downloaded. Use Export with Docs Editors files.",
            )
        return item


def google_error(code: int, reason: str, message: str, *, status: str | None = None) -> tuple[int, dict[str, Any]]:
    """Google's JSON error body (googleapis.com), as Drive v3 sends it."""
    error = {"domain": "global", "reason": reason, "message": message}
    body: dict[str, Any] = {"code": code, "message": message, "errors": [error]}
    if status is not None:
        body["status"] = status
    return code, {"error": body}


def select_fields(resource: dict[str, Any], fields: str | None) -> dict[str, Any]:
    """Honour ``fields`` loosely: the top-level names asked for (``*`` for all), nested selections ignored."""
    if fields is None:
        names: tuple[str, ...] = DEFAULT_FIELDS
    else:
        names = tuple(part.split("(", 1)[0].split("/", 1)[0].strip() for part in fields.split(","))
    if "*" in names:
        return dict(resource)
    return {name: resource[name] for name in names if name in resource}


def make_handler(fake: FakeDrive) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass

        def send_body(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def send_json(self, status: int, payload: dict[str, Any]) -> None:
            self.send_body(status, json.dumps(payload).encode(), "application/json; charset=UTF-8")

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            length = int(self.headers.get("content-length", 0))
            body = self.rfile.read(length)
            if urlsplit(self.path).path != "/token":
                self.send_json(*google_error(404, "notFound", f"no route {self.path}"))
                return
            if self.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
                self.send_json(400, {"error": "invalid_request", "error_description": "Bad Request"})
                return
            self.send_json(*fake.grant(parse_qs(body.decode())))

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            parts = urlsplit(self.path)
            file_id = parts.path[len(FILES_PATH) :] if parts.path.startswith(FILES_PATH) else ""
            listing = {
                "/drive/v3/files": fake.listing,
                "/drive/v3/changes": fake.changes,
                "/drive/v3/changes/startPageToken": lambda _query: (200, fake.start_page_token()),
            }.get(parts.path)
            if listing is None and (not file_id or "/" in file_id):
                self.send_json(*google_error(404, "notFound", f"no route {parts.path}"))
                return
            refused = fake.authorized(self.headers.get("authorization"))
            if refused is not None:
                self.send_json(*refused)
                return
            query = parse_qs(parts.query)
            if listing is not None:
                self.send_json(*listing(query))
                return
            media = query.get("alt", ["json"])[0] == "media"
            found = fake.lookup(file_id, query, media)
            if isinstance(found, tuple):
                self.send_json(*found)
            elif media:
                self.send_body(200, found.content, found.mime_type)
            else:
                self.send_json(200, select_fields(found.resource(), query.get("fields", [None])[0]))

    return Handler


@contextmanager
def fake_drive_server() -> Iterator[FakeDrive]:
    """A started server on a free localhost port, stopped on exit."""
    fake = FakeDrive()
    fake.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(fake))
    fake.server.daemon_threads = True
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        thread.join(timeout=5)
