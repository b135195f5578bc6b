"""`docpipe doctor`'s checks as pure functions over gathered facts, and its exit code 2.

The facts of a real misconfigured stack are gathered in
tests/integration/test_monitor_doctor.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pipeline.adapters.sql import create_store
from pipeline.harness.localstack import free_port
from pipeline.runtime.doctor import (
    ERROR,
    WARNING,
    Facts,
    FlowerFacts,
    RedisFacts,
    WorkerFacts,
    diagnose,
    worker_facts,
)
from pipeline.runtime.monitor import Heartbeat, WorkerReplies
from tests.conftest import docpipe

RUN_ID = "a" * 40


def _redis(db: int, policy: str = "noeviction", run_id: str = RUN_ID) -> RedisFacts:
    return RedisFacts(
        url=f"redis://127.0.0.1:6390/{db}",
        db=db,
        run_id=run_id,
        maxmemory_policy=policy,
        maxmemory=0,
    )


def _worker(queue: str, pool: str = "prefork", **changes: object) -> WorkerFacts:
    worker = WorkerFacts(
        name=f"{queue}@host",
        pool=pool,
        concurrency=2,
        queues=(queue,),
        prefetch_multiplier=1,
        prefetch_count=2,
        acks_late=True,
        reject_on_worker_lost=True,
        acks_on_timeout=False,
        visibility_timeout_s=4800.0,
        task_time_limit_s=3900.0,
        longest_active_s=None,
        clock_offset_s=0.002,
    )
    return dataclasses.replace(worker, **changes)  # type: ignore[arg-type]


def _clean() -> Facts:
    return Facts(
        broker=_redis(0),
        cache=_redis(1),
        queues=("ocr", "text", "entity", "graph"),
        workers=(
            _worker("ocr"),
            _worker("text", "threads"),
            _worker("entity", "gevent"),
            _worker("graph", "threads"),
        ),
        schema_version=3,
        latest_schema_version=3,
    )


def _ids(facts: Facts) -> list[str]:
    return [finding.id for finding in diagnose(facts)]


def test_the_plans_layout_with_docpipes_configuration_is_clean() -> None:
    assert diagnose(_clean()) == []


def test_an_evicting_broker_is_an_error_with_the_fix() -> None:
    facts = dataclasses.replace(_clean(), broker=_redis(0, policy="allkeys-lru"))

    (finding,) = diagnose(facts)

    assert (finding.id, finding.severity) == ("broker-eviction", ERROR)
    assert "allkeys-lru" in finding.seen
    assert "CONFIG SET maxmemory-policy noeviction" in finding.fix


def test_a_broker_that_hides_its_policy_is_a_warning() -> None:
    broker = dataclasses.replace(_redis(0), maxmemory_policy=None, config_error="unknown command")

    assert _ids(dataclasses.replace(_clean(), broker=broker)) == ["broker-eviction-unknown"]


def test_broker_and_cache_in_one_database_of_one_server() -> None:
    same_db = dataclasses.replace(_clean(), cache=_redis(0))
    other_server = dataclasses.replace(_clean(), cache=_redis(0, run_id="b" * 40))

    assert _ids(same_db) == ["broker-cache-same-db"]
    # Database 0 of another server (another run_id) is another database.
    assert _ids(other_server) == []


def test_each_queue_without_a_consumer_is_named() -> None:
    facts = dataclasses.replace(_clean(), workers=(_worker("ocr"), _worker("text", "threads")))

    findings = diagnose(facts)

    assert [(f.id, f.subject) for f in findings] == [
        ("queue-without-consumer", "entity"),
        ("queue-without-consumer", "graph"),
    ]
    assert "docpipe worker --queues entity" in findings[0].fix


def test_a_short_visibility_timeout_matters_only_on_pools_without_time_limits() -> None:
    short = {"visibility_timeout_s": 120.0, "task_time_limit_s": 110.0}
    facts = dataclasses.replace(
        _clean(),
        workers=(
            _worker("ocr", **short),
            _worker("text", "threads", **short),
            _worker("entity", "gevent"),
            _worker("graph", "solo", **short),
        ),
    )

    findings = diagnose(facts)

    assert [(f.id, f.subject, f.severity) for f in findings] == [
        ("unenforced-pool-short-visibility", "text@host", WARNING),
        ("unenforced-pool-short-visibility", "graph@host", WARNING),
    ]
    assert "120 s" in findings[0].seen


def test_a_task_running_past_the_limit_its_pool_does_not_enforce() -> None:
    facts = dataclasses.replace(
        _clean(),
        workers=(
            _worker("ocr", longest_active_s=5000.0),  # prefork kills it: not this finding
            _worker("text", "threads", longest_active_s=4000.0),
            _worker("entity", "gevent", longest_active_s=10.0),
            _worker("graph", "threads"),
        ),
    )

    assert [(f.id, f.subject) for f in diagnose(facts)] == [("task-past-time-limit", "text@host")]


def test_acks_and_prefetch_as_the_workers_run_them() -> None:
    facts = dataclasses.replace(
        _clean(),
        workers=(
            _worker("ocr", acks_late=False),
            _worker("text", "threads", reject_on_worker_lost=False),
            _worker("entity", "gevent", prefetch_multiplier=4, prefetch_count=400),
            _worker("graph", "threads", acks_late=None, prefetch_multiplier=None),
        ),
    )

    assert [(f.id, f.severity) for f in diagnose(facts)] == [
        ("acks-early", ERROR),
        ("worker-lost-acked", WARNING),
        ("prefetch", WARNING),
    ]


def test_a_prefork_worker_that_acks_a_task_past_its_hard_limit() -> None:
    """Only prefork kills at the hard limit; on threads the setting never applies."""
    facts = dataclasses.replace(
        _clean(),
        workers=(
            _worker("ocr", acks_on_timeout=True),
            _worker("text", "threads", acks_on_timeout=True),
            _worker("entity", acks_on_timeout=None),
            _worker("graph"),
        ),
    )

    assert [(f.id, f.subject) for f in diagnose(facts)] == [("timeout-acked", "ocr@host")]


@pytest.mark.parametrize(
    ("version", "missing", "expected"),
    [
        (3, (), []),
        (0, (), []),  # made by create_all on first use: complete, nothing recorded
        (0, ("source_documents.content_sha256",), ["schema-behind"]),
        (2, (), ["schema-behind"]),
        (4, (), ["schema-ahead"]),
    ],
)
def test_schema_version(version: int, missing: tuple[str, ...], expected: list[str]) -> None:
    facts = dataclasses.replace(_clean(), schema_version=version, missing_columns=missing)

    assert _ids(facts) == expected


def test_clock_skew_beyond_a_second_either_way() -> None:
    facts = dataclasses.replace(
        _clean(),
        workers=(
            _worker("ocr", clock_offset_s=2.5),
            _worker("text", "threads", clock_offset_s=-1.2),
            _worker("entity", "gevent", clock_offset_s=0.4),
            _worker("graph", "threads", clock_offset_s=None),
        ),
    )

    findings = diagnose(facts)

    assert [(f.id, f.subject) for f in findings] == [
        ("clock-skew", "ocr@host"),
        ("clock-skew", "text@host"),
    ]
    assert "2.50 s ahead of" in findings[0].seen
    assert "1.20 s behind" in findings[1].seen


OPEN = {"/api/workers": 200, "/": 200, "/metrics": 200}
AUTH_ONLY_METRICS_OPEN = {"/api/workers": 401, "/": 401, "/metrics": 200}


@pytest.mark.parametrize(
    ("url", "statuses", "expected"),
    [
        ("http://127.0.0.1:5555", OPEN, ["flower-without-auth"]),
        # Flower 2.2 with --basic-auth: /metrics stays open, fine on loopback only.
        ("http://127.0.0.1:5555", AUTH_ONLY_METRICS_OPEN, []),
        ("http://10.0.0.5:5555", AUTH_ONLY_METRICS_OPEN, ["flower-metrics-open"]),
    ],
)
def test_flower_answering_without_credentials(
    url: str, statuses: dict[str, int | None], expected: list[str]
) -> None:
    facts = dataclasses.replace(_clean(), flower=FlowerFacts(url=url, statuses=statuses))

    assert _ids(facts) == expected


def test_errors_are_listed_before_warnings() -> None:
    facts = dataclasses.replace(
        _clean(),
        broker=_redis(0, policy="allkeys-lru"),
        workers=(*_clean().workers[:3], _worker("graph", "threads", clock_offset_s=3.0)),
        schema_version=2,
    )

    severities = [f.severity for f in diagnose(facts)]

    assert severities == [ERROR, ERROR, WARNING]


def test_worker_facts_read_what_the_worker_reports_and_its_heartbeat_clock() -> None:
    node = "text@host"
    replies = WorkerReplies(
        stats={node: {"prefetch_count": 4, "pool": {
            "implementation": "celery.concurrency.thread:TaskPool", "max-concurrency": 4}}},
        active_queues={node: [{"name": "text"}]},
        active={node: [{"id": "t1", "time_start": 1000.0, "delivery_info": {}}]},
        conf={node: {
            "worker_prefetch_multiplier": 1,
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "task_acks_on_timeout": None,
            "task_acks_on_failure_or_timeout": True,
            "task_time_limit": 3900,
            "broker_transport_options": {"visibility_timeout": 4800},
        }},
    )  # fmt: skip
    # Sent at 1002.0 on the worker's clock, received at 1000.5 on ours; ours is 0.25 s
    # behind Redis: the worker is 1.5 - 0.25 = 1.25 s ahead of Redis.
    heartbeats = {node: Heartbeat(sent_at=1002.0, received_at=1000.5)}

    (facts,) = worker_facts(replies, heartbeats, local_minus_redis_s=-0.25, now=1030.0)

    assert facts.pool == "threads"
    assert facts.queues == ("text",)
    assert (facts.prefetch_multiplier, facts.prefetch_count) == (1, 4)
    assert (facts.acks_late, facts.reject_on_worker_lost) == (True, True)
    # task_acks_on_timeout unset (None, as conf(with_defaults=True) reports it): the default.
    assert facts.acks_on_timeout is True
    assert (facts.visibility_timeout_s, facts.task_time_limit_s) == (4800.0, 3900.0)
    assert facts.longest_active_s == pytest.approx(30.0)
    assert facts.clock_offset_s == pytest.approx(1.25)


def test_doctor_exits_2_when_the_broker_cannot_be_reached(tmp_path: Path) -> None:
    database = tmp_path / "docpipe.db"
    create_store(f"sqlite:///{database}").close()
    closed = f"redis://127.0.0.1:{free_port()}"
    env = {
        "DOCPIPE_BROKER_URL": f"{closed}/0",
        "DOCPIPE_REDIS_URL": f"{closed}/1",
        "DOCPIPE_DATABASE_URL": f"sqlite:///{database}",
    }

    result = docpipe(tmp_path, "doctor", "--json", env=env)

    assert result.returncode == 2, result.stderr
    assert "cannot reach Redis (the broker)" in json.loads(result.stdout)["error"]


def test_monitor_refuses_the_embedded_default(tmp_path: Path) -> None:
    result = docpipe(tmp_path, "monitor", "--once", "--json")

    assert result.returncode == 2, result.stderr
    assert "memory://" in json.loads(result.stdout)["error"]
