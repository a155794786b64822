"""This machine's cache of artifacts fetched from a shared store: bounded, checked, shared between processes.

Files are kept by content, ``objects/<sha256[:2]>/<sha256><suffix>``, so two sources with the same audio,
or two stages of one source on this machine, fetch it once: the second stage pays nothing. Each file has
a lock file (``locks/<sha256>``, ``flock``):

- a process that needs an artifact takes the lock exclusively, downloads it unless it is there (to a
  temporary file in the same folder, hashed on the way, renamed into place only when the hash and size
  match), then holds the lock shared for as long as it uses the file; other processes on the machine
  wait for a download in progress rather than start their own;
- eviction keeps the files' total under ``max_bytes``, least recently used first (each use touches the
  file's mtime), and removes a file only while it can take its lock exclusively without waiting: a file
  some process uses is never removed under it.

A file already at hand (extraction's WAV on the machine that made it) is ``adopt``-ed: moved into the
cache, so that the model stages on the same machine find it without a download.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from dhgq.artifacts import Artifact
from dhgq.errors import ArtifactMissing, PermanentError

logger = logging.getLogger("dhgq.artifacts.cache")


class Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


Download = Callable[[Artifact, Sink], None]  # writes the artifact's bytes, in order, into the sink


class HashingSink:
    """A file being written, with the sha256 and size of what went in."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def write(self, data: bytes, /) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)


@dataclass(frozen=True)
class CachedFile:
    path: Path
    size: int
    used: float  # mtime: when a stage last used it


class ArtifactCache:
    """Fetched artifacts by hash, under ``root``, at most ``max_bytes`` of them (but those in use)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.objects = root / "objects"
        self.locks = root / "locks"

    def path_of(self, artifact: Artifact) -> Path:
        sha256 = self._sha256(artifact)
        suffix = Path(artifact.name).suffix
        return self.objects / sha256[:2] / f"{sha256}{suffix}"

    @contextmanager
    def use(self, artifact: Artifact, download: Download) -> Iterator[Path]:
        """The artifact's file, downloaded with ``download`` unless it is here; not evicted during the block.

        Users of a whole file share its lock, so stages on this machine read it side by side; only a
        download takes it exclusively (waiting for nobody but another download of the same file)."""
        path = self.path_of(artifact)
        with self._lock_file(artifact) as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)
            fetched = False
            if not self._whole(path, artifact):
                fcntl.flock(lock, fcntl.LOCK_EX)  # (flock converts by releasing first: no deadlock)
                if not self._whole(path, artifact):  # a concurrent download may have brought it meanwhile
                    self._fetch(artifact, path, download)
                    fetched = True
                fcntl.flock(lock, fcntl.LOCK_SH)
            os.utime(path)  # most recently used
            if fetched:
                self.evict(keep=path)
            yield path

    def adopt(self, file: Path, artifact: Artifact) -> Path:
        """Move ``file`` (whose hash is ``artifact.sha256``) into the cache; its path there."""
        path = self.path_of(artifact)
        with self._lock_file(artifact) as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)
            if not self._whole(path, artifact):
                fcntl.flock(lock, fcntl.LOCK_EX)
            if self._whole(path, artifact):
                file.unlink(missing_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                try:
                    os.replace(file, path)
                except OSError:  # another file system: copy, then drop the original
                    temporary = path.with_name(f".{path.name}.{os.getpid()}.adopt")
                    with file.open("rb") as src, temporary.open("wb") as dst:
                        while block := src.read(1 << 20):
                            dst.write(block)
                    os.replace(temporary, path)
                    file.unlink(missing_ok=True)
                os.chmod(path, 0o600)
            os.utime(path)
        self.evict(keep=path)
        return path

    def files(self) -> list[CachedFile]:
        found = []
        for folder in self.objects.glob("??"):
            for entry in os.scandir(folder):
                if entry.name.startswith("."):
                    continue
                try:
                    info = entry.stat()
                except FileNotFoundError:
                    continue
                found.append(CachedFile(Path(entry.path), info.st_size, info.st_mtime))
        return found

    def evict(self, keep: Path | None = None) -> int:
        """Remove least recently used files until the cache fits ``max_bytes``; bytes removed. Files in use
        (their lock held by any process) and ``keep`` stay."""
        cached = sorted(self.files(), key=lambda f: f.used)
        total = sum(f.size for f in cached)
        removed = 0
        for entry in cached:
            if total <= self.max_bytes:
                break
            if entry.path == keep:
                continue
            if self.remove_unless_used(entry.path):
                total -= entry.size
                removed += entry.size
        if removed:
            logger.info("artifact cache: evicted %.1f MB (now %.1f MB)", removed / 1e6, total / 1e6)
        return removed

    # -- inside ------------------------------------------------------------------------------------

    @contextmanager
    def _lock_file(self, artifact: Artifact) -> Iterator[int]:
        """The artifact's lock file, open (not locked yet); closing it releases whatever lock it holds."""
        self.locks.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.locks / self._sha256(artifact), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            yield fd
        finally:
            os.close(fd)

    def remove_unless_used(self, path: Path | str) -> bool:
        """Remove a cached file unless a process holds it (its lock); whether it went."""
        path = Path(path)
        sha256 = path.name.split(".", 1)[0]
        try:
            fd = os.open(self.locks / sha256, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            path.unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)

    def _whole(self, path: Path, artifact: Artifact) -> bool:
        """Whether the cached file is there with the recorded size (its hash was checked when it arrived)."""
        try:
            return path.stat().st_size == artifact.size
        except FileNotFoundError:
            return False

    def _fetch(self, artifact: Artifact, path: Path, download: Download) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.part")
        try:
            with temporary.open("wb") as handle:
                os.chmod(temporary, 0o600)
                sink = HashingSink(handle)
                download(artifact, sink)
            sha256, size = sink.digest.hexdigest(), sink.size
            if size != artifact.size or sha256 != artifact.sha256:
                raise ArtifactMissing(
                    f"the {artifact.kind} artifact {artifact.uri} came back with {size:,} bytes hashing to "
                    f"{sha256[:12]}..., not the {artifact.size:,} bytes hashing to {str(artifact.sha256)[:12]}... "
                    "that were stored: it is corrupt in the store; retry the source to extract it again",
                    file=artifact.uri,
                )
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    @staticmethod
    def _sha256(artifact: Artifact) -> str:
        if not artifact.sha256 or artifact.size is None:
            raise PermanentError(f"the artifact {artifact.uri} has no recorded hash: it cannot be fetched and checked")
        return artifact.sha256
