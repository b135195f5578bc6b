"""The broker connection across a Redis restart, on a private redis-server.

Two kombu behaviours the redis_restarted_mid_run scenario tripped over: a
channel whose connection was closed failed with an AttributeError (which
stopped the worker), and a publish gave up after 4 s of reconnecting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from pipeline.domain.models import Stage
from pipeline.harness.localstack import RedisServer, start_redis
from pipeline.runtime import celery_app
from pipeline.runtime.broker import queues_without_consumers
from pipeline.runtime.tasks import send_stage
from pipeline.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis", persistent=True)
    yield server
    celery_app.drop_broker_connections()
    server.stop()


def test_a_channel_whose_connection_was_lost_fails_as_a_connection_error(
    restartable_redis: RedisServer,
) -> None:
    with Connection(restartable_redis.url(0)) as conn:
        queue = conn.SimpleQueue("transport-test")
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        # What Celery's consumer does when the broker connection drops; the channel is
        # left with neither its connection nor a pool (the state the worker crashed in).
        conn.collect()
        message.channel._disconnect_pools()
        with pytest.raises(conn.connection_errors, match="connection of this channel was closed"):
            message.ack()
        # How the worker acks (kombu's ack_log_error): logged, not raised.
        message.ack_log_error(logging.getLogger("test"), conn.connection_errors)


@pytest.mark.parametrize("pooled", [False, True], ids=["new-connection", "pooled-connection"])
def test_a_publish_waits_for_a_restarting_broker(
    restartable_redis: RedisServer, pooled: bool
) -> None:
    celery_app.configure(
        Settings(_env_file=None, broker_url=restartable_redis.url(0), eager=False)  # type: ignore[call-arg]
    )
    if pooled:
        send_stage(Stage.CHUNKING, "warm-up", 1)  # a pooled connection the restart breaks
    restartable_redis.stop()
    # Longer than kombu's default reconnect window (broker_connection_timeout, 4 s).
    threading.Timer(6, restartable_redis.start_again).start()

    started = time.monotonic()
    send_stage(Stage.CHUNKING, "after-restart", 1)
    waited = time.monotonic() - started

    assert waited > 5
    assert restartable_redis.client(0).llen("text") == (2 if pooled else 1)


def test_the_queue_check_asks_again_after_the_broker_dropped_its_pooled_connection(
    restartable_redis: RedisServer,
) -> None:
    app = celery_app.configure(
        Settings(_env_file=None, broker_url=restartable_redis.url(0), eager=False)  # type: ignore[call-arg]
    )
    # No worker runs: every queue is without a consumer, asked on a pooled connection.
    assert queues_without_consumers(app, ("text",), timeout=0.2) == ["text"]
    # The server closes every connection of its clients (as a restart or an idle timeout does).
    killed = restartable_redis.client(1).client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    assert queues_without_consumers(app, ("text",), timeout=0.2) == ["text"]
