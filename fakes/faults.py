"""Fault injection whose state lives in Redis, so it reaches worker processes.

REFERENCE.md failure 14: the old harness patched functions in the test
process, which a worker in another process never saw. Here every rule's call
and fire counters are Redis keys, and the rules themselves travel as JSON, so
the test process and each worker agree on which call fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import redis

from pipeline.adapters.clock import SystemClock
from pipeline.errors import PermanentError, TransientError
from pipeline.ports import NO_FAULT, Clock, FaultEffect

#: Every fault kind (the scenario catalogue in pipeline/harness/scenarios/model.py). Those
#: `_apply` does not act on come back as the effect's `response`: the wrapper that
#: consulted the injector acts on them (fakes/faulty_ports.py, the simulator).
FaultKind = Literal[
    # A call raises (transient, throttle, permanent), hangs then raises (timeout), is slow
    # (latency) or answers wrongly (malformed, empty).
    "transient",
    "throttle",
    "permanent",
    "timeout",
    "latency",
    "malformed",
    "empty",
    # The worker process dies (SIGKILL) just before the call, or just after it returned
    # (its side effect done, nothing acknowledged or chained).
    "kill_worker",
    "kill_worker_after",
    # The call blocks like native code stuck in C, deaf to the soft time limit: in a
    # prefork worker only the hard time limit ends it (broker mode); it raises after
    # latency_s if nothing does.
    "hang",
    # Database: the connection drops mid-transaction (rolled back, the caller sees an
    # error); the commit went through but the caller sees an error (outcome unknown).
    "connection_lost",
    "commit_unknown",
    # Publishing: the message is sent twice; an extra copy carries the previous
    # processing version (a stale message); the same file is submitted twice.
    "duplicate",
    "stale_version",
    # Process level (sim mode): Redis restarts and loses what it keeps in memory; a
    # task runs past the visibility timeout (a pool without time limits).
    "restart",
    "outlive_visibility",
]


@dataclass(frozen=True)
class FaultRule:
    """A fault for one port (and optionally one operation) on a schedule."""

    port: str
    kind: FaultKind
    operation: str | None = None
    #: Fire on the first N matching calls.
    first: int | None = None
    #: Fire on every Nth matching call (N, 2N, ...).
    every: int | None = None
    #: Fire with this probability, decided by a seeded hash of the call number.
    probability: float | None = None
    #: Fire only between these seconds after the injector was armed.
    window: tuple[float, float] | None = None
    #: Fire only for these documents.
    documents: tuple[str, ...] = ()
    latency_s: float = 0.0
    #: With `latency_s`, a seeded uniform latency between the two (a distribution).
    latency_max_s: float | None = None
    retry_after_s: float | None = None
    message: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        target = f"{self.port}.{self.operation or '*'}"
        return f"{self.kind} on {target}"


#: What a fault is - the fields that seed its draws. Not when it may fire (`first`, `every`,
#: `window`, `documents`), nor its latency and Retry-After: narrowing those keeps the rule's
#: draws, so a shrinker that simplifies a rule does not re-roll it.
_IDENTITY_FIELDS = ("port", "operation", "kind", "probability", "latency_max_s", "message", "extra")


def rule_identities(rules: Sequence[FaultRule]) -> tuple[str, ...]:
    """A stable identity per rule, seeding its probability and latency draws.

    A hash of what the rule is, and which of the rules alike it is (the k-th
    with that hash), never its position in the list: removing another rule
    leaves a rule's draws as they were, so a shrunk schedule fails on the same
    calls as the one it came from. Identical rules stay independent; removing
    one of them leaves the same set of draws.
    """
    seen: dict[str, int] = {}
    identities = []
    for rule in rules:
        content = json.dumps(
            {name: getattr(rule, name) for name in _IDENTITY_FIELDS}, sort_keys=True
        )
        digest = hashlib.sha256(content.encode()).hexdigest()[:16]
        identities.append(f"{digest}.{seen.get(digest, 0)}")
        seen[digest] = seen.get(digest, 0) + 1
    return tuple(identities)


class RedisFaultInjector:
    """Implements the FaultInjector port; `arm()` resets counters and starts the clock.

    Time is the `clock`'s (the Clock port): a `timeout` fault waits on it and
    a `window` counts from `arm()` on it, so under the simulator's virtual
    clock they cost no wall time. Broker workers and the runner share the
    wall clock (the default).
    """

    def __init__(
        self,
        client: redis.Redis,
        rules: Sequence[FaultRule],
        *,
        namespace: str = "docpipe:faults",
        seed: int = 0,
        simulated: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self._client = client
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.rules = tuple(rules)
        #: Seeds each rule's draws (its counters stay per position, as `fired()` reports them).
        self._identities = rule_identities(self.rules)
        self._ns = namespace
        self._seed = seed
        #: In the simulator a `kill_worker` fault raises WorkerKilled instead of SIGKILL.
        self._simulated = simulated

    # --- sharing with worker processes ----------------------------------------
    def to_json(self) -> str:
        return json.dumps(
            {"namespace": self._ns, "seed": self._seed, "rules": [asdict(r) for r in self.rules]}
        )

    @classmethod
    def from_json(
        cls,
        client: redis.Redis,
        text: str,
        *,
        simulated: bool = False,
        clock: Clock | None = None,
    ) -> RedisFaultInjector:
        data = json.loads(text)
        rules = []
        for raw in data["rules"]:
            raw["documents"] = tuple(raw.get("documents") or ())
            if raw.get("window") is not None:
                raw["window"] = tuple(raw["window"])
            rules.append(FaultRule(**raw))
        return cls(
            client,
            rules,
            namespace=data["namespace"],
            seed=data["seed"],
            simulated=simulated,
            clock=clock,
        )

    def arm(self) -> None:
        """Reset every counter and mark time zero for windowed rules."""
        keys = list(self._client.scan_iter(match=f"{self._ns}:*"))
        if keys:
            self._client.delete(*keys)
        self._client.set(f"{self._ns}:armed_at", repr(self._clock.now()))

    # --- the port ----------------------------------------------------------------------
    def before(self, port: str, operation: str, document_uuid: str | None) -> FaultEffect:
        effect = NO_FAULT
        self._client.incr(f"{self._ns}:op:{port}.{operation}")
        for index, rule in enumerate(self.rules):
            if rule.port != port or (rule.operation not in (None, operation)):
                continue
            if rule.documents and document_uuid not in rule.documents:
                continue
            call = int(self._client.incr(f"{self._ns}:rule:{index}:calls"))
            identity = self._identities[index]
            if not self._fires(identity, rule, call):
                continue
            self._client.incr(f"{self._ns}:rule:{index}:fired")
            effect = self._apply(self._sampled(identity, rule, call), effect)
        return effect

    def kill_worker(self, reason: str) -> None:
        """The worker process dies now (in the simulator: WorkerKilled is raised)."""
        if self._simulated:
            raise WorkerKilled(reason)
        os.kill(os.getpid(), signal.SIGKILL)  # pragma: no cover - ends this process

    def fired(self) -> list[int]:
        """How many times each rule fired (coverage: a rule that never fired is a finding)."""
        return [self._count(f"{self._ns}:rule:{i}:fired") for i in range(len(self.rules))]

    def calls(self) -> list[int]:
        return [self._count(f"{self._ns}:rule:{i}:calls") for i in range(len(self.rules))]

    def operation_calls(self) -> dict[str, int]:
        """Calls per "port.operation" since `arm()`, whether or not a rule matched."""
        prefix = f"{self._ns}:op:"
        counts: dict[str, int] = {}
        for key in self._client.scan_iter(match=f"{prefix}*"):
            name = key.decode() if isinstance(key, bytes) else str(key)
            counts[name.removeprefix(prefix)] = self._count(name)
        return dict(sorted(counts.items()))

    # --- internals -----------------------------------------------------------------------
    def _hang(self, seconds: float) -> None:
        """Sleep deaf to the pool's time limits, as a call stuck in C code is.

        Python runs signal handlers between bytecodes, so a native call that does
        not return runs neither billiard's soft-limit handler (SIGUSR1, which
        raises SoftTimeLimitExceeded) nor the one for the hard limit's SIGTERM:
        the SIGKILL that follows 0.1 s later ends the process. Both signals are
        held back here; a sleep would otherwise return early on either.
        """
        time_limit_signals = {signal.SIGUSR1, signal.SIGTERM}
        held = signal.pthread_sigmask(signal.SIG_BLOCK, time_limit_signals)
        try:
            self._clock.sleep(seconds)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _count(self, key: str) -> int:
        value = self._client.get(key)
        return int(value) if value is not None else 0

    def _fires(self, identity: str, rule: FaultRule, call: int) -> bool:
        if rule.window is not None:
            armed = self._client.get(f"{self._ns}:armed_at")
            elapsed = self._clock.now() - float(armed) if armed is not None else 0.0
            if not rule.window[0] <= elapsed < rule.window[1]:
                return False
        if rule.first is not None and call > rule.first:
            return False
        if rule.every is not None and call % rule.every != 0:
            return False
        if rule.probability is not None:
            digest = hashlib.sha256(f"{self._seed}:{identity}:{call}".encode()).digest()
            if int.from_bytes(digest[:8], "big") / 2**64 >= rule.probability:
                return False
        return True

    def _sampled(self, identity: str, rule: FaultRule, call: int) -> FaultRule:
        """A latency rule with a range gets its seeded draw for this call."""
        if rule.latency_max_s is None or rule.latency_max_s <= rule.latency_s:
            return rule
        digest = hashlib.sha256(f"{self._seed}:latency:{identity}:{call}".encode()).digest()
        fraction = int.from_bytes(digest[:8], "big") / 2**64
        drawn = rule.latency_s + fraction * (rule.latency_max_s - rule.latency_s)
        return replace(rule, latency_s=drawn, latency_max_s=None)

    def _apply(self, rule: FaultRule, effect: FaultEffect) -> FaultEffect:
        reason = rule.message or f"injected {rule.describe()}"
        if rule.kind == "transient":
            raise TransientError(reason)
        if rule.kind == "throttle":
            raise TransientError(reason, retry_after=rule.retry_after_s)
        if rule.kind == "permanent":
            raise PermanentError(reason)
        if rule.kind == "timeout":
            # The call hangs until it times out: on the clock, so virtual in the simulator.
            self._clock.sleep(rule.latency_s)
            raise TransientError(reason)
        if rule.kind == "kill_worker":
            self.kill_worker(reason)
        if rule.kind == "hang":
            self._hang(rule.latency_s)
            raise TransientError(reason)
        if rule.kind == "latency":
            return FaultEffect(
                latency_s=effect.latency_s + rule.latency_s, response=effect.response
            )
        return FaultEffect(latency_s=effect.latency_s, response=rule.kind)


ACTIVE_FAULTS_KEY = "docpipe:faults:active"


class WorkerKilled(BaseException):
    """A `kill_worker` fault in a simulated worker: the task dies as under SIGKILL.

    A BaseException, so no `except Exception` in stage code can survive it.
    """


class SharedFaultInjector:
    """The FaultInjector of worker processes: follows whatever a test or scenario installed.

    Reads the active rules from Redis on every call (one GET), so a fault
    installed after the workers started still reaches them.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        key: str = ACTIVE_FAULTS_KEY,
        simulated: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self._client = client
        self._key = key
        self._simulated = simulated
        self._clock = clock
        self._loaded: tuple[bytes, RedisFaultInjector] | None = None

    def before(self, port: str, operation: str, document_uuid: str | None) -> FaultEffect:
        raw = self._client.get(self._key)
        if raw is None:
            return NO_FAULT
        config = raw if isinstance(raw, bytes) else str(raw).encode()
        if self._loaded is None or self._loaded[0] != config:
            injector = RedisFaultInjector.from_json(
                self._client, config.decode(), simulated=self._simulated, clock=self._clock
            )
            self._loaded = (config, injector)
        return self._loaded[1].before(port, operation, document_uuid)

    def kill_worker(self, reason: str) -> None:
        """The worker process dies now (in the simulator: WorkerKilled is raised)."""
        if self._simulated:
            raise WorkerKilled(reason)
        os.kill(os.getpid(), signal.SIGKILL)  # pragma: no cover - ends this process


def install_faults(client: redis.Redis, injector: RedisFaultInjector) -> None:
    """Arm the injector and make it the one every worker process follows."""
    injector.arm()
    client.set(ACTIVE_FAULTS_KEY, injector.to_json())


def clear_faults(client: redis.Redis) -> None:
    client.delete(ACTIVE_FAULTS_KEY)
