from __future__ import annotations

import fakeredis
import pytest
import redis

from pipeline.adapters import redis_features
from pipeline.adapters.redis_features import RedisLockManager, RedisRateLimiter, RedisStateTracker
from pipeline.errors import RateLimited
from pipeline.testing.contracts.redis_features import RedisFeaturesContract, acquisition_keywords


class TestRedisFeaturesOnFakeredis(RedisFeaturesContract):
    @pytest.fixture
    def client(self) -> redis.Redis:
        return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def test_rate_limiter_fails_closed_when_redis_is_unreachable() -> None:
    server = fakeredis.FakeServer()
    limiter = RedisRateLimiter(fakeredis.FakeRedis(server=server), limit=100, window_seconds=60)
    server.connected = False
    with pytest.raises(RateLimited, match="unavailable"):
        limiter.acquire("llm")


def test_token_aware_limiter_fails_closed_when_redis_is_unreachable() -> None:
    server = fakeredis.FakeServer()
    limiter = RedisRateLimiter(
        fakeredis.FakeRedis(server=server), limit=100, window_seconds=60, token_limit=10_000
    )
    limiter.acquire("llm", 100)
    server.connected = False
    with pytest.raises(RateLimited, match="unavailable"):
        limiter.acquire("llm", 100)


def test_the_last_state_write_raises_when_redis_is_unreachable() -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    token = RedisLockManager(client).acquire("d:ocr:v1", 30, owner="task-1")
    assert token is not None
    server.connected = False
    with pytest.raises(redis.ConnectionError):
        RedisStateTracker(client, ttl_seconds=60).record_and_release(
            "d", "ocr", "completed", lock_name="d:ocr:v1", token=token
        )


def test_fakeredis_takes_the_ordinary_script_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """HotScripts writes RESP on redis-py's sockets; fakeredis has none, so it must not try."""

    def refused(*args: object) -> bytes:
        raise AssertionError("packed a command for fakeredis")

    monkeypatch.setattr(redis_features, "_pack_evalsha", refused)
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    tracker = RedisStateTracker(client, ttl_seconds=60)
    counted = tracker.acquire_counted_and_record_started(
        "d", "ocr", **acquisition_keywords("d:ocr:v1", "task-1", replacing=("started",))
    )
    assert counted.deliveries == 1 and counted.token is not None


def test_packed_arguments_are_encoded_as_redis_py_encodes_them() -> None:
    packed = redis_features._pack_evalsha("f" * 40, ["key:é"], [7, 2.5, "x", b"\x00"])
    expected = redis.Connection().pack_command(
        "EVALSHA", "f" * 40, 1, "key:é", 7, 2.5, "x", b"\x00"
    )
    assert packed == b"".join(expected)
    with pytest.raises(redis.DataError):
        redis_features._pack_evalsha("f" * 40, [], [True])
