"""Versions of what produces a stage's output: the parts of reuse keys that stages share.

A reuse key must change whenever the output could: so its versions are the installed packages'
(``faster-whisper==1.2.1``), the model files' (the packages that ship them, or a fingerprint of a
model directory), and dhgq's own code that shapes the output (a hash of the stage's ``dhgq.media``
package: any change there stops reuse of older outputs, which errs on the side of computing).
The Modal app's models run in an image this process cannot see; its version is the hash of
``modal_gpu``'s code and lock files, which pin that image's packages and models.

Everything here is computed from settings and installed files, never by loading a model, and is
cached per process: a stage computes its key at every claim.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from dhgq.errors import ConfigurationError
from dhgq.settings import Settings

EDGE_BYTES = 1 << 20  # a model file's fingerprint reads this much of its start and of its end
SHORT = 16  # hex digits kept of a code or prompt hash: versions for people to compare, not keys


@lru_cache(maxsize=64)
def package_version(distribution: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def packages(*distributions: str) -> str | None:
    """``a==1; b==2`` for installed distributions; None when one is missing (no key without it)."""
    versions = [(name, package_version(name)) for name in distributions]
    if any(version is None for _, version in versions):
        return None
    return "; ".join(f"{name}=={version}" for name, version in versions)


@lru_cache(maxsize=16)
def code_version(package: str) -> str:
    """A hash of the Python files of a ``dhgq`` subpackage (``media/diarization``): dhgq's own code
    that shapes a stage's output, which has no version of its own."""
    digest = hashlib.sha256()
    folder = files("dhgq").joinpath(package)
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".py"):
            digest.update(entry.name.encode() + b"\0" + entry.read_bytes() + b"\0")
    return f"{package.rsplit('/', 1)[-1]}:{digest.hexdigest()[:SHORT]}"


@lru_cache(maxsize=1)
def modal_app_version() -> str | None:
    """A hash of the Modal app's code and lock files (``modal_gpu/*.py``, ``*.lock``): they pin the
    image's packages and models."""
    spec = importlib.util.find_spec("modal_gpu.app")
    if spec is None or spec.origin is None:
        return None
    digest = hashlib.sha256()
    folder = Path(spec.origin).parent
    for path in sorted([*folder.glob("*.py"), *folder.glob("*.lock")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return "modal_gpu:" + digest.hexdigest()[:SHORT]


@lru_cache(maxsize=4)
def backend_name(settings: Settings) -> str | None:
    """Where the model stages run for these settings (``local`` or ``modal``); None when that cannot
    be decided (Modal asked for but not configured: the stage will say so itself)."""
    from dhgq.gpu import select_backend

    try:
        return select_backend(settings)[0].name
    except ConfigurationError:
        return None


def whisper_model_version(name: str) -> str | None:
    """A Whisper model's version: the packages that ship it, or a fingerprint of its directory."""
    from dhgq.media.transcription.models import PACKAGED

    packaged = PACKAGED.get(name)
    if packaged is not None:
        return packages(*packaged.packages)
    path = Path(name).expanduser()
    if path.is_dir():
        return "dir:" + directory_fingerprint(str(path.resolve()))
    return None


def directory_fingerprint(path: str) -> str:
    """Names, sizes and the first and last MiB of every file in a model directory, hashed: a changed
    or replaced model changes it, without reading gigabytes at every claim."""
    listing = tuple(sorted(_files_of(Path(path))))
    return _fingerprint(path, listing)


def _files_of(root: Path) -> list[tuple[str, int, int]]:
    found = []
    for folder, _dirs, names in os.walk(root):
        for name in names:
            stat = (Path(folder) / name).stat()
            found.append((str((Path(folder) / name).relative_to(root)), stat.st_size, stat.st_mtime_ns))
    return found


@lru_cache(maxsize=16)
def _fingerprint(path: str, listing: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, size, _mtime in listing:
        digest.update(f"{name}\0{size}\0".encode())
        with (Path(path) / name).open("rb") as handle:
            digest.update(handle.read(EDGE_BYTES))
            if size > 2 * EDGE_BYTES:
                handle.seek(-EDGE_BYTES, os.SEEK_END)
                digest.update(handle.read(EDGE_BYTES))
    return digest.hexdigest()[:SHORT]


@lru_cache(maxsize=1)
def prompt_version() -> str:
    """A hash of ``dhgq/prompts/summarize.md``: a changed prompt makes earlier summaries stale."""
    text = files("dhgq").joinpath("prompts/summarize.md").read_bytes()
    return "summarize.md:" + hashlib.sha256(text).hexdigest()[:SHORT]
