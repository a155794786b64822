"""The shared artifact store: Supabase Storage's private artifact bucket, reached with the service key.

An artifact of source S named ``audio.wav`` is the object ``S/audio.wav`` of ``artifact_bucket``, or, when
it is larger than ``artifact_part_bytes`` (hosted projects cap one object's size, 50 MB on the free plan),
the objects ``S/audio.wav.part0000``, ``.part0001``, ... in order. No Storage policy names the bucket, so
users reach none of it; the workers (service key) and signed URLs do.

Errors sort as a stage needs them: the store unreachable, a timeout, 429 or 5xx is transient (the job
is retried with backoff); an object that is gone (or whose bytes do not hash to what was recorded, see
``cache.py``) is ``ArtifactMissing``, permanent, and its failure makes a retry run extraction again; a
refused service key is a configuration error.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal

import httpx
from storage3 import SyncStorageClient
from storage3.exceptions import StorageApiError, StorageException

from dhgq.artifacts import Artifact, ArtifactKind, part_keys
from dhgq.artifacts.cache import ArtifactCache, Sink
from dhgq.errors import ArtifactMissing, ConfigurationError, PermanentError, TransientError
from dhgq.fetch.storage import storage_client
from dhgq.settings import Settings

logger = logging.getLogger("dhgq.artifacts.storage")
CHUNK = 1 << 20
LIST_PAGE = 1000


class StorageStore:
    """Artifacts as objects in Supabase Storage, fetched into this machine's cache."""

    name: Literal["storage"] = "storage"

    def __init__(self, settings: Settings, cache: ArtifactCache) -> None:
        self.settings = settings
        self.cache = cache
        self.bucket = settings.artifact_bucket
        self.part_bytes = settings.artifact_part_bytes

    @contextmanager
    def staging(self, source_id: str) -> Iterator[Path]:
        folder = self.settings.scratch_dir / source_id / "artifacts"
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def uri(self, key: str) -> str:
        return f"storage://{self.bucket}/{key}"

    def key(self, artifact: Artifact) -> str:
        prefix = f"storage://{self.bucket}/"
        if not artifact.uri.startswith(prefix):
            raise ConfigurationError(
                f"the artifact {artifact.uri} is not in this worker's artifact bucket {self.bucket!r} "
                "(DHGQ_ARTIFACT_BUCKET must be the same on every machine; a work-dir path means the stage that made it "
                "used the local store)",
                file=artifact.uri,
            )
        return artifact.uri[len(prefix) :]

    # -- writing ----------------------------------------------------------------------------------

    def put(self, source_id: str, kind: ArtifactKind, path: Path, content_type: str) -> Artifact:
        """Upload ``path`` (in parts when large), then move it into this machine's cache."""
        import hashlib

        size = path.stat().st_size
        parts = max(1, math.ceil(size / self.part_bytes))
        key = f"{source_id}/{path.name}"
        keys = list(part_keys(key, parts))
        digest = hashlib.sha256()
        with self._client() as client, store_errors(self.uri(key), "upload"), path.open("rb") as handle:
            for part_key in keys:
                data = handle.read(self.part_bytes)
                digest.update(data)
                self._upload(client, part_key, data, content_type if parts == 1 else "application/octet-stream")
            self._remove_stale_parts(client, source_id, path.name, keep=set(keys))
        artifact = Artifact(kind, self.uri(key), digest.hexdigest(), size, content_type, parts, self.settings.host_name)
        self.cache.adopt(path, artifact)
        logger.info("artifact stored: %s (%.1f MB in %d part(s))", artifact.uri, size / 1e6, parts)
        return artifact

    def copy(self, artifact: Artifact, source_id: str) -> Artifact:
        """The same objects under the other source's folder (copied by Storage, not through this machine)."""
        key = f"{source_id}/{artifact.name}"
        pairs = list(zip(part_keys(self.key(artifact), artifact.parts), part_keys(key, artifact.parts), strict=True))
        with self._client() as client, store_errors(artifact.uri, "copy"):
            bucket = client.from_(self.bucket)
            bucket.remove([target for _, target in pairs])
            for origin, target in pairs:
                bucket.copy(origin, target)
        return Artifact(
            artifact.kind, self.uri(key), artifact.sha256, artifact.size, artifact.content_type, artifact.parts,
            artifact.host,
        )  # fmt: skip

    def remove(self, artifacts: list[Artifact]) -> int:
        keys = [k for a in artifacts for k in part_keys(self.key(a), a.parts)]
        if not keys:
            return 0
        with self._client() as client, store_errors(f"storage://{self.bucket}", "remove"):
            removed = client.from_(self.bucket).remove(keys)
        return len(removed)

    def remove_folder(self, source_id: str) -> int:
        """Every object under ``<source_id>/`` (a deleted source's, found by ``dhgq gc``)."""
        with self._client() as client, store_errors(self.uri(source_id + "/"), "remove"):
            bucket = client.from_(self.bucket)
            keys = [f"{source_id}/{entry['name']}" for entry in _list(bucket, source_id) if entry.get("id")]
            return len(bucket.remove(keys)) if keys else 0

    def folders(self) -> set[str]:
        """The top-level folders of the bucket: one per source that has (had) artifacts."""
        with self._client() as client, store_errors(f"storage://{self.bucket}", "list"):
            return {entry["name"] for entry in _list(client.from_(self.bucket), "") if entry.get("id") is None}

    # -- reading ----------------------------------------------------------------------------------

    def local_file(self, artifact: Artifact) -> AbstractContextManager[Path]:
        self.key(artifact)  # refuse a URI of another store before touching the cache
        return self.cache.use(artifact, self._download)

    def signed_urls(self, artifact: Artifact, seconds: int) -> list[str] | None:
        with self._client() as client, store_errors(artifact.uri, "sign"):
            bucket = client.from_(self.bucket)
            urls = [
                bucket.create_signed_url(key, seconds)["signedURL"]
                for key in part_keys(self.key(artifact), artifact.parts)
            ]
        if not all(urls):
            raise TransientError(f"{artifact.uri}: Storage gave no signed URL", file=artifact.uri)
        return [str(url) for url in urls]

    def _download(self, artifact: Artifact, sink: Sink) -> None:
        """Stream every part of the artifact, in order, into ``sink`` (never a whole part in memory)."""
        key = self.key(artifact)
        base = self._base_url()
        with httpx.Client(headers=self._headers(), timeout=httpx.Timeout(self.settings.fetch_timeout)) as http:
            for part_key in part_keys(key, artifact.parts):
                with (
                    store_errors(artifact.uri, "download"),
                    http.stream("GET", f"{base}object/{self.bucket}/{part_key}") as response,
                ):
                    if response.status_code >= 400:
                        response.read()
                        raise _api_error(response)
                    for block in response.iter_bytes(CHUNK):
                        sink.write(block)

    # -- inside -----------------------------------------------------------------------------------

    def _client(self) -> AbstractContextManager[SyncStorageClient]:
        return storage_client(self.settings)

    def _base_url(self) -> str:
        assert self.settings.supabase_url, "storage_client checks the URL first"
        return self.settings.supabase_url.rstrip("/") + "/storage/v1/"

    def _headers(self) -> dict[str, str]:
        key = self.settings.supabase_service_key
        if not self.settings.supabase_url or key is None:
            raise ConfigurationError(
                "the storage artifact store needs DHGQ_SUPABASE_URL and DHGQ_SUPABASE_SERVICE_KEY "
                "(the service_role key)"
            )
        secret = key.get_secret_value()
        return {"apikey": secret, "Authorization": f"Bearer {secret}"}

    def _upload(self, client: SyncStorageClient, key: str, data: bytes, content_type: str) -> None:
        options: Any = {"content-type": content_type, "upsert": "true"}
        try:
            client.from_(self.bucket).upload(key, data, options)
        except StorageApiError as exc:
            if not _bucket_missing(exc):
                raise
            logger.info("creating the private artifact bucket %s", self.bucket)
            try:
                client.create_bucket(self.bucket, options={"public": False})
            except StorageApiError as again:
                if "exist" not in again.message.lower():
                    raise
            client.from_(self.bucket).upload(key, data, options)

    def _remove_stale_parts(self, client: SyncStorageClient, source_id: str, name: str, keep: set[str]) -> None:
        """Objects of an earlier version of this artifact that the new one does not overwrite (other part counts)."""
        bucket = client.from_(self.bucket)
        stale = [
            f"{source_id}/{entry['name']}"
            for entry in _list(bucket, source_id, search=name)
            if entry.get("id") and entry["name"].startswith(name) and f"{source_id}/{entry['name']}" not in keep
        ]
        if stale:
            bucket.remove(stale)


def _list(bucket: Any, prefix: str, search: str | None = None) -> Iterator[dict[str, Any]]:
    offset = 0
    while True:
        options: Any = {"limit": LIST_PAGE, "offset": offset}
        if search:
            options["search"] = search
        page = bucket.list(prefix, options)
        yield from page
        if len(page) < LIST_PAGE:
            return
        offset += LIST_PAGE


def _bucket_missing(exc: StorageApiError) -> bool:
    return "bucket" in str(exc.message).lower() and "not found" in str(exc.message).lower()


def _api_error(response: httpx.Response) -> StorageApiError:
    """A failed download as storage3 reports a failed call (the real status may sit in the JSON body)."""
    try:
        body = response.json()
        return StorageApiError(
            str(body.get("message", "")), str(body.get("error", "")), body.get("statusCode", response.status_code)
        )
    except ValueError:
        return StorageApiError(response.text[:200], "InternalError", response.status_code)


@contextmanager
def store_errors(uri: str, action: str) -> Iterator[None]:
    """Storage's failures as dhgq's error classes, naming the artifact and what was being done to it."""
    try:
        yield
    except StorageApiError as exc:
        status, message = str(exc.status), exc.message
        said = f"(Storage said {status}: {message})"
        if status == "404" or exc.code in ("not_found", "NoSuchKey") or "not found" in message.lower():
            raise ArtifactMissing(
                f"{uri} is gone from the artifact store {said}: retry the source to extract it again", file=uri
            ) from None
        if status in ("401", "403"):
            raise ConfigurationError(
                f"Storage refused the service key for {action} of {uri} {said}: check DHGQ_SUPABASE_SERVICE_KEY",
                file=uri,
            ) from None
        if status == "413":
            raise ConfigurationError(
                f"Storage refused an object of {uri} as too large {said}: lower DHGQ_ARTIFACT_PART_BYTES", file=uri
            ) from None
        if status in ("408", "429") or status.startswith("5"):
            raise TransientError(f"the artifact store failed to {action} {uri} {said}", file=uri) from None
        raise PermanentError(f"the artifact store refused to {action} {uri} {said}", file=uri) from None
    except httpx.TimeoutException as exc:
        raise TransientError(f"the artifact store timed out ({action} {uri}: {type(exc).__name__})", file=uri) from None
    except httpx.TransportError as exc:
        raise TransientError(f"the artifact store is unreachable ({action} {uri}: {exc})", file=uri) from None
    except StorageException as exc:
        raise TransientError(f"the artifact store failed to {action} {uri} ({exc})", file=uri) from None
