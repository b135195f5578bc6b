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
import json
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
    the state Redis, tasks.run_stage's delivery count) cannot run. The limit is one above
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


# --- what `docpipe monitor` and `docpipe doctor` read --------------------------------------

#: The columns `rabbitmqctl list_queues` is asked for (JSON formatter: one object per queue).
LIST_QUEUES_COLUMNS = (
    "name",
    "type",
    "arguments",
    "consumers",
    "messages_ready",
    "messages_unacknowledged",
)


@dataclass(frozen=True)
class QueueReading:
    """One queue as RabbitMQ reports it; None is a figure this reading could not see."""

    #: False: the queue is not declared on the vhost (a passive declare said NOT_FOUND).
    exists: bool
    ready: int | None = None
    consumers: int | None = None
    #: Delivered and not acknowledged: only `rabbitmqctl` (or the management API) says.
    unacked: int | None = None
    #: `quorum`, `classic`, `stream`; None without rabbitmqctl.
    queue_type: str | None = None
    arguments: dict[str, Any] | None = None


@dataclass(frozen=True)
class RabbitReading:
    """The task queues and the dead-letter queue, and why some figures are missing."""

    queues: dict[str, QueueReading]
    #: Where ready/consumer counts came from and, when rabbitmqctl could not run, why
    #: unacked counts and queue types are unknown.
    source: str
    unavailable: str | None = None


def vhost_of(broker_url: str) -> str:
    """The virtual host an amqp:// URL names (`amqp://h:5672` and `amqp://h:5672/` mean `/`)."""
    from urllib.parse import unquote

    path = urlparse(broker_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def passive_queue_states(
    broker_url: str, queues: Sequence[str], *, timeout_s: float = 5.0
) -> dict[str, QueueReading]:
    """Ready messages and consumers per queue from a passive declare (AMQP's queue.declare-ok).

    That reply carries only those two counts: not the unacked ones, not the type or
    the arguments. A passive declare never creates a queue: a missing one is reported.
    """
    readings: dict[str, QueueReading] = {}
    connection = connect(broker_url, timeout_s=timeout_s)
    try:
        for name in queues:
            channel: Any = connection.channel()
            try:
                reply = channel.queue_declare(name, passive=True)
                readings[name] = QueueReading(
                    exists=True, ready=int(reply.message_count), consumers=int(reply.consumer_count)
                )
            except Exception as exc:
                if "NOT_FOUND" not in str(exc):
                    raise
                readings[name] = QueueReading(exists=False)
            finally:
                _close_quietly(channel)
    finally:
        connection.release()
    return readings


def parse_list_queues(output: str) -> dict[str, dict[str, Any]]:
    """`rabbitmqctl list_queues ... --formatter json` output, by queue name.

    RabbitMQ 3.10 lists arguments as AMQP table entries `[key, type, value]`
    (`[["x-delivery-limit", "signedint", 4]]`); a JSON object or `[key, value]`
    pairs are taken as well: all become a dict of key -> value.
    """
    rows = json.loads(output or "[]")
    by_name: dict[str, dict[str, Any]] = {}
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict) or "name" not in row:
            continue
        arguments = row.get("arguments")
        if isinstance(arguments, list):
            arguments = {
                str(entry[0]): entry[-1]
                for entry in arguments
                if isinstance(entry, list | tuple) and len(entry) in (2, 3)
            }
        by_name[str(row["name"])] = {**row, "arguments": arguments or {}}
    return by_name


def rabbitmqctl_queues(
    broker_url: str, *, timeout_s: float = RABBITMQCTL_TIMEOUT_S
) -> tuple[dict[str, dict[str, Any]] | None, str]:
    """(queues by name, source) from `rabbitmqctl list_queues -p VHOST`, or (None, why not)."""
    host = urlparse(broker_url).hostname or "localhost"
    if not _is_local(host):
        return None, f"the broker runs on {host}, not this machine (no rabbitmqctl)"
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        return None, "rabbitmqctl is not on PATH"
    vhost = vhost_of(broker_url)
    argv = [binary, "list_queues", "-p", vhost, *LIST_QUEUES_COLUMNS, "--formatter", "json"]
    argv.append("--quiet")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"rabbitmqctl list_queues failed: {type(exc).__name__}"
    if done.returncode != 0:
        reason = (done.stderr.strip() or done.stdout.strip()).splitlines()[:1]
        return None, f"rabbitmqctl list_queues failed: {redact(' '.join(reason))}"
    try:
        return parse_list_queues(done.stdout), f"rabbitmqctl list_queues -p {vhost}"
    except ValueError:
        return None, f"rabbitmqctl list_queues said {done.stdout.strip()[:80]!r}"


def merge_readings(
    passive: dict[str, QueueReading], listed: dict[str, dict[str, Any]] | None
) -> dict[str, QueueReading]:
    """The passive declare's counts, completed by rabbitmqctl's columns where it answered."""
    merged: dict[str, QueueReading] = {}
    for name, reading in passive.items():
        row = (listed or {}).get(name)
        if row is None or not reading.exists:
            merged[name] = reading
            continue
        merged[name] = QueueReading(
            exists=True,
            ready=reading.ready,
            consumers=reading.consumers,
            unacked=_count(row.get("messages_unacknowledged")),
            queue_type=str(row["type"]) if row.get("type") else None,
            arguments=dict(row.get("arguments") or {}),
        )
    return merged


def _count(value: object) -> int | None:
    return int(value) if isinstance(value, int) else None


def read_queues(broker_url: str, queues: Sequence[str], *, timeout_s: float = 5.0) -> RabbitReading:
    """The task queues and `docpipe.undeliverable`: counts always, the rest when local."""
    names = [*queues, UNDELIVERABLE_QUEUE]
    passive = passive_queue_states(broker_url, names, timeout_s=timeout_s)
    listed, listed_source = rabbitmqctl_queues(broker_url)
    source = "AMQP passive declare (ready, consumers)"
    if listed is None:
        return RabbitReading(
            merge_readings(passive, None),
            source,
            unavailable=f"unacked counts and queue types unknown: {listed_source} (AMQP tells "
            "neither; the management API would, but is not asked)",
        )
    return RabbitReading(
        merge_readings(passive, listed),
        f"{source}; {listed_source} (unacked, type, arguments)",
    )
