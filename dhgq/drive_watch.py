"""Watched Google Drive folders: their new media files become sources (``gdrive://FILE_ID``).

``watch`` reads the folder (it must be one the credentials can see), takes Drive's change-list start
token, then adds the media files the folder holds now (``existing=False``: only those that arrive
later); ``check`` adds what arrived since the stored token and moves the token on, in one transaction
with the new sources (their pipelines start from the INSERT's trigger), so a check that fails
half-way adds nothing and the next one starts from the same token. The periodic task
``dhgq.drive_watch`` (``dhgq/tasks/drive_watch.py``) checks every watch that is due.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dhgq.errors import DhgqError, PermanentError
from dhgq.fetch.drive_folders import DriveFolder, DriveItem
from dhgq.queries import query
from dhgq.settings import Settings

logger = logging.getLogger("dhgq.drive")


@dataclass
class CheckResult:
    """One folder's check: the sources it added, those whose file changed, or why it failed."""

    folder_id: str
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    error: str | None = None


def watch(
    conn: psycopg.Connection,
    settings: Settings,
    folder_id: str,
    *,
    options: dict[str, Any] | None = None,
    existing: bool = True,
) -> tuple[DriveItem, CheckResult]:
    """Start watching a folder (again: a new token); its media files now become sources, unless not ``existing``."""
    folder = DriveFolder(settings, folder_id)
    described = folder.describe()
    token = folder.start_token(described.drive_id)  # before the listing: nothing falls between the two
    files = folder.media_files() if existing else []
    result = CheckResult(folder_id)
    with conn.transaction():
        params = {
            "folder_id": folder_id,
            "folder_name": described.name,
            "drive_id": described.drive_id,
            "page_token": token,
            "options": Jsonb(options or {}),
        }
        conn.execute(query("drive_watch_upsert"), params)
        _add_all(conn, folder_id, files, options or {}, result)
        checked: dict[str, Any] = {"folder_id": folder_id, "page_token": token, "added": len(result.added)}
        conn.execute(query("drive_watch_checked"), checked)
    return described, result


def unwatch(conn: psycopg.Connection, folder_id: str) -> bool:
    """Stop watching; its sources stay. Whether it was watched."""
    return conn.execute(query("drive_watch_delete"), {"folder_id": folder_id}).fetchone() is not None


def watches(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return conn.cursor(row_factory=dict_row).execute(query("drive_watch_list")).fetchall()


def check_due(conn: psycopg.Connection, settings: Settings, folder_id: str | None = None) -> list[CheckResult]:
    """Check every watch that is due (``DHGQ_DRIVE_WATCH_SECONDS`` since its last check), or one folder now."""
    results: list[CheckResult] = []
    while True:
        with conn.transaction():
            cursor = conn.cursor(row_factory=dict_row)
            if folder_id is not None:
                row = cursor.execute(query("drive_watch_one"), {"folder_id": folder_id}).fetchone()
            else:
                row = cursor.execute(query("drive_watch_due"), {"every": settings.drive_watch_seconds}).fetchone()
            if row is None:
                return results
            results.append(_check(conn, settings, row))
        if folder_id is not None:
            return results


def _check(conn: psycopg.Connection, settings: Settings, row: dict[str, Any]) -> CheckResult:
    """One watch's round, inside the transaction that locked its row; a failure is recorded on the row."""
    result = CheckResult(row["folder_id"])
    try:
        changes = DriveFolder(settings, row["folder_id"]).changes(row["page_token"], row["drive_id"])
        with conn.transaction():  # a savepoint: a failure adds nothing, and the failure is still recorded
            _add_all(conn, row["folder_id"], changes.files, row["options"] or {}, result)
            params = {"folder_id": row["folder_id"], "page_token": changes.next_token, "added": len(result.added)}
            conn.execute(query("drive_watch_checked"), params)
    except (DhgqError, psycopg.Error) as exc:
        result.added, result.changed = [], []
        result.error = str(exc.message if isinstance(exc, DhgqError) else exc).strip()
        conn.execute(query("drive_watch_failed"), {"folder_id": row["folder_id"], "error": result.error[:2000]})
        logger.warning("drive watch %s: %s", row["folder_id"], result.error)
        return result
    if result.added or result.changed:
        logger.info(
            "drive watch %s: %d new source(s), %d changed", row["folder_id"], len(result.added), len(result.changed)
        )
    return result


def _add_all(
    conn: psycopg.Connection, folder_id: str, files: list[DriveItem], options: dict[str, Any], result: CheckResult
) -> None:
    for item in files:
        params = {
            "file_id": item.id,
            "name": item.name,
            "mime_type": item.mime_type,
            "root_drive_id": item.drive_id,
            "folder_id": folder_id,
            "size": item.size,
            "md5": item.md5,
            "modified_time": item.modified_time,
            "options": Jsonb(options),
        }
        for source_id, what in conn.execute(query("drive_source_add"), params).fetchall():
            if what == "added":
                result.added.append(str(source_id))
            else:
                conn.execute(query("start_pipeline"), {"source_id": source_id})
                result.changed.append(str(source_id))


def check_folder_id(folder_id: str) -> str:
    """A folder id as the user gave it, or the id in a Drive folder URL (``.../folders/<id>``)."""
    folder_id = folder_id.strip().rstrip("/")
    if "/folders/" in folder_id:
        folder_id = folder_id.rsplit("/folders/", 1)[1].split("?", 1)[0]
    if not folder_id:
        raise PermanentError("give a Drive folder id (the part after /folders/ in the folder's URL)")
    return folder_id
