"""Faults on every port: the catalogue, the wrappers the composition root adds, refusals."""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any, get_args

import fakeredis
import pytest
import redis

from fakes import faults as fake_faults
from fakes.faults import FaultRule, RedisFaultInjector, WorkerKilled
from fakes.faulty_ports import (
    STORE_ROLES,
    STORE_WRITES,
    FaultyBlobStore,
    FaultyDispatcher,
    FaultyDocumentStore,
    FaultyStateTracker,
    unfaulted,
)
from pipeline.adapters.clock import SystemClock
from pipeline.adapters.memory_blob import InMemoryBlobStore
from pipeline.adapters.redis_features import RedisLockManager, RedisStateTracker
from pipeline.adapters.sql import SqlDocumentStore, create_store
from pipeline.bootstrap import build_services
from pipeline.domain.models import SourceDocument, Stage
from pipeline.errors import RateLimited, TransientError
from pipeline.harness.scenarios import model
from pipeline.harness.scenarios.model import (
    FAULT_CATALOGUE,
    PORT_OPERATIONS,
    SIM_ONLY_FAULTS,
    Scenario,
    fault_modes,
)
from pipeline.harness.scenarios.runner import run_scenario
from pipeline.ports.store import DeadLetters, DerivedRows, DocumentRecords, WorkQueue
from pipeline.testing.contracts.redis_features import acquisition_keywords
from tests.conftest import embedded_settings


def injector(*rules: FaultRule) -> RedisFaultInjector:
    armed = RedisFaultInjector(fakeredis.FakeRedis(), rules, simulated=True)
    armed.arm()
    return armed


def sql_store(tmp_path: Path) -> tuple[SqlDocumentStore, str]:
    """A SQLite store with a project (made before any fault is in front of it)."""
    store = create_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert isinstance(store, SqlDocumentStore)
    return store, store.ensure_project("faults")


def document(project: str, uuid: str = "doc-1") -> SourceDocument:
    return SourceDocument(
        uuid=uuid,
        project_uuid=project,
        original_file_name="a.txt",
        file_type="txt",
        storage_key=f"documents/{uuid}/original.txt",
        size_bytes=3,
    )


# --- the catalogue --------------------------------------------------------------------------


def test_every_catalogue_kind_is_a_kind_of_the_schema_and_of_the_injector() -> None:
    kinds = {k for operations in FAULT_CATALOGUE.values() for ks in operations.values() for k in ks}
    assert kinds <= set(get_args(model.FaultKind))
    assert kinds <= set(get_args(fake_faults.FaultKind))
    assert set(FAULT_CATALOGUE) == set(get_args(model.Port))
    assert {p: tuple(ops) for p, ops in FAULT_CATALOGUE.items()} == PORT_OPERATIONS
    for port, operation, kind in SIM_ONLY_FAULTS:
        assert kind in FAULT_CATALOGUE[port][operation]
        assert fault_modes(port, operation, kind) == ("sim",)


def test_fault_modes_keep_killing_kinds_out_of_eager_and_sim_only_ones_out_of_broker() -> None:
    assert fault_modes("store", "derived", "commit_unknown") == ("broker", "eager", "sim")
    assert fault_modes("store", "derived", "kill_worker_after") == ("broker", "sim")
    assert fault_modes("redis", "server", "restart") == ("sim",)
    assert fault_modes("blobs", None, "transient") == ("broker", "eager", "sim")
    assert fault_modes("intake", "submit", "transient") == ()


def test_the_store_role_table_follows_the_role_protocols_and_the_sql_store() -> None:
    """The wrapper groups methods by name: a method missing here would never be faulted."""

    def methods(cls: type) -> set[str]:
        return {name for name in vars(cls) if not name.startswith("_")}

    roles = {
        DocumentRecords: "documents",
        DerivedRows: "derived",
        WorkQueue: "queue",
        DeadLetters: "dead_letters",
    }
    for protocol, role in roles.items():
        assert {name: STORE_ROLES.get(name) for name in methods(protocol)} == dict.fromkeys(
            methods(protocol), role
        )
    sql_methods = {
        name
        for name, member in inspect.getmembers(SqlDocumentStore, inspect.isfunction)
        if not name.startswith("_") and name != "close"
    }
    assert sql_methods <= set(STORE_ROLES)
    assert set(STORE_ROLES.values()) == set(FAULT_CATALOGUE["store"])
    assert set(STORE_ROLES) >= STORE_WRITES


def scenario(**fault: Any) -> dict[str, Any]:
    return {
        "name": "f",
        "description": "d",
        "documents": [{"generate": {"type": "txt"}}],
        "faults": [fault],
    }


def test_a_kind_a_port_does_not_support_is_refused_with_what_it_supports() -> None:
    with pytest.raises(ValueError, match=r"locks\.acquire has no fault kind 'commit_unknown'"):
        Scenario.model_validate(scenario(port="locks", operation="acquire", kind="commit_unknown"))


def test_simulator_only_faults_are_refused_for_broker_and_eager_modes() -> None:
    with pytest.raises(ValueError, match="simulator-only fault"):
        Scenario.model_validate(
            {**scenario(port="redis", operation="server", kind="restart"), "modes": ["broker"]}
        )
    with pytest.raises(ValueError, match=r"simulated only; declare `modes: \[sim\]`"):
        Scenario.model_validate(
            {**scenario(port="worker", operation="ack", kind="kill_worker"), "modes": ["eager"]}
        )
    with pytest.raises(ValueError, match="kills the process it runs in"):
        Scenario.model_validate(
            {**scenario(port="store", kind="kill_worker_after"), "modes": ["eager"]}
        )
    Scenario.model_validate({**scenario(port="redis", kind="restart"), "modes": ["sim"]})


def test_broker_mode_refuses_a_simulator_only_fault_by_name(tmp_path: Path) -> None:
    spec = Scenario.model_validate(
        {**scenario(port="worker", operation="countdown", kind="kill_worker"), "modes": ["sim"]}
    )
    report = run_scenario(spec, None, "broker", workdir=tmp_path)
    assert report.skipped is not None
    assert "kill_worker on worker.countdown" in report.skipped
    assert "simulator-only" in report.skipped and "--mode sim" in report.skipped


# --- the wrappers -------------------------------------------------------------------------------


def test_commit_unknown_commits_the_write_and_then_raises(tmp_path: Path) -> None:
    inner, project = sql_store(tmp_path)
    store = FaultyDocumentStore(
        inner,
        injector(FaultRule(port="store", operation="documents", kind="commit_unknown", first=1)),
        SystemClock(),
    )
    with pytest.raises(TransientError, match="it was committed"):
        store.create_document(document(project))
    assert store.get_document("doc-1").uuid == "doc-1"  # a read: not faulted again


def test_connection_lost_rolls_the_write_back(tmp_path: Path) -> None:
    inner, project = sql_store(tmp_path)
    store = FaultyDocumentStore(
        inner,
        injector(FaultRule(port="store", operation="queue", kind="connection_lost", first=1)),
        SystemClock(),
    )
    store.create_document(document(project))
    with pytest.raises(TransientError, match="rolled back"):
        store.enqueue("doc-1")
    assert store.queue_entries("doc-1") == []
    store.enqueue("doc-1")
    assert len(store.queue_entries("doc-1")) == 1


def test_store_faults_target_documents_and_roles(tmp_path: Path) -> None:
    faults = injector(
        FaultRule(port="store", operation="derived", kind="transient", documents=("doc-2",))
    )
    inner, project = sql_store(tmp_path)
    store = FaultyDocumentStore(inner, faults, SystemClock())
    store.create_document(document(project, "doc-1"))
    store.create_document(document(project, "doc-2"))
    assert store.get_chunks("doc-1") == []
    with pytest.raises(TransientError):
        store.get_chunks("doc-2")
    assert faults.operation_calls() == {"store.derived": 2, "store.documents": 2}


def test_kill_worker_after_lets_the_side_effect_happen_first() -> None:
    blobs = InMemoryBlobStore()
    faulty = FaultyBlobStore(
        blobs, injector(FaultRule(port="blobs", kind="kill_worker_after")), SystemClock()
    )
    with pytest.raises(WorkerKilled):
        faulty.put("documents/d/original.txt", b"abc")
    assert blobs.get("documents/d/original.txt") == b"abc"


def test_redis_backed_ports_fail_as_redis_py_does_and_the_limiter_fails_closed(
    tmp_path: Path,
) -> None:
    faults = injector(
        FaultRule(port="cache", kind="transient"),
        FaultRule(port="locks", kind="transient"),
        FaultRule(port="state", kind="transient"),
        FaultRule(port="rate_limiter", kind="transient"),
    )
    services = build_services(embedded_settings(tmp_path), faults=faults)
    try:
        with pytest.raises(redis.ConnectionError):
            services.cache.get("k")
        with pytest.raises(redis.ConnectionError):
            services.locks.acquire("d:ocr", 10)
        with pytest.raises(redis.ConnectionError):
            services.state.record("d", "ocr", "started")
        with pytest.raises(RateLimited, match="unavailable"):
            services.rate_limiter.acquire("llm")
    finally:
        services.close()


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[Stage, str, int]] = []

    def send_stage(
        self, stage: Stage, document_uuid: str, version: int, *, task_id: str | None = None
    ) -> None:
        self.sent.append((stage, document_uuid, version))


def test_the_dispatcher_sends_duplicates_and_stale_twins() -> None:
    recorder = Recorder()
    dispatcher = FaultyDispatcher(
        recorder,
        injector(
            FaultRule(port="dispatcher", kind="duplicate", first=1),
            FaultRule(port="dispatcher", kind="stale_version", every=2),
        ),
        SystemClock(),
    )
    dispatcher.send_stage(Stage.CHUNKING, "d", 3)
    dispatcher.send_stage(Stage.CHUNKING, "d", 3)
    assert recorder.sent == [(Stage.CHUNKING, "d", 3)] * 3 + [(Stage.CHUNKING, "d", 2)]


def test_wrappers_only_when_faults_are_on_and_the_runner_sees_through_them(
    tmp_path: Path,
) -> None:
    plain = build_services(embedded_settings(tmp_path))
    faulted = build_services(
        embedded_settings(tmp_path, fault_injection=True, redis_url="fakeredis://faulty-ports")
    )
    try:
        assert type(plain.store).__name__ == "SqlDocumentStore"
        assert type(plain.blobs).__module__.startswith("pipeline.adapters")
        assert type(faulted.store) is FaultyDocumentStore
        assert type(faulted.blobs) is FaultyBlobStore
        seen = unfaulted(faulted)
        assert type(seen.store).__name__ == "SqlDocumentStore"
        assert type(seen.dispatcher).__name__ == "CeleryDispatcher"
        assert seen.ocr is faulted.ocr
    finally:
        plain.close()
        faulted.close()


def _fires_on(armed: RedisFaultInjector, rule_index: int, calls: int, port: str) -> list[int]:
    """The calls (1-based) on which rule `rule_index` fired, over `calls` calls of `port`."""
    fired: list[int] = []
    for call in range(1, calls + 1):
        before = armed.fired()[rule_index]
        with contextlib.suppress(TransientError):  # the rule fired: that is what we count
            armed.before(port, "extract", None)
        if armed.fired()[rule_index] > before:
            fired.append(call)
    return fired


def test_a_rule_s_draws_do_not_depend_on_the_rules_before_it() -> None:
    """Shrinking removes faults: the others must fire on the very same calls as before."""
    kept = FaultRule(port="llm", kind="transient", probability=0.3)
    other = FaultRule(port="parser", kind="transient", probability=0.5)
    alone = _fires_on(injector(kept), 0, 200, "llm")
    after_another = _fires_on(injector(other, kept), 1, 200, "llm")

    assert alone == after_another
    assert 30 < len(alone) < 90  # drawn, not all or nothing


def test_narrowing_when_a_rule_may_fire_keeps_its_draws() -> None:
    wide = FaultRule(port="llm", kind="transient", probability=0.3)
    narrow = FaultRule(port="llm", kind="transient", probability=0.3, every=2)
    on_wide = _fires_on(injector(wide), 0, 200, "llm")
    on_narrow = _fires_on(injector(narrow), 0, 200, "llm")

    assert on_narrow == [call for call in on_wide if call % 2 == 0]


def test_identical_rules_draw_independently_and_the_seed_changes_the_draws() -> None:
    rule = FaultRule(port="llm", kind="transient", probability=0.3)
    first = _fires_on(injector(rule, rule), 0, 200, "llm")
    second = _fires_on(injector(rule, rule), 1, 200, "llm")
    again = _fires_on(injector(rule, rule), 0, 200, "llm")
    reseeded = RedisFaultInjector(fakeredis.FakeRedis(), [rule, rule], simulated=True, seed=7)
    reseeded.arm()

    assert first == again  # deterministic
    assert first != second
    assert _fires_on(reseeded, 0, 200, "llm") != first


LOCK = "d:chunking:v1"


def _faulty_state_tracker(
    rules: tuple[FaultRule, ...],
) -> tuple[RedisLockManager, RedisFaultInjector, FaultyStateTracker]:
    """A state tracker on fakeredis behind `rules`, and the lock manager it shares Redis with."""
    client = fakeredis.FakeRedis()
    locks = RedisLockManager(client)
    faults = injector(*rules)
    state = FaultyStateTracker(
        RedisStateTracker(client, ttl_seconds=60), faults, SystemClock(), locks=locks
    )
    return locks, faults, state


@pytest.mark.parametrize(
    ("rules", "raises", "recorded", "released"),
    [
        ((), None, True, True),
        ((FaultRule(port="locks", operation="release", kind="transient"),), None, True, False),
        ((FaultRule(port="state", kind="transient"),), redis.ConnectionError, False, True),
        (
            (
                FaultRule(port="locks", operation="release", kind="transient"),
                FaultRule(port="state", kind="transient"),
            ),
            redis.ConnectionError,
            False,
            False,
        ),
        ((FaultRule(port="locks", kind="kill_worker_after"),), WorkerKilled, False, True),
        ((FaultRule(port="state", kind="kill_worker_after"),), WorkerKilled, True, True),
    ],
)
def test_the_last_state_write_with_its_release_fails_as_the_two_calls_did(
    rules: tuple[FaultRule, ...],
    raises: type[BaseException] | None,
    recorded: bool,
    released: bool,
) -> None:
    """A release fault leaves the lock to expire; a state fault raises after the release."""
    locks, faults, state = _faulty_state_tracker(rules)
    token = locks.acquire(LOCK, 30, owner="task-1")
    assert token is not None
    with pytest.raises(raises) if raises else contextlib.nullcontext():
        state.record_and_release("d", "chunking", "completed", lock_name=LOCK, token=token)
    assert (state.get("d").get("chunking_status") == "completed") is recorded
    assert (locks.acquire(LOCK, 30, owner="task-2") is not None) is released
    # Each port is consulted once, as by the two calls it replaces; a kill after the
    # release comes before the state write, which is then never tried.
    killed_releasing = rules and rules[0].port == "locks" and rules[0].kind == "kill_worker_after"
    consulted = {"locks.release": 1, "state.record": 0 if killed_releasing else 1}
    assert faults.operation_calls() == {op: n for op, n in consulted.items() if n}


@pytest.mark.parametrize(
    ("rules", "raises", "started", "locked"),
    [
        ((), None, True, True),
        (
            (FaultRule(port="locks", operation="acquire", kind="transient"),),
            redis.RedisError,
            False,
            False,
        ),
        ((FaultRule(port="state", kind="transient"),), redis.RedisError, False, True),
        ((FaultRule(port="state", kind="kill_worker_after"),), WorkerKilled, True, True),
    ],
)
def test_the_first_state_write_with_its_lock_fails_as_the_two_calls_did(
    rules: tuple[FaultRule, ...],
    raises: type[BaseException] | None,
    started: bool,
    locked: bool,
) -> None:
    """A lock fault writes nothing; a state fault raises with the lock taken, the hash unwritten."""
    locks, faults, state = _faulty_state_tracker(rules)
    with pytest.raises(raises) if raises else contextlib.nullcontext():
        state.acquire_counted_and_record_started(
            "d", "chunking", **acquisition_keywords(LOCK, "task-1", replacing=("started",))
        )
    assert (state.get("d").get("chunking_status") == "started") is started
    assert (locks.acquire(LOCK, 30, owner="task-2") is None) is locked
    # Each port is consulted once, as by the two calls it replaces (the state's only
    # once the lock was taken and "started" written).
    consulted = {"locks.acquire": 1, "state.record": 1 if locked else 0}
    assert faults.operation_calls() == {op: n for op, n in consulted.items() if n}
