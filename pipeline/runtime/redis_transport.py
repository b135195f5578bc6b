"""kombu's Redis transport, with a closed channel failing as a lost connection.

After a Redis restart, kombu keeps using channels whose connection it already
closed: acking a message received before the outage, requeueing the messages
in flight while closing, publishing through a producer whose channel was
replaced. Such a channel fails with an AttributeError (`'NoneType' object has
no attribute 'hostname'` / `'client'`), which neither Celery nor kombu treats
as a connection error: the worker stops with "Unrecoverable error" and a
publish is not retried (celery 5.7 / kombu 5.7, seen in the
redis_restarted_mid_run scenario). Here such a channel raises redis'
ConnectionError instead, which every caller already handles: the ack is
logged and skipped (the message comes back after the visibility timeout, and
stages are idempotent), the close is ignored, the publish reconnects.

Installed for the `redis://` and `rediss://` schemes by `install()`, which
pipeline.runtime.celery_app calls on import (workers and clients alike).
"""

from __future__ import annotations

from typing import Any

import redis
from kombu import transport
from kombu.transport import redis as kombu_redis

CLOSED_CHANNEL = "the broker connection of this channel was closed (Redis restarted?)"


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError(CLOSED_CHANNEL)
        return super()._connparams(asynchronous)  # type: ignore[misc]


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    path = f"{__name__}:Transport"
    for scheme in ("redis", "rediss"):
        transport.TRANSPORT_ALIASES[scheme] = path
        # kombu caches what a scheme resolved to; a cached plain transport would win.
        vars(transport)["_transport_cache"].pop(scheme, None)
