"""`docpipe doctor`: a live deployment checked against the pitfalls the old system hit.

Two halves. `gather_facts` reads the deployment - the broker's Redis (CONFIG,
INFO, TIME), the workers' own answers (`inspect().stats()`, `conf()`,
`active_queues()`, `active()`), their heartbeat events (their clocks), the
database's schema version and, if one answers, Flower without credentials.
`diagnose` is pure: facts in, findings out, each with what was seen and the
fix, so every check is unit-tested on hand-made facts.

The pitfalls (REFERENCE.md, the seed plan): a broker Redis that may evict
queued tasks (allkeys-lru in the plan) or that shares its database with the
cache; a queue nobody consumes (failure 1); pools on which Celery does not
enforce time limits, where the visibility timeout is all that bounds a
delivery (failure 15); prefetch and late acks as the workers really run
them; a database behind (or ahead of) this code's schema; worker clocks that
disagree with Redis (ETA tasks, the visibility timeout's restore and the
shared LLM window all compare timestamps written by different machines);
Flower answering without credentials.

On RabbitMQ (amqp://) the Redis checks of the broker (eviction policy, a
cache sharing its database, the visibility timeout) do not apply and are not
run; instead: the server's `consumer_timeout` against the longest a delivery
may stay unacked (read as the preflight reads it, `rabbitmqctl eval` on the
broker's machine), task queues that are not quorum queues or lack the
delivery limit and dead-letter exchange (`rabbitmqctl list_queues`: a
passive declare does not return arguments), queues RabbitMQ counts no
consumer on, and messages dead-lettered to `docpipe.undeliverable`. Worker
clocks are then compared with this machine's clock (AMQP has no TIME).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import redis

from pipeline.domain.models import QUEUES
from pipeline.redaction import redact_url
from pipeline.runtime.broker import SAFE_EVICTION_POLICY
from pipeline.runtime.monitor import (
    DEFAULT_HEARTBEAT_WAIT_S,
    DEFAULT_INSPECT_TIMEOUT_S,
    Heartbeat,
    WorkerReplies,
    observe_workers,
    pool_name,
)
from pipeline.settings import TIME_LIMIT_POOLS

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy import Engine

    from pipeline.settings import Settings

ERROR, WARNING = "error", "warning"

#: kombu's default visibility timeout (1 h). On a pool that cannot stop a task the
#: visibility timeout is the only bound on a delivery; below kombu's own default a
#: slow but healthy task is delivered a second time while it still runs.
UNENFORCED_POOL_MIN_VISIBILITY_S = 3600.0
#: Worker clock vs Redis TIME. The LLM window (60 s) scores calls with each caller's
#: clock and ETA/countdowns are the receiving worker's: a second already shifts both.
MAX_CLOCK_SKEW_S = 1.0
#: Where `docpipe flower` listens by default; probed when no Flower URL is given.
DEFAULT_FLOWER_URL = "http://127.0.0.1:5555"
FLOWER_PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str
    #: What was seen, with the figures.
    seen: str
    fix: str
    #: The worker, queue or service it is about (None: the deployment).
    subject: str | None = None


@dataclass(frozen=True)
class RedisFacts:
    url: str  # redacted
    db: int
    #: INFO server run_id: two URLs with the same run_id reach the same server.
    run_id: str | None
    maxmemory_policy: str | None
    maxmemory: int | None
    #: Why CONFIG GET was not answered (renamed, ACL), None when it was.
    config_error: str | None = None


@dataclass(frozen=True)
class WorkerFacts:
    name: str
    pool: str | None
    concurrency: int | None
    queues: tuple[str, ...]
    #: As the worker runs them (`inspect().conf()`, `stats()`); None: not reported.
    prefetch_multiplier: int | None
    prefetch_count: int | None
    acks_late: bool | None
    reject_on_worker_lost: bool | None
    #: Whether a task past its hard time limit is acknowledged (Celery's default) or requeued.
    acks_on_timeout: bool | None
    visibility_timeout_s: float | None
    task_time_limit_s: float | None
    #: The longest-running task it has right now (its own clock), None when idle.
    longest_active_s: float | None
    #: Its clock minus Redis TIME, from its last heartbeat; None without one.
    clock_offset_s: float | None


@dataclass(frozen=True)
class FlowerFacts:
    url: str
    #: HTTP status of each path fetched without credentials (None: no answer).
    statuses: Mapping[str, int | None]


@dataclass(frozen=True)
class RabbitQueueFacts:
    name: str
    #: False: not declared on the vhost.
    exists: bool
    ready: int | None
    #: Consumers RabbitMQ counts on the queue (passive declare).
    consumers: int | None
    #: None: unknown (rabbitmqctl not available).
    queue_type: str | None
    arguments: Mapping[str, Any] | None


@dataclass(frozen=True)
class RabbitFacts:
    url: str  # redacted
    queues: tuple[RabbitQueueFacts, ...]
    #: Messages in docpipe.undeliverable (None: the queue is not declared).
    dead_letters: int | None
    #: The server's consumer_timeout (None: unknown) and where it was read.
    consumer_timeout_s: float | None
    consumer_timeout_source: str
    #: Settings.longest_unacked_s(): how long one delivery may stay unacked, and why.
    longest_unacked_s: float
    longest_unacked_what: str
    #: DOCPIPE_BROKER_CONSUMER_TIMEOUT_S and DOCPIPE_BROKER_QUEUE_TYPE.
    configured_consumer_timeout_s: float
    configured_queue_type: str
    #: Why queue types and arguments are unknown (None: read).
    unavailable: str | None = None


@dataclass(frozen=True)
class Facts:
    broker: RedisFacts | None
    cache: RedisFacts | None
    queues: tuple[str, ...]
    workers: tuple[WorkerFacts, ...]
    #: The version `docpipe db upgrade` recorded (0: none recorded).
    schema_version: int
    latest_schema_version: int
    #: `table.column` this code's schema has and the database's tables lack.
    missing_columns: tuple[str, ...] = ()
    flower: FlowerFacts | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: RabbitMQ's side, on an amqp:// broker (then `broker` is None).
    rabbitmq: RabbitFacts | None = None
    #: What the workers' clocks are compared with.
    clock_reference: str = "the broker Redis' TIME"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the checks (pure) ---------------------------------------------------------------------


def check_broker_eviction(facts: Facts) -> list[Finding]:
    broker = facts.broker
    if broker is None:
        return []
    if broker.config_error is not None:
        return [
            Finding(
                "broker-eviction-unknown",
                WARNING,
                f"the broker's Redis ({broker.url}) refused CONFIG GET maxmemory-policy "
                f"({broker.config_error})",
                f"check on the server that maxmemory-policy is {SAFE_EVICTION_POLICY}",
                subject="broker",
            )
        ]
    if broker.maxmemory_policy in (None, SAFE_EVICTION_POLICY):
        return []
    return [
        Finding(
            "broker-eviction",
            ERROR,
            f"the broker's Redis ({broker.url}) has maxmemory-policy {broker.maxmemory_policy}"
            f" (maxmemory {broker.maxmemory or 0} bytes): when it fills up it evicts keys, "
            "queued and unacked tasks included, without an error",
            f"CONFIG SET maxmemory-policy {SAFE_EVICTION_POLICY} and set it in redis.conf; keep "
            "the cache in another Redis instance if it needs eviction",
            subject="broker",
        )
    ]


def check_shared_redis(facts: Facts) -> list[Finding]:
    broker, cache = facts.broker, facts.cache
    if broker is None or cache is None or broker.run_id is None or broker.run_id != cache.run_id:
        return []
    if broker.db == cache.db:
        return [
            Finding(
                "broker-cache-same-db",
                ERROR,
                f"broker ({broker.url}) and cache/state/locks ({cache.url}) are the same Redis "
                f"database (server run_id {broker.run_id[:8]}, db {broker.db})",
                "point DOCPIPE_REDIS_URL at another database number (e.g. /1) or, better, "
                "another Redis instance; restart workers afterwards",
                subject="broker",
            )
        ]
    return []


def check_consumers(facts: Facts) -> list[Finding]:
    """A queue no worker that answered consumes - or, on RabbitMQ, with no consumer at all.

    RabbitMQ's own count also catches a worker that lists the queue but whose
    consumer is gone (its channel closed, e.g. by consumer_timeout).
    """
    consumed = {queue for worker in facts.workers for queue in worker.queues}
    at_broker = {q.name: q for q in facts.rabbitmq.queues} if facts.rabbitmq else {}
    findings = []
    for queue in facts.queues:
        rabbit = at_broker.get(queue)
        broker_says_none = rabbit is not None and rabbit.consumers == 0
        if queue in consumed and not broker_says_none:
            continue
        seen = (
            f"no running worker consumes queue {queue!r} ({len(facts.workers)} worker(s) "
            "answered): its tasks wait forever"
            if queue not in consumed
            else f"a worker lists queue {queue!r}, but RabbitMQ counts no consumer on it: "
            "its tasks wait"
        )
        if rabbit is not None and rabbit.exists:
            seen += f" (RabbitMQ: {rabbit.consumers} consumer(s), {rabbit.ready} ready)"
        findings.append(
            Finding(
                "queue-without-consumer",
                ERROR,
                seen,
                f"start one: docpipe worker --queues {queue} (make workers starts the plan's "
                "layout)",
                subject=queue,
            )
        )
    return findings


def check_consumer_timeout(facts: Facts) -> list[Finding]:
    """RabbitMQ closes the channel of a delivery unacked past consumer_timeout, redelivers it."""
    rabbit = facts.rabbitmq
    if rabbit is None:
        return []
    server, longest, what = (
        rabbit.consumer_timeout_s,
        rabbit.longest_unacked_s,
        rabbit.longest_unacked_what,
    )
    # The workers hold the deliveries: a limit one of them runs with beats this process's.
    for worker in facts.workers:
        if worker.task_time_limit_s is not None and worker.task_time_limit_s > longest:
            longest = worker.task_time_limit_s
            what = f"{worker.name}'s task_time_limit"
    if server is None:
        return [
            Finding(
                "consumer-timeout-unknown",
                WARNING,
                "cannot read the RabbitMQ server's consumer_timeout "
                f"({rabbit.consumer_timeout_source}); docpipe assumes "
                "DOCPIPE_BROKER_CONSUMER_TIMEOUT_S "
                f"({rabbit.configured_consumer_timeout_s:g} s)",
                f"check on the server that consumer_timeout (rabbitmq.conf, milliseconds) is above "
                f"{what} ({longest:g} s)",
                subject="broker",
            )
        ]
    if server <= longest:
        return [
            Finding(
                "consumer-timeout-short",
                ERROR,
                f"the RabbitMQ server's consumer_timeout is {server:g} s (from "
                f"{rabbit.consumer_timeout_source}), not more than {what} "
                f"({longest:g} s): RabbitMQ closes the channel of a long task and delivers it "
                "again while it still runs",
                "raise consumer_timeout in rabbitmq.conf (milliseconds) and restart RabbitMQ, "
                "or lower DOCPIPE_TASK_TIME_LIMIT_S",
                subject="broker",
            )
        ]
    if server < rabbit.configured_consumer_timeout_s:
        return [
            Finding(
                "consumer-timeout-setting",
                WARNING,
                f"DOCPIPE_BROKER_CONSUMER_TIMEOUT_S ({rabbit.configured_consumer_timeout_s:g}) "
                f"is more than the server's consumer_timeout ({server:g} s, from "
                f"{rabbit.consumer_timeout_source})",
                "set DOCPIPE_BROKER_CONSUMER_TIMEOUT_S to the server's value",
                subject="broker",
            )
        ]
    return []


def check_queue_declarations(facts: Facts) -> list[Finding]:
    """Task queues that are not quorum queues with a delivery limit and a dead-letter exchange."""
    from pipeline.runtime.rabbitmq import UNDELIVERABLE_EXCHANGE

    rabbit = facts.rabbitmq
    if rabbit is None:
        return []
    quorum_expected = rabbit.configured_queue_type == "quorum"
    findings = []
    for queue in rabbit.queues:
        if not queue.exists or queue.queue_type is None:
            continue
        arguments = queue.arguments or {}
        if queue.queue_type != "quorum":
            findings.append(
                Finding(
                    "queue-not-quorum",
                    ERROR if quorum_expected else WARNING,
                    f"queue {queue.name!r} is a {queue.queue_type} queue: RabbitMQ does not count "
                    "its redeliveries, so a message that kills its worker comes back forever"
                    + (
                        " (and workers with DOCPIPE_BROKER_QUEUE_TYPE=quorum fail to declare it)"
                        if quorum_expected
                        else ""
                    ),
                    f"with workers stopped and the queue drained: rabbitmqctl delete_queue "
                    f"{queue.name} -p VHOST, then start a worker with "
                    "DOCPIPE_BROKER_QUEUE_TYPE=quorum (it declares the queue again)",
                    subject=queue.name,
                )
            )
            continue
        lacking = [
            name
            for name in ("x-delivery-limit", "x-dead-letter-exchange")
            if arguments.get(name) in (None, "")
        ]
        if lacking:
            findings.append(
                Finding(
                    "queue-without-delivery-limit",
                    WARNING,
                    f"quorum queue {queue.name!r} has no {' or '.join(lacking)}: a poison "
                    "message is "
                    + (
                        "redelivered without bound"
                        if "x-delivery-limit" in lacking
                        else f"dropped past the limit instead of kept in {UNDELIVERABLE_EXCHANGE}"
                    ),
                    "apply a policy (rabbitmqctl set_policy -p VHOST --apply-to quorum_queues "
                    f"docpipe '^(ocr|text|entity|graph)$' '{{\"delivery-limit\": N, "
                    f'"dead-letter-exchange": "{UNDELIVERABLE_EXCHANGE}"}}\'), or re-declare the '
                    "queue with docpipe's arguments",
                    subject=queue.name,
                )
            )
    return findings


def check_broker_dead_letters(facts: Facts) -> list[Finding]:
    rabbit = facts.rabbitmq
    if rabbit is None or not rabbit.dead_letters:
        return []
    return [
        Finding(
            "broker-dead-letters",
            WARNING,
            f"{rabbit.dead_letters} message(s) in docpipe.undeliverable: RabbitMQ dead-lettered "
            "them past the delivery limit",
            "look at them (rabbitmqadmin get queue=docpipe.undeliverable) and the documents' "
            "status; docpipe's own guard should have dead-lettered them first",
            subject="docpipe.undeliverable",
        )
    ]


def check_unenforced_time_limits(facts: Facts) -> list[Finding]:
    """On RabbitMQ the visibility timeout means nothing: consumer_timeout bounds a delivery."""
    rabbit = facts.rabbitmq
    findings = []
    for worker in facts.workers:
        if worker.pool is None or worker.pool in TIME_LIMIT_POOLS:
            continue
        visibility = worker.visibility_timeout_s if rabbit is None else None
        limit = worker.task_time_limit_s
        redelivered = (
            f"at the visibility timeout ({_seconds(visibility)}) Redis delivers it again"
            if rabbit is None
            else f"at consumer_timeout ({_seconds(rabbit.consumer_timeout_s)}) RabbitMQ "
            "delivers it again"
        )
        overrun = (
            worker.longest_active_s is not None
            and limit is not None
            and worker.longest_active_s > limit
        )
        if overrun:
            findings.append(
                Finding(
                    "task-past-time-limit",
                    ERROR,
                    f"{worker.name} ({worker.pool}) has run a task for "
                    f"{worker.longest_active_s:.0f} s, past task_time_limit ({limit:g} s), which "
                    f"the {worker.pool} pool does not enforce; {redelivered} while it still runs",
                    "find the hung call (docpipe -v status, the worker's log) and give it a "
                    "timeout; run this queue on prefork if its tasks can hang",
                    subject=worker.name,
                )
            )
        if visibility is not None and visibility < UNENFORCED_POOL_MIN_VISIBILITY_S:
            findings.append(
                Finding(
                    "unenforced-pool-short-visibility",
                    WARNING,
                    f"{worker.name} runs the {worker.pool} pool, which does not enforce "
                    f"task_time_limit ({_seconds(limit)}); its visibility timeout is "
                    f"{visibility:g} s, so any task running longer is delivered a second time "
                    "while the first still runs (fenced, but done twice)",
                    f"raise DOCPIPE_VISIBILITY_TIMEOUT_S to at least "
                    f"{UNENFORCED_POOL_MIN_VISIBILITY_S:g} (kombu's default) on every worker and "
                    "producer, or run this queue on the prefork pool",
                    subject=worker.name,
                )
            )
    return findings


def check_acks_and_prefetch(facts: Facts) -> list[Finding]:
    findings = []
    for worker in facts.workers:
        if worker.acks_late is False:
            findings.append(
                Finding(
                    "acks-early",
                    ERROR,
                    f"{worker.name} runs with task_acks_late=False: a task is acknowledged "
                    "before it runs, so a worker killed mid-task loses it",
                    "run workers with docpipe's configuration (docpipe worker sets "
                    "task_acks_late=True)",
                    subject=worker.name,
                )
            )
        elif worker.acks_late and worker.reject_on_worker_lost is False:
            findings.append(
                Finding(
                    "worker-lost-acked",
                    WARNING,
                    f"{worker.name} runs with task_acks_late but task_reject_on_worker_lost="
                    "False: a task whose process dies is acknowledged, not redelivered",
                    "set task_reject_on_worker_lost=True (docpipe's configuration does)",
                    subject=worker.name,
                )
            )
        if worker.acks_late and worker.pool in TIME_LIMIT_POOLS and worker.acks_on_timeout:
            findings.append(
                Finding(
                    "timeout-acked",
                    WARNING,
                    f"{worker.name} acknowledges a task killed at its hard time limit "
                    "(task_acks_on_timeout): its document stays at *_processing with no reason, "
                    "and nothing delivers it again",
                    "set task_acks_on_timeout=False (docpipe's configuration does): the message "
                    "goes back, and the redelivery guard dead-letters one that always hangs",
                    subject=worker.name,
                )
            )
        if worker.prefetch_multiplier is not None and worker.prefetch_multiplier != 1:
            findings.append(
                Finding(
                    "prefetch",
                    WARNING,
                    f"{worker.name} prefetches {worker.prefetch_multiplier} tasks per pool slot "
                    f"(prefetch count {worker.prefetch_count}): long tasks queue behind each "
                    "other on one worker while others idle",
                    "worker_prefetch_multiplier=1 (docpipe's configuration)",
                    subject=worker.name,
                )
            )
    return findings


def check_schema(facts: Facts) -> list[Finding]:
    """A recorded version other than this code's, or columns this code needs that are missing.

    Version 0 is a database whose tables `create_all` made (the store does on
    first use) without recording a version: complete unless columns are missing.
    """
    version, latest = facts.schema_version, facts.latest_schema_version
    missing = list(facts.missing_columns)
    behind = missing or 0 < version < latest
    if behind:
        shown = f"version {version}" if version else "no recorded version"
        lacking = f", missing {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}"
        return [
            Finding(
                "schema-behind",
                ERROR,
                f"the database's schema is at {shown}{lacking if missing else ''}; this "
                f"docpipe needs version {latest}",
                "docpipe db upgrade (with workers stopped), then restart the workers",
                subject="database",
            )
        ]
    if version <= latest:
        return []
    return [
        Finding(
            "schema-ahead",
            ERROR,
            f"the database's schema is at version {version}, newer than this docpipe ({latest})",
            "upgrade docpipe where this runs (and on the workers) to the version that wrote it",
            subject="database",
        )
    ]


def check_clock_skew(facts: Facts) -> list[Finding]:
    return [
        Finding(
            "clock-skew",
            WARNING,
            f"{worker.name}'s clock is {abs(worker.clock_offset_s):.2f} s "
            f"{'ahead of' if worker.clock_offset_s > 0 else 'behind'} {facts.clock_reference}",
            "run NTP (chrony / systemd-timesyncd) on every worker host; ETA/countdowns, the "
            "visibility timeout's restore and the shared LLM window compare their timestamps",
            subject=worker.name,
        )
        for worker in facts.workers
        if worker.clock_offset_s is not None and abs(worker.clock_offset_s) > MAX_CLOCK_SKEW_S
    ]


def check_flower(facts: Facts) -> list[Finding]:
    flower = facts.flower
    if flower is None:
        return []
    opened = [path for path in ("/api/workers", "/") if flower.statuses.get(path) == 200]
    if opened:
        return [
            Finding(
                "flower-without-auth",
                ERROR,
                f"Flower at {flower.url} answered {', '.join(opened)} with 200 without "
                "credentials: anyone who reaches it can see task arguments and revoke or "
                "apply tasks",
                "start it with docpipe flower (refuses to start without "
                "DOCPIPE_FLOWER_BASIC_AUTH=user:strong-password), bound to 127.0.0.1 behind a "
                "proxy",
                subject="flower",
            )
        ]
    host = urlparse(flower.url).hostname or ""
    if flower.statuses.get("/metrics") == 200 and not _is_loopback(host):
        return [
            Finding(
                "flower-metrics-open",
                WARNING,
                f"Flower at {flower.url} serves /metrics without credentials on a "
                "non-loopback address (Flower 2.2 never protects /metrics and /healthcheck)",
                "bind Flower to 127.0.0.1 and put a reverse proxy with access control in front",
                subject="flower",
            )
        ]
    return []


CHECKS: tuple[Callable[[Facts], list[Finding]], ...] = (
    check_broker_eviction,
    check_shared_redis,
    check_consumers,
    check_consumer_timeout,
    check_queue_declarations,
    check_broker_dead_letters,
    check_unenforced_time_limits,
    check_acks_and_prefetch,
    check_schema,
    check_clock_skew,
    check_flower,
)


def diagnose(facts: Facts) -> list[Finding]:
    """Every finding, errors first."""
    findings = [finding for check in CHECKS for finding in check(facts)]
    return sorted(findings, key=lambda f: f.severity != ERROR)


def _seconds(value: float | None) -> str:
    return "unknown" if value is None else f"{value:g} s"


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- gathering the facts ---------------------------------------------------------------------


def redis_facts(client: redis.Redis, url: str) -> RedisFacts:
    """Server identity, database and eviction policy; raises redis errors when unreachable."""
    info = client.info("server")
    db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
    policy: str | None = None
    maxmemory: int | None = None
    config_error = None
    try:
        config: Mapping[Any, Any] = client.config_get("maxmemory*")
        policy = _text(config.get("maxmemory-policy") or config.get(b"maxmemory-policy"))
        raw = config.get("maxmemory") or config.get(b"maxmemory")
        maxmemory = int(_text(raw)) if raw is not None else None
    except redis.ResponseError as exc:
        config_error = redact_url(str(exc))
    return RedisFacts(
        url=redact_url(url),
        db=db,
        run_id=_text(info.get("run_id")) if info.get("run_id") else None,
        maxmemory_policy=policy or None,
        maxmemory=maxmemory,
        config_error=config_error,
    )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def redis_time(client: redis.Redis, samples: int = 3) -> tuple[float, float]:
    """(Redis TIME, this process's clock at the middle of the round trip).

    Of a few round trips, the shortest: the first one on a new connection is
    slowed by the connect and would add milliseconds of skew that is not there.
    """
    best: tuple[float, float, float] | None = None
    for _ in range(samples):
        before = time.time()
        seconds, microseconds = client.time()
        after = time.time()
        reading = (after - before, float(seconds) + float(microseconds) / 1e6, (before + after) / 2)
        best = reading if best is None or reading[0] < best[0] else best
    assert best is not None
    return best[1], best[2]


def worker_facts(
    replies: WorkerReplies,
    heartbeats: Mapping[str, Heartbeat],
    local_minus_redis_s: float,
    now: float,
) -> list[WorkerFacts]:
    """Per worker, what it reports it runs.

    A heartbeat's clock offset is its send time minus its arrival on this
    process's clock (the transit, a millisecond or so, is in it), moved onto
    Redis' clock by this process's own offset from Redis TIME.
    """
    facts = []
    for node in replies.nodes:
        stats = replies.stats.get(node) or {}
        conf = replies.conf.get(node) or {}
        options = conf.get("broker_transport_options") or {}
        active = replies.active.get(node) or []
        started = [float(r["time_start"]) for r in active if r.get("time_start")]
        beat = heartbeats.get(node)
        offset = (
            beat.sent_at - beat.received_at + local_minus_redis_s
            if beat is not None and beat.sent_at
            else None
        )
        facts.append(
            WorkerFacts(
                name=node,
                pool=pool_name(stats),
                concurrency=(stats.get("pool") or {}).get("max-concurrency"),
                queues=tuple(sorted(q["name"] for q in replies.active_queues.get(node) or [])),
                prefetch_multiplier=_optional_int(conf.get("worker_prefetch_multiplier")),
                prefetch_count=_optional_int(stats.get("prefetch_count")),
                acks_late=_optional_bool(conf.get("task_acks_late")),
                reject_on_worker_lost=_optional_bool(conf.get("task_reject_on_worker_lost")),
                acks_on_timeout=_acks_on_timeout(conf),
                visibility_timeout_s=_optional_float(options.get("visibility_timeout")),
                task_time_limit_s=_optional_float(conf.get("task_time_limit")),
                longest_active_s=max(now - t for t in started) if started else None,
                clock_offset_s=round(offset, 3) if offset is not None else None,
            )
        )
    return facts


def _optional_int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float | str) and str(value).isdigit() else None


def _optional_float(value: object) -> float | None:
    try:
        return float(value) if value is not None else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _acks_on_timeout(conf: dict[str, Any]) -> bool | None:
    """task_acks_on_timeout, or when unset the task_acks_on_failure_or_timeout it defaults to."""
    value = conf.get("task_acks_on_timeout")
    if value is None:
        value = conf.get("task_acks_on_failure_or_timeout")
    return _optional_bool(value)


def _optional_bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def schema_version(engine: Engine) -> int:
    from pipeline.adapters.sql.migrations import current_version

    with engine.connect() as conn:
        return current_version(conn)


def probe_flower(url: str, timeout_s: float = FLOWER_PROBE_TIMEOUT_S) -> FlowerFacts | None:
    """GET a few paths without credentials; None when nothing answers at `url`."""
    statuses: dict[str, int | None] = {}
    for path in ("/api/workers", "/", "/metrics"):
        try:
            with urllib.request.urlopen(url.rstrip("/") + path, timeout=timeout_s) as response:
                statuses[path] = int(response.status)
        except urllib.error.HTTPError as exc:
            statuses[path] = exc.code
        except (urllib.error.URLError, OSError, ValueError):
            statuses[path] = None
    if all(status is None for status in statuses.values()):
        return None
    return FlowerFacts(url=redact_url(url), statuses=statuses)


def gather_facts(
    settings: Settings,
    app: Celery,
    broker: redis.Redis | None,
    cache: redis.Redis | None,
    engine: Engine,
    *,
    flower_url: str | None = None,
    queues: Sequence[str] = QUEUES,
    inspect_timeout_s: float = DEFAULT_INSPECT_TIMEOUT_S,
    heartbeat_wait_s: float = DEFAULT_HEARTBEAT_WAIT_S,
) -> Facts:
    """Read the deployment once (a few seconds: an inspect round and a heartbeat capture)."""
    from pipeline.adapters.sql import missing_columns
    from pipeline.adapters.sql.migrations import LATEST_VERSION

    broker_facts = redis_facts(broker, settings.broker_url) if broker is not None else None
    rabbit_facts = rabbitmq_facts(settings, queues) if broker is None else None
    cache_facts = redis_facts(cache, settings.redis_url) if cache is not None else None
    replies, heartbeats = observe_workers(
        app, inspect_timeout_s=inspect_timeout_s, heartbeat_wait_s=heartbeat_wait_s
    )
    # AMQP has no TIME: on RabbitMQ the workers' clocks are compared with this machine's.
    server_time, local_time = redis_time(broker) if broker is not None else (0.0, 0.0)
    workers = worker_facts(replies, heartbeats, local_time - server_time, time.time())
    notes = [
        f"{w.name}: no heartbeat within {heartbeat_wait_s:g} s"
        for w in workers
        if w.clock_offset_s is None
    ]
    version = schema_version(engine)
    if version == 0:
        notes.append(
            f"no schema version recorded (tables made on first use); `docpipe db upgrade` "
            f"records version {LATEST_VERSION}"
        )
    if rabbit_facts is not None:
        if rabbit_facts.unavailable:
            notes.append(rabbit_facts.unavailable)
        missing = [q.name for q in rabbit_facts.queues if not q.exists]
        if missing:
            notes.append(
                f"not declared on RabbitMQ yet: {', '.join(missing)} (a worker or "
                "`docpipe run --broker` declares them)"
            )
    flower = probe_flower(flower_url or DEFAULT_FLOWER_URL)
    if flower is None and flower_url:
        notes.append(f"Flower at {redact_url(flower_url)} did not answer")
    return Facts(
        broker=broker_facts,
        cache=cache_facts,
        queues=tuple(queues),
        workers=tuple(workers),
        schema_version=version,
        latest_schema_version=LATEST_VERSION,
        missing_columns=tuple(missing_columns(engine)),
        flower=flower,
        notes=tuple(notes),
        rabbitmq=rabbit_facts,
        clock_reference="the broker Redis' TIME" if broker is not None else "this machine's clock",
    )


def rabbitmq_facts(settings: Settings, queues: Sequence[str]) -> RabbitFacts:
    """The task queues as RabbitMQ declares them and its consumer_timeout (read, not declared)."""
    from pipeline.runtime.rabbitmq import UNDELIVERABLE_QUEUE, read_queues, server_consumer_timeout

    reading = read_queues(settings.broker_url, queues)
    consumer_timeout = server_consumer_timeout(settings.broker_url)
    longest, what = settings.longest_unacked_s()
    dead = reading.queues.get(UNDELIVERABLE_QUEUE)
    return RabbitFacts(
        url=redact_url(settings.broker_url),
        queues=tuple(
            RabbitQueueFacts(
                name=name,
                exists=reading.queues[name].exists,
                ready=reading.queues[name].ready,
                consumers=reading.queues[name].consumers,
                queue_type=reading.queues[name].queue_type,
                arguments=reading.queues[name].arguments,
            )
            for name in queues
        ),
        dead_letters=(dead.ready or 0) + (dead.unacked or 0) if dead and dead.exists else None,
        consumer_timeout_s=consumer_timeout.seconds,
        consumer_timeout_source=consumer_timeout.source,
        longest_unacked_s=longest,
        longest_unacked_what=what,
        configured_consumer_timeout_s=float(settings.broker_consumer_timeout_s),
        configured_queue_type=settings.broker_queue_type,
        unavailable=reading.unavailable,
    )
