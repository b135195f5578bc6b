"""Virtual time: the `Clock` port and a shared rate limiter that never wait for real."""

from __future__ import annotations

import bisect

from pipeline.errors import RateLimited


class VirtualClock:
    """`Clock` whose `sleep` advances a cursor instead of waiting.

    The scheduler sets the cursor to a task's start time, runs the task, and
    reads the cursor back: the task's duration is the virtual time it slept.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self.slept = 0.0

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds
            self.slept += seconds

    def set(self, now: float) -> None:
        self._now = now


class VirtualRateLimiter:
    """The shared LLM sliding window (`RateLimiter` port) on virtual time.

    Tasks run atomically at their start time, so calls can be recorded out of
    time order; a call stamped later than `now` still counts (a conservative
    reservation), which keeps the window from being exceeded.
    """

    def __init__(self, clock: VirtualClock, *, limit: int, window_seconds: float) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window_seconds
        self._calls: dict[str, list[float]] = {}

    def prune(self, name: str, before: float) -> None:
        """Forget calls at or before `before` (only safe with the scheduler's current time)."""
        calls = self._calls.setdefault(name, [])
        del calls[: bisect.bisect_right(calls, before)]

    def next_slot(self, name: str, now: float) -> float:
        """The earliest time >= now at which a call fits in the window."""
        calls = self._calls.setdefault(name, [])
        first = bisect.bisect_right(calls, now - self._window)
        if len(calls) - first < self._limit:
            return now
        # The window holds `limit` calls: the call `limit` places back must leave it.
        return calls[len(calls) - self._limit] + self._window

    def record(self, name: str, at: float) -> None:
        bisect.insort(self._calls.setdefault(name, []), at)

    def acquire(self, name: str) -> None:
        now = self._clock.now()
        slot = self.next_slot(name, now)
        if slot > now:
            raise RateLimited(
                f"rate limit of {self._limit} calls per {self._window:g}s reached for {name}",
                retry_after=slot - now,
            )
        self.record(name, now)
