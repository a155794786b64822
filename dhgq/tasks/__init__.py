"""One module per stage: queue plumbing that calls the pure stage functions of ``dhgq.media``."""

from __future__ import annotations

from typing import Any

from procrastinate import JobContext
from procrastinate.exceptions import JobAborted

from dhgq.errors import StageCancelled
from dhgq.pipeline import run_stage
from dhgq.settings import Stage
from dhgq.stage import Resources, StageJob, StageSpec


def job_of(context: JobContext, stage: Stage, source_id: str) -> tuple[Resources, StageJob]:
    """The worker's shared resources and this job's identity, from Procrastinate's context."""
    assert context.job is not None and context.job.id is not None
    resources: Any = context.additional_context["dhgq"]
    return resources, StageJob(stage, source_id, context.job.id, context.job.attempts + 1, context.should_abort)


def run(context: JobContext, spec: StageSpec[Any, Any], source_id: str) -> None:
    """Run one stage job; a cancelled one ends as Procrastinate's ``aborted``, not as a failure."""
    resources, job = job_of(context, spec.stage, source_id)
    try:
        with resources.telemetry.job(job, resources.settings.host_name):
            run_stage(resources, spec, job)
    except StageCancelled as exc:
        raise JobAborted(str(exc)) from exc
