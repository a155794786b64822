"""Sources by URI, behind one resolver: where a stage gets the file a source names.

- a local path (``/talks/keynote.mp4``): the CLI's and the service role's; read in place;
- ``storage://BUCKET/KEY``: Supabase Storage, read with the service key (``storage.py``);
- ``gdrive://FILE_ID``: Google Drive, as a service account (``gdrive.py``);
- ``https://...``: any web server (``https.py``).

Remote files stream into a temporary directory of the stage, within ``max_source_bytes``, with
their sha256 (the hash dhgq dedupes on) computed on the way, and are deleted when the stage
ends. A missing object, a refused credential or a file over the limit is a PermanentError that
names the source; a 5xx, a 429 or a timeout is a TransientError, retried by the queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from dhgq.errors import PermanentError
from dhgq.fetch.files import Fetched, local_file
from dhgq.settings import Settings

__all__ = ["Fetched", "fetch", "is_remote", "scheme_of"]

REMOTE_SCHEMES = ("storage", "gdrive", "https", "http")


def scheme_of(uri: str) -> str | None:
    """The URI's scheme when it names a remote source, None for a local path."""
    if "://" not in uri:
        return None
    scheme = urlsplit(uri).scheme.lower()
    return scheme or None


def is_remote(uri: str) -> bool:
    return scheme_of(uri) is not None


@contextmanager
def fetch(uri: str, scratch: Path, settings: Settings) -> Iterator[Fetched]:
    """The source's file on this machine for the duration of the block; remote copies are removed after."""
    scheme = scheme_of(uri)
    if scheme is None:
        yield local_file(Path(uri), settings.storage_root)
        return
    scratch.mkdir(parents=True, exist_ok=True)
    fetched = _download(scheme, uri, scratch, settings)
    try:
        yield fetched
    finally:
        fetched.path.unlink(missing_ok=True)


def _download(scheme: str, uri: str, scratch: Path, settings: Settings) -> Fetched:
    if scheme == "storage":
        from dhgq.fetch.storage import download_object

        return download_object(uri, scratch, settings)
    if scheme == "gdrive":
        from dhgq.fetch.gdrive import download_drive_file

        return download_drive_file(uri, scratch, settings)
    if scheme in ("https", "http"):
        from dhgq.fetch.https import download_url

        return download_url(uri, scratch, settings)
    raise PermanentError(
        f"{uri}: unknown source scheme {scheme!r} (use a local path, storage://, gdrive:// or https://)", file=uri
    )
