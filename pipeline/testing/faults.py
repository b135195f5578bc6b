"""Declaring faults in tests.

Two ways, matching the two ways adapters consult the `FaultInjector` port:

- `ScriptedFaults`: in this process only. Answers a fixed effect (latency, a bad
  answer) and raises queued errors once, per (port, operation); records every call.
- `installed_faults(client, rules)`: the Redis-backed injector of fakes/faults.py,
  installed for every worker process that follows `SharedFaultInjector`
  (DOCPIPE_FAULT_INJECTION=true), and cleared again when the block ends.
  `FaultRule` declares one fault: port, kind and schedule (first N calls, every
  Nth, a seeded probability, a time window, some documents only).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis

from fakes.faults import (
    ACTIVE_FAULTS_KEY,
    FaultKind,
    FaultRule,
    RedisFaultInjector,
    SharedFaultInjector,
    WorkerKilled,
    clear_faults,
    install_faults,
)
from pipeline.ports import NO_FAULT, Clock, FaultEffect, FaultInjector

__all__ = [
    "ACTIVE_FAULTS_KEY",
    "NO_FAULT",
    "FaultEffect",
    "FaultInjector",
    "FaultKind",
    "FaultRule",
    "RedisFaultInjector",
    "ScriptedFaults",
    "SharedFaultInjector",
    "WorkerKilled",
    "clear_faults",
    "install_faults",
    "installed_faults",
]

Call = tuple[str, str, str | None]


class ScriptedFaults:
    """A `FaultInjector` for one process, scripted by the test.

    Every call answers `effect` (its latency, its bad-answer response), unless
    `error` is given (raised on every call). `fail_once` and `answer_once` queue
    a one-off error or response for one (port, operation). `calls` lists every
    (port, operation, document uuid) the adapter asked about.
    """

    def __init__(self, effect: FaultEffect = NO_FAULT, *, error: Exception | None = None) -> None:
        self.effect = effect
        self.error = error
        self.errors: dict[tuple[str, str], Exception] = {}
        self.responses: dict[tuple[str, str], str] = {}
        self.calls: list[Call] = []

    def fail_once(self, port: str, operation: str, error: Exception) -> None:
        self.errors[(port, operation)] = error

    def answer_once(self, port: str, operation: str, response: str) -> None:
        """A bad answer for the next call ("malformed" or "empty")."""
        self.responses[(port, operation)] = response

    def before(self, port: str, operation: str, document_uuid: str | None) -> FaultEffect:
        self.calls.append((port, operation, document_uuid))
        if self.error is not None:
            raise self.error
        queued = self.errors.pop((port, operation), None)
        if queued is not None:
            raise queued
        response = self.responses.pop((port, operation), self.effect.response)
        return FaultEffect(latency_s=self.effect.latency_s, response=response)


@contextmanager
def installed_faults(
    client: redis.Redis,
    rules: Sequence[FaultRule],
    *,
    seed: int = 0,
    namespace: str = "docpipe:faults",
    clock: Clock | None = None,
) -> Iterator[RedisFaultInjector]:
    """Install `rules` for every process sharing `client`'s Redis; cleared on exit.

    The injector yielded answers `fired()` and `calls()` per rule: a rule that
    never fired is a finding (the fault was declared but the test did not exercise it).
    """
    injector = RedisFaultInjector(client, rules, namespace=namespace, seed=seed, clock=clock)
    install_faults(client, injector)
    try:
        yield injector
    finally:
        clear_faults(client)
