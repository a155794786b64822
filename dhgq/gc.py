"""Retention: what ``dhgq gc`` and the worker's daily ``dhgq.gc`` task remove, and the checks that
keep everything a live row needs.

What goes (the README's "Retention" says the same):

- **derived audio**: ``work_dir/<source_id>/`` (the WAV, the compact copy, whatever else is there)
  of a source whose pipeline finished, completed or failed for good (cancelled included), more than
  ``keep_audio_days`` ago. Its row's ``audio_extraction_path`` and ``audio_extracted`` are cleared,
  so a later retry of transcription or diarization starts again from extraction
  (``dhgq.retry_source_v1``), as a reprocess does anyway;
- **unreferenced files** in ``work_dir/<uuid>/`` directories, untouched for
  ``keep_leftovers_hours``: a directory whose source row is gone, or a file in a source's directory
  that neither the row nor its stage results name (a compact copy of an earlier codec, say);
- **scratch leftovers** in the temp dir, untouched for ``keep_leftovers_hours``: a stage's download
  directory ``<source_id>/`` (removed when its stage ends, unless the worker was killed) and the
  ``dhgq-exports-*`` folders of ``dhgq/outputs.py``;
- **finished Procrastinate jobs** (succeeded, failed, cancelled, aborted) whose last event is older
  than ``keep_jobs_days``, with their events;
- **earlier versions of outputs**: the rows a newer output replaced (``dhgq.output_history``, written
  by the completing transaction of a re-run or reprocessed stage) and the superseded reuse keys
  (``dhgq.stage_outputs``), once replaced more than ``keep_jobs_days`` ago. Until then an earlier
  transcript, summary or diarization can be read back there; the public tables hold the current one.

What never goes: anything of a source with a stage queued or processing or a job todo or doing
(checked again under the source row's lock, which retry, reprocess and users' requests take before
they queue work, right before its files go); a file that a source's ``path`` names; anything in
the work dir but its ``<uuid>/`` directories, or in the temp dir but the entries above (it may be a
shared ``/tmp``); a job that a live row names. Only the files listed by the plan are removed (what
``--dry-run`` shows), then the directories they leave empty.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from dhgq import gc_artifacts
from dhgq.errors import DhgqError
from dhgq.queries import query
from dhgq.settings import Settings

logger = logging.getLogger("dhgq.gc")

Reason = Literal["audio", "orphan", "unreferenced", "scratch", "cache"]
EXPORTS_PREFIX = "dhgq-exports-"  # dhgq/outputs.py's temporary folders in the scratch dir


class GcRunning(DhgqError):
    """Another dhgq gc (or the worker's dhgq.gc task) is running on this database: try again later."""


@dataclass(frozen=True)
class File:
    path: str
    size: int
    mtime: float


@dataclass(frozen=True)
class Removal:
    """One thing to remove: a directory (the files listed in it, then what they leave empty) or one file."""

    reason: Reason
    path: str
    files: tuple[File, ...]
    source_id: str | None
    directory: bool

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def as_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "path": self.path,
            "directory": self.directory,
            "source_id": self.source_id,
            "files": [f.path for f in self.files],
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class ClearedSource:
    """A source row whose extracted audio is (to be) cleared."""

    source_id: str
    name: str
    outcome: str
    finished_at: datetime | None


@dataclass(frozen=True)
class OldJob:
    id: int
    queue: str
    status: str
    finished_at: datetime
    events: int


@dataclass(frozen=True)
class OldVersions:
    """Earlier versions of outputs past retention: history rows, and superseded stage_outputs rows."""

    history: int
    outputs: int


@dataclass
class Report:
    """What a collection removes (``dry_run``: would remove)."""

    dry_run: bool
    removals: list[Removal] = field(default_factory=list)
    sources: list[ClearedSource] = field(default_factory=list)
    jobs: list[OldJob] = field(default_factory=list)
    versions: OldVersions = field(default_factory=lambda: OldVersions(0, 0))
    errors: list[str] = field(default_factory=list)

    @property
    def files(self) -> int:
        return sum(len(r.files) for r in self.removals)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removals)

    @property
    def events(self) -> int:
        return sum(j.events for j in self.jobs)

    def totals(self) -> dict[str, int]:
        return {
            "files": self.files,
            "bytes": self.bytes,
            "sources": len(self.sources),
            "jobs": len(self.jobs),
            "events": self.events,
        }

    def as_dict(self, settings: Settings) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "work_dir": str(settings.work_dir),
            "scratch_dir": str(settings.scratch_dir),
            "keep": {
                "audio_days": settings.keep_audio_days,
                "jobs_days": settings.keep_jobs_days,
                "leftovers_hours": settings.keep_leftovers_hours,
            },
            "removals": [r.as_dict() for r in self.removals],
            "sources": [vars(s) for s in self.sources],
            "jobs": [vars(j) for j in self.jobs],
            "versions": vars(self.versions),
            "errors": self.errors,
            "totals": self.totals(),
        }

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        clear = "would clear" if self.dry_run else "cleared"
        versions = f"; {verb} {self.versions.history} earlier output version(s)" if self.versions.history else ""
        return (
            f"{verb} {self.files} file(s) ({human_bytes(self.bytes)}) in {len(self.removals)} place(s); "
            f"{clear} the extracted audio of {len(self.sources)} source(s); "
            f"{verb} {len(self.jobs)} finished job(s) ({self.events} event(s))"
            f"{versions}"
        )


@dataclass(frozen=True)
class SourceState:
    """A source as gc judges it (the query ``gc_sources``)."""

    source_id: str
    name: str
    path: str
    audio_extraction_path: str | None
    live: bool
    outcome: str | None
    finished_at: datetime | None
    expired: bool
    refs: tuple[str, ...]

    def references(self) -> set[str]:
        """Every path the row and its stage results name, in the forms a file on disk is compared in."""
        return _normalised([self.path, self.audio_extraction_path, *self.refs])


def collect(conn: psycopg.Connection, settings: Settings, *, dry_run: bool = False) -> Report:
    """Plan what retention allows and, unless ``dry_run``, remove it. ``conn`` is in autocommit mode."""
    if dry_run:
        return plan(conn, settings)
    locked = conn.execute(query("gc_try_lock")).fetchone()
    if not (locked and locked[0]):
        raise GcRunning()
    try:
        return apply(conn, settings, plan(conn, settings))
    finally:
        conn.execute(query("gc_unlock"))


def plan(conn: psycopg.Connection, settings: Settings) -> Report:
    """What a collection would remove now; removes nothing."""
    cutoff = time.time() - settings.keep_leftovers_hours * 3600
    work, scratch = settings.work_dir, settings.scratch_dir
    work_dirs = _uuid_dirs(work)
    # a temp dir set to the work dir itself would make every audio directory a scratch leftover
    scratch_dirs = {} if _same_dir(work, scratch) else _uuid_dirs(scratch)
    states = source_states(conn, settings, set(work_dirs) | set(scratch_dirs))
    protected = protected_paths(conn, settings)
    report = Report(dry_run=True)

    for source_id, directory in sorted(work_dirs.items()):
        state = states.get(source_id)
        found, newest = _tree(directory)
        files = [f for f in found if not _named(f.path, protected)]
        if found and not files:
            continue  # nothing in it but files that sources name
        if state is None:
            if newest < cutoff:
                report.removals.append(Removal("orphan", str(directory), tuple(files), source_id, True))
        elif state.live:
            continue
        elif state.expired:
            report.removals.append(Removal("audio", str(directory), tuple(files), source_id, True))
        else:
            refs = state.references()
            for f in files:
                if f.mtime < cutoff and not _named(f.path, refs):
                    report.removals.append(Removal("unreferenced", f.path, (f,), source_id, False))

    for state in states.values():
        if state.expired and state.audio_extraction_path and _clearable(state, work):
            report.sources.append(ClearedSource(state.source_id, state.name, state.outcome or "", state.finished_at))

    leftovers: list[tuple[str | None, Path]] = list(sorted(scratch_dirs.items()))
    leftovers += [(None, directory) for directory in _export_dirs(scratch)]
    for maybe_source, directory in leftovers:
        state = states.get(maybe_source) if maybe_source else None
        if state is not None and state.live:
            continue
        found, newest = _tree(directory)
        files = [f for f in found if not _named(f.path, protected)]
        if newest < cutoff and (files or not found):
            report.removals.append(Removal("scratch", str(directory), tuple(files), maybe_source, True))

    report.removals += gc_artifacts.plan(conn, settings, states.values(), report.errors)
    report.jobs = old_jobs(conn, settings)
    report.versions = old_versions(conn, settings)
    return report


def apply(conn: psycopg.Connection, settings: Settings, planned: Report) -> Report:
    """Remove what ``planned`` lists, each item checked again (under its source's row lock) as it goes."""
    done = Report(dry_run=False, errors=list(planned.errors))
    protected = protected_paths(conn, settings)
    to_clear = {s.source_id: s for s in planned.sources}
    for removal in planned.removals:
        with conn.transaction():
            state, ok = _still_removable(conn, settings, removal)
            if not ok:
                logger.info("gc: kept %s: it is in use again", removal.path, extra={"source_id": removal.source_id})
                continue
            if gc_artifacts.is_outside(removal):
                removed = gc_artifacts.remove(settings, removal, done.errors)
                if removal.files and not removed.files:  # the store refused (see errors): keep the row, so
                    to_clear.pop(removal.source_id or "", None)  # that the next run tries again
                    continue
            else:
                removed = _remove(removal, protected, settings, done.errors)
            if removal.reason == "audio" and state is not None and removal.source_id in to_clear:
                _clear(conn, to_clear.pop(removal.source_id), done)
        done.removals.append(removed)
        logger.info(
            "gc: removed %s (%s, %d file(s), %s)",
            removal.path,
            removal.reason,
            len(removed.files),
            human_bytes(removed.bytes),
            extra={"source_id": removal.source_id},
        )
    for source_id, cleared in to_clear.items():  # expired sources whose audio left no directory
        with conn.transaction():
            conn.execute(query("gc_lock_source"), {"source_id": source_id})
            state = source_states(conn, settings, {source_id}).get(source_id)
            if state is not None and state.expired:
                _clear(conn, cleared, done)
    ids = [job.id for job in planned.jobs]
    if ids:
        rows = conn.execute(query("gc_delete_jobs"), {"ids": ids, "keep_jobs_days": settings.keep_jobs_days})
        deleted = {row[0] for row in rows.fetchall()}
        done.jobs = [job for job in planned.jobs if job.id in deleted]
        logger.info("gc: removed %d finished job(s) and %d event(s)", len(done.jobs), done.events)
    done.versions = remove_old_versions(conn, settings)
    return done


def source_states(conn: psycopg.Connection, settings: Settings, ids: Iterable[str]) -> dict[str, SourceState]:
    """The sources with these ids, and every source whose recorded audio retention lets go."""
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(query("gc_sources"), {"ids": sorted(ids), "keep_audio_days": settings.keep_audio_days})
    return {
        row["source_id"]: SourceState(
            row["source_id"],
            row["name"],
            row["path"],
            row["audio_extraction_path"],
            bool(row["live"]),
            row["outcome"],
            row["finished_at"],
            bool(row["expired"]),
            tuple(row["refs"] or ()),
        )
        for row in rows.fetchall()
    }


def protected_paths(conn: psycopg.Connection, settings: Settings) -> set[str]:
    """Media files that sources name inside the work or scratch dir: never removed."""
    prefixes = sorted({os.path.join(p, "") for d in (settings.work_dir, settings.scratch_dir) for p in _forms(str(d))})
    rows = conn.execute(query("gc_source_paths"), {"prefixes": prefixes}).fetchall()
    return _normalised(row[0] for row in rows)


def old_jobs(conn: psycopg.Connection, settings: Settings) -> list[OldJob]:
    rows = conn.execute(query("gc_old_jobs"), {"keep_jobs_days": settings.keep_jobs_days}).fetchall()
    return [OldJob(int(r[0]), r[1], r[2], r[3], int(r[4])) for r in rows]


def old_versions(conn: psycopg.Connection, settings: Settings) -> OldVersions:
    """Earlier versions of outputs that retention lets go (a dry run's count)."""
    row = conn.execute(query("gc_count_old_history"), {"keep_days": settings.keep_jobs_days}).fetchone()
    return OldVersions(int(row[0]), int(row[1])) if row else OldVersions(0, 0)


def remove_old_versions(conn: psycopg.Connection, settings: Settings) -> OldVersions:
    """Remove the earlier versions of outputs replaced more than ``keep_jobs_days`` ago (rows only: the
    files of a source are its current output's, which retention judges as above)."""
    row = conn.execute(query("gc_old_history"), {"keep_days": settings.keep_jobs_days}).fetchone()
    removed = OldVersions(int(row[0]), int(row[1])) if row else OldVersions(0, 0)
    if removed.history or removed.outputs:
        logger.info("gc: removed %d earlier output version(s), %d superseded key(s)", removed.history, removed.outputs)
    return removed


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


# -- checks under the lock --------------------------------------------------------------------------


def _still_removable(conn: psycopg.Connection, settings: Settings, removal: Removal) -> tuple[SourceState | None, bool]:
    """Lock the removal's source row and judge it again: the plan may be minutes old."""
    if removal.source_id is None:  # an exports folder
        return None, True
    locked = conn.execute(query("gc_lock_source"), {"source_id": removal.source_id}).fetchone()
    state = source_states(conn, settings, {removal.source_id}).get(removal.source_id) if locked else None
    if removal.reason == "orphan":
        return None, state is None
    if removal.reason == "scratch":
        return state, state is None or not state.live
    if state is None or state.live:  # a source's audio whose row went since is an orphan: next time
        return state, False
    if removal.reason == "audio":
        return state, state.expired
    return state, not _named(removal.path, state.references())  # unreferenced


def _clear(conn: psycopg.Connection, cleared: ClearedSource, done: Report) -> None:
    conn.execute(query("gc_clear_audio"), {"source_id": cleared.source_id})
    done.sources.append(cleared)
    logger.info("gc: cleared the extracted audio of %s", cleared.name, extra={"source_id": cleared.source_id})


def _clearable(state: SourceState, work: Path) -> bool:
    """Whether the row's recorded audio is dhgq's own (in the source's work directory) or gone already."""
    path = state.audio_extraction_path
    if not path:
        return False
    if path.startswith(gc_artifacts.STORED):  # in the artifact store: removed with the source's folder
        return True
    own = os.path.join(str(work / state.source_id), "")
    return any(form.startswith(mine) for form in _forms(path) for mine in _forms(own)) or not os.path.lexists(path)


# -- files ----------------------------------------------------------------------------------------


def _remove(removal: Removal, protected: set[str], settings: Settings, errors: list[str]) -> Removal:
    """Unlink the listed files (never one a source names), then the directories they leave empty."""
    removed: list[File] = []
    for f in removal.files:
        if _named(f.path, protected):
            continue
        try:
            os.unlink(f.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(f"{f.path}: {exc.strerror or exc}")
            continue
        removed.append(f)
    if removal.directory:
        _prune(Path(removal.path), stop=None)
    else:
        roots = {settings.work_dir, settings.scratch_dir}
        _prune(Path(removal.path).parent, stop=roots)
    return Removal(removal.reason, removal.path, tuple(removed), removal.source_id, removal.directory)


def _prune(directory: Path, stop: set[Path] | None) -> None:
    """Remove the empty directories in and including ``directory`` (or, given ``stop``, up to those)."""
    if stop is None:
        for parent, _dirs, _files in os.walk(directory, topdown=False):
            _rmdir(Path(parent))
        return
    current = directory
    while current not in stop and current.parent != current and _rmdir(current):
        current = current.parent


def _rmdir(directory: Path) -> bool:
    try:
        directory.rmdir()
    except OSError:
        return False
    return True


def _uuid_dirs(root: Path) -> dict[str, Path]:
    """The directories directly under ``root`` named by a source id, as dhgq names them (not symlinks)."""
    found: dict[str, Path] = {}
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and _is_uuid(entry.name):
            found[entry.name] = Path(entry.path)
    return found


def _export_dirs(root: Path) -> list[Path]:
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        Path(e.path) for e in entries if e.name.startswith(EXPORTS_PREFIX) and e.is_dir(follow_symlinks=False)
    )


def _is_uuid(name: str) -> bool:
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False


def _tree(directory: Path) -> tuple[list[File], float]:
    """Every file below ``directory`` (symlinks as themselves, never followed), and the newest mtime there."""
    files: list[File] = []
    newest = _mtime(directory)
    pending = [directory]
    while pending:
        current = pending.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            newest = max(newest, info.st_mtime)
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
            else:
                files.append(File(entry.path, info.st_size, info.st_mtime))
    return sorted(files, key=lambda f: f.path), newest


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return time.time()  # cannot tell: treat it as new


def _same_dir(a: Path, b: Path) -> bool:
    return bool(_forms(str(a)) & _forms(str(b)))


def _forms(path: str) -> set[str]:
    """A path as written and resolved (a symlinked home reaches the same file by both)."""
    return {os.path.abspath(path), os.path.realpath(path)}


def _normalised(paths: Iterable[str | None]) -> set[str]:
    return {form for path in paths if path and os.path.isabs(path) for form in _forms(path)}


def _named(path: str, names: set[str]) -> bool:
    return bool(_forms(path) & names)
