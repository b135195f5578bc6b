"""Broker-mode disruptions: restart the private Redis, cut the database off.

They run in one background thread, each at its `at_s` after the first dispatch,
and every one restores what it broke in a `finally` (Redis started again, the
database proxy letting connections through), also when the run is cancelled.
Each records how many documents were still in flight when it hit: a
disruption that hit nothing fails the coverage invariant, as a fault that
never fired does; cutting the database off must also have dropped or refused
at least one worker connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.harness import localstack as devstack
from pipeline.harness.scenarios.model import Disruption
from pipeline.harness.scenarios.tcp_proxy import TcpProxy

#: Extra seconds `join` waits beyond the last disruption's end.
JOIN_MARGIN_S = 30.0


@dataclass
class Applied:
    """What one disruption did."""

    disruption: Disruption
    #: Documents not yet terminal when it hit (None: it never hit).
    in_flight: int | None = None
    #: Seconds it actually lasted.
    lasted_s: float = 0.0
    #: What it broke, measured (e.g. database connections dropped and refused).
    effect: str = ""
    error: str | None = None

    def describe(self) -> str:
        d = self.disruption
        return f"{d.kind} at {d.at_s:g} s for {d.duration_s:g} s"


class DisruptionThread:
    def __init__(
        self,
        disruptions: Sequence[Disruption],
        *,
        redis_server: Callable[[], devstack.RedisServer],
        database_proxy: Callable[[], TcpProxy],
        in_flight: Callable[[], int],
    ) -> None:
        self.applied = [Applied(d) for d in sorted(disruptions, key=lambda d: d.at_s)]
        self._redis_server = redis_server
        self._database_proxy = database_proxy
        self._in_flight = in_flight
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def start(self) -> None:
        if self._thread is not None or not self.applied:
            return
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="scenario-disruptions", daemon=True)
        self._thread.start()

    @property
    def end_s(self) -> float:
        return max((a.disruption.at_s + a.disruption.duration_s for a in self.applied), default=0)

    def join(self, *, cancel: bool = False) -> None:
        """Wait (bounded) until every disruption ran and was restored; `cancel` cuts it short."""
        if self._thread is None:
            return
        if cancel:
            self._cancel.set()
        remaining = self._started + self.end_s + JOIN_MARGIN_S - time.monotonic()
        self._thread.join(timeout=max(remaining, 1.0))
        if self._thread.is_alive():  # pragma: no cover - a stuck restore
            self._cancel.set()
            self._thread.join(timeout=JOIN_MARGIN_S)

    def _run(self) -> None:
        for applied in self.applied:
            delay = self._started + applied.disruption.at_s - time.monotonic()
            if self._cancel.wait(max(delay, 0)):
                return
            try:
                applied.in_flight = self._in_flight()
                began = time.monotonic()
                if applied.disruption.kind == "restart_redis":
                    self._restart_redis(applied.disruption.duration_s)
                else:
                    self._cut_database(applied, applied.disruption.duration_s)
                applied.lasted_s = round(time.monotonic() - began, 2)
            except Exception as exc:  # reported as a failed check, never lost
                applied.error = f"{type(exc).__name__}: {exc}"

    def _restart_redis(self, down_s: float) -> None:
        server = self._redis_server()
        server.stop()
        try:
            self._cancel.wait(down_s)
        finally:
            server.start_again()

    def _cut_database(self, applied: Applied, down_s: float) -> None:
        proxy = self._database_proxy()
        refused_before = proxy.refused
        dropped = proxy.cut()
        try:
            self._cancel.wait(down_s)
        finally:
            proxy.restore()
        refused = proxy.refused - refused_before
        applied.effect = f"{dropped} connection(s) dropped, {refused} refused"
        if dropped + refused == 0:
            applied.error = "no worker had or asked for a database connection while it was cut off"
