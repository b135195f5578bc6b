"""Virtual time: the `Clock` port and a shared rate limiter that never wait for real."""

from __future__ import annotations

import bisect
import math

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

    Counts requests and, with `token_limit` > 0, the tokens each reserves, as
    `pipeline.adapters.redis_features.RedisRateLimiter` does. Tasks run
    atomically at their start time, so calls can be recorded out of time
    order; a call stamped later than `now` still counts (a conservative
    reservation), which keeps the window from being exceeded.
    """

    def __init__(
        self,
        clock: VirtualClock,
        *,
        limit: int,
        window_seconds: float,
        token_limit: int = 0,
    ) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window_seconds
        self._token_limit = token_limit
        #: Per name: (time, tokens) of each call, in time order.
        self._calls: dict[str, list[tuple[float, int]]] = {}

    def prune(self, name: str, before: float) -> None:
        """Forget calls at or before `before` (only safe with the scheduler's current time)."""
        calls = self._calls.setdefault(name, [])
        del calls[: bisect.bisect_right(calls, (before, math.inf))]

    def _reserved(self, tokens: int) -> int:
        if self._token_limit > 0:
            return min(max(0, tokens), self._token_limit)
        return max(0, tokens)

    def next_slot(self, name: str, now: float, tokens: int = 0) -> float:
        """The earliest time >= now at which a call of `tokens` fits in the window."""
        calls = self._calls.setdefault(name, [])
        first = bisect.bisect_right(calls, (now - self._window, math.inf))
        live = calls[first:]
        slot = now
        if len(live) >= self._limit:
            # The window holds `limit` calls: the call `limit` places back must leave it.
            slot = max(slot, live[len(live) - self._limit][0] + self._window)
        if self._token_limit > 0:
            excess = sum(t for _, t in live) + self._reserved(tokens) - self._token_limit
            for at, used in live:
                if excess <= 0:
                    break
                excess -= used
                slot = max(slot, at + self._window)
        return slot

    def record(self, name: str, at: float, tokens: int = 0) -> None:
        bisect.insort(self._calls.setdefault(name, []), (at, self._reserved(tokens)))

    def acquire(self, name: str, tokens: int = 0) -> None:
        now = self._clock.now()
        slot = self.next_slot(name, now, tokens)
        if slot > now:
            raise RateLimited(
                f"rate limit of {self._limit} calls per {self._window:g}s reached for {name}",
                retry_after=slot - now,
            )
        self.record(name, now, tokens)
