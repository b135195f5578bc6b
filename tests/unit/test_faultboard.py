"""The simulator's fault board keeps fault state as Redis does: the same faults fire."""

from __future__ import annotations

import random

import fakeredis
import pytest
import redis

from fakes.faults import (
    ACTIVE_FAULTS_KEY,
    FaultRule,
    RedisFaultInjector,
    SharedFaultInjector,
    WorkerKilled,
    clear_faults,
    install_faults,
)
from pipeline.errors import PermanentError, TransientError
from pipeline.harness.simulation.clock import VirtualClock
from pipeline.harness.simulation.faultboard import FaultBoard

RULES = [
    FaultRule(port="llm", kind="transient", probability=0.4),
    FaultRule(port="llm", kind="latency", operation="extract", every=3, latency_s=0.5),
    FaultRule(port="store", kind="connection_lost", operation="documents", first=2),
    FaultRule(port="store", kind="latency", latency_s=0.1, latency_max_s=2.0, probability=0.5),
    FaultRule(port="blobs", kind="permanent", window=(3.0, 6.0)),
    FaultRule(port="locks", kind="kill_worker", probability=0.2, documents=("doc-b",)),
    FaultRule(port="dispatcher", kind="duplicate", every=2),
]

CALLS = [
    ("llm", "extract"),
    ("llm", "start"),
    ("store", "documents"),
    ("store", "derived"),
    ("blobs", "get"),
    ("locks", "acquire"),
    ("dispatcher", "send_stage"),
]


def consultations(client: redis.Redis, seed: int) -> tuple[list[str], list[int], list[int], dict]:
    """What 300 seeded calls met, and the counters after them, with state in `client`."""
    clock = VirtualClock()
    injector = RedisFaultInjector(
        client, RULES, namespace="docpipe:faults:t", seed=seed, simulated=True, clock=clock
    )
    install_faults(client, injector)
    shared = SharedFaultInjector(client, simulated=True, clock=clock)
    calls = random.Random(seed)
    met: list[str] = []
    for _ in range(300):
        port, operation = calls.choice(CALLS)
        document = calls.choice(["doc-a", "doc-b", None])
        clock.sleep(calls.uniform(0.0, 0.1))
        try:
            effect = shared.before(port, operation, document)
            met.append(f"{effect.latency_s:.6f}:{effect.response}")
        except (TransientError, PermanentError, WorkerKilled) as exc:
            met.append(f"{type(exc).__name__}: {exc}")
    seen = (met, injector.fired(), injector.calls(), injector.operation_calls())
    clear_faults(client)
    assert client.get(ACTIVE_FAULTS_KEY) is None
    return seen


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_board_and_redis_give_the_same_faults_and_counters(seed: int) -> None:
    on_redis = consultations(fakeredis.FakeRedis(), seed)
    on_board = consultations(FaultBoard().as_redis(), seed)
    assert on_board == on_redis
    met, fired, _, _ = on_board
    # The comparison means something: most rules fired, some calls met nothing.
    assert sum(1 for count in fired if count) >= 5
    assert "0.000000:None" in met


def test_the_board_answers_as_redis_py_does() -> None:
    board = FaultBoard()
    assert board.get("missing") is None
    assert board.incr("n") == 1 and board.incr(b"n") == 2
    assert board.get("n") == b"2"
    board.set("a:x", "text")
    board.set("a:y", 1.5)
    assert board.get("a:y") == b"1.5"
    assert sorted(board.scan_iter(match="a:*")) == [b"a:x", b"a:y"]
    assert board.delete("a:x", "nothing") == 1
    assert list(board.scan_iter()) == [b"n", b"a:y"]
