"""Artifacts: what one stage makes and a later stage reads, kept under a URI that every worker reaches.

Extraction's 16 kHz WAV and its compact copy are the artifacts today. A stage never hands the next one
a path on its own disk: it puts the file into the artifact store and records the ``Artifact`` (URI,
sha256, size) in ``dhgq.artifacts`` in its completing transaction. A later stage, on any machine,
asks the store for a local file with those bytes (``local_file``), or, for a remote GPU function, for
signed URLs (``signed_urls``).

- ``LocalStore`` (``local.py``): the work dir, for the embedded single-machine default; the file stays
  where extraction wrote it and is read in place, so nothing is copied or uploaded.
- ``StorageStore`` (``storage.py``): Supabase Storage's private artifact bucket, with the service key;
  a file is kept in parts of at most ``artifact_part_bytes`` (hosted projects cap the size of one
  object), and fetched into this machine's ``ArtifactCache`` (``cache.py``), checked by hash.

``store_for`` picks one from the settings (``artifact_backend``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from dhgq.settings import Settings

ArtifactKind = Literal["audio", "compact"]
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Artifact:
    """One stored file: where it is (``uri``), what it must hash to, and how the store keeps it."""

    kind: ArtifactKind
    uri: str  # a path in the work dir (local store), or storage://BUCKET/KEY
    sha256: str | None  # None only for audio extracted before artifacts were recorded
    size: int | None
    content_type: str
    parts: int = 1  # objects the store keeps it in: 1 is the URI itself, more are <uri>.part0000, ...
    host: str | None = None  # the machine that made it

    @property
    def name(self) -> str:
        """Its file name (``audio.wav``): the suffix tells readers the format."""
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    def row(self, source_id: str) -> dict[str, Any]:
        """Parameters of the query ``save_artifact``."""
        return {
            "source_id": source_id,
            "kind": self.kind,
            "uri": self.uri,
            "sha256": self.sha256,
            "size": self.size,
            "content_type": self.content_type,
            "parts": self.parts,
            "host": self.host,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Artifact:
        return cls(
            row["kind"],
            row["uri"],
            row.get("sha256"),
            int(row["size"]) if row.get("size") is not None else None,
            row["content_type"],
            int(row.get("parts") or 1),
            row.get("host"),
        )


class ArtifactStore(Protocol):
    """Where artifacts live between stages."""

    @property
    def name(self) -> Literal["local", "storage"]: ...

    def staging(self, source_id: str) -> AbstractContextManager[Path]:
        """A folder for the files a stage will ``put``: the source's work dir (kept), or a scratch folder
        removed after the block (the files went to the store and this machine's cache)."""
        ...

    def put(self, source_id: str, kind: ArtifactKind, path: Path, content_type: str) -> Artifact:
        """Keep ``path`` as the source's artifact of this kind; the file may be moved (into the cache)."""
        ...

    def copy(self, artifact: Artifact, source_id: str) -> Artifact:
        """The same bytes as another source's own artifact (reuse by content: each source keeps its own)."""
        ...

    def local_file(self, artifact: Artifact) -> AbstractContextManager[Path]:
        """A file on this machine with the artifact's bytes, kept for the block (not evicted meanwhile)."""
        ...

    def signed_urls(self, artifact: Artifact, seconds: int) -> list[str] | None:
        """URLs anyone may GET for ``seconds``, one per part in order; None where the store has none."""
        ...

    def remove(self, artifacts: list[Artifact]) -> int:
        """Delete the stored objects of these artifacts; how many objects went."""
        ...


def store_for(settings: Settings) -> ArtifactStore:
    """The artifact store the settings select: the work dir, or Supabase Storage with this machine's cache."""
    if settings.artifact_backend() == "storage":
        from dhgq.artifacts.cache import ArtifactCache
        from dhgq.artifacts.storage import StorageStore

        return StorageStore(settings, ArtifactCache(settings.artifact_cache_dir, settings.cache_max_bytes))
    from dhgq.artifacts.local import LocalStore

    return LocalStore(settings)


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256, size) of a file, read a MiB at a time."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def part_keys(key: str, parts: int) -> Iterator[str]:
    """The object keys an artifact of ``parts`` parts is stored under, in order."""
    if parts <= 1:
        yield key
        return
    for index in range(parts):
        yield f"{key}.part{index:04d}"
