from __future__ import annotations

import fakeredis
import pytest
import redis

from pipeline.adapters.redis_features import RedisLockManager, RedisRateLimiter, RedisStateTracker
from pipeline.errors import RateLimited
from pipeline.testing.contracts.redis_features import RedisFeaturesContract


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
