"""One contract for the Redis features, run on fakeredis (unit) and a real Redis (integration)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from pipeline.adapters import redis_features
from pipeline.adapters.redis_features import (
    RATE_LIMIT_PREFIX,
    RATE_LIMIT_TOTALS_SUFFIX,
    STATE_KEY,
    RedisCache,
    RedisLockManager,
    RedisRateLimiter,
    RedisStateTracker,
)
from pipeline.errors import RateLimited
from pipeline.ports import CountedAcquisition

#: The delivery counter's TTL in the counted-acquisition tests.
WEEK = 7 * 24 * 3600


class RedisFeaturesContract:
    """Subclasses provide a `client` fixture (a clean redis-py client)."""

    def test_state_hash_has_stage_fields_and_a_seven_day_ttl(self, client: redis.Redis) -> None:
        tracker = RedisStateTracker(client, ttl_seconds=7 * 24 * 3600)
        tracker.record("doc-1", "ocr", "ocr_processing", {"task_id": "t1"})
        tracker.record("doc-1", "ocr", "ocr_complete")
        state = tracker.get("doc-1")
        assert state["ocr_status"] == "ocr_complete"
        assert float(state["ocr_timestamp"]) > 0
        assert '"task_id": "t1"' in state["ocr_metadata"]
        ttl = client.ttl(STATE_KEY.format(uuid="doc-1"))
        assert 7 * 24 * 3600 - 5 <= int(ttl) <= 7 * 24 * 3600

    def test_the_last_state_write_releases_only_its_own_lock(self, client: redis.Redis) -> None:
        tracker = RedisStateTracker(client, ttl_seconds=3600)
        locks = RedisLockManager(client)
        token = locks.acquire("doc-1:chunking:v1", ttl_seconds=30, owner="task-1")
        assert token is not None
        # A token that no longer holds the lock (a delivery taken over) releases nothing.
        tracker.record_and_release(
            "doc-1", "chunking", "completed", lock_name="doc-1:chunking:v1", token="task-1#old"
        )
        assert tracker.get("doc-1")["chunking_status"] == "completed"
        assert locks.acquire("doc-1:chunking:v1", ttl_seconds=30, owner="task-2") is None
        tracker.record_and_release(
            "doc-1",
            "chunking",
            "completed",
            lock_name="doc-1:chunking:v1",
            token=token,
            metadata={"chunks": 3},
        )
        state = tracker.get("doc-1")
        assert state["last_status"] == "completed" and float(state["chunking_timestamp"]) > 0
        assert state["chunking_metadata"] == '{"chunks": 3}'
        assert 3600 - 5 <= int(client.ttl(STATE_KEY.format(uuid="doc-1"))) <= 3600
        assert locks.acquire("doc-1:chunking:v1", ttl_seconds=30, owner="task-2") is not None

    def test_a_copy_of_an_attempt_marked_finished_takes_no_lock(self, client: redis.Redis) -> None:
        """The mark is sent without waiting: the next call on its connection reads its reply."""
        tracker = RedisStateTracker(client, ttl_seconds=3600)
        keywords = acquisition_keywords("doc-1:chunking:v1", "task-1", replacing=("started",))
        for _ in range(3):
            counted = tracker.acquire_counted_and_record_started("doc-1", "chunking", **keywords)
        assert counted.deliveries == 3 and counted.token is not None and not counted.finished
        tracker.record_and_release(
            "doc-1", "chunking", "completed", lock_name="doc-1:chunking:v1", token=counted.token
        )
        tracker.mark_attempt_finished(keywords["counter"])
        tracker.mark_attempt_finished(keywords["counter"])  # marked once only
        copy = tracker.acquire_counted_and_record_started("doc-1", "chunking", **keywords)
        assert copy == CountedAcquisition(4, None, None, finished=True)
        assert tracker.get("doc-1")["chunking_status"] == "completed"
        assert client.get(redis_features.LOCK_PREFIX + "doc-1:chunking:v1") is None
        assert 0 < int(client.ttl(keywords["counter"])) <= WEEK
        # A count that is gone (Redis restarted) stays gone.
        tracker.mark_attempt_finished("docpipe:deliveries:gone:0")
        tracker.get("doc-1")
        assert client.get("docpipe:deliveries:gone:0") is None

    def test_a_mark_the_server_does_not_know_yet_still_runs(self, client: redis.Redis) -> None:
        """Sent without waiting, a script the server forgot (restarted, flushed) is not lost."""
        tracker = RedisStateTracker(client, ttl_seconds=3600)
        keywords = acquisition_keywords("doc-1:ocr:v1", "task-1", replacing=("started",))
        tracker.acquire_counted_and_record_started("doc-1", "ocr", **keywords)
        client.script_flush()
        tracker.mark_attempt_finished(keywords["counter"])
        assert tracker.acquire_counted_and_record_started("doc-1", "ocr", **keywords).finished

    def test_a_counted_acquisition_records_started_with_its_lock(self, client: redis.Redis) -> None:
        tracker = RedisStateTracker(client, ttl_seconds=3600)
        locks = RedisLockManager(client)
        tracker.record("doc-1", "ocr", "ocr_queued", {"task_id": "t1"})
        before = tracker.get("doc-1")
        counted = tracker.acquire_counted_and_record_started(
            "doc-1",
            "ocr",
            **acquisition_keywords("doc-1:ocr:v1", "task-1", replacing=("started", "ocr_queued")),
        )
        assert counted.deliveries == 1 and counted.token is not None
        assert int(client.get("docpipe:deliveries:task-1:0") or 0) == 1
        assert locks.acquire("doc-1:ocr:v1", ttl_seconds=30, owner="task-2") is None
        state = tracker.get("doc-1")
        assert state["ocr_status"] == "started" and state["last_status"] == "started"
        assert state["ocr_metadata"] == before["ocr_metadata"]
        assert counted.started is not None and counted.started.token == counted.token
        assert state["ocr_started_by"] == counted.token and float(state["ocr_timestamp"]) > 0
        assert 3600 - 5 <= int(client.ttl(STATE_KEY.format(uuid="doc-1"))) <= 3600
        # The claim refused: the hash is as it was.
        tracker.unrecord_started(counted.started)
        assert tracker.get("doc-1") == before

    def test_a_counted_acquisition_leaves_a_stage_past_it_and_undoes_into_absence(
        self, client: redis.Redis
    ) -> None:
        tracker = RedisStateTracker(client, ttl_seconds=3600)
        tracker.record("doc-1", "chunking", "completed")
        tracker.record("doc-1", "entity_extraction", "started")
        before = tracker.get("doc-1")
        # A redelivery of the finished stage: its lock is free, its status not replaced.
        duplicate = tracker.acquire_counted_and_record_started(
            "doc-1",
            "chunking",
            **acquisition_keywords("doc-1:chunking:v1", "task-1", replacing=("started",)),
        )
        assert duplicate.token is not None and duplicate.started is None
        assert tracker.get("doc-1") == before
        # A stage the hash has never seen: written, and undone field by field.
        fresh = tracker.acquire_counted_and_record_started(
            "doc-1",
            "relationship_staging",
            **acquisition_keywords(
                "doc-1:relationship_staging:v1", "task-2", replacing=("started",)
            ),
        )
        assert fresh.started is not None
        assert tracker.get("doc-1")["relationship_staging_status"] == "started"
        tracker.unrecord_started(fresh.started)
        assert tracker.get("doc-1") == before

    def test_no_started_without_the_lock(self, client: redis.Redis) -> None:
        tracker = RedisStateTracker(client, ttl_seconds=3600)
        locks = RedisLockManager(client)
        held = locks.acquire("doc-1:ocr:v1", ttl_seconds=30, owner="task-1")
        assert held is not None
        refused = tracker.acquire_counted_and_record_started(
            "doc-1", "ocr", **acquisition_keywords("doc-1:ocr:v1", "task-2", replacing=("started",))
        )
        assert refused == CountedAcquisition(deliveries=1, token=None)
        over = tracker.acquire_counted_and_record_started(
            "doc-1",
            "ocr",
            **acquisition_keywords("doc-1:ocr:v1", "task-1", replacing=("started",), limit=0),
        )
        assert over == CountedAcquisition(deliveries=1, token=None)
        assert tracker.get("doc-1") == {}

    def test_started_is_not_undone_once_the_stage_was_written_since(
        self, client: redis.Redis
    ) -> None:
        tracker = RedisStateTracker(client, ttl_seconds=3600)
        first = tracker.acquire_counted_and_record_started(
            "doc-1",
            "chunking",
            **acquisition_keywords("doc-1:chunking:v1", "task-1", replacing=("started",)),
        )
        assert first.started is not None and first.token is not None
        # A redelivery of the same task took the lock over and finished the stage.
        tracker.record_and_release(
            "doc-1", "chunking", "completed", lock_name="doc-1:chunking:v1", token=first.token
        )
        tracker.unrecord_started(first.started)
        state = tracker.get("doc-1")
        assert state["chunking_status"] == "completed" and state["last_status"] == "completed"
        # Another stage started meanwhile: `last_status` is its own, kept.
        second = tracker.acquire_counted_and_record_started(
            "doc-2",
            "chunking",
            **acquisition_keywords("doc-2:chunking:v1", "task-3", replacing=("started",)),
        )
        assert second.started is not None
        tracker.record("doc-2", "entity_extraction", "completed")
        tracker.unrecord_started(second.started)
        assert tracker.get("doc-2")["last_status"] == "completed"
        assert "chunking_status" not in tracker.get("doc-2")

    def test_a_takeover_s_started_in_the_same_millisecond_is_not_undone(
        self, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Two deliveries of one task (a visibility-timeout restore) write "started" at the
        same timestamp; the first one's claim refused, its undo leaves the second's."""
        monkeypatch.setattr(redis_features, "_timestamp", lambda: "1796650000.123")
        tracker = RedisStateTracker(client, ttl_seconds=3600)
        keywords = acquisition_keywords("doc-1:ocr:v1", "task-1", replacing=("started",))
        first = tracker.acquire_counted_and_record_started("doc-1", "ocr", **keywords)
        second = tracker.acquire_counted_and_record_started("doc-1", "ocr", **keywords)
        assert first.started is not None and second.started is not None
        assert second.token is not None and second.token != first.token
        taken_over = tracker.get("doc-1")
        assert taken_over["ocr_started_by"] == second.token

        tracker.unrecord_started(first.started)
        assert tracker.get("doc-1") == taken_over

    def test_cache_round_trips_and_expires(self, client: redis.Redis) -> None:
        cache = RedisCache(client)
        assert cache.get("v1:doc:ocr") is None
        cache.set("v1:doc:ocr", "text ü", ttl_seconds=1)
        assert cache.get("v1:doc:ocr") == "text ü"
        assert cache.get("v2:doc:ocr") is None  # another processing version never hits
        time.sleep(1.2)
        assert cache.get("v1:doc:ocr") is None

    def test_get_many_reads_values_and_misses_in_order_past_one_mget(
        self, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(redis_features, "MGET_KEYS", 2)
        cache = RedisCache(client)
        cache.set("v1:a", "A", ttl_seconds=60)
        cache.set("v1:c", "C ü", ttl_seconds=60)
        cache.set("v1:e", "E", ttl_seconds=60)

        assert cache.get_many(["v1:a", "v1:b", "v1:c", "v1:d", "v1:e"]) == [
            "A",
            None,
            "C ü",
            None,
            "E",
        ]
        assert cache.get_many([]) == []

    def test_lock_is_exclusive_and_released_only_by_its_owner(self, client: redis.Redis) -> None:
        locks = RedisLockManager(client)
        token = locks.acquire("doc:ocr", ttl_seconds=30)
        assert token is not None
        assert locks.acquire("doc:ocr", ttl_seconds=30) is None
        locks.release("doc:ocr", "not-the-owner")
        assert locks.acquire("doc:ocr", ttl_seconds=30) is None
        locks.release("doc:ocr", token)
        assert locks.acquire("doc:ocr", ttl_seconds=30) is not None

    def test_a_redelivery_takes_the_lock_over_and_the_first_cannot_release_it(
        self, client: redis.Redis
    ) -> None:
        locks = RedisLockManager(client)
        first = locks.acquire("doc:ocr", ttl_seconds=30, owner="task-1")
        # The same task id delivered again (worker killed, visibility timeout): no TTL wait.
        second = locks.acquire("doc:ocr", ttl_seconds=30, owner="task-1")
        assert first is not None and second is not None and first != second
        assert locks.acquire("doc:ocr", ttl_seconds=30, owner="task-2") is None
        locks.release("doc:ocr", first)  # the older delivery's release is a no-op now
        assert locks.acquire("doc:ocr", ttl_seconds=30, owner="task-2") is None
        locks.release("doc:ocr", second)
        assert locks.acquire("doc:ocr", ttl_seconds=30, owner="task-2") is not None

    def test_a_counted_acquisition_counts_each_delivery_and_stops_at_the_limit(
        self, client: redis.Redis
    ) -> None:
        tracker = RedisStateTracker(client, ttl_seconds=3600)
        locks = RedisLockManager(client)
        counter = "docpipe:deliveries:task-1:0"

        def deliver() -> CountedAcquisition:
            return tracker.acquire_counted_and_record_started(
                "doc",
                "ocr",
                **acquisition_keywords("doc:ocr", "task-1", replacing=("started",), limit=2),
            )

        first = deliver()
        assert first.deliveries == 1 and first.token is not None
        assert 0 < int(client.ttl(counter)) <= WEEK
        # A redelivery of the same task id: counted, and it takes the lock over.
        second = deliver()
        assert second.deliveries == 2 and second.token not in (None, first.token)
        locks.release("doc:ocr", str(first.token))  # the older delivery cannot release it
        assert locks.acquire("doc:ocr", ttl_seconds=30, owner="task-2") is None
        # Over the limit: counted, and the lock is not tried (the holder keeps it).
        assert deliver() == CountedAcquisition(deliveries=3, token=None)
        assert locks.acquire("doc:ocr", ttl_seconds=30, owner="task-2") is None
        locks.release("doc:ocr", str(second.token))
        assert locks.acquire("doc:ocr", ttl_seconds=30, owner="task-2") is not None

    def test_a_counted_acquisition_never_takes_another_owners_lock(
        self, client: redis.Redis
    ) -> None:
        tracker = RedisStateTracker(client, ttl_seconds=3600)
        locks = RedisLockManager(client)
        held = locks.acquire("doc:chunking", ttl_seconds=30, owner="task-1")
        assert held is not None
        refused = tracker.acquire_counted_and_record_started(
            "doc",
            "chunking",
            **acquisition_keywords("doc:chunking", "task-2", replacing=("started",)),
        )
        assert refused == CountedAcquisition(deliveries=1, token=None)
        locks.release("doc:chunking", held)
        taken = tracker.acquire_counted_and_record_started(
            "doc",
            "chunking",
            **acquisition_keywords("doc:chunking", "task-2", replacing=("started",)),
        )
        assert taken.deliveries == 2 and taken.token is not None
        assert locks.acquire("doc:chunking", ttl_seconds=30, owner="task-1") is None

    def test_lock_is_exclusive_across_threads(self, client: redis.Redis) -> None:
        locks = RedisLockManager(client)
        winners: list[str] = []
        barrier = threading.Barrier(8)

        def contend() -> None:
            barrier.wait()
            token = locks.acquire("doc:chunking", ttl_seconds=30)
            if token is not None:
                winners.append(token)

        threads = [threading.Thread(target=contend) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1

    def test_rate_limit_allows_the_window_then_refuses_with_retry_after(
        self, client: redis.Redis
    ) -> None:
        limiter = RedisRateLimiter(client, limit=3, window_seconds=1.0)
        for _ in range(3):
            limiter.acquire("llm")
        with pytest.raises(RateLimited) as refused:
            limiter.acquire("llm")
        assert refused.value.retry_after is not None
        assert 0 < refused.value.retry_after <= 1.0
        time.sleep(1.1)
        limiter.acquire("llm")

    def test_rate_limit_is_shared_between_limiters(self, client: redis.Redis) -> None:
        first = RedisRateLimiter(client, limit=2, window_seconds=30)
        second = RedisRateLimiter(client, limit=2, window_seconds=30)
        first.acquire("llm")
        second.acquire("llm")
        with pytest.raises(RateLimited):
            first.acquire("llm")

    def test_token_limit_refuses_a_request_whose_tokens_do_not_fit(
        self, client: redis.Redis
    ) -> None:
        limiter = RedisRateLimiter(client, limit=100, window_seconds=1.0, token_limit=1000)
        limiter.acquire("llm", 600)
        limiter.acquire("llm", 400)  # exactly the limit: fits
        with pytest.raises(RateLimited, match="1000 tokens") as refused:
            limiter.acquire("llm", 1)
        # Requests are far under their limit: the tokens alone refused it, until the
        # oldest request leaves the window.
        assert refused.value.retry_after is not None
        assert 0 < refused.value.retry_after <= 1.0
        time.sleep(1.1)
        limiter.acquire("llm", 900)

    def test_token_limit_waits_only_until_enough_tokens_have_left(
        self, client: redis.Redis
    ) -> None:
        limiter = RedisRateLimiter(client, limit=100, window_seconds=2.0, token_limit=1000)
        limiter.acquire("llm", 700)
        time.sleep(0.5)
        limiter.acquire("llm", 300)
        with pytest.raises(RateLimited) as small:
            limiter.acquire("llm", 200)  # waits for the first request (700) to leave
        with pytest.raises(RateLimited) as large:
            limiter.acquire("llm", 900)  # needs both to leave: a longer wait
        assert small.value.retry_after is not None and large.value.retry_after is not None
        assert small.value.retry_after <= 1.6
        assert large.value.retry_after >= small.value.retry_after + 0.4

    def test_requests_and_tokens_are_both_shared_between_limiters(
        self, client: redis.Redis
    ) -> None:
        first = RedisRateLimiter(client, limit=3, window_seconds=30, token_limit=500)
        second = RedisRateLimiter(client, limit=3, window_seconds=30, token_limit=500)
        first.acquire("llm", 300)
        with pytest.raises(RateLimited):
            second.acquire("llm", 300)  # the other worker's tokens count
        second.acquire("llm", 100)
        second.acquire("llm", 0)
        with pytest.raises(RateLimited):
            first.acquire("llm", 0)  # three requests: the request limit, not the tokens

    def test_a_request_over_the_whole_token_limit_waits_for_an_empty_window(
        self, client: redis.Redis
    ) -> None:
        limiter = RedisRateLimiter(client, limit=100, window_seconds=1.0, token_limit=1000)
        limiter.acquire("llm", 5000)  # alone in the window: it goes (it could never fit)
        with pytest.raises(RateLimited):
            limiter.acquire("llm", 1)  # it reserved the whole limit
        time.sleep(1.1)
        limiter.acquire("llm", 1)

    def test_the_window_totals_expire_with_it_and_are_counted_again_when_they_disagree(
        self, client: redis.Redis
    ) -> None:
        window_key = RATE_LIMIT_PREFIX + "llm"
        totals_key = window_key + RATE_LIMIT_TOTALS_SUFFIX
        limiter = RedisRateLimiter(client, limit=100, window_seconds=30, token_limit=1000)
        limiter.acquire("llm", 600)
        assert client.get(totals_key) == b"1:600"
        assert 0 < int(client.pttl(totals_key)) <= 30_000
        client.delete(totals_key)  # evicted
        with pytest.raises(RateLimited):
            limiter.acquire("llm", 500)  # the 600 in the window still count
        # A request written without totals (a limiter of an older docpipe) counts too.
        client.zadd(window_key, {"older-limiter:300": time.time()})
        with pytest.raises(RateLimited):
            limiter.acquire("llm", 200)
        limiter.acquire("llm", 100)  # 600 + 300 + 100: exactly the limit
        assert client.get(totals_key) == b"3:1000"
        client.delete(window_key)  # the window gone (expired) while its totals stayed
        limiter.acquire("llm", 1000)
        assert client.get(totals_key) == b"1:1000"

    def test_without_a_token_limit_tokens_are_not_counted(self, client: redis.Redis) -> None:
        limiter = RedisRateLimiter(client, limit=2, window_seconds=30)
        limiter.acquire("llm", 10**9)
        limiter.acquire("llm", 10**9)
        with pytest.raises(RateLimited, match="2 calls per 30s"):
            limiter.acquire("llm", 0)


def acquisition_keywords(
    lock_name: str, owner: str, *, replacing: tuple[str, ...], limit: int = 3
) -> dict[str, Any]:
    """`acquire_counted_and_record_started`'s keywords: a delivery of the task `owner`."""
    return {
        "lock_name": lock_name,
        "ttl_seconds": 30,
        "owner": owner,
        "counter": f"docpipe:deliveries:{owner}:0",
        "counter_ttl_s": WEEK,
        "limit": limit,
        "replacing": replacing,
    }
