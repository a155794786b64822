"""Webhook delivery: the job a request's end queues (dhgq.webhook_enqueue_v1), one per outcome.

The delivery row (``dhgq.webhook_deliveries``) is claimed before each attempt: a delivery that
went through is never sent again, whoever runs its job again. What happened is written back on
the row (and shows on the request: callback_status, callback_error, callback_next_attempt_at); a
transient failure is re-raised for Procrastinate to retry after the next wait of Settings'
webhook_retry_schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: about a day and a half in all),
a permanent one, or the last, is re-raised to fail the job. ``dhgq webhooks redeliver`` and the
users' ``dhgq_redeliver_webhook_v1`` queue a finished delivery again.

An attempt holds its slot for at most Settings' webhook_timeout (a hard deadline on the whole
exchange), so a slow receiver cannot starve the queue.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import procrastinate
import psycopg
from procrastinate import JobContext
from psycopg.rows import dict_row

from dhgq import webhooks
from dhgq.app import app
from dhgq.errors import DhgqError, PermanentError, TransientError, classify
from dhgq.queries import query
from dhgq.redact import redact
from dhgq.settings import Settings
from dhgq.stage import Resources

logger = logging.getLogger("dhgq.webhook")

QUEUE: Final = "webhooks"
TASK = "dhgq.webhook"
CONCURRENCY = 4  # slots of a worker's webhooks queue: each only waits on a receiver, webhook_timeout at most


class ScheduledRetry(procrastinate.BaseRetryStrategy):
    """Retry a TransientError after the next wait of a fixed schedule, then give up (Standard Webhooks' way)."""

    def __init__(self, schedule: tuple[float, ...]) -> None:
        self.schedule = schedule

    def get_retry_decision(
        self, *, exception: BaseException, job: procrastinate.jobs.Job
    ) -> procrastinate.RetryDecision | None:
        wait = retry_in(self.schedule, job.attempts + 1) if isinstance(exception, TransientError) else None
        if wait is None:
            return None
        return procrastinate.RetryDecision(retry_at=datetime.now(UTC) + timedelta(seconds=wait))


def retry_in(schedule: tuple[float, ...], attempt: int) -> float | None:
    """Seconds until the run after ``attempt`` (1 for the first), None when ``attempt`` was the last."""
    return schedule[attempt - 1] if attempt <= len(schedule) else None


def retry_strategy(settings: Settings) -> procrastinate.BaseRetryStrategy:
    return ScheduledRetry(settings.webhook_retry_schedule)


def configure_retries(bound: procrastinate.App, settings: Settings) -> None:
    """Give the webhook task its own strategy; call it after ``dhgq.app.configure_retries``, which sets every task's."""
    bound.tasks[TASK].retry_strategy = retry_strategy(settings)


@app.task(name=TASK, queue=QUEUE, pass_context=True)
def webhook(context: JobContext, request_id: str, outcome: str) -> None:
    resources, attempt = _job_of(context)
    deliver(resources, request_id, outcome, attempt)


def _job_of(context: JobContext) -> tuple[Resources, int]:
    """The worker's shared resources and this run's attempt (1 for the first), from Procrastinate's context."""
    assert context.job is not None
    resources: Any = context.additional_context["dhgq"]
    return resources, context.job.attempts + 1


def deliver(resources: Resources, request_id: str, outcome: str, attempt: int) -> None:
    """Send one delivery unless it went through already, and record what happened."""
    log = {"request_id": request_id, "outcome": outcome, "attempt": attempt}
    delivery = _claim(resources, request_id, outcome)
    if delivery is None:
        logger.info("webhook: nothing to do (delivered already, or the request is gone)", extra=log)
        return
    try:
        response_status = webhooks.deliver(delivery, resources.settings)
    except Exception as exc:
        message = _record_failure(resources, delivery, exc, attempt, log)
        if isinstance(exc, DhgqError):
            raise
        # in the form Procrastinate acts on: only TransientError is retried
        raise (TransientError if classify(exc) == "transient" else PermanentError)(message) from exc
    _record(
        resources,
        "webhook_delivered",
        {"request_id": request_id, "outcome": outcome, "response_status": response_status},
    )
    logger.info("webhook delivered (HTTP %s)", response_status, extra=log)


def _claim(resources: Resources, request_id: str, outcome: str) -> webhooks.Delivery | None:
    with resources.pool.connection() as conn:
        row = (
            conn.cursor(row_factory=dict_row)
            .execute(query("claim_webhook"), {"request_id": request_id, "outcome": outcome})
            .fetchone()
        )
    if row is None:
        return None
    return webhooks.Delivery(
        str(row["request_id"]),
        row["outcome"],
        row["url"],
        row["event"],
        signer=row["signer"],
        owner_secrets=tuple(row["owner_secrets"] or ()),
    )


def _record_failure(
    resources: Resources, delivery: webhooks.Delivery, exc: Exception, attempt: int, log: dict[str, Any]
) -> str:
    """Write the failure on the delivery row: 'retrying' while Procrastinate will try again, else 'failed'."""
    wait = retry_in(resources.settings.webhook_retry_schedule, attempt)
    will_retry = classify(exc) == "transient" and wait is not None
    message = exc.message if isinstance(exc, DhgqError) else redact(f"{type(exc).__name__}: {exc}")
    _record(
        resources,
        "webhook_failed",
        {
            "request_id": delivery.request_id,
            "outcome": delivery.outcome,
            "will_retry": will_retry,
            "retry_in": wait or 0.0,
            "response_status": webhooks.response_status_of(exc),
            "error": message,
        },
    )
    logger.warning("webhook failed (%s): %s", "will retry" if will_retry else "final", message, extra=log)
    return message


def _record(resources: Resources, name: str, params: dict[str, Any]) -> None:
    try:
        with resources.pool.connection() as conn:
            conn.execute(query(name), params)
    except psycopg.Error as exc:
        logger.warning("could not record the webhook delivery: %s", exc, extra={"request_id": params["request_id"]})
