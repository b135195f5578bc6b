"""Clocks implementing the `Clock` port, for tests that must not wait for real.

`ManualClock` is the one to reach for: time moves only when the code under test
sleeps on it or the test advances it, and every sleep is recorded. The
simulator's `VirtualClock` and the production `SystemClock` are re-exported so
a test names every clock from one place.
"""

from __future__ import annotations

import threading

from pipeline.adapters.clock import SystemClock
from pipeline.harness.simulation.clock import VirtualClock
from pipeline.ports import Clock

__all__ = ["Clock", "ManualClock", "SteppingClock", "SystemClock", "VirtualClock"]

#: A plausible epoch instant (November 2023), for code that stores timestamps.
EPOCH_2023 = 1_700_000_000.0


class ManualClock:
    """`Clock` on manual time: `sleep` and `advance` move it, nothing waits.

    `sleeps` records every `sleep` call (zero and negative ones too), so a test
    can assert what the code under test waited. With `tick`, every `now()`
    reading first moves on by `tick` seconds: distinct, ordered timestamps for
    code that orders rows by time. Thread-safe (one lock), so stores shared by
    threads can use it.
    """

    def __init__(self, start: float = 0.0, *, tick: float = 0.0) -> None:
        if tick < 0:
            raise ValueError("tick must not be negative")
        self._now = start
        self._tick = tick
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        with self._lock:
            self._now += self._tick
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            if seconds > 0:
                self._now += seconds

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass without the code under test sleeping (something else took time)."""
        if seconds < 0:
            raise ValueError("time does not go backwards; use set() to jump")
        with self._lock:
            self._now += seconds

    def set(self, now: float) -> None:
        with self._lock:
            self._now = now

    @property
    def slept(self) -> float:
        """Total seconds slept (positive sleeps only)."""
        return sum(s for s in self.sleeps if s > 0)


class SteppingClock:
    """Answers the given instants in turn, then the last one forever; sleeping is free.

    For races that depend on two readings being close together (e.g. a job
    started at x.0006 s and polled at x.0007 s).
    """

    def __init__(self, *instants: float) -> None:
        if not instants:
            raise ValueError("give at least one instant")
        self._instants = list(instants)
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._instants.pop(0) if len(self._instants) > 1 else self._instants[0]

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
