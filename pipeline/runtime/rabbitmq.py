"""RabbitMQ brokers (DOCPIPE_BROKER_URL=amqp://...): the task queues, and asking the server.

The task queues' declaration (quorum, delivery limit, dead-letter exchange) that
pipeline.runtime.celery_app configures Celery with; connecting within a bounded
time; declaring the queues before any worker consumes; counting waiting
messages; reading the server's `consumer_timeout` (RabbitMQ closes the channel
of a delivery left unacked for longer and redelivers the message). That value is
read with `rabbitmqctl eval` on the broker's own machine (the management API
exposes no field for it that docpipe knows of); elsewhere docpipe trusts
DOCPIPE_BROKER_CONSUMER_TIMEOUT_S and says so.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from kombu import Connection, Exchange, Queue

from pipeline.domain.models import QUEUES
from pipeline.redaction import redact
from pipeline.settings import Settings

#: The topic exchange every docpipe queue is bound to (routing key = queue name). Not the
#: direct exchanges Celery would create: its native delayed delivery (countdowns parked in
#: RabbitMQ on quorum queues) refuses direct exchanges and would hold the message instead.
TASK_EXCHANGE = "docpipe"
#: Where a quorum queue dead-letters a message delivered more than its delivery limit
#: allows: kept, for inspection (`rabbitmqadmin get queue=docpipe.undeliverable`).
UNDELIVERABLE_EXCHANGE = "docpipe.undeliverable"
UNDELIVERABLE_QUEUE = "docpipe.undeliverable"


def task_queue_arguments(settings: Settings) -> dict[str, Any]:
    """The RabbitMQ arguments of the four task queues (README: RabbitMQ and Redis).

    Quorum queues count every return of a message (a worker killed or disconnected
    with it unacked) and dead-letter it once the count passes `x-delivery-limit`: a
    poison message cannot loop forever even when docpipe's own guard (a counter in
    the state Redis, tasks._redelivered_too_often) cannot run. The limit is one above
    max_redeliveries, so the guard - which also records the document as dead-lettered
    - goes first; the broker is the backstop.
    """
    if settings.broker_queue_type == "classic":
        return {}
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.max_redeliveries + 1,
        "x-dead-letter-exchange": UNDELIVERABLE_EXCHANGE,
    }


def task_queues(settings: Settings) -> list[Queue]:
    exchange = Exchange(TASK_EXCHANGE, type="topic", durable=True)
    arguments = task_queue_arguments(settings)
    return [
        Queue(name, exchange, routing_key=name, durable=True, queue_arguments=arguments)
        for name in QUEUES
    ]


#: Seconds `rabbitmqctl eval` may take (it starts an Erlang VM: ~1-2 s).
RABBITMQCTL_TIMEOUT_S = 20.0


class RabbitUnavailable(Exception):
    """The broker could not be reached, refused the login or has no such vhost."""


def connect(broker_url: str, *, timeout_s: float) -> Connection:
    """An open kombu connection, or RabbitUnavailable with the server's reason (redacted)."""
    connection = Connection(broker_url, connect_timeout=timeout_s)
    try:
        connection.ensure_connection(
            max_retries=1, interval_start=0, timeout=max(1, round(timeout_s))
        )
    except Exception as exc:
        connection.release()
        raise RabbitUnavailable(redact(f"{type(exc).__name__}: {exc}")) from None
    return connection


def declare_queues(settings: Settings, *, timeout_s: float) -> None:
    """The four task queues, and the queue quorum task queues dead-letter to (celery_app).

    Without the dead-letter queue RabbitMQ drops a message past its delivery limit
    without a trace. The task queues are declared here, before any worker consumes:
    a worker binds every docpipe queue to Celery's delayed-delivery exchange when it
    starts, and fails to for a queue no other worker has declared yet. Declaring is
    idempotent; every broker-mode entry point does it (the preflight).
    """
    connection = connect(settings.broker_url, timeout_s=timeout_s)
    try:
        channel: Any = connection.channel()  # kombu's stubs: a StdChannel without close()
        exchange = Exchange(UNDELIVERABLE_EXCHANGE, type="fanout", durable=True)
        Queue(UNDELIVERABLE_QUEUE, exchange, durable=True)(channel).declare()
        for queue in task_queues(settings):
            queue(channel).declare()
        channel.close()
    except Exception as exc:
        raise RabbitUnavailable(redact(f"{type(exc).__name__}: {exc}")) from None
    finally:
        connection.release()


def queue_lengths(
    broker_url: str, queues: Sequence[str], *, timeout_s: float = 5.0
) -> dict[str, int]:
    """Messages ready in each queue (passive declare); a queue not declared yet has none."""
    lengths: dict[str, int] = {}
    connection = connect(broker_url, timeout_s=timeout_s)
    try:
        for name in queues:
            # A passive declare of a missing queue closes the channel: one channel per queue.
            channel: Any = connection.channel()
            try:
                lengths[name] = int(channel.queue_declare(name, passive=True).message_count)
            except Exception as exc:
                if "NOT_FOUND" not in str(exc):
                    raise
                lengths[name] = 0
            finally:
                _close_quietly(channel)
    finally:
        connection.release()
    return lengths


def _close_quietly(channel: Any) -> None:
    try:
        channel.close()
    except Exception:  # already closed by the server (NOT_FOUND)
        return


@dataclass(frozen=True)
class ServerValue:
    """The server's consumer_timeout in seconds (None: unknown, or disabled) and its source."""

    seconds: float | None
    source: str


_ENV_VALUE = re.compile(r"\{ok,\s*(\d+)\}")


def server_consumer_timeout(
    broker_url: str, *, timeout_s: float = RABBITMQCTL_TIMEOUT_S
) -> ServerValue:
    """RabbitMQ's consumer_timeout, read with `rabbitmqctl eval` when the broker is local."""
    host = urlparse(broker_url).hostname or "localhost"
    if not _is_local(host):
        return ServerValue(None, f"the broker runs on {host}, not this machine (no rabbitmqctl)")
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        return ServerValue(None, "rabbitmqctl is not on PATH")
    argv = [binary, "eval", "application:get_env(rabbit, consumer_timeout)."]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return ServerValue(None, f"rabbitmqctl eval failed: {type(exc).__name__}")
    output = done.stdout.strip()
    if done.returncode != 0:
        reason = (done.stderr.strip() or output).splitlines()[:1]
        return ServerValue(None, f"rabbitmqctl eval failed: {redact(' '.join(reason))}")
    match = _ENV_VALUE.search(output)
    if output == "undefined":
        # Not set: RabbitMQ 3.8.17+ applies its built-in 30 minutes.
        return ServerValue(1800.0, "rabbitmqctl (unset: the built-in default)")
    if match is None:
        return ServerValue(None, f"rabbitmqctl eval said {output[:80]!r}")
    return ServerValue(int(match.group(1)) / 1000, "rabbitmqctl eval")


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
