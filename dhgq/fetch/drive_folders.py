"""What a watched Drive folder holds, and what changed in it: Drive v3's ``files.list`` and ``changes.list``.

A watch starts with ``changes.getStartPageToken`` (taken before the folder is listed, so that a file
added during the listing shows up in the first changes), lists the folder's files once, then asks
``changes.list`` from its page token on every check: the changes of every file the account can see
since then, of which those whose parents include the folder count. The last page of a round gives
``newStartPageToken``, where the next round starts: nothing is listed twice, nothing is missed
between two rounds, however long apart. Only the folder's own files count, not its subfolders'.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dhgq.errors import PermanentError
from dhgq.fetch.gdrive import FILE_ID, GOOGLE_APPS, declared_size, drive_json
from dhgq.fetch.google_credentials import DriveCredentials, drive_credentials
from dhgq.settings import Settings

FOLDER = GOOGLE_APPS + "folder"
FILE_FIELDS = "id,name,mimeType,parents,trashed,size,md5Checksum,modifiedTime,driveId"
PAGE_SIZE = "1000"  # the most Drive gives per page of either list


@dataclass(frozen=True)
class DriveItem:
    """A file of a watched folder, as Drive describes it."""

    id: str
    name: str
    mime_type: str
    parents: tuple[str, ...]
    size: int | None = None
    md5: str | None = None
    modified_time: str | None = None
    drive_id: str | None = None

    @classmethod
    def from_resource(cls, resource: dict[str, Any]) -> DriveItem:
        parents = resource.get("parents")
        return cls(
            id=str(resource.get("id") or ""),
            name=str(resource.get("name") or ""),
            mime_type=str(resource.get("mimeType") or ""),
            parents=tuple(str(p) for p in parents) if isinstance(parents, list) else (),
            size=declared_size(resource),
            md5=str(resource["md5Checksum"]) if resource.get("md5Checksum") else None,
            modified_time=str(resource["modifiedTime"]) if resource.get("modifiedTime") else None,
            drive_id=str(resource["driveId"]) if resource.get("driveId") else None,
        )

    @property
    def is_media(self) -> bool:
        return self.mime_type.startswith(("audio/", "video/"))


@dataclass(frozen=True)
class FolderChanges:
    """One round of changes: the media files added or changed in the folder, and where the next round starts."""

    files: list[DriveItem]
    next_token: str


class DriveFolder:
    """One folder, read with the configured Google credentials."""

    def __init__(self, settings: Settings, folder_id: str) -> None:
        if not FILE_ID.fullmatch(folder_id):
            raise PermanentError(f"{folder_id!r} is not a Drive folder id (10 to 200 letters, digits, '-' or '_')")
        self.settings = settings
        self.folder_id = folder_id
        self.source = f"gdrive folder {folder_id}"
        self.account: DriveCredentials = drive_credentials(settings)

    def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        token = self.account.token(source=self.source)
        return drive_json(path, params, token, self.account, self.settings, source=self.source, item=self.folder_id)

    def describe(self) -> DriveItem:
        """The folder itself (its name, its shared drive); PermanentError when the id names no folder."""
        resource = self._get(f"files/{self.folder_id}", {"fields": FILE_FIELDS, "supportsAllDrives": "true"})
        item = DriveItem.from_resource(resource)
        if item.mime_type != FOLDER:
            raise PermanentError(f"{self.source}: {item.name!r} is a file ({item.mime_type}), not a folder")
        return item

    def start_token(self, drive_id: str | None = None) -> str:
        """Where changes after now begin (``changes.getStartPageToken``; per shared drive when in one)."""
        params = {"supportsAllDrives": "true"} | ({"driveId": drive_id} if drive_id else {})
        token = self._get("changes/startPageToken", params).get("startPageToken")
        if not isinstance(token, str) or not token:
            raise PermanentError(f"{self.source}: Drive gave no start page token")
        return token

    def media_files(self) -> list[DriveItem]:
        """The media files in the folder now (``files.list``, every page)."""
        return [item for item in self._listed() if self._counts(item)]

    def _listed(self) -> Iterator[DriveItem]:
        params = {
            "q": f"'{self.folder_id}' in parents and trashed = false",
            "fields": f"nextPageToken,files({FILE_FIELDS})",
            "pageSize": PAGE_SIZE,
            "supportsAllDrives": "true",
            "includeItemsFromAllDrives": "true",
        }
        while True:
            page = self._get("files", params)
            for resource in page.get("files") or []:
                yield DriveItem.from_resource(resource)
            next_page = page.get("nextPageToken")
            if not next_page:
                return
            params = params | {"pageToken": str(next_page)}

    def changes(self, token: str, drive_id: str | None = None) -> FolderChanges:
        """The media files added to or changed in the folder since ``token`` (``changes.list``, every page)."""
        params = {
            "pageToken": token,
            "pageSize": PAGE_SIZE,
            "fields": f"nextPageToken,newStartPageToken,changes(fileId,removed,file({FILE_FIELDS}))",
            "supportsAllDrives": "true",
            "includeItemsFromAllDrives": "true",
        } | ({"driveId": drive_id} if drive_id else {})
        found: dict[str, DriveItem] = {}
        while True:
            page = self._get("changes", params)
            for change in page.get("changes") or []:
                resource = change.get("file")
                if change.get("removed") or not isinstance(resource, dict) or resource.get("trashed"):
                    continue
                item = DriveItem.from_resource(resource)
                if self._counts(item):
                    found[item.id] = item  # the latest of a file's changes
            if page.get("newStartPageToken"):
                return FolderChanges(list(found.values()), str(page["newStartPageToken"]))
            if not page.get("nextPageToken"):
                raise PermanentError(f"{self.source}: Drive's change list ended without a token to go on from")
            params = params | {"pageToken": str(page["nextPageToken"])}

    def _counts(self, item: DriveItem) -> bool:
        return self.folder_id in item.parents and item.is_media and FILE_ID.fullmatch(item.id) is not None
