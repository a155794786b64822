"""Retention of what lies outside the work dir: artifacts in Supabase Storage, and this machine's cache.

With the shared artifact store (``DHGQ_ARTIFACT_STORE=storage``), a source's extracted audio is the
objects under ``<source id>/`` in the artifact bucket. ``dhgq gc`` removes them as it removes a
work-dir directory: for a source whose audio retention has passed (reason ``audio``; its row is then
cleared, so a retry runs extraction again), and for a folder whose source row is gone (``orphan``).
On every machine, files of the artifact cache that no stage used for ``keep_audio_days`` go too
(``cache``; the cache also keeps itself under ``DHGQ_CACHE_MAX_BYTES`` as it fetches), never one
that a stage holds at that moment.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

import psycopg

from dhgq.artifacts.cache import ArtifactCache
from dhgq.errors import DhgqError
from dhgq.queries import query
from dhgq.settings import Settings

if TYPE_CHECKING:
    from dhgq.artifacts.storage import StorageStore
    from dhgq.gc import Removal, SourceState

logger = logging.getLogger("dhgq.gc")
STORED = "storage://"


def plan(
    conn: psycopg.Connection, settings: Settings, states: Iterable[SourceState], errors: list[str]
) -> list[Removal]:
    """What retention lets go outside the work dir: stored audio of expired sources, orphaned folders, old
    cache files."""
    removals = _cache_files(settings)
    if settings.artifact_backend() != "storage":
        return removals
    store = _store(settings)
    expired = [s.source_id for s in states if s.expired and not s.live]
    removals += _stored(conn, store, expired, "audio")
    try:
        folders = {name for name in store.folders() if _is_uuid(name)}
    except DhgqError as exc:
        errors.append(f"storage://{store.bucket}: not listed: {exc.message}")
        return removals
    if folders:
        rows = conn.execute(query("gc_existing_sources"), {"ids": sorted(folders)}).fetchall()
        gone = sorted(folders - {str(row[0]) for row in rows})
        removals += [_folder_removal(store, source_id, "orphan", ()) for source_id in gone]
    return removals


def is_outside(removal: Removal) -> bool:
    """Whether this module removes it (stored objects, cache files) rather than gc's own file removal."""
    return removal.reason == "cache" or removal.path.startswith(STORED)


def remove(settings: Settings, removal: Removal, errors: list[str]) -> Removal:
    """Remove stored objects (the source's whole folder) or a cache file not in use; what went."""
    from dhgq.gc import Removal

    if removal.reason == "cache":
        cache = ArtifactCache(settings.artifact_cache_dir, settings.cache_max_bytes)
        removed = cache.remove_unless_used(removal.files[0].path)
        return Removal(removal.reason, removal.path, removal.files if removed else (), None, False)
    assert removal.source_id is not None
    try:
        _store(settings).remove_folder(removal.source_id)
    except DhgqError as exc:
        errors.append(f"{removal.path}: {exc.message}")
        return Removal(removal.reason, removal.path, (), removal.source_id, True)
    return removal


def _stored(conn: psycopg.Connection, store: StorageStore, source_ids: list[str], reason: str) -> list[Removal]:
    from dhgq.gc import File

    if not source_ids:
        return []
    rows = conn.execute(query("gc_stored_artifacts"), {"ids": source_ids, "prefix": f"storage://{store.bucket}/"})
    found: dict[str, list[File]] = {}
    for source_id, uri, size in rows.fetchall():
        found.setdefault(str(source_id), []).append(File(uri, int(size or 0), 0.0))
    return [_folder_removal(store, source_id, reason, tuple(files)) for source_id, files in sorted(found.items())]


def _folder_removal(store: StorageStore, source_id: str, reason: str, files: tuple) -> Removal:
    from dhgq.gc import Removal

    return Removal(reason, store.uri(source_id + "/"), files, source_id, True)  # type: ignore[arg-type]


def _cache_files(settings: Settings) -> list[Removal]:
    from dhgq.gc import File, Removal

    cache = ArtifactCache(settings.artifact_cache_dir, settings.cache_max_bytes)
    if not cache.objects.is_dir():
        return []
    cutoff = time.time() - settings.keep_audio_days * 86400
    return [
        Removal("cache", str(f.path), (File(str(f.path), f.size, f.used),), None, False)
        for f in sorted(cache.files(), key=lambda f: f.used)
        if f.used < cutoff
    ]


def _store(settings: Settings) -> StorageStore:
    from dhgq.artifacts.storage import StorageStore

    return StorageStore(settings, ArtifactCache(settings.artifact_cache_dir, settings.cache_max_bytes))


def _is_uuid(name: str) -> bool:
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False
