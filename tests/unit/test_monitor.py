"""`docpipe monitor`'s snapshot, built from fakeredis (kombu's keys), SQLite and inspect replies.

The reply dictionaries have the shapes Celery's `inspect()` returns (see
celery/worker/control.py and Request.info()); the integration test
(tests/integration/test_monitor_doctor.py) reads them from real workers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from pipeline.adapters.redis_features import RedisRateLimiter
from pipeline.adapters.sql import SqlDocumentStore, create_store
from pipeline.domain.models import Stage, Status
from pipeline.runtime.monitor import (
    LLM_RATE_LIMIT_KEY,
    UNACKED_INDEX_KEY,
    UNACKED_KEY,
    Heartbeat,
    WorkerReplies,
    build_snapshot,
    pool_name,
    queue_keys,
    rate_limit_in_use,
    read_broker,
    read_documents,
    read_llm_rate_limit,
)
from pipeline.settings import Settings
from pipeline.testing.contracts.store import new_document

NOW = 1_800_000_000.0


class ManualClock:
    def __init__(self, now: float) -> None:
        self.value = now

    def now(self) -> float:
        return self.value

    def sleep(self, seconds: float) -> None:
        self.value += seconds


@pytest.fixture
def broker() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def _unacked(client: fakeredis.FakeRedis, tag: str, queue: str, delivered_at: float) -> None:
    """What kombu's QoS.append writes for a delivered message."""
    payload = json.dumps([{"body": "e30=", "properties": {}}, "", queue])
    client.hset(UNACKED_KEY, tag, payload)
    client.zadd(UNACKED_INDEX_KEY, {tag: delivered_at})


def test_ready_messages_are_counted_across_kombus_priority_lists(
    broker: fakeredis.FakeRedis,
) -> None:
    broker.rpush("ocr", "m1", "m2")
    broker.rpush(queue_keys("ocr")[1], "m3")  # priority 3: "ocr\x06\x163"
    broker.rpush("graph", "m4")

    state = read_broker(broker)

    assert state.ready == {"ocr": 3, "text": 0, "entity": 0, "graph": 1}
    assert state.unacked == {"ocr": 0, "text": 0, "entity": 0, "graph": 0}
    assert state.oldest_unacked_s is None


def test_unacked_messages_are_attributed_to_their_queue_and_aged_on_redis_time(
    broker: fakeredis.FakeRedis,
) -> None:
    seconds, micro = broker.time()
    server_now = float(seconds) + micro / 1e6
    _unacked(broker, "tag-1", "entity", server_now - 40)
    _unacked(broker, "tag-2", "entity", server_now - 5)
    _unacked(broker, "tag-3", "text", server_now - 1)

    state = read_broker(broker)

    assert state.unacked == {"ocr": 0, "text": 1, "entity": 2, "graph": 0}
    assert state.oldest_unacked_s is not None
    assert 40 <= state.oldest_unacked_s < 45


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlDocumentStore]:
    built = create_store(f"sqlite:///{tmp_path / 'docpipe.db'}", clock=ManualClock(NOW))
    yield built
    built.close()


def _advance(store: SqlDocumentStore, uuid: str, *statuses: Status) -> None:
    for status in statuses:
        assert store.advance_status(uuid, status, stage=Stage.OCR.value, processing_version=1)


def test_documents_per_status_rates_time_to_drain_and_oldest_in_flight(
    store: SqlDocumentStore,
) -> None:
    clock = store._clock
    assert isinstance(clock, ManualClock)
    clock.value = NOW - 1000  # created long ago, before the rate window
    oldest = new_document(store, "oldest.pdf")
    clock.value = NOW - 100
    for name in ("a.pdf", "b.pdf", "c.pdf"):
        done = new_document(store, name)
        _advance(store, done.uuid, Status.OCR_QUEUED, Status.OCR_PROCESSING, Status.COMPLETED)
    waiting = new_document(store, "waiting.pdf")
    _advance(store, waiting.uuid, Status.OCR_QUEUED)
    failed = new_document(store, "failed.pdf")
    _advance(store, failed.uuid, Status.OCR_QUEUED, Status.OCR_FAILED)
    store.add_dead_letter(failed.uuid, "pipeline.start_ocr", "ocr", "boom", 5)

    documents = read_documents(store.engine, datetime.fromtimestamp(NOW, UTC), window_s=300)

    assert documents["by_status"] == {
        "completed": 3,
        "ocr_failed": 1,
        "ocr_queued": 1,
        "pending": 1,
    }
    assert documents["in_flight"] == 2
    # The first transition in the 300 s window was 100 s ago: 3 completions in 100 s
    # are 1.8/min, and the 2 in flight drain in 66.7 s at that rate.
    assert documents["rate_window_s"] == pytest.approx(100.0)
    assert documents["completed_per_min"] == pytest.approx(1.8)
    assert documents["failed_per_min"] == pytest.approx(0.6)
    assert documents["time_to_drain_s"] == pytest.approx(66.7)
    assert documents["entered_per_min"]["ocr_queued"] == pytest.approx(3.0)  # 5 in 100 s
    assert documents["dead_letters"] == 1
    assert documents["oldest_in_flight"] == {
        "document_uuid": oldest.uuid,
        "status": "pending",
        "age_s": pytest.approx(1000.0),
    }


def test_nothing_completing_means_no_time_to_drain(store: SqlDocumentStore) -> None:
    new_document(store, "stuck.pdf")

    documents = read_documents(store.engine, datetime.fromtimestamp(NOW + 3600, UTC))

    assert documents["in_flight"] == 1
    assert documents["rate_window_s"] == 300  # no transition in it: the whole window
    assert documents["completed_per_min"] == 0
    assert documents["time_to_drain_s"] is None
    assert documents["oldest_in_flight"]["age_s"] == pytest.approx(3600.0)


def test_llm_window_counts_the_rate_limiters_own_entries() -> None:
    cache = fakeredis.FakeRedis()
    limiter = RedisRateLimiter(cache, limit=50, window_seconds=60)
    for _ in range(3):
        limiter.acquire("llm")

    import time

    usage = read_llm_rate_limit(cache, limit=50, window_s=60, now=time.time())

    assert cache.exists(LLM_RATE_LIMIT_KEY)
    assert usage["calls_in_window"] == 3
    assert usage["used"] == pytest.approx(0.06)


def test_an_in_process_cache_has_no_shared_window_to_show() -> None:
    usage = read_llm_rate_limit(None, limit=50, window_s=60, now=NOW)

    assert usage["calls_in_window"] is None


def _request(task_id: str, queue: str, started: float | None = None) -> dict[str, Any]:
    return {
        "id": task_id,
        "name": "pipeline.extract_entities",
        "time_start": started,
        "acknowledged": False,
        "delivery_info": {"exchange": "", "routing_key": queue, "priority": 0},
        "worker_pid": None,
    }


def _replies() -> WorkerReplies:
    entity, ocr = "entity@host-a", "ocr@host-b"
    return WorkerReplies(
        stats={
            entity: {
                "pid": 11,
                "uptime": 120,
                "prefetch_count": 100,
                "total": {"pipeline.extract_entities": 7},
                "pool": {
                    "implementation": "celery.concurrency.gevent:TaskPool",
                    "max-concurrency": 100,
                },
            },
            ocr: {
                "pid": 12,
                "uptime": 60,
                "prefetch_count": 2,
                "total": {},
                "pool": {
                    "implementation": "celery.concurrency.prefork:TaskPool",
                    "max-concurrency": 2,
                },
            },
        },
        active_queues={entity: [{"name": "entity"}], ocr: [{"name": "ocr"}]},
        active={entity: [_request("t1", "entity", NOW - 30), _request("t2", "entity", NOW - 3)]},
        reserved={entity: [_request("t3", "entity")]},
        scheduled={
            ocr: [
                {
                    "eta": "2027-01-01T00:00:00+00:00",
                    "priority": 6,
                    "request": _request("t4", "ocr"),
                }
            ]
        },
    )


def test_snapshot_puts_broker_workers_and_documents_together(
    broker: fakeredis.FakeRedis,
) -> None:
    broker.rpush("text", "m1", "m2")
    heartbeats = {"entity@host-a": Heartbeat(sent_at=NOW - 1.5, received_at=NOW - 1.4)}
    documents = {"dead_letters": 2, "oldest_in_flight": {"age_s": 12.5}}

    snapshot = build_snapshot(
        read_broker(broker), _replies(), heartbeats, documents, {"limit": 50}, NOW
    )
    data = snapshot.as_dict()

    assert data["queues"]["text"] == {
        "ready": 2, "unacked": 0, "active": 0, "reserved": 0, "scheduled": 0, "consumers": [],
    }  # fmt: skip
    assert data["queues"]["entity"]["active"] == 2
    assert data["queues"]["entity"]["reserved"] == 1
    assert data["queues"]["entity"]["consumers"] == ["entity@host-a"]
    assert data["queues"]["ocr"]["scheduled"] == 1
    entity, ocr = data["workers"]
    assert (entity["host"], entity["pool"], entity["concurrency"]) == ("host-a", "gevent", 100)
    assert entity["processed"] == 7
    assert entity["longest_active_s"] == pytest.approx(30.0)
    assert entity["last_heartbeat_s"] == pytest.approx(1.4)
    assert ocr["pool"] == "prefork"
    assert ocr["last_heartbeat_s"] is None  # no heartbeat heard: shown as unknown
    assert data["dead_letters"] == 2
    assert data["oldest_in_flight_s"] == 12.5
    assert set(data) >= {"queues", "documents", "workers", "dead_letters", "oldest_in_flight_s",
                         "llm_rate_limit"}  # fmt: skip


@pytest.mark.parametrize(
    ("implementation", "name"),
    [
        ("celery.concurrency.prefork:TaskPool", "prefork"),
        ("celery.concurrency.thread:TaskPool", "threads"),
        ("celery.concurrency.gevent:TaskPool", "gevent"),
        ("celery.concurrency.solo:TaskPool", "solo"),
    ],
)
def test_pool_names_are_the_worker_option_names(implementation: str, name: str) -> None:
    assert pool_name({"pool": {"implementation": implementation}}) == name


def test_the_llm_limit_shown_is_the_one_the_workers_report() -> None:
    settings = Settings(_env_file=None, llm_rate_limit_calls=50)  # type: ignore[call-arg]
    agree = WorkerReplies(
        docpipe={
            "a@h": {"llm_rate_limit_calls": 500, "llm_rate_limit_window_s": 6.0},
            "b@h": {"llm_rate_limit_calls": 500, "llm_rate_limit_window_s": 6.0},
        }
    )
    disagree = WorkerReplies(
        docpipe={
            "a@h": {"llm_rate_limit_calls": 500, "llm_rate_limit_window_s": 6.0},
            "b@h": {"llm_rate_limit_calls": 50, "llm_rate_limit_window_s": 60.0},
        }
    )

    assert rate_limit_in_use(agree, settings) == (500, 6.0, "workers")
    assert rate_limit_in_use(disagree, settings) == (50, 60.0, "settings (workers disagree)")
    assert rate_limit_in_use(WorkerReplies(), settings) == (50, 60.0, "settings")
