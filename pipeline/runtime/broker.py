"""Broker mode: checks that a real deployment is wired, and waiting for documents.

REFERENCE.md failures 1 and 2: tasks PENDING forever because no worker
consumes a queue, and workers started without the configuration. Both are
refused up front with a message that says what to do.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis
from celery import Celery

from pipeline.domain.models import QUEUES, Status
from pipeline.errors import ConfigurationError, UserFacingError
from pipeline.ports.services import Services
from pipeline.settings import Settings, redact_url

#: Celery's own variables (`celery -b URL` sets CELERY_BROKER_URL, `--result-backend`
#: CELERY_RESULT_BACKEND): inside Celery they outrank the app's configuration, so
#: a worker would consume from one broker while docpipe checks and publishes to another.
CELERY_OVERRIDES = {"CELERY_BROKER_URL": "broker_url", "CELERY_RESULT_BACKEND": "result_backend"}

#: The only eviction policy under which Redis never drops a queued task.
SAFE_EVICTION_POLICY = "noeviction"


def broker_problems(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """What stops these settings from working across processes (empty when fine).

    Pure: reads the settings and the environment (Celery's overriding
    variables), never the network; `broker_preflight` adds the server checks.
    """
    problems = celery_override_problems(settings, os.environ if environ is None else environ)
    if settings.broker_url.startswith("memory://"):
        problems.append(
            "DOCPIPE_BROKER_URL is memory:// (the embedded default); set it to a redis:// "
            "or amqp:// (RabbitMQ) URL"
        )
    elif settings.broker_kind == "other":
        problems.append(
            f"DOCPIPE_BROKER_URL {redact_url(settings.broker_url)} is neither Redis nor "
            "RabbitMQ: docpipe supports and tests redis:// and amqp:// brokers only"
        )
    if settings.redis_url.startswith("fakeredis://"):
        problems.append(
            "DOCPIPE_REDIS_URL is fakeredis:// (in-process only); workers need a shared "
            "redis:// URL for state, cache, locks and rate limits"
        )
    if settings.blob_url.startswith("memory://"):
        problems.append("DOCPIPE_BLOB_URL is memory://; workers need file:// or s3://")
    if settings.database_url in {"sqlite://", "sqlite:///:memory:"}:
        problems.append("DOCPIPE_DATABASE_URL is an in-memory SQLite database")
    if _same_redis_database(settings.broker_url, settings.redis_url):
        problems.append(
            f"broker and cache share one Redis database ({redact_url(settings.broker_url)}); "
            "use separate databases so cache pressure can never evict queued tasks"
        )
    return problems


def celery_override_problems(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """CELERY_BROKER_URL / CELERY_RESULT_BACKEND that disagree with docpipe's own settings.

    Refused rather than honoured: docpipe's checks, the intake and the queue
    processor read DOCPIPE_*, and one URL for everything is the only safe rule.
    """
    problems = []
    for variable, field in CELERY_OVERRIDES.items():
        celery_url = environ.get(variable)
        docpipe_url: str | None = getattr(settings, field)
        if not celery_url or (docpipe_url is not None and _same_url(celery_url, docpipe_url)):
            continue
        ours = f"DOCPIPE_{field.upper()}"
        problems.append(
            f"{variable} ({redact_url(celery_url)}, also what `celery -b/--result-backend` sets) "
            f"differs from {ours} ({redact_url(docpipe_url) if docpipe_url else 'unset'}); "
            f"Celery would use {variable} while docpipe reads {ours}: set {ours} only "
            "(or both to the same URL)"
        )
    return problems


def _normalised_url(url: str) -> str:
    """A Redis URL with its database number (`redis://h:6379` is database 0)."""
    url = url.rstrip("/")
    if url.startswith("redis") and not url.rsplit("/", 1)[-1].isdigit():
        return url + "/0"
    return url


def _same_url(first: str, second: str) -> bool:
    return _normalised_url(first) == _normalised_url(second)


def _same_redis_database(broker_url: str, redis_url: str) -> bool:
    both_redis = broker_url.startswith("redis") and redis_url.startswith("redis")
    return both_redis and _same_url(broker_url, redis_url)


def broker_server_problems(broker_url: str, *, timeout_s: float = 2.0) -> list[str]:
    """Refuse a broker Redis that may evict keys: queued tasks would vanish silently.

    Queued messages are Redis lists without a TTL; under any policy but
    `noeviction` a full Redis may drop them (REFERENCE.md's allkeys-lru incident).
    A server that cannot be asked (CONFIG disabled, unreachable) gets a loud
    warning on stderr instead: the check cannot decide, the user can.
    """
    if not broker_url.startswith(("redis://", "rediss://")):
        return []
    where = redact_url(broker_url)
    try:
        client = redis.Redis.from_url(
            broker_url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            decode_responses=True,
        )
        try:
            policy = str(client.config_get("maxmemory-policy").get("maxmemory-policy", ""))
        finally:
            client.close()
    except redis.ResponseError as exc:
        _warn(
            f"cannot check maxmemory-policy of the broker's Redis ({where}): CONFIG GET was "
            f"refused ({redact_url(str(exc))}). Make sure it is {SAFE_EVICTION_POLICY}: "
            "under any other policy a full Redis silently evicts queued tasks."
        )
        return []
    except (redis.RedisError, OSError, ValueError) as exc:
        _warn(
            f"cannot reach the broker's Redis ({where}) to check its maxmemory-policy: "
            f"{redact_url(str(exc))}"
        )
        return []
    if not policy:
        _warn(
            f"the broker's Redis ({where}) did not report a maxmemory-policy; make sure "
            f"it is {SAFE_EVICTION_POLICY}, or a full Redis may evict queued tasks."
        )
        return []
    if policy == SAFE_EVICTION_POLICY:
        return []
    return [
        f"the broker's Redis ({where}) has maxmemory-policy {policy}: when it fills up it "
        "evicts keys, and queued tasks vanish without an error; set it to "
        f"{SAFE_EVICTION_POLICY} (redis.conf, or CONFIG SET maxmemory-policy "
        f"{SAFE_EVICTION_POLICY}) and keep cache data in another database or instance"
    ]


def rabbitmq_server_problems(settings: Settings, *, timeout_s: float = 5.0) -> list[str]:
    """RabbitMQ's consumer_timeout against the task time limit, and the dead-letter queue.

    The server's value is read where it can be (the management API, or rabbitmqctl
    on this machine, pipeline.runtime.rabbitmq); where it cannot, the setting
    `broker_consumer_timeout_s` is trusted, with a warning that says so.
    """
    from pipeline.runtime import rabbitmq

    if settings.broker_kind != "amqp":
        return []
    where = redact_url(settings.broker_url)
    problems: list[str] = []
    try:
        rabbitmq.declare_queues(settings, timeout_s=timeout_s)
    except rabbitmq.RabbitUnavailable as exc:
        return [f"cannot use the RabbitMQ broker ({where}): {exc}"]
    found = rabbitmq.server_consumer_timeout(settings.broker_url, timeout_s=timeout_s)
    if found.seconds is None:
        _warn(
            f"cannot read consumer_timeout of the RabbitMQ broker ({where}): {found.source}; "
            f"assuming broker_consumer_timeout_s ({settings.broker_consumer_timeout_s} s). "
            "Make sure the server's consumer_timeout is at least that, or RabbitMQ "
            "redelivers long tasks while they still run."
        )
        return problems
    unacked, what = settings.longest_unacked_s()
    if found.seconds <= unacked:
        problems.append(
            f"the RabbitMQ broker ({where}) has consumer_timeout {found.seconds:g} s "
            f"(read from {found.source}), not more than {what} ({unacked:g} s): it would close "
            "the channel of a long task and redeliver it while it still runs; raise "
            "consumer_timeout in rabbitmq.conf (milliseconds) or lower task_time_limit_s"
        )
    elif found.seconds < settings.broker_consumer_timeout_s:
        problems.append(
            f"DOCPIPE_BROKER_CONSUMER_TIMEOUT_S ({settings.broker_consumer_timeout_s}) is more "
            f"than the RabbitMQ broker's consumer_timeout ({found.seconds:g} s, from "
            f"{found.source}); set it to the server's value"
        )
    return problems


def broker_preflight(settings: Settings) -> list[str]:
    """Everything that stops a broker deployment, settings first, then the broker server."""
    problems = broker_problems(settings)
    if problems:
        return problems
    if settings.broker_kind == "amqp":
        return rabbitmq_server_problems(settings)
    return broker_server_problems(settings.broker_url)


def require_broker_settings(settings: Settings) -> None:
    problems = broker_preflight(settings)
    if problems:
        raise ConfigurationError("broker mode is not configured: " + "; ".join(problems))


def refuse_unless_workers_can_run(settings: Settings) -> None:
    """Raise the `UserFacingError` (exit 2) that says why a worker cannot run with these settings.

    The one check for `docpipe worker` and for plain `celery -A pipeline.runtime.celery_app
    worker` (whose `celeryd_init` receiver renders it and exits 2 the same way).
    """
    problems = broker_preflight(settings)
    if problems:
        raise UserFacingError("cannot start a worker: " + "; ".join(problems))


def _warn(message: str) -> None:
    # stderr, not logging: the CLI logs only errors unless -v, and this must be seen.
    print(f"warning: {message}", file=sys.stderr, flush=True)


def drop_pooled_connections(app: Celery) -> None:
    """Forget the app's pooled broker connections: the next use may have another broker
    URL, or the broker dropped them.

    What Celery itself does after a fork (Celery._after_fork): the connection
    pool and the producer pool are dropped, so nothing talks to an old broker.
    """
    app._pool = None  # type: ignore[attr-defined]
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


def queues_without_consumers(
    app: Celery, queues: Sequence[str] = QUEUES, timeout: float = 1.5, workers: int | None = None
) -> list[str]:
    """Queues no running worker consumes (a task sent there would wait forever).

    `workers`: how many workers there are, when the caller knows (it started them): the
    answer is complete once that many replied, without waiting out `timeout`.

    A pooled broker connection that went away since its last use (a broker restart,
    an idle timeout, a CLIENT KILL) fails its first command: the question is asked
    once more on a fresh connection; a broker still away raises.
    """
    inspect = app.control.inspect(timeout=timeout, limit=workers)
    try:
        replies = inspect.active_queues() or {}
    except Exception as exc:
        # The transport's connection errors, looked up only when something was raised:
        # the waits for workers ask this every half second.
        with app.connection_for_write() as connection:
            if not isinstance(exc, connection.connection_errors):
                raise
        drop_pooled_connections(app)
        replies = inspect.active_queues() or {}
    consumed = {queue["name"] for worker in replies.values() for queue in worker}
    return [queue for queue in queues if queue not in consumed]


def wait_for_consumers(
    app: Celery, queues: Sequence[str] = QUEUES, *, timeout_s: float = 15.0
) -> list[str]:
    """Give freshly started workers a moment; returns the queues still without a consumer."""
    deadline = time.monotonic() + timeout_s
    while True:
        idle = queues_without_consumers(app, queues)
        if not idle or time.monotonic() >= deadline:
            return idle


def wait_for_terminal(
    services: Services,
    document_uuids: Sequence[str],
    *,
    timeout_s: float,
    on_progress: Callable[[int], None] = lambda done: None,
    poll_interval_s: float = 0.25,
) -> dict[str, Status]:
    """Poll the database until every document is terminal or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    statuses: dict[str, Status] = {}
    while True:
        statuses = services.store.statuses(document_uuids)
        done = sum(1 for status in statuses.values() if status.is_terminal)
        on_progress(done)
        if done == len(document_uuids) or time.monotonic() >= deadline:
            return statuses
        time.sleep(poll_interval_s)


def purge_queues(app: Celery) -> dict[str, int]:
    """Delete every waiting message of the docpipe queues; returns the count per queue.

    Not `app.control.purge()`: that only purges the queues the app declares
    (the default one), not all four. Messages a worker had already reserved
    (unacked) are not waiting and are not purged; a reset bumps the documents'
    processing version so those become no-ops when redelivered.
    """
    counts: dict[str, int] = {}
    with app.connection_for_write() as connection:
        # kombu's stubs type the channel as StdChannel, which lacks queue_purge.
        channel: Any = connection.default_channel
        for name in QUEUES:
            if connection.transport.driver_type == "amqp":
                # RabbitMQ refuses to purge a queue nobody declared yet (NOT_FOUND, and
                # the channel is closed): declare it first, with the app's arguments.
                app.amqp.queues[name](channel).declare()
            counts[name] = int(channel.queue_purge(name) or 0)
    return counts
