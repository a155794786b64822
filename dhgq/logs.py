"""Structured logs: every record carries the job and source ids it is about, as text or JSON."""

from __future__ import annotations

import json
import logging
import sys

from dhgq.settings import Settings

CONTEXT_FIELDS = ("source_id", "stage", "job_id", "attempt", "queue")


class ContextFormatter(logging.Formatter):
    """``time level logger message key=value...`` with the context fields a record has."""

    def __init__(self, as_json: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        context = {k: getattr(record, k) for k in CONTEXT_FIELDS if getattr(record, k, None) is not None}
        if self.as_json:
            return json.dumps(
                {
                    "time": self.formatTime(record),
                    "level": record.levelname,
                    "logger": record.name,
                    "message": record.getMessage(),
                    **context,
                },
                default=str,
            )
        line = super().format(record)
        return line + "".join(f" {k}={v}" for k, v in context.items())


def configure(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ContextFormatter(settings.log_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    logging.getLogger("procrastinate").setLevel(max(logging.WARNING, root.level))
