"""The error hierarchy: every failure a stage can have is transient (retried) or permanent.

A stage row stores ``error`` (a readable sentence naming the file and the reason) and
``error_class``; the class decides whether Procrastinate retries the job or it goes to the
dead-letter view.
"""

from __future__ import annotations

from typing import Any, Literal

from dhgq.redact import redact

ErrorClass = Literal["transient", "permanent", "cancelled"]


class DhgqError(Exception):
    """Something went wrong in dhgq."""

    error_class: ErrorClass = "permanent"

    def __init__(
        self,
        message: str | None = None,
        *,
        source_id: str | None = None,
        stage: str | None = None,
        file: str | None = None,
    ) -> None:
        # redacted here, so that no stage row, log line or CLI message shows a signed URL's token
        self.message = redact(message or (self.__doc__ or "").strip())
        self.source_id = source_id
        self.stage = stage
        self.file = redact(file) if file else file
        super().__init__(self.message)

    def __reduce__(self) -> tuple:
        # Keep the context when the error crosses a process boundary (the model host's pipe).
        return (_rebuild, (type(self), self.message, self.source_id, self.stage, self.file))

    def with_context(
        self, *, source_id: str | None = None, stage: str | None = None, file: str | None = None
    ) -> DhgqError:
        """Fill in context that the raising code did not know (it stays if already set)."""
        self.source_id = self.source_id or source_id
        self.stage = self.stage or stage
        self.file = self.file or (redact(file) if file else file)
        return self

    def __str__(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in (("source", self.source_id), ("stage", self.stage)) if v)
        return f"{self.message} [{where}]" if where else self.message


def _rebuild(
    cls: type[DhgqError], message: str, source_id: str | None, stage: str | None, file: str | None
) -> DhgqError:
    return cls(message, source_id=source_id, stage=stage, file=file)


class TransientError(DhgqError):
    """A temporary failure (network, timeout, rate limit, GPU service unavailable); retried."""

    error_class: ErrorClass = "transient"


class ApiBusy(TransientError):
    """A paid API asked to wait: a rate limit (429) or overload (529) with Retry-After."""

    error_class: ErrorClass = "transient"

    def __init__(self, message: str | None = None, *, retry_after: float, api: str = "the API", **context: Any) -> None:
        super().__init__(message, **context)
        self.retry_after = retry_after  # seconds, as the API said (Retry-After, or Anthropic's retry-after-ms)
        self.api = api

    def __reduce__(self) -> tuple:
        return (_rebuild_busy, (self.message, self.retry_after, self.api))


def _rebuild_busy(message: str, retry_after: float, api: str) -> ApiBusy:
    return ApiBusy(message, retry_after=retry_after, api=api)


class PermanentError(DhgqError):
    """A failure that retrying cannot fix (bad input, missing file, refused request)."""

    error_class: ErrorClass = "permanent"


class ConfigurationError(PermanentError):
    """dhgq is not configured for what was asked."""


class ArtifactMissing(PermanentError):
    """An artifact a stage needs is gone from the artifact store, or its bytes are not the ones recorded:
    its stage must make it again. The failure clears the source's extracted audio, so that a retry
    re-runs extraction first."""


class DatabaseUnavailable(TransientError):
    """The database cannot be reached."""


class StageTimeout(TransientError):
    """A stage ran past its time limit and was stopped."""


class StageCancelled(DhgqError):
    """The stage was cancelled while it ran: its model process was stopped, nothing is retried."""

    error_class: ErrorClass = "cancelled"


def classify(exc: BaseException) -> ErrorClass:
    """The error class of any exception: dhgq's own say so; unknown ones count as transient."""
    if isinstance(exc, DhgqError):
        return exc.error_class
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError, ValueError)):
        return "permanent"
    return "transient"
