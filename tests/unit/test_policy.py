"""The retry policy (pipeline/app/policy.py): a budget of attempts without progress, a ceiling."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pipeline.app.policy import Decision, decide, metered, record_progress
from pipeline.domain.models import Stage
from pipeline.errors import EmptyDocument, LockUnavailable, TransientError
from pipeline.settings import Settings

STAGE = Stage.ENTITY_EXTRACTION


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "max_retries": 5,
        "max_task_attempts": 40,
        "retry_backoff_base_s": 2.0,
        "retry_backoff_max_s": 60.0,
    }
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]


def attempts_until_the_end(
    s: Settings, progress: list[bool], exc: BaseException | None = None
) -> list[Decision]:
    """Every attempt fails with `exc`; attempt i progressed when progress[i] (default False)."""
    decisions: list[Decision] = []
    stalled = 0
    for attempt in range(10_000):
        progressed = progress[attempt] if attempt < len(progress) else False
        decision = decide(
            STAGE,
            exc or TransientError("503 Service Unavailable"),
            attempt=attempt,
            stalled=stalled,
            progressed=progressed,
            settings=s,
            rng=random.Random(attempt),
        )
        decisions.append(decision)
        if decision.action != "retry":
            return decisions
        stalled = decision.stalled
    raise AssertionError("the policy never stopped")


def test_a_call_that_never_succeeds_is_dead_lettered_after_max_retries() -> None:
    decisions = attempts_until_the_end(settings(), progress=[])

    assert [d.action for d in decisions] == ["retry"] * 5 + ["dead_letter"]
    assert decisions[-1].error == (
        "entity_extraction: 503 Service Unavailable (gave up after 5 retries without progress)"
    )


def test_attempts_that_progress_do_not_spend_the_budget() -> None:
    # 30 failed attempts, each of which kept some chunks (a long document under 3 % errors).
    decisions = attempts_until_the_end(settings(), progress=[True] * 30)

    assert [d.action for d in decisions[:30]] == ["retry"] * 30
    assert {d.stalled for d in decisions[:30]} == {0}
    # Once the attempts stop progressing, the usual budget of 5 retries applies.
    assert len(decisions) == 36
    assert decisions[-1].action == "dead_letter"
    assert "gave up after 35 retries, the last 5 without progress" in decisions[-1].error


def test_progress_restarts_the_backoff() -> None:
    s = settings(retry_backoff_base_s=2.0)
    decisions = attempts_until_the_end(s, progress=[False, False, False, True, False])

    countdowns = [d.countdown for d in decisions[:5]]
    # Steps 2, 4, 8 s (jitter 50-100 %), then back to 2 s after the attempt that progressed.
    assert 1.0 <= countdowns[0] <= 2.0
    assert 2.0 <= countdowns[1] <= 4.0
    assert 4.0 <= countdowns[2] <= 8.0
    assert 1.0 <= countdowns[3] <= 2.0
    assert 1.0 <= countdowns[4] <= 2.0
    assert [d.stalled for d in decisions[:5]] == [1, 2, 3, 0, 1]


def test_the_ceiling_bounds_attempts_that_always_progress() -> None:
    decisions = attempts_until_the_end(settings(max_task_attempts=12), progress=[True] * 100)

    assert len(decisions) == 12
    assert decisions[-1].action == "dead_letter"
    assert "the ceiling of 12 attempts" in decisions[-1].error


def test_a_permanent_error_fails_at_once_whatever_the_budget() -> None:
    [decision] = attempts_until_the_end(settings(), progress=[True], exc=EmptyDocument("no text"))

    assert decision.action == "fail"
    assert decision.error == "entity_extraction: no text"


def test_an_error_the_caller_does_not_call_retryable_fails() -> None:
    decision = decide(
        STAGE,
        ValueError("boom"),
        attempt=0,
        stalled=0,
        progressed=False,
        settings=settings(),
    )

    assert decision.action == "fail"
    assert decision.error == "entity_extraction: unexpected ValueError: boom"


def test_retry_after_is_honoured_and_the_error_text_redacts_urls() -> None:
    exc = TransientError("429 from https://user:s3cret@api.example/v1", retry_after=30.0)

    decision = decide(STAGE, exc, attempt=0, stalled=0, progressed=False, settings=settings())

    assert decision.action == "retry"
    assert decision.countdown >= 30.0
    assert "s3cret" not in decision.error


def test_a_busy_lock_is_retried_like_any_transient_error() -> None:
    decisions = attempts_until_the_end(settings(max_retries=1), [], exc=LockUnavailable("held"))

    assert [d.action for d in decisions] == ["retry", "dead_letter"]


def test_the_meter_counts_what_the_stage_reported_even_when_the_attempt_raised() -> None:
    with pytest.raises(TransientError), metered() as meter:
        record_progress()
        record_progress(2)
        raise TransientError("503")

    assert meter.units == 3 and meter.progressed
    record_progress()  # outside an attempt: nobody listens, nothing breaks
    assert meter.units == 3


def test_nested_attempts_have_their_own_meter() -> None:
    with metered() as outer:
        record_progress()
        with metered() as inner:
            pass  # an eager retry runs inside its predecessor's handler
        record_progress()

    assert (outer.units, inner.units) == (2, 0)
    assert not inner.progressed


def test_the_ceiling_must_exceed_the_budget() -> None:
    with pytest.raises(ValueError, match="max_task_attempts"):
        settings(max_retries=5, max_task_attempts=5)
