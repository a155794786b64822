"""Structured logs: every record carries the job and source ids it is about, as text or JSON.

Every line is redacted (``dhgq.redact``) on its way out: a signed URL, a callback URL's query or
credentials, an Authorization header or a JWT never reaches the log, whoever logged it (httpx
logs each request's URL at INFO; it is kept at WARNING besides).
"""

from __future__ import annotations

import json
import logging
import sys

from dhgq.errors import DhgqError
from dhgq.redact import redact
from dhgq.settings import Settings

CONTEXT_FIELDS = ("source_id", "stage", "job_id", "attempt", "queue", "request_id", "outcome")
QUIET_LOGGERS = ("procrastinate", "httpx", "httpcore")  # at WARNING at least: their INFO is per request


class ContextFormatter(logging.Formatter):
    """``time level logger message key=value...`` with the context fields a record has."""

    def __init__(self, as_json: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        context = {k: getattr(record, k) for k in CONTEXT_FIELDS if getattr(record, k, None) is not None}
        if self.as_json:
            document = {
                "time": self.formatTime(record),
                "level": record.levelname,
                "logger": record.name,
                "message": redact(record.getMessage()),
                **{k: redact(v) if isinstance(v, str) else v for k, v in context.items()},
            }
            if record.exc_info:
                document["exception"] = redact(self.formatException(record.exc_info))
            return json.dumps(document, default=str)
        line = super().format(record)
        return redact(line + "".join(f" {k}={v}" for k, v in context.items()))


class ClassifiedFailures(logging.Filter):
    """A stage failure dhgq classified (a DhgqError: permanent, transient, cancelled) is one line: the pipeline
    logged it with its source, stage and reason, and Procrastinate's "Job ... ended with status: Error" then
    only needs the reason, not forty lines of traceback through Procrastinate and asgiref. An exception
    dhgq did not expect keeps its traceback: that one is a bug to read."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, DhgqError):
            record.msg = f"{record.getMessage()}: {exc.error_class}: {exc.message}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def configure(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ClassifiedFailures())
    handler.setFormatter(ContextFormatter(settings.log_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
