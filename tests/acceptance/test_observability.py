"""Metrics, traces and the Claude API's Retry-After, on one real talk through a real worker.

The worker runs with ``--metrics-port`` and an OTLP collector configured (a real local OTLP/HTTP
receiver); the local Messages-API server answers the first summary request with 529 and
``retry-after-ms``, as the real API does when overloaded. The summary waits (its row says for what
and until when), the summarization queue is paused until then, and the summary completes after it,
on its first attempt. The endpoint is scraped over HTTP while the summary waits and after the
pipeline, and parsed with prometheus_client's own text-format parser; the spans are decoded from
what the worker POSTed; the Grafana dashboard's expressions are checked against the real scrape.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dhgq.embedded import ServerInfo
from tests.conftest import new_database
from tests.support.fake_anthropic import fake_anthropic_server
from tests.support.otlp_receiver import ReceivedSpan, otlp_receiver
from tests.support.pipeline import insert_source, rows, scalar, wait_for, worker_env
from tests.support.speech import TWO_SPEAKER_SCRIPT, dialogue, to_mp4

pytestmark = pytest.mark.slow
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
RETRY_AFTER_MS = 6000
STAGE_ROW = """SELECT status, waiting_for, waiting_until, error, api_waits, attempts, job_id
                 FROM dhgq.audio_processing_stages WHERE source_id = %s AND stage = 'summarization'"""


@dataclass
class Observed:
    db_url: str
    source_id: str
    waiting: tuple[Any, ...]  # the summarization row while it waited
    pause: tuple[Any, ...] | None  # the summarization queue's pause meanwhile
    during: str  # the scrape while the summary waited
    after: str  # the scrape once the pipeline completed
    requests: list[float]  # when the Messages API was called
    spans: list[ReceivedSpan]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


@pytest.fixture(scope="module")
def observed(pg_info: ServerInfo, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    folder = tmp_path_factory.mktemp("observed")
    talk = to_mp4(dialogue(TWO_SPEAKER_SCRIPT[:4], folder / "talk.wav").audio, folder / "talk.mp4")
    db_url = new_database(pg_info, template_db)
    port = free_port()
    with fake_anthropic_server() as fake, otlp_receiver() as receiver:
        fake.fail(529, retry_after_ms=RETRY_AFTER_MS, message="Overloaded")
        env = worker_env(
            db_url,
            folder / "home",
            DHGQ_ANTHROPIC_API_KEY="sk-test",
            DHGQ_ANTHROPIC_BASE_URL=fake.url,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_BSP_SCHEDULE_DELAY="200",
        )
        source_id = insert_source(db_url, talk)
        log = folder / "worker.log"
        with open(log, "ab") as handle:
            command = [sys.executable, "-m", "dhgq", "worker", "--metrics-port", str(port)]
            worker = subprocess.Popen(command, env=env, stdout=handle, stderr=handle)
        try:
            wait_for(
                lambda: rows(db_url, STAGE_ROW, (source_id,)) and rows(db_url, STAGE_ROW, (source_id,))[0][1],
                300,
                "the summary to wait for the API",
                interval=0.05,
            )
            waiting = rows(db_url, STAGE_ROW, (source_id,))[0]
            pause = (
                rows(db_url, "SELECT reason, resume_at FROM dhgq.queue_pauses WHERE queue_name = 'summarization'")
                or [None]
            )[0]
            during, scraped_at = scrape(port), time.monotonic()
            wait_for(lambda: rows(db_url, STAGE_ROW, (source_id,))[0][0] == "completed", 120, "the summary")
            time.sleep(max(0.0, scraped_at + 5.5 - time.monotonic()))  # past the database readings' cache
            after = scrape(port)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
        assert worker.returncode == 0, log.read_text()[-4000:]
        yield Observed(db_url, source_id, waiting, pause, during, after, list(fake.times), receiver.received())


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by name and labels, as prometheus_client's parser reads it."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [v for (n, ls), v in samples(text).items() if n == name and set(labels.items()) <= set(ls)]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def test_a_529_with_retry_after_holds_the_summary_and_pauses_its_queue(observed: Observed) -> None:
    status, waiting_for, until, error, api_waits, attempts, job_id = observed.waiting
    assert (status, waiting_for, api_waits) == ("queued", "api", 1)
    assert re.fullmatch(
        r"waiting for the Anthropic API until \d\d:\d\d:\d\d UTC: Anthropic API returned 529: Overloaded "
        r"\(retry after 6s\)",
        error,
    ), error
    assert observed.pause is not None
    reason, resume_at = observed.pause
    assert resume_at == until and reason.startswith("the Anthropic API asked to wait: Anthropic API returned 529")
    first, second = observed.requests  # one refused request, then one after the wait: no hammering meanwhile
    assert second - first >= RETRY_AFTER_MS / 1000 - 0.5

    status, waiting_for, until, error, api_waits, attempts, new_job_id = rows(
        observed.db_url, STAGE_ROW, (observed.source_id,)
    )[0]
    assert (status, waiting_for, until, error, attempts) == ("completed", None, None, None, 1)  # not an attempt
    jobs = rows(
        observed.db_url,
        "SELECT id::text, status::text, attempts FROM dhgq.procrastinate_jobs "
        "WHERE task_name = 'dhgq.summarization' ORDER BY id",
    )
    # the held job ended without failing; the job queued for the API's time ran the summary, once
    assert [status for _, status, _ in jobs] == ["succeeded", "succeeded"] and jobs[1][0] == job_id == new_job_id
    assert scalar(observed.db_url, "SELECT count(*) FROM dhgq.dead_letter") == 0
    assert value(observed.during, "dhgq_queue_paused", queue="summarization") == 1
    assert value(observed.during, "dhgq_queue_paused", queue="extraction") == 0
    assert value(observed.during, "dhgq_stages_waiting", stage="summarization", waiting_for="api") == 1
    assert value(observed.after, "dhgq_queue_paused", queue="summarization") == 0


def test_the_metrics_moved_as_the_pipeline_did(observed: Observed) -> None:
    after = observed.after
    for stage in ("extraction", "transcription", "diarization", "summarization"):
        assert value(after, "dhgq_stage_duration_seconds_count", stage=stage, outcome="computed") == 1
        assert value(after, "dhgq_stage_duration_seconds_sum", stage=stage, outcome="computed") > 0
        assert value(after, "dhgq_jobs_total", queue=stage, state="failed") == 0
        for error_class in ("transient", "permanent", "cancelled"):
            assert value(after, "dhgq_stage_failures_total", stage=stage, error_class=error_class) == 0
    for stage in ("extraction", "transcription", "diarization"):
        assert value(after, "dhgq_jobs_total", queue=stage, state="succeeded") == 1
        assert value(after, "dhgq_stage_realtime_factor_count", stage=stage) == 1
        audio = value(after, "dhgq_stage_audio_seconds_total", stage=stage)
        assert 10 < audio < 60  # four lines of speech
        bucket_inf = value(after, "dhgq_stage_realtime_factor_bucket", stage=stage, le="+Inf")
        assert bucket_inf == 1
    assert value(after, "dhgq_jobs_total", queue="summarization", state="succeeded") == 2  # held, then run
    assert value(after, "dhgq_stage_waits_total", stage="summarization", waiting_for="api") == 1
    waited = samples(observed.during)  # no summary had completed yet: no sample of its duration
    assert not [
        labels
        for name, labels in waited
        if name.startswith("dhgq_stage_duration") and ("stage", "summarization") in labels
    ]
    for queue in ("extraction", "transcription", "diarization", "summarization"):
        for state in ("ready", "scheduled", "running"):
            assert value(after, "dhgq_queue_jobs", queue=queue, state=state) == 0
    assert value(after, "dhgq_paid_calls_today", kind="llm", provider="anthropic", status="succeeded") == 1
    assert value(after, "dhgq_paid_calls_today", kind="llm", provider="anthropic", status="failed") == 1
    spent = float(scalar(observed.db_url, "SELECT sum(cost_usd) FROM dhgq.ledger"))
    assert spent > 0 and value(after, "dhgq_paid_cost_usd_today", kind="llm", provider="anthropic") == pytest.approx(
        spent
    )
    assert value(after, "dhgq_database_up") == 1
    info = [labels for (name, labels) in samples(after) if name == "dhgq_worker_info"]
    assert len(info) == 1
    assert dict(info[0])["queues"] == "extraction,transcription,diarization,summarization,webhooks,maintenance"
    assert dict(info[0])["host"] == socket.gethostname()


def test_every_stage_job_is_a_span_with_its_phases(observed: Observed) -> None:
    spans = observed.spans
    stages = {span.span_id: span for span in spans if span.name.startswith("stage ")}
    names = sorted(span.name for span in stages.values())
    assert names == [
        "stage diarization",
        "stage extraction",
        "stage summarization",
        "stage summarization",
        "stage transcription",
    ]
    for span in stages.values():
        assert span.attributes["dhgq.source_id"] == observed.source_id
        assert span.attributes["dhgq.stage"] == span.name.removeprefix("stage ")
        assert span.attributes["dhgq.attempt"] == 1 and span.attributes["host.name"] == socket.gethostname()
        assert isinstance(span.attributes["dhgq.job_id"], int)
        assert span.resource["service.name"] == "dhgq-worker"
        phases = {child.name for child in spans if child.parent_span_id == span.span_id}
        if span.attributes.get("dhgq.outcome") == "waiting":
            assert span.attributes["dhgq.waiting_for"] == "api" and {"claim", "work"} <= phases
        else:
            assert span.attributes["dhgq.outcome"] == "completed"
            assert phases >= {"claim", "input", "complete"}
    works = [s for s in spans if s.name == "work"]
    assert all(stages[s.parent_span_id].trace_id == s.trace_id for s in spans if s.parent_span_id in stages)
    assert len(works) == 5


def test_the_dashboard_uses_only_metrics_a_worker_exports(observed: Observed) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    expressions.append(dashboard["templating"]["list"][0]["query"]["query"])
    exported = {name for name, _ in samples(observed.after)}
    used = {name for expr in expressions for name in re.findall(r"\b((?:dhgq|process)_[a-z0-9_]+)\b", expr)}
    assert len(used) >= 15
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def test_a_metrics_port_in_use_is_refused_with_what_to_do(db_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "dhgq", "worker", "--once", "--metrics-port", str(port)],
            env=worker_env(db_url, tmp_path, DHGQ_METRICS_ADDR="127.0.0.1"),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "each worker process needs its own --metrics-port" in result.stderr
