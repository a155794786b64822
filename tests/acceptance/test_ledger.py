"""The ledger of paid calls, with real worker processes and the local Messages API server.

A summary long enough for four chunks fails (or its worker is killed) after two chunks were
answered; the retry sends only the requests that never got an answer. Modal GPU calls are
recorded with their seconds and cost. `dhgq cost` totals per source, batch and day match the
ledger, and `dhgq process DIR` makes a batch.
"""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import soundfile as sf
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from dhgq import gpu
from dhgq.cli import app
from dhgq.errors import TransientError
from dhgq.ledger import gpu_price_per_second, llm_cost
from dhgq.media.summarization.summarize import PRICES_PER_MTOK
from dhgq.settings import LLM_PRICES_PER_MTOK, Settings
from tests.support.fake_anthropic import DEFAULT_SUMMARY, FakeAnthropic, fake_anthropic_server
from tests.support.pipeline import rows, run_once, scalar, start_worker, wait_for, worker_env

pytestmark = pytest.mark.slow

PARTS = 4
SENTENCE = "The {topic} team measured {n} things about queues, storage and speech models today. "
TOPICS = ("database", "transcription", "diarization", "summary")
PART = re.compile(r'<transcript part="(\d+)"')


def long_transcript() -> dict[str, Any]:
    """Four segments of about 700 characters: with DHGQ_ANTHROPIC_MAX_INPUT_TOKENS=1000 (a chunk
    holds 256 tokens of text) each is a chunk of its own."""
    segments = []
    for i, topic in enumerate(TOPICS):
        text = "".join(SENTENCE.format(topic=topic, n=n) for n in range(9))[:700]
        segments.append({"start": i * 60.0, "end": i * 60.0 + 59, "text": text, "confidence": 0.9, "words": []})
        segments[-1]["speaker"] = f"SPEAKER_{i % 2 + 1}"
    text = " ".join(s["text"] for s in segments)
    return {"text": text, "language": "en", "model": "tiny.en", "engine": "faster-whisper", "segments": segments}


def summary_to_redo(db_url: str, batch: str | None = None) -> str:
    """A source with a transcript and its summarization queued, as the fan-in leaves it (no media:
    nothing else runs)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        batch_id = None
        if batch:
            batch_id = conn.execute(
                "INSERT INTO processing_batches (name) VALUES (%s) RETURNING id", (batch,)
            ).fetchone()[0]
        source_id = conn.execute(
            "INSERT INTO sources_google (name, path, mime_type, batch_id) "
            "VALUES ('long talk', '/talks/long.mp3', 'text/plain', %s) RETURNING id",
            (batch_id,),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO expert_documents (source_id, content_type, raw_content, processed_content) "
            "VALUES (%s, 'transcript', %s, %s)",
            (source_id, long_transcript()["text"], Jsonb(long_transcript())),
        )
        conn.execute("SELECT dhgq.enqueue_stage_v1(%s, 'summarization')", (source_id,))
    return str(source_id)


def part_replies(request: dict[str, Any]) -> str:
    """Short answers, so that the four parts' summaries are combined in one reduce call."""
    prompt = request["messages"][0]["content"]
    found = PART.search(prompt)
    summary = f"Part {found.group(1)}." if found else "The whole talk."
    return json.dumps({**DEFAULT_SUMMARY, "summary": summary, "key_points": [], "topics": []})


def kind_of(request: dict[str, Any]) -> str:
    found = PART.search(request["messages"][0]["content"])
    return f"part {found.group(1)}" if found else "reduce"


def claude_env(db_url: str, home: Path, fake: FakeAnthropic) -> dict[str, str]:
    return worker_env(
        db_url,
        home,
        DHGQ_ANTHROPIC_API_KEY="sk-test",
        DHGQ_ANTHROPIC_BASE_URL=fake.url,
        DHGQ_ANTHROPIC_MAX_INPUT_TOKENS="1000",
    )


def ledger(db_url: str, source_id: str) -> list[tuple]:
    return rows(
        db_url,
        """SELECT status, request->>'kind', (request->>'part')::int, input_tokens, output_tokens, cost_usd,
                  answer IS NOT NULL, error, fingerprint
             FROM dhgq.ledger WHERE source_id = %s ORDER BY id""",
        (source_id,),
    )


def assert_four_parts_paid_once(db_url: str, source_id: str) -> None:
    """Four chunk calls and one reduce succeeded, each with tokens and its cost from the price table."""
    succeeded = [row for row in ledger(db_url, source_id) if row[0] == "succeeded"]
    assert sorted((kind, part) for _, kind, part, *_ in succeeded) == [
        ("chunk", 1),
        ("chunk", 2),
        ("chunk", 3),
        ("chunk", 4),
        ("reduce", None),
    ]
    assert len({row[8] for row in succeeded}) == 5  # five different requests
    for _, _, _, tokens_in, tokens_out, cost, has_answer, _, _ in succeeded:
        assert tokens_in > 0 and tokens_out > 0 and has_answer
        assert float(cost) == pytest.approx((tokens_in * 3 + tokens_out * 15) / 1e6)
    status, method, reused, made = rows(
        db_url,
        """SELECT status, result->>'method', (result->>'reused_calls')::int, (result->>'calls')::int
             FROM dhgq.audio_processing_stages WHERE source_id = %s AND stage = 'summarization'""",
        (source_id,),
    )[0]
    assert (status, method, reused, made) == ("completed", "claude", 2, 3)
    summary = scalar(
        db_url,
        "SELECT raw_content FROM expert_documents WHERE source_id = %s AND content_type = 'summary'",
        (source_id,),
    )
    assert summary == "The whole talk."
    view = rows(
        db_url,
        "SELECT paid_calls, input_tokens, output_tokens, cost_usd FROM dhgq.costs "
        "WHERE source_id = %s AND stage = 'summarization'",
        (source_id,),
    )[0]
    assert view[0] == 5
    assert view[1:3] == (sum(r[3] for r in succeeded), sum(r[4] for r in succeeded))
    assert float(view[3]) == pytest.approx(sum(float(r[5]) for r in succeeded))


def test_a_summary_retried_after_two_of_four_chunks_sends_only_the_other_two(db_url: str, tmp_path: Path) -> None:
    source_id = summary_to_redo(db_url)
    with fake_anthropic_server() as fake:
        fake.reply = part_replies
        fake.fail(500, after=2, message="overloaded halfway")  # the third request: part 3 of 4
        run_once(claude_env(db_url, tmp_path, fake))
        sent = [kind_of(request) for request in fake.requests]
    assert sent[:3] == ["part 1", "part 2", "part 3"]  # the first attempt, failing at part 3
    assert sent[3:] == ["part 3", "part 4", "reduce"]  # the retry: two chunks, not four, then the reduce
    assert_four_parts_paid_once(db_url, source_id)
    failed = [row for row in ledger(db_url, source_id) if row[0] == "failed"]
    assert [(kind, part) for _, kind, part, *_ in failed] == [("chunk", 3)]
    assert "500" in failed[0][7] and failed[0][5] is None  # not answered: no tokens, no cost
    assert scalar(db_url, "SELECT attempts FROM dhgq.audio_processing_stages WHERE source_id = %s", (source_id,)) == 2


def test_a_worker_killed_mid_summary_is_resumed_without_asking_again(db_url: str, tmp_path: Path) -> None:
    source_id = summary_to_redo(db_url)
    with fake_anthropic_server() as fake:
        fake.reply = part_replies
        fake.hold(after=2)  # part 3 is asked and never answered: the worker is killed meanwhile
        env = claude_env(db_url, tmp_path, fake)
        worker = start_worker(env, tmp_path / "worker.log")
        try:
            wait_for(lambda: len(fake.requests) >= 3, 120, "the third request")
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        fake.release()
        run_once(env)  # finds the dead worker's job once its heartbeat is stale, and runs it again
        sent = [kind_of(request) for request in fake.requests]
    assert sent == ["part 1", "part 2", "part 3", "part 3", "part 4", "reduce"]
    assert_four_parts_paid_once(db_url, source_id)
    abandoned = [row for row in ledger(db_url, source_id) if row[0] == "failed"]
    assert len(abandoned) == 1 and "abandoned" in abandoned[0][7]
    bodies = Counter(json.dumps(request, sort_keys=True) for request in fake.requests)
    assert sorted(bodies.values()) == [1, 1, 1, 1, 2]  # part 3 twice: asked, never answered, asked again


# --- Modal GPU calls ----------------------------------------------------------------------------------


class FakeRemote:
    """modal.Cls.from_name(app, "Diarizer")() as far as ModalBackend uses it: ``spawn`` gives a
    FunctionCall whose ``get`` returns the output or raises the remote's error."""

    def __init__(self, seconds: float, error: Exception | None = None) -> None:
        self.seconds, self.error = seconds, error
        self.diarize = self
        self.transcribe = self
        self.object_id = "fc-fake"

    def __call__(self, **_: Any) -> FakeRemote:
        return self

    def spawn(self, audio: Any, *args: Any) -> FakeRemote:
        return self

    def get(self, timeout: float | None = None) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        diarization = {"turns": [{"start": 0.0, "end": 1.0, "speaker": "SPEAKER_1"}], "speakers": ["SPEAKER_1"]}
        return {"diarization": diarization, "device": "cuda:0 (fake)", "seconds": self.seconds}

    def cancel(self, terminate_containers: bool = False) -> None:
        pass


def test_modal_gpu_calls_are_recorded_with_their_seconds_and_cost(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modal
    from modal import exception as mx

    with psycopg.connect(db_url, autocommit=True) as conn:
        source_id = str(
            conn.execute(
                "INSERT INTO sources_google (name, path, mime_type) VALUES ('t', '/t.wav', 'text/plain') RETURNING id"
            ).fetchone()[0]
        )
        conn.execute(
            "INSERT INTO dhgq.audio_processing_stages (source_id, stage, status, started_at, completed_at, result) "
            "VALUES (%s, 'diarization', 'completed', now() - interval '20 seconds', now(), %s)",
            (source_id, Jsonb({"backend": "modal", "gpu": "A10G", "remote_s": 12.5, "stage_seconds": 19.0})),
        )
    wav = tmp_path / "audio" / source_id / "audio.wav"
    wav.parent.mkdir(parents=True)
    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    settings = Settings(database_url=db_url, home=tmp_path, modal_gpu="A10G")

    monkeypatch.setattr(modal.Cls, "from_name", lambda app_name, name: FakeRemote(12.5))
    audio = gpu.AudioInput(source_id, None, path=str(wav))
    diarization, info = gpu.ModalBackend(settings).diarize(audio)
    assert diarization.speakers == ["SPEAKER_1"] and info["remote_s"] == 12.5
    monkeypatch.setattr(modal.Cls, "from_name", lambda app_name, name: FakeRemote(0, mx.FunctionTimeoutError("no GPU")))
    with pytest.raises(TransientError):
        gpu.ModalBackend(settings).diarize(audio)

    recorded = rows(
        db_url,
        "SELECT kind, provider, stage, status, gpu_type, gpu_seconds, cost_usd, error "
        "FROM dhgq.ledger WHERE source_id = %s ORDER BY id",
        (source_id,),
    )
    assert recorded[0][:5] == ("gpu", "modal", "diarization", "succeeded", "A10G")
    assert float(recorded[0][5]) == pytest.approx(12.5)
    assert float(recorded[0][6]) == pytest.approx(12.5 * 0.000306)
    assert recorded[1][3] == "failed" and "no GPU" in recorded[1][7] and recorded[1][6] is None
    view = rows(
        db_url,
        "SELECT gpu_seconds::float8, gpu_type, cost_usd::float8, wall_seconds::float8 FROM dhgq.costs "
        "WHERE source_id = %s",
        (source_id,),
    )
    assert view == [(pytest.approx(12.5), "A10G", pytest.approx(12.5 * 0.000306), 19.0)]


def test_prices() -> None:
    settings = Settings()
    assert settings.llm_prices == PRICES_PER_MTOK == LLM_PRICES_PER_MTOK  # one table, two homes: kept equal
    assert llm_cost(settings, "claude-sonnet-4-5", 1_000_000, 1_000_000) == 18.0
    assert llm_cost(settings, "gpt-5", 10, 10) is None
    assert gpu_price_per_second(settings, "H100:2") == pytest.approx(2 * 0.001097)
    assert gpu_price_per_second(settings, "A100-80GB") == 0.000694
    assert gpu_price_per_second(settings, "a100") == 0.000583
    assert gpu_price_per_second(settings, "TPU") is None


# --- dhgq cost ------------------------------------------------------------------------------------------


def cost_json(db_url: str, home: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> dict[str, Any]:
    monkeypatch.setenv("DHGQ_DATABASE_URL", db_url)
    monkeypatch.setenv("DHGQ_HOME", str(home))
    result = CliRunner().invoke(app, ["cost", *args, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_cost_totals_per_source_batch_and_day_match_the_ledger(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = summary_to_redo(db_url, batch="october talks")
    with fake_anthropic_server() as fake:
        fake.reply = part_replies
        run_once(claude_env(db_url, tmp_path, fake))
    with psycopg.connect(db_url, autocommit=True) as conn:  # yesterday's GPU call of another source, no batch
        other = conn.execute(
            "INSERT INTO sources_google (name, path, mime_type) VALUES ('old', '/old.wav', 'text/plain') RETURNING id"
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO dhgq.ledger (kind, provider, model, fingerprint, source_id, stage, status, gpu_type, "
            "gpu_seconds, cost_usd, created_at) VALUES ('gpu', 'modal', 'Diarizer.diarize:pyannote', 'f', %s, "
            "'diarization', 'succeeded', 'H100', 100, 0.1097, now() - interval '1 day')",
            (other,),
        )
    ledger_total = float(scalar(db_url, "SELECT sum(cost_usd) FROM dhgq.ledger"))
    calls = scalar(db_url, "SELECT count(*) FROM dhgq.ledger WHERE status = 'succeeded'")
    assert calls == 6

    by_source = cost_json(db_url, tmp_path, monkeypatch, "--by", "source")
    assert by_source["total"]["cost_usd"] == pytest.approx(ledger_total)
    assert by_source["total"]["calls"] == 6
    assert {row["key"]: row["name"] for row in by_source["rows"]} == {first: "long talk", str(other): "old"}
    per_source = {row["key"]: row["cost_usd"] for row in by_source["rows"]}
    assert per_source[str(other)] == pytest.approx(0.1097)
    first_cost = float(scalar(db_url, "SELECT sum(cost_usd) FROM dhgq.ledger WHERE source_id = %s", (first,)))
    assert per_source[first] == pytest.approx(first_cost)

    by_batch = {row["name"]: row for row in cost_json(db_url, tmp_path, monkeypatch, "--by", "batch")["rows"]}
    assert by_batch["october talks"]["cost_usd"] == pytest.approx(first_cost)
    assert by_batch["october talks"]["calls"] == 5 and by_batch[None]["cost_usd"] == pytest.approx(0.1097)
    assert by_batch[None]["gpu_seconds"] == 100

    by_day = cost_json(db_url, tmp_path, monkeypatch, "--by", "day")
    days = scalar(
        db_url, "SELECT array_agg(DISTINCT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')) FROM dhgq.ledger"
    )
    assert sorted(row["key"] for row in by_day["rows"]) == sorted(days)
    assert by_day["rows"][0]["key"] == max(days) and by_day["rows"][0]["cost_usd"] == pytest.approx(first_cost)
    assert by_day["total"]["cost_usd"] == pytest.approx(ledger_total)
    today = cost_json(db_url, tmp_path, monkeypatch, "--by", "day", "--since", max(days))
    assert [row["key"] for row in today["rows"]] == [max(days)]
    assert today["total"]["cost_usd"] == pytest.approx(first_cost)
    assert today["total"]["wall_seconds"] > 0  # the summarization stage's own seconds

    # the same totals as a view, for SQL users
    view = {
        (per, key): (float(cost), calls)
        for per, key, cost, calls in rows(db_url, "SELECT per, key, cost_usd, calls FROM dhgq.cost_totals")
    }
    assert view[("source", first)] == (pytest.approx(first_cost), 5)
    assert view[("source", str(other))] == (pytest.approx(0.1097), 1)
    assert view[("batch", "-")] == (pytest.approx(0.1097), 1)
    assert view[("day", max(days))] == (pytest.approx(first_cost), 5)
    assert sum(cost for (per, _), (cost, _) in view.items() if per == "day") == pytest.approx(ledger_total)

    human = CliRunner().invoke(app, ["cost", "--by", "source"])
    assert human.exit_code == 0 and "total" in human.stdout, human.stderr
    assert CliRunner().invoke(app, ["cost", "--since", "yesterday"]).exit_code == 2


def test_process_makes_a_batch_per_run(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DHGQ_DATABASE_URL", db_url)
    monkeypatch.setenv("DHGQ_HOME", str(tmp_path / "home"))
    talks = tmp_path / "talks"
    talks.mkdir()
    (talks / "a.mp4").write_bytes(b"video a")
    (talks / "b.wav").write_bytes(b"audio b")
    result = CliRunner().invoke(app, ["process", str(talks), "--json"])
    assert result.exit_code == 0, result.stderr
    batch_id = json.loads(result.stdout)["batch_id"]
    assert rows(db_url, "SELECT name, total_files, status FROM processing_batches WHERE id = %s", (batch_id,)) == [
        (str(talks), 2, "processing")
    ]
    assert scalar(db_url, "SELECT count(*) FROM sources_google WHERE batch_id = %s", (batch_id,)) == 2
    again = CliRunner().invoke(app, ["process", str(talks), "--json"])  # nothing new: no empty batch
    assert json.loads(again.stdout)["batch_id"] is None
    assert scalar(db_url, "SELECT count(*) FROM processing_batches") == 1


class CancelledCalls:
    """modal.FunctionCall.from_id as far as dhgq cancels left-open calls: the call's ``cancel``, recorded."""

    def __init__(self) -> None:
        self.cancelled: list[tuple[str, bool]] = []

    def from_id(self, call_id: str, *args: Any, **kwargs: Any) -> Any:
        outer = self

        class Call:
            object_id = call_id

            def cancel(self, terminate_containers: bool = False) -> None:
                outer.cancelled.append((call_id, terminate_containers))

        return Call()


def left_open(db_url: str, source_id: str, stage: str, call_id: str, function: str, age: str = "0 seconds") -> int:
    """A GPU call's ledger row as a worker killed mid-call leaves it: started, spawned, never finished."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO dhgq.ledger (kind, provider, model, fingerprint, source_id, stage, request, remote_call_id, "
            "created_at) VALUES ('gpu', 'modal', %s, %s, %s, %s, %s, %s, now() - %s::interval) RETURNING id",
            (f"{function}:local", call_id, source_id, stage, Jsonb({"function": function}), call_id, age),
        ).fetchone()
    return int(row[0])


def test_calls_a_stopped_worker_left_running_are_cancelled(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modal

    source_id = str(scalar(db_url, "INSERT INTO sources_google (name, path) VALUES ('t', '/t.wav') RETURNING id"))
    recorder = CancelledCalls()
    monkeypatch.setattr(modal.FunctionCall, "from_id", recorder.from_id)
    monkeypatch.setattr(modal.Cls, "from_name", lambda app_name, name: FakeRemote(3.0))
    settings = Settings(database_url=db_url, home=tmp_path, modal_gpu="A10G")
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)

    # the next attempt of the stage cancels what the killed worker's attempt left running, then spawns its own
    earlier = left_open(db_url, source_id, "diarization", "fc-killed-worker", "Diarizer.diarize")
    gpu.ModalBackend(settings).diarize(gpu.AudioInput(source_id, 1.0, path=str(wav)))
    assert recorder.cancelled == [("fc-killed-worker", True)]
    ledger_rows = dict(
        rows(db_url, "SELECT remote_call_id, status FROM dhgq.ledger WHERE source_id = %s", (source_id,))
    )
    assert ledger_rows == {"fc-killed-worker": "failed", "fc-fake": "succeeded"}  # the new call's id is recorded
    error = scalar(db_url, "SELECT error FROM dhgq.ledger WHERE id = %s", (earlier,))
    assert "stopped before it ended" in error

    # dhgq cancel: the source's open calls, a coordinator gently (it cancels its own chunk calls)
    left_open(db_url, source_id, "transcription", "fc-coordinator", "transcribe_long")
    monkeypatch.setenv("DHGQ_DATABASE_URL", db_url)
    monkeypatch.setenv("DHGQ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
    result = CliRunner().invoke(app, ["cancel", source_id])
    assert result.exit_code == 0, result.stderr
    assert recorder.cancelled[-1] == ("fc-coordinator", False) and "1 Modal call" in result.stderr

    # the workers' recovery round: open calls whose stage nobody runs any more, a minute old
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO dhgq.audio_processing_stages (source_id, stage, status) VALUES (%s, 'transcription', "
            "'failed') ON CONFLICT (source_id, stage) DO UPDATE SET status = 'failed'",
            (source_id,),
        )
    left_open(db_url, source_id, "transcription", "fc-orphan", "Transcriber.transcribe", age="2 minutes")
    left_open(db_url, source_id, "transcription", "fc-just-spawned", "Transcriber.transcribe")
    assert gpu.cancel_open_calls(settings, None) == 1
    assert recorder.cancelled[-1] == ("fc-orphan", True)
