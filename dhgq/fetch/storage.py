"""``storage://BUCKET/KEY``: Supabase Storage, through supabase-py's storage client (storage3).

The worker acts with the service key (it reads any user's object; users reach only their own
through Storage's row-level security), so every key is checked before it goes out
(``keys.check_object_key``: used as written, never percent-decoded). An object is fetched
through a short-lived signed URL, streamed to disk rather than held in memory. The same client
uploads what goes back: the compact audio the GPU stages fetch by signed URL, and the exports next
to the source.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from storage3 import SyncStorageClient
from storage3.exceptions import StorageApiError, StorageException

from dhgq.errors import ConfigurationError, PermanentError, TransientError
from dhgq.fetch.files import Fetched, target_name
from dhgq.fetch.http import download
from dhgq.fetch.keys import check_object_key, parse_storage_uri
from dhgq.netguard import Guard
from dhgq.settings import Settings

__all__ = ["download_object", "parse_storage_uri", "signed_url", "storage_client", "upload_file"]

SIGNED_URL_SECONDS = 600


@contextmanager
def storage_client(settings: Settings) -> Iterator[SyncStorageClient]:
    """Storage as the service role: ``{supabase_url}/storage/v1`` with the service key, on a client closed after."""
    if not settings.supabase_url or settings.supabase_service_key is None:
        raise ConfigurationError(
            "storage:// sources need DHGQ_SUPABASE_URL and DHGQ_SUPABASE_SERVICE_KEY (the project's service_role key)"
        )
    key = settings.supabase_service_key.get_secret_value()
    url = settings.supabase_url.rstrip("/") + "/storage/v1/"
    headers = {"apikey": key, "Authorization": f"Bearer {key}"}
    with httpx.Client(headers=headers, timeout=httpx.Timeout(settings.fetch_timeout)) as http:
        yield SyncStorageClient(url, headers, http_client=http)


def signed_url(settings: Settings, bucket: str, key: str, *, uri: str, seconds: int = SIGNED_URL_SECONDS) -> str:
    """A URL anyone may GET for ``seconds``: how a download, or a remote GPU worker, fetches the object."""
    check_object_key(key, uri=uri)
    with storage_client(settings) as client, storage_errors(uri):
        url = client.from_(bucket).create_signed_url(key, seconds)["signedURL"]
    if not url:
        raise PermanentError(f"{uri}: Storage gave no signed URL", file=uri)
    return url


def download_object(uri: str, scratch: Path, settings: Settings) -> Fetched:
    bucket, key = parse_storage_uri(uri)
    url = signed_url(settings, bucket, key, uri=uri)
    target = scratch / target_name(key)
    sha256, size = download(
        url,
        target,
        source=uri,
        max_bytes=settings.max_source_bytes,
        timeout=settings.fetch_timeout,
        guard=Guard(settings.allow_private_hosts, "redirect to"),
        trusted=True,
    )
    return Fetched(target, sha256, size, remote=True, metadata={"bucket": bucket, "key": key})


def upload_file(settings: Settings, bucket: str, key: str, path: Path, content_type: str) -> str:
    """Put ``path`` at ``bucket/key`` (replacing what is there); returns its storage:// URI."""
    uri = f"storage://{bucket}/{key}"
    check_object_key(key, uri=uri)
    with storage_client(settings) as client, storage_errors(uri), path.open("rb") as handle:
        client.from_(bucket).upload(key, handle.read(), {"content-type": content_type, "upsert": "true"})
    return uri


@contextmanager
def storage_errors(uri: str) -> Iterator[None]:
    """Storage's errors as dhgq's: missing or refused is permanent, the rest transient."""
    try:
        yield
    except StorageApiError as exc:
        status, message = str(exc.status), exc.message
        if status in ("400", "401", "403", "404", "409", "413", "422"):
            what = {"404": "no such object", "401": "refused", "403": "refused", "413": "too large"}.get(
                status, message
            )
            raise PermanentError(f"{uri}: {what} (Storage said {status}: {message})", file=uri) from None
        raise TransientError(f"{uri}: Storage failed ({status}: {message})", file=uri) from None
    except StorageException as exc:
        raise TransientError(f"{uri}: Storage failed ({exc})", file=uri) from None
