from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from pipeline.adapters.redis_features import RedisRateLimiter
from pipeline.errors import RateLimited
from pipeline.harness.localstack import RedisServer, free_port
from pipeline.testing.contracts.redis_features import RedisFeaturesContract

pytestmark = pytest.mark.integration


class TestRedisFeaturesOnRealRedis(RedisFeaturesContract):
    @pytest.fixture
    def client(self, redis_server: RedisServer) -> Iterator[redis.Redis]:
        client = redis_server.client(db=1)
        client.flushdb()
        yield client
        client.flushdb()


def test_rate_limiter_fails_closed_when_redis_is_down() -> None:
    client = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    limiter = RedisRateLimiter(client, limit=100, window_seconds=60)
    with pytest.raises(RateLimited, match="unavailable"):
        limiter.acquire("llm")


def test_token_aware_limiter_fails_closed_when_redis_is_down() -> None:
    client = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    limiter = RedisRateLimiter(client, limit=100, window_seconds=60, token_limit=10_000)
    with pytest.raises(RateLimited, match="unavailable"):
        limiter.acquire("llm", 500)
