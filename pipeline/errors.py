"""Error vocabulary shared by stages, adapters and tasks.

Adapters translate vendor errors into these two families; the task layer
retries `TransientError` with backoff and fails `PermanentError` at once.
"""

from __future__ import annotations

from pipeline.redaction import redact


class PipelineError(Exception):
    """Base class for every error the pipeline raises on purpose.

    Adapters build these from vendor exception text, so this constructor is where
    that text enters docpipe's messages: it is redacted here, once, for every
    adapter (URL passwords and every secret setting; pipeline.redaction).
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(redact(str(message)), *args)


class TransientError(PipelineError):
    """Worth retrying: throttling, timeouts, connection errors, a busy lock."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(PipelineError):
    """Retrying cannot help: bad input, unsupported type, auth or request errors."""


class UnsupportedFileType(PermanentError):
    """The file's extension or content is not one the pipeline can read."""


class CorruptDocument(PermanentError):
    """The file claims a type but its bytes cannot be parsed as that type."""


class EmptyDocument(PermanentError):
    """The file (or the text extracted from it) is empty."""


class DocumentTooLarge(PermanentError):
    """The file, or what it expands to, exceeds a configured limit."""

    @classmethod
    def over_limit(cls, found: str, setting: str, limit: float, unit: str) -> DocumentTooLarge:
        """'<found>; the limit is <limit> <unit> (raise DOCPIPE_<SETTING> to accept it)'.

        `setting` is the Settings field; naming its variable tells the user the one
        thing to change when the document is legitimate.
        """
        shown = f"{limit:,}" if isinstance(limit, int) else f"{limit:,g}"
        return cls(
            f"{found}; the limit is {shown} {unit} (raise DOCPIPE_{setting.upper()} to accept it)"
        )


class MalformedResponse(TransientError):
    """A service answered with something we cannot parse (e.g. bad LLM JSON).

    Retried first (models are not deterministic); the task layer turns it into
    a permanent failure once retries run out - never into an empty result.
    """


class LockUnavailable(TransientError):
    """Another worker holds the per-document-and-stage lock."""


class RateLimited(TransientError):
    """A shared rate limit refused the call (or could not be checked)."""


class StaleDelivery(PipelineError):
    """A stage delivery lost its claim on the document: a later delivery or stage took it.

    Neither transient nor permanent: the write is discarded, nothing is
    retried and the document is not failed (the delivery that took over
    carries it on).
    """


class UserFacingError(PipelineError):
    """Stops a command with a short message and exit code 2, never a traceback.

    Usage, configuration and connection problems: what the user must fix
    before anything can run. The CLI renders them in one place (pipeline.cli).
    `hint` says what to check; messages carry redacted URLs only.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigurationError(UserFacingError):
    """Settings are missing or contradictory; a usage error, exit code 2."""


class ServiceUnavailable(UserFacingError):
    """A service the command needs (database, Redis, S3) cannot be reached or used."""
