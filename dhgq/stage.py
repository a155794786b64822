"""What a stage is: the row it works on, what its worker shares, and its spec (input, work, save, then).

A stage's life (``dhgq/pipeline.py``) is the same for every stage; a task module only fills in a
``StageSpec``:

- ``inputs`` makes the stage's input a local thing for the duration of the work: extraction fetches
  the source's file, the model stages fetch the extracted audio from the artifact store (or sign URLs
  for a remote GPU), summarization needs nothing (``no_input``). The work never sees where it came from.
- ``work`` computes the output from the input, outside any transaction;
- ``save`` writes the output in the completing transaction and returns the stage row's result;
- ``then`` queues what follows, in that transaction, given the locked rows of the stage and of
  ``lock_with`` (the fan-in);
- ``reuse`` (optional) says how an equal output of another source of the same owner is found by
  content and copied instead (``dhgq/reuse.py``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from dhgq.artifacts import Artifact, ArtifactKind, ArtifactStore, store_for
from dhgq.errors import PermanentError
from dhgq.runner import ModelPool
from dhgq.settings import Settings, Stage
from dhgq.telemetry import Telemetry

Input = TypeVar("Input")
Output = TypeVar("Output")


@dataclass
class Source:
    """The row a stage works on."""

    id: str
    name: str
    path: str
    mime_type: str | None
    duration: float | None
    options: dict[str, Any] = field(default_factory=dict)  # the request's, checked by the database
    artifacts: dict[str, Artifact] = field(default_factory=dict)  # by kind: what earlier stages made
    content_hash: str | None = None  # sha256 of the source file once known: reuse keys start from it
    fresh: bool = False  # this run must compute, not reuse (an explicit `dhgq rerun`, or a reuse that failed)

    @classmethod
    def defaults(cls) -> Source:
        """No source in particular: what a stage's identity is for a request that sets no options."""
        return cls("", "", "", None, None)

    def artifact(self, kind: ArtifactKind) -> Artifact:
        """An artifact an earlier stage made; extraction must have completed."""
        found = self.artifacts.get(kind)
        if found is None:
            raise PermanentError(f"no {kind} artifact: extraction has not completed", file=self.path)
        return found


@dataclass
class Resources:
    """What a worker process shares between its jobs: settings, a connection pool, the artifact store,
    model hosts, and its own registration (``dhgq.workers``)."""

    settings: Settings
    pool: ConnectionPool
    hosts: dict[str, ModelPool] = field(default_factory=dict)
    published: set[str] = field(default_factory=set)  # stages whose current versions this process recorded
    worker_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    telemetry: Telemetry = field(default_factory=Telemetry)  # metrics and spans; off unless configured
    _store: ArtifactStore | None = None

    @property
    def store(self) -> ArtifactStore:
        """The artifact store of this process, built once."""
        if self._store is None:
            self._store = store_for(self.settings)
        return self._store

    def host(self, stage: Stage) -> ModelPool:
        if stage not in self.hosts:
            self.hosts[stage] = ModelPool(stage, self.settings.concurrency(stage), self.settings)
        return self.hosts[stage]

    def close(self) -> None:
        for host in self.hosts.values():
            host.close()
        self.telemetry.close()
        self.pool.close()


@dataclass
class StageJob:
    stage: Stage
    source_id: str
    job_id: int
    attempt: int  # 1 for the first run
    should_stop: Callable[[], bool] = field(default=lambda: False, repr=False)  # true once cancelled

    @property
    def log(self) -> dict[str, Any]:
        return {"stage": self.stage, "source_id": self.source_id, "job_id": self.job_id, "attempt": self.attempt}


StageRows = dict[str, dict[str, Any]]  # stage -> its row (stage, status, job_id, result), locked


# -- reuse by content: the policy a StageSpec may carry (used by dhgq/reuse.py) --------------------------


@dataclass(frozen=True)
class Identity:
    """What produces a stage's output, as far as the output depends on it: the parts of a reuse key
    other than the input. ``options`` holds only options that change the output."""

    engine: str
    engine_version: str | None
    model: str
    model_version: str | None
    options: Mapping[str, Any] = field(default_factory=dict)
    prompt_version: str | None = None
    reusable: bool = True  # False: recorded (staleness, history) but never copied to another source

    def versions(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "engine_version": self.engine_version,
            "model": self.model,
            "model_version": self.model_version,
            "prompt_version": self.prompt_version,
        }


@dataclass(frozen=True)
class ReuseKey:
    """A stage output's key: equal keys mean equal outputs, so one may stand for the other."""

    stage: Stage
    input_hash: str
    identity: Identity

    @property
    def digest(self) -> str:
        """sha256 of every part, canonical JSON: what ``dhgq.stage_outputs.key`` holds and lookups match."""
        parts = {
            "stage": self.stage,
            "input_hash": self.input_hash,
            **self.identity.versions(),
            "options": dict(self.identity.options),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Origin:
    """A current output under the same key, of another source of the same owner: what a stage copies.
    ``context`` is the policy's own: the stage's input when it was at hand (extraction's fetched file),
    then what ``prepare`` made on the way (the copied artifacts)."""

    output_id: int
    source_id: str
    stage: Stage
    stage_id: str
    result: dict[str, Any]
    created_at: datetime
    context: Any = None

    def reference(self) -> dict[str, Any]:
        """``result.reused_from``: where the output came from."""
        return {
            "source_id": self.source_id,
            "stage": self.stage,
            "stage_id": self.stage_id,
            "output_id": self.output_id,
            "output_created_at": self.created_at.isoformat(),
        }


class NotReusable(Exception):
    """An output found a moment ago cannot be copied after all (its files or rows went): compute instead."""


@dataclass(frozen=True)
class Reuse:
    """How a stage's output is found again by content and copied onto another source of the same owner.

    ``identity`` says what would produce the output for this source now, from settings only (no
    model is loaded); ``input_hash`` what it is made from (None: not known yet, so no reuse);
    ``copy`` writes the origin's rows as the source's own, in the completing transaction, and
    returns the stage row's result; ``prepare`` (optional) does what must not happen inside a
    transaction first (copying artifacts) and returns the origin with its context. Either raises
    ``NotReusable`` to have the stage computed after all.
    """

    identity: Callable[[Settings, Source], Identity | None]
    input_hash: Callable[[Resources, Source], str | None]
    copy: Callable[[psycopg.Connection, Source, Origin], dict[str, Any]]
    prepare: Callable[[Resources, Source, Origin], Origin] | None = None


@dataclass
class StageSpec(Generic[Input, Output]):
    """What one stage does; see the module docstring."""

    stage: Stage
    inputs: Callable[[Resources, Source, StageJob], AbstractContextManager[Input]]
    work: Callable[[Resources, Source, StageJob, Input], Output]
    save: Callable[[psycopg.Connection, Source, Output], dict[str, Any]]
    then: Callable[[psycopg.Connection, Source, StageRows], None]
    lock_with: Sequence[Stage] = ()
    reuse: Reuse | None = None


@contextmanager
def no_input(resources: Resources, source: Source, job: StageJob) -> Iterator[None]:
    """The input of a stage that reads only database rows."""
    yield None
