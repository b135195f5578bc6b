"""The retry policy: one pure decision shared by the Celery tasks, the simulator and the monolith.

After a failed attempt of one stage of one document the caller asks `decide`
what to do: retry after a countdown, dead-letter, or fail at once. The budget
(`max_retries`) bounds attempts in a row WITHOUT progress, not attempts: a
stage that made durable progress (entity extraction caches each chunk's
answer) restarts the count and its backoff, so a 600-chunk document under a
few per cent of transient LLM errors completes, while a call that keeps
failing is dead-lettered after `max_retries` retries as before. An absolute
ceiling (`max_task_attempts`) bounds attempts with progress too.

No Celery, Redis or I/O here: callers classify what is worth retrying
(`retryable`), carry `stalled` with the retried message, and run each attempt
under `metered()`; a stage calls `record_progress()` whenever it has kept a
unit of work (a chunk's answer cached), so the caller knows, even when the
attempt raised, whether it progressed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from pipeline.domain.models import Stage
from pipeline.errors import PermanentError, TransientError
from pipeline.redaction import redact
from pipeline.settings import Settings

Action = Literal["retry", "dead_letter", "fail"]


@dataclass(frozen=True)
class Decision:
    """What to do after a failed attempt, and the text to store if it is the end."""

    action: Action
    #: The readable error (stage, kind, reason; secrets redacted); for a dead letter it
    #: says how many retries were spent.
    error: str
    #: Seconds before the retry runs (action "retry").
    countdown: float = 0.0
    #: Attempts in a row without progress, this one included: travels with the retry.
    stalled: int = 0


def redelivered_too_often(retries: int) -> str:
    """Why a delivery counted past `max_redeliveries` is dead-lettered.

    Its earlier deliveries never finished: the worker process died under them
    (out of memory, a crash in a native parser, SIGKILL), or the hard time
    limit killed them. Either way Celery put the message back.
    """
    return (
        f"worker lost too many times: killed, or past the hard time limit, on every "
        f"delivery (gave up after {retries} retries)"
    )


def readable(stage: Stage, exc: BaseException) -> str:
    """The error message stored on the row: stage, kind and reason, secrets redacted."""
    if isinstance(exc, PermanentError | TransientError):
        message = str(exc) or type(exc).__name__
    else:
        message = f"unexpected {type(exc).__name__}: {exc}"
    # Unexpected exceptions carry vendor text that no adapter translated: redact it all.
    return redact(f"{stage}: {message}")[:2000]


def retry_countdown(
    settings: Settings,
    retries: int,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff with jitter (50-100 % of the step), capped; honours Retry-After.

    `retries` is the exponent: attempts without progress before this one.
    `rng` makes the jitter reproducible (the simulator passes a seeded one).
    """
    step = min(settings.retry_backoff_max_s, settings.retry_backoff_base_s * 2.0**retries)
    countdown: float = step * (rng or random).uniform(0.5, 1.0)
    if retry_after is not None:
        countdown = max(countdown, retry_after)
    return min(countdown, settings.retry_backoff_max_s)


@dataclass
class ProgressMeter:
    """Units of work one attempt kept durably (stage code reports them)."""

    units: int = 0

    @property
    def progressed(self) -> bool:
        return self.units > 0


#: The meter of the attempt running in this thread / greenlet / task, if any.
_current_meter: ContextVar[ProgressMeter | None] = ContextVar("docpipe_progress", default=None)


@contextmanager
def metered() -> Iterator[ProgressMeter]:
    """Run one attempt under a fresh meter; read it after the attempt, raised or not."""
    meter = ProgressMeter()
    token = _current_meter.set(meter)
    try:
        yield meter
    finally:
        _current_meter.reset(token)


def record_progress(units: int = 1) -> None:
    """A stage kept `units` of work that a retry will not redo; outside an attempt, a no-op."""
    meter = _current_meter.get()
    if meter is not None:
        meter.units += units


def decide(
    stage: Stage,
    exc: BaseException,
    *,
    attempt: int,
    stalled: int,
    progressed: bool,
    settings: Settings,
    retryable: tuple[type[BaseException], ...] = (TransientError,),
    rng: random.Random | None = None,
) -> Decision:
    """Retry, dead-letter or fail after attempt number `attempt` (0 = the first) raised `exc`.

    `stalled` counts the attempts in a row without progress before this one
    (it came with the message); `progressed` says whether this attempt made
    durable progress. A retry's backoff grows with the attempts without
    progress only, so it restarts after progress.
    """
    error = readable(stage, exc)
    if not isinstance(exc, retryable):
        return Decision("fail", error)
    stalled_now = 0 if progressed else stalled + 1
    retries = attempt  # retries already spent before this attempt
    if stalled_now > settings.max_retries:
        if retries == stalled_now - 1:  # no attempt ever progressed
            gave_up = f"gave up after {retries} retries without progress"
        else:
            gave_up = (
                f"gave up after {retries} retries, the last {stalled_now - 1} without progress"
            )
        return Decision("dead_letter", f"{error} ({gave_up})", stalled=stalled_now)
    if attempt + 1 >= settings.max_task_attempts:
        gave_up = (
            f"gave up after {retries} retries: the ceiling of {settings.max_task_attempts} attempts"
        )
        return Decision("dead_letter", f"{error} ({gave_up})", stalled=stalled_now)
    retry_after = exc.retry_after if isinstance(exc, TransientError) else None
    countdown = retry_countdown(settings, max(stalled_now - 1, 0), retry_after, rng)
    return Decision("retry", error, countdown=countdown, stalled=stalled_now)
