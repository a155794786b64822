"""The ledger of paid calls: every Claude request and Modal GPU call, recorded before and after it
is made (``dhgq.ledger``, see the migration 20261130000700_ledger_budgets).

Why a ledger rather than counters on the stage rows: a call is paid for whether or not its stage
completes, so it must be written down before the stage knows how it ends; the budgets read what
was spent from it; and a summary retried after a crash halfway through its chunks asks it first,
so the chunks already answered are not paid for twice (``LedgerCalls``, the summarizer's
``CallCache``). Costs are priced here, with the worker's price tables (``Settings.llm_prices``,
``Settings.gpu_prices``), when the call ends.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from dhgq.queries import query
from dhgq.settings import Settings

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from dhgq.media.summarization.summarize import Usage

logger = logging.getLogger("dhgq.ledger")


def llm_cost(settings: Settings, model: str, input_tokens: int, output_tokens: int) -> float | None:
    """USD for a Claude call, from the settings' table; None for a model it does not list."""
    for prefix, input_price, output_price in settings.llm_prices:
        if model.startswith(prefix):
            return round((input_tokens * input_price + output_tokens * output_price) / 1e6, 6)
    return None


def gpu_price_per_second(settings: Settings, gpu: str | None) -> float | None:
    """USD per second of a Modal GPU spec ("A10G", "H100!" for exactly an H100, "H100:2" for two)."""
    if not gpu:
        return None
    name, _, count = gpu.partition(":")
    name = name.rstrip("!").upper()
    for prefix, usd in settings.gpu_prices:
        if name.startswith(prefix.upper()):
            return usd * (int(count) if count.isdigit() else 1)
    return None


def gpu_cost(settings: Settings, gpu: str | None, seconds: float | None) -> float | None:
    per_second = gpu_price_per_second(settings, gpu)
    return None if per_second is None or seconds is None else round(per_second * seconds, 6)


# GPU seconds a Modal call takes per second of audio, until the ledger has measured calls of the stage
# (then their recent mean is used): generous upper bounds, so that a budget errs on the side of waiting.
# Whisper turbo on an A10G runs about 30-50x realtime (0.02-0.03), dhgq's diarizer on CUDA faster still.
GPU_SECONDS_PER_AUDIO_SECOND = {"transcription": 0.06, "diarization": 0.03}


def gpu_estimate_usd(settings: Settings, stage: str, audio_seconds: float, measured_rate: float | None = None) -> float:
    """What a Modal call of this stage on this much audio will cost: the budget's estimate before it starts."""
    rate = measured_rate if measured_rate else GPU_SECONDS_PER_AUDIO_SECOND.get(stage, 0.1)
    return gpu_cost(settings, settings.modal_gpu, audio_seconds * rate) or 0.0


def _json_default(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else str(value)


def jsonable(request: dict[str, Any]) -> dict[str, Any]:
    """A request's options as plain JSON (a SpeakerCount hint is a dataclass)."""
    return dict(json.loads(json.dumps(request, default=_json_default)))


def request_fingerprint(request: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a request (the GPU calls' counterpart of the summarizer's)."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _params(**values: Any) -> dict[str, Any]:
    """The ledger queries' parameters, every optional one defaulting to NULL."""
    base = dict.fromkeys(
        ("input_tokens", "output_tokens", "gpu_seconds", "latency_s", "cost_usd", "gpu_type", "estimated_cost_usd")
    )
    return base | values


def start_call(conn: psycopg.Connection, **row: Any) -> int:
    """Insert a 'started' row (closing an abandoned one of the same request); its id."""
    params = _params(job_id=None) | row
    params["request"] = Jsonb(params.get("request") or {})
    found = conn.execute(query("ledger_start"), params).fetchone()
    assert found is not None, "INSERT ... RETURNING returns its row"
    return int(found[0])


def finish_call(conn: psycopg.Connection, row_id: int, *, answer: dict[str, Any] | None = None, **values: Any) -> None:
    params = _params(id=row_id, response_model=None) | values | {"answer": Jsonb(answer) if answer else None}
    conn.execute(query("ledger_succeeded"), params)


def fail_call(conn: psycopg.Connection, row_id: int, error: str, **values: Any) -> None:
    conn.execute(query("ledger_failed"), _params(id=row_id) | values | {"error": error[:2000]})


# --- Claude: the summarizer's CallCache --------------------------------------------------------------


@dataclass
class LedgerCalls:
    """The summarizer's ``CallCache`` on the ledger, for one stage job of one source.

    ``get`` answers from a call that succeeded for the same source and request (fingerprint), so a
    retried or resumed summary sends only the requests that never got an answer. Database errors
    propagate: the stage then fails transiently and is retried, rather than paying unrecorded.
    """

    pool: ConnectionPool
    settings: Settings
    source_id: str
    stage: str
    job_id: int | None = None
    rows: dict[str, int] = field(default_factory=dict)  # fingerprint -> its row, while the call runs

    def get(self, fingerprint: str) -> dict[str, Any] | None:
        with self.pool.connection() as conn:
            row = conn.execute(query("ledger_answer"), {"source_id": self.source_id, "fingerprint": fingerprint})
            found = row.fetchone()
        return dict(found[0]) if found else None

    def started(self, fingerprint: str, request: dict[str, Any]) -> None:
        model = str(request.get("model") or self.settings.anthropic_model)
        estimate = llm_cost(
            self.settings, model, int(request.get("input_tokens_estimate") or 0), int(request.get("max_tokens") or 0)
        )
        with self.pool.connection() as conn:
            self.rows[fingerprint] = start_call(
                conn,
                kind="llm",
                provider="anthropic",
                model=model,
                fingerprint=fingerprint,
                source_id=self.source_id,
                stage=self.stage,
                job_id=self.job_id,
                request=request,
                estimated_cost_usd=estimate,
            )

    def finished(self, fingerprint: str, answer: dict[str, Any], usage: Usage, latency_s: float) -> None:
        model = str(answer.get("model") or self.settings.anthropic_model)
        with self.pool.connection() as conn:
            finish_call(
                conn,
                self.rows.pop(fingerprint),
                answer=answer,
                response_model=model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                latency_s=round(latency_s, 3),
                cost_usd=llm_cost(self.settings, model, usage.input_tokens, usage.output_tokens),
            )

    def failed(self, fingerprint: str, error: str, latency_s: float, usage: Usage | None = None) -> None:
        row_id = self.rows.pop(fingerprint, None)
        if row_id is None:
            return
        paid: dict[str, Any] = {}
        if usage is not None:
            cost = llm_cost(self.settings, self.settings.anthropic_model, usage.input_tokens, usage.output_tokens)
            paid = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens, "cost_usd": cost}
        with self.pool.connection() as conn:
            fail_call(conn, row_id, error, latency_s=round(latency_s, 3), **paid)


# --- Modal: GPU time, from the model host --------------------------------------------------------------


@dataclass
class GpuCall:
    """One Modal call's ledger row. The model host that makes the call has no pool: each write is a
    short connection of its own, and best effort, because a GPU call must not fail for its record
    (the stage's own commit needs the database anyway, and reports it when it is gone)."""

    settings: Settings
    stage: str
    function: str
    model: str
    source_id: str | None
    request: dict[str, Any]
    gpu_seconds: float | None = None  # set by the caller from the remote's own measure
    row_id: int | None = None
    started: float = field(default_factory=time.monotonic)

    def _write(self, what: str, write: Any) -> Any:
        from dhgq.db import connect, database_url

        try:
            url = database_url(self.settings, start=False)
            with connect(url, autocommit=True, timeout=self.settings.db_connect_timeout) as conn:
                return write(conn)
        except Exception as exc:  # noqa: BLE001 - bookkeeping never fails the GPU call it records
            logger.warning("could not record the %s of a Modal %s call in the ledger: %s", what, self.stage, exc)
            return None

    def start(self) -> None:
        gpu = self.settings.modal_gpu
        self.row_id = self._write(
            "start",
            lambda conn: start_call(
                conn,
                kind="gpu",
                provider="modal",
                model=f"{self.function}:{self.model}",
                fingerprint=request_fingerprint({"function": self.function, "model": self.model, **self.request}),
                source_id=self.source_id,
                stage=self.stage,
                request={"function": self.function, "model": self.model, **self.request},
                gpu_type=gpu,
                estimated_cost_usd=gpu_estimate_usd(self.settings, self.stage, float(self.request.get("audio_s") or 0)),
            ),
        )

    def spawned(self, call_id: str) -> None:
        """The Modal call's id, with its row: a later worker (or ``dhgq cancel``) cancels it if it is left running."""
        if self.row_id is None:
            return
        row_id = self.row_id
        self._write(
            "call id", lambda conn: conn.execute(query("ledger_remote_call"), {"id": row_id, "call_id": call_id})
        )

    def finish(self) -> None:
        if self.row_id is None:
            return
        row_id, gpu = self.row_id, self.settings.modal_gpu
        latency = round(time.monotonic() - self.started, 3)
        seconds = self.gpu_seconds
        self._write(
            "end",
            lambda conn: finish_call(
                conn,
                row_id,
                gpu_seconds=seconds,
                latency_s=latency,
                cost_usd=gpu_cost(self.settings, gpu, seconds),
                answer=None,
                response_model=self.model,
            ),
        )

    def fail(self, error: BaseException) -> None:
        if self.row_id is None:
            return
        row_id, latency = self.row_id, round(time.monotonic() - self.started, 3)
        self._write(
            "failure", lambda conn: fail_call(conn, row_id, f"{type(error).__name__}: {error}", latency_s=latency)
        )


def close_open_remote_calls(
    settings: Settings, source_id: str | None, stage: str | None, cancel: Callable[[str, str], None]
) -> int:
    """``cancel(call_id, function)`` each Modal call the ledger shows open for the source (and stage), or,
    without a source, every open call whose stage no worker runs any more (cancelled, failed, re-queued);
    then close its row as failed. Best effort, like the rest of the GPU bookkeeping: how many it closed."""
    from dhgq.db import connect, database_url

    try:
        url = database_url(settings, start=False)
        with connect(url, autocommit=True, timeout=settings.db_connect_timeout) as conn:
            if source_id is None:
                open_calls = conn.execute(query("ledger_orphaned_remote_calls")).fetchall()
            else:
                params = {"source_id": source_id, "stage": stage}
                open_calls = conn.execute(query("ledger_open_remote_calls"), params).fetchall()
            for row_id, call_id, function in open_calls:
                cancel(call_id, function or "")
                conn.execute(query("ledger_close_abandoned"), {"id": row_id})
                logger.warning("cancelled the Modal call %s that nobody waits on any more", call_id,
                               extra={"source_id": source_id, "stage": stage})  # fmt: skip
            return len(open_calls)
    except Exception as exc:  # noqa: BLE001 - bookkeeping; the next attempt, round or dhgq cancel tries again
        logger.warning("could not cancel the Modal calls left open (source %s): %s", source_id or "any", exc)
        return 0


@contextmanager
def gpu_call(
    settings: Settings, *, stage: str, source_id: str | None, function: str, model: str, **request: Any
) -> Iterator[GpuCall]:
    """Record a Modal call around its ``.remote()``: started before, succeeded or failed after.

    The caller sets ``call.gpu_seconds`` from what the remote reports before leaving the block.
    """
    call = GpuCall(settings, stage, function, model, source_id or None, jsonable(request))
    call.start()
    try:
        yield call
    except BaseException as exc:
        call.fail(exc)
        raise
    call.finish()
