"""The local artifact store: the work dir of the one machine that runs every stage (the default).

Extraction writes into ``work_dir/<source id>/`` and the later stages read the files in place: nothing is
copied, uploaded or cached, so the embedded single-machine default costs what it cost before artifacts.
What a stage is handed is still checked: the file must lie in this machine's work dir, exist and have the
recorded size; an artifact that another machine made in its own work dir is refused with what to
configure instead (a shared store), never looked for on this machine's disk.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from dhgq.artifacts import Artifact, ArtifactKind, hash_file
from dhgq.errors import ArtifactMissing, ConfigurationError, PermanentError
from dhgq.settings import Settings

SHARED_STORE_FIX = (
    "give every worker machine the same artifact store (DHGQ_SUPABASE_URL and DHGQ_SUPABASE_SERVICE_KEY, "
    "DHGQ_ARTIFACT_STORE=storage), or run all the stages on that machine"
)


class LocalStore:
    """Artifacts as files in the work dir, read in place."""

    name: Literal["local"] = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.work_dir = settings.work_dir

    @contextmanager
    def staging(self, source_id: str) -> Iterator[Path]:
        yield self.work_dir / source_id

    def put(self, source_id: str, kind: ArtifactKind, path: Path, content_type: str) -> Artifact:
        sha256, size = hash_file(path)
        return Artifact(kind, str(path), sha256, size, content_type, host=self.settings.host_name)

    def copy(self, artifact: Artifact, source_id: str) -> Artifact:
        """A hard link (a copy across file systems) in the other source's own directory."""
        with self.local_file(artifact) as existing:
            target = link(existing, self.work_dir / source_id / existing.name)
        return Artifact(
            artifact.kind, str(target), artifact.sha256, artifact.size, artifact.content_type, 1, artifact.host
        )

    @contextmanager
    def local_file(self, artifact: Artifact) -> Iterator[Path]:
        yield self.check(artifact)

    def check(self, artifact: Artifact) -> Path:
        """The artifact's path once it is known to be this machine's, in the work dir, whole."""
        if "://" in artifact.uri:
            raise ConfigurationError(
                f"the artifact {artifact.uri} lies in a shared store, but this worker uses its work dir "
                f"(DHGQ_ARTIFACT_STORE=local): {SHARED_STORE_FIX}",
                file=artifact.uri,
            )
        if artifact.host and artifact.host != self.settings.host_name:
            raise ConfigurationError(
                f"the {artifact.kind} artifact was made on {artifact.host}, in its own work dir, which this worker "
                f"({self.settings.host_name}) cannot read: {SHARED_STORE_FIX}",
                file=artifact.uri,
            )
        path = Path(artifact.uri)
        work_dir = self.work_dir.resolve()
        if not path.resolve().is_relative_to(work_dir):
            raise PermanentError(
                f"extracted audio {artifact.uri} lies outside the work dir {work_dir}: refused", file=artifact.uri
            )
        if not path.is_file():
            raise ArtifactMissing(
                f"the {artifact.kind} artifact {artifact.uri} is gone (removed by hand or by dhgq gc): "
                "retry the source to extract it again",
                file=artifact.uri,
            )
        if artifact.size is not None and path.stat().st_size != artifact.size:
            raise ArtifactMissing(
                f"the {artifact.kind} artifact {artifact.uri} has {path.stat().st_size:,} bytes, not the "
                f"{artifact.size:,} extraction wrote: retry the source to extract it again",
                file=artifact.uri,
            )
        return path

    def signed_urls(self, artifact: Artifact, seconds: int) -> list[str] | None:
        return None

    def remove(self, artifacts: list[Artifact]) -> int:
        """The work dir's files go with their source's directory (``dhgq gc``); here, one by one."""
        removed = 0
        for artifact in artifacts:
            try:
                Path(self.check(artifact)).unlink()
                removed += 1
            except (ArtifactMissing, FileNotFoundError):
                continue
        return removed


def link(existing: Path, target: Path) -> Path:
    """``target`` names the same bytes as ``existing``: a hard link (a copy across file systems), put in
    place atomically. Extraction replaces its files rather than writing into them, so neither source's
    later extraction can change the other's audio."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = target.with_name(f".{target.name}.reused")
    temporary.unlink(missing_ok=True)
    try:
        os.link(existing, temporary)
    except OSError:
        shutil.copyfile(existing, temporary)
        os.chmod(temporary, 0o600)  # audio is private, as extraction writes it
    temporary.replace(target)
    return target
