from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from redis.commands.core import Script

from pipeline.adapters.redis_features import RedisRateLimiter, RedisStateTracker
from pipeline.errors import RateLimited
from pipeline.harness.localstack import RedisServer, free_port
from pipeline.ports import CountedAcquisition
from pipeline.testing.contracts.redis_features import RedisFeaturesContract, acquisition_keywords

pytestmark = pytest.mark.integration


@pytest.fixture
def real_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client(db=1)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


class TestRedisFeaturesOnRealRedis(RedisFeaturesContract):
    @pytest.fixture
    def client(self, real_client: redis.Redis) -> redis.Redis:
        return real_client


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


# --- HotScripts: the stage delivery's two scripts on kept connections ----------------------


def _acquire(tracker: RedisStateTracker, owner: str) -> CountedAcquisition:
    return tracker.acquire_counted_and_record_started(
        "doc-1",
        "chunking",
        **acquisition_keywords("doc-1:chunking:v1", owner, replacing=("started",)),
    )


def test_hot_scripts_skip_redis_pys_command_path(
    real_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = RedisStateTracker(real_client, ttl_seconds=3600)
    real_client.script_flush()
    warm = _acquire(tracker, "warm")  # each script is loaded once, the ordinary way
    assert warm.token is not None
    tracker.record_and_release(
        "doc-1", "chunking", "completed", lock_name="doc-1:chunking:v1", token=warm.token
    )

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("went through Script.__call__")

    monkeypatch.setattr(Script, "__call__", refused)
    acquired = _acquire(tracker, "task-1")
    assert acquired.deliveries == 1 and acquired.token is not None
    tracker.record_and_release(
        "doc-1", "chunking", "completed", lock_name="doc-1:chunking:v1", token=acquired.token
    )
    assert tracker.get("doc-1")["chunking_status"] == "completed"
    assert real_client.get("docpipe:lock:doc-1:chunking:v1") is None


def test_hot_scripts_load_a_script_the_server_forgot(real_client: redis.Redis) -> None:
    tracker = RedisStateTracker(real_client, ttl_seconds=3600)
    assert _acquire(tracker, "task-1").token is not None
    real_client.script_flush()  # a restarted Redis knows no script
    second = _acquire(tracker, "task-1")
    assert (second.deliveries, second.token is not None) == (2, True)
    assert _acquire(tracker, "task-1").deliveries == 3  # and the kept connection still works


def test_hot_scripts_replace_a_connection_the_server_closed(real_client: redis.Redis) -> None:
    tracker = RedisStateTracker(real_client, ttl_seconds=3600)
    assert _acquire(tracker, "task-1").deliveries == 1
    # The server closes the kept connection (a Redis restart or an idle timeout); only it:
    # the session's redis-server serves other tests' pooled connections too.
    (kept,) = tracker._hot._idle
    host, port = kept._sock.getsockname()[:2]
    assert real_client.client_kill_filter(_type="normal", addr=f"{host}:{port}") == 1
    assert _acquire(tracker, "task-1").deliveries == 2
    assert _acquire(tracker, "task-1").deliveries == 3
    # The broken connection went back to the pool, not into a pile of its in-use ones.
    pool = real_client.connection_pool
    assert len(pool._in_use_connections) == len(tracker._hot._idle)


def test_a_forked_child_does_not_share_the_parents_kept_connection(
    real_client: redis.Redis,
) -> None:
    tracker = RedisStateTracker(real_client, ttl_seconds=3600)
    assert _acquire(tracker, "task-1").deliveries == 1
    parents = {id(connection) for connection in tracker._hot._idle}
    assert parents
    pid = os.fork()
    if pid == 0:  # the child: a prefork pool process, which must open its own socket
        code = 1
        try:
            counted = _acquire(tracker, "task-2")
            reused = any(id(connection) in parents for connection in tracker._hot._idle)
            code = 3 if reused else 0 if counted.deliveries == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _acquire(tracker, "task-1").deliveries == 2


def test_a_script_sent_without_waiting_is_read_before_the_next_call(
    real_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Its reply, an error too, is read (and the error logged) before the connection's next
    command, whose own reply stays its own; the connection stays the kept one."""
    tracker = RedisStateTracker(real_client, ttl_seconds=3600)
    hot = tracker._hot
    assert _acquire(tracker, "task-1").deliveries == 1
    kept = list(hot._idle)
    real_client.hset("not-a-count", "field", "value")
    failing = real_client.register_script("return redis.call('incr', KEYS[1])")
    hot.send(failing, ["not-a-count"], [])
    hot.send(failing, ["a-count"], [])  # reads the first reply before it writes
    assert hot._unread == {id(kept[0]): 1}

    assert _acquire(tracker, "task-1").deliveries == 2

    assert real_client.get("a-count") == b"1"
    assert hot._idle == kept and hot._unread == {}
    assert "WRONGTYPE" in caplog.text
