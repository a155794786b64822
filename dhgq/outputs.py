"""Results back where the user keeps the media: the exports (srt, vtt, json, md) uploaded to
Supabase Storage next to a storage:// source, under the owner's own folder, so an app can offer
them for download with the user's own session (Storage's row-level security lets only them in).

``DHGQ_UPLOAD_OUTPUTS=true`` turns it on; the keys are recorded in ``sources_google.metadata``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath

from dhgq.errors import PermanentError
from dhgq.fetch.keys import check_object_key, owner_folder, parse_storage_uri
from dhgq.fetch.storage import upload_file
from dhgq.media.export import render
from dhgq.media.types import Diarization, Summary, Transcript
from dhgq.settings import Settings

EXPORTS = {"srt": "application/x-subrip", "vtt": "text/vtt", "json": "application/json", "md": "text/markdown"}


def export_keys(source_key: str) -> dict[str, str]:
    """Where each export of ``talks/keynote.mp4`` goes: ``talks/keynote.dhgq/keynote.srt`` and so on.

    Each key is checked as the source's was, and must lie in the source's own top folder (its
    owner's): the service key writes anywhere, so nothing but the key keeps an export at home.
    """
    uri = f"storage key {source_key!r}"
    check_object_key(source_key, uri=uri)
    source = PurePosixPath(source_key)
    folder = source.parent / f"{source.stem}.dhgq"
    keys = {fmt: str(folder / f"{source.stem}.{fmt}") for fmt in EXPORTS}
    for key in keys.values():
        check_object_key(key, uri=uri)
        if owner_folder(key) != owner_folder(source_key) and owner_folder(source_key) is not None:
            raise PermanentError(f"{uri}: its export {key!r} would leave the folder {owner_folder(source_key)!r}")
    return keys


def upload_exports(
    settings: Settings, source_uri: str, transcript: Transcript, diarization: Diarization | None, summary: Summary
) -> dict[str, str]:
    """Render and upload every export of a storage:// source; {format: storage:// URI}."""
    bucket, key = parse_storage_uri(source_uri)
    title = PurePosixPath(key).stem
    uploaded = {}
    with tempfile.TemporaryDirectory(prefix="dhgq-exports-", dir=_scratch(settings)) as folder:
        for fmt, target in export_keys(key).items():
            local = Path(folder) / PurePosixPath(target).name
            local.write_text(render(transcript, diarization, fmt, title=title, summary=summary), encoding="utf-8")
            uploaded[fmt] = upload_file(settings, bucket, target, local, f"{EXPORTS[fmt]}; charset=utf-8")
    return uploaded


def _scratch(settings: Settings) -> Path:
    settings.scratch_dir.mkdir(parents=True, exist_ok=True)
    return settings.scratch_dir
