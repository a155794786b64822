"""The lifecycle's telemetry hooks: spans as the SDK records them, and nothing loaded when off."""

from __future__ import annotations

import subprocess
import sys

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dhgq.errors import PermanentError
from dhgq.stage import StageJob
from dhgq.telemetry import Telemetry
from dhgq.tracing import TRACER_NAME, provider_for


def test_a_stage_job_is_a_span_with_its_phases_and_its_error_class() -> None:
    exporter = InMemorySpanExporter()
    provider = provider_for(
        SimpleSpanProcessor(exporter), service="dhgq-worker", host="cpu-1", worker_id="w-1", version="0.1.0"
    )
    telemetry = Telemetry(tracer=provider.get_tracer(TRACER_NAME))
    job = StageJob("diarization", "7a0c", 42, 2)
    with pytest.raises(PermanentError), telemetry.job(job, "cpu-1"):
        with telemetry.phase("claim"):
            pass
        with telemetry.phase("work"):
            telemetry.failed(job, "permanent", will_retry=False)
            raise PermanentError("not a media file")
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"stage diarization", "claim", "work"}
    root = spans["stage diarization"]
    assert dict(root.attributes or {}) == {
        "dhgq.source_id": "7a0c",
        "dhgq.stage": "diarization",
        "dhgq.job_id": 42,
        "dhgq.attempt": 2,
        "host.name": "cpu-1",
        "dhgq.error_class": "permanent",
    }
    assert spans["claim"].parent is not None and spans["claim"].parent.span_id == root.context.span_id
    assert (spans["work"].attributes or {})["dhgq.will_retry"] is False
    assert root.resource.attributes["service.instance.id"] == "w-1"
    assert not root.status.is_ok


def test_off_the_hooks_load_neither_prometheus_nor_the_opentelemetry_sdk() -> None:
    script = (
        "import sys\n"
        "from dhgq import worker\n"
        "from dhgq.stage import StageJob\n"
        "from dhgq.telemetry import Telemetry\n"
        "t, job = Telemetry(), StageJob('extraction', 's', 1, 1)\n"
        "with t.job(job, 'h'), t.phase('work'):\n"
        "    t.completed(job, 1.0, 2.0)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('prometheus_client', 'opentelemetry.sdk'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
