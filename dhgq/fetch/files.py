"""What a fetch gives a stage, and the one place bytes from the network are written to disk."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dhgq.errors import PermanentError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Fetched:
    """A source's file on this machine: where, its sha256 and size, and what the source told of it."""

    path: Path
    sha256: str
    size: int
    remote: bool  # a temporary copy, removed when the stage ends
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. a Drive file's name and checksum


def local_file(path: Path, storage_root: Path | None) -> Fetched:
    """A local source, read in place; outside the storage root (when one is set) it is refused."""
    if storage_root is not None and not path.resolve().is_relative_to(storage_root.resolve()):
        raise PermanentError(f"{path} is outside the allowed storage root {storage_root}", file=str(path))
    if not path.exists():
        raise PermanentError(f"{path}: file not found", file=str(path))
    if not path.is_file():
        raise PermanentError(f"{path}: not a regular file", file=str(path))
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return Fetched(path, digest.hexdigest(), path.stat().st_size, remote=False)


def write_stream(chunks: Iterable[bytes], target: Path, *, max_bytes: int, source: str) -> tuple[str, int]:
    """Write ``chunks`` to ``target``, hashing on the way; PermanentError past ``max_bytes`` (file removed)."""
    digest = hashlib.sha256()
    size = 0
    partial = target.with_name(target.name + ".part")
    try:
        with partial.open("wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise PermanentError(
                        f"{source}: larger than the {max_bytes:,} bytes a source may have (DHGQ_MAX_SOURCE_BYTES)",
                        file=source,
                    )
                digest.update(chunk)
                out.write(chunk)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return digest.hexdigest(), size


def target_name(uri: str, fallback: str = "source") -> str:
    """A safe local file name for a downloaded source: its last path segment, sanitised, suffix kept."""
    tail = uri.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in tail).lstrip(".")
    return cleaned[:120] or fallback
