"""One snapshot of a broker deployment: queues, documents, workers, dead letters, LLM limit.

Every figure is read, never estimated: queue depths from the broker's Redis
(kombu's keys), what workers hold from Celery's own `inspect` replies, the
last heartbeat and the worker's clock from its `worker-heartbeat` events,
documents from the database, the LLM window from the rate limiter's key.
`docpipe monitor` renders it (pipeline.cli.monitor); `docpipe doctor`
(pipeline.runtime.doctor) reads the same facts.

On RabbitMQ (DOCPIPE_BROKER_URL=amqp://...) the queue figures come from the
broker itself (pipeline.runtime.rabbitmq.read_queues): ready messages and
consumers from a passive declare, unacked ones only from `rabbitmqctl
list_queues` on the broker's machine (AMQP does not tell them; the management
API would, and is not asked) - elsewhere they are null, with the reason in
`broker_notes`. The `docpipe.undeliverable` queue's depth is the dead letters
at the broker (`broker_dead_letters`).

Where a message is, with kombu's Redis transport:
- `ready`: waiting in the queue's list (the key is the queue name; priorities
  other than 0 live in `{queue}\\x06\\x16{priority}`);
- `unacked`: delivered to a worker and not acknowledged yet (`unacked` hash,
  `unacked_index` sorted set of delivery times) - with acks_late that is
  every message a worker holds: running, reserved or scheduled;
- `reserved`, `scheduled`, `active`: the worker's side of the unacked ones -
  prefetched and waiting for a pool slot, held until their ETA/countdown, running.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy import Engine, func, select

from pipeline.adapters.sql.schema import (
    dead_letter_tasks,
    document_processing_history,
    source_documents,
)
from pipeline.domain.models import QUEUES, TERMINAL_STATUSES, Status
from pipeline.errors import ConfigurationError, ServiceUnavailable
from pipeline.redaction import redact_url

if TYPE_CHECKING:
    from celery import Celery

    from pipeline.runtime.rabbitmq import RabbitReading
    from pipeline.settings import Settings

#: kombu's Redis transport: the hash of delivered, unacknowledged messages and the
#: sorted set of their delivery times (kombu.transport.redis, Channel defaults).
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
#: kombu's separator and default steps for priority sub-queues (`{queue}\x06\x16{pri}`).
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
#: The LLM's rate-limiter key (pipeline.adapters.redis_features, RateLimitedEntityExtractor).
LLM_RATE_LIMIT_KEY = "docpipe:ratelimit:llm"
#: Completions over this many seconds make the rates and the time to drain.
DEFAULT_RATE_WINDOW_S = 300.0
#: Seconds `inspect` waits for worker replies, and a heartbeat capture at most.
DEFAULT_INSPECT_TIMEOUT_S = 1.0
#: Celery workers send a heartbeat every 2 s anyway: a busy one that misses the wake-up
#: broadcast is still heard within the wait.
DEFAULT_HEARTBEAT_WAIT_S = 2.5

#: Celery's pool classes by module (stats()["pool"]["implementation"]) -> `--pool` names.
POOL_NAMES = {
    "prefork": "prefork",
    "thread": "threads",
    "gevent": "gevent",
    "eventlet": "eventlet",
    "solo": "solo",
}


# --- the broker ------------------------------------------------------------------------


def queue_keys(queue: str) -> list[str]:
    """The Redis lists kombu keeps one queue's ready messages in (one per priority step)."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


@dataclass(frozen=True)
class BrokerState:
    """What the broker's Redis holds: ready messages per queue, unacked ones per queue."""

    ready: dict[str, int]
    #: None per queue: the broker's figure could not be read (RabbitMQ without rabbitmqctl).
    unacked: Mapping[str, int | None]
    #: Seconds since the oldest unacknowledged delivery (Redis TIME), None when none/unknown.
    oldest_unacked_s: float | None
    #: Redis TIME when read (seconds since the epoch); this process's clock on RabbitMQ.
    server_time: float
    #: Consumers per queue as the broker counts them (RabbitMQ); None on Redis, which
    #: keeps no such count.
    consumers: Mapping[str, int | None] | None = None
    #: Messages in RabbitMQ's `docpipe.undeliverable` queue (past the delivery limit).
    dead_letters: int | None = None
    #: What could not be read, and why.
    notes: tuple[str, ...] = ()


def read_broker(client: redis.Redis, queues: Sequence[str] = QUEUES) -> BrokerState:
    """Queue depths from kombu's keys; unacked messages are attributed by routing key."""
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            for key in queue_keys(queue):
                pipe.llen(key)
        pipe.zrange(UNACKED_INDEX_KEY, 0, 0, withscores=True)
        pipe.time()
        replies = pipe.execute()
    steps = len(PRIORITY_STEPS)
    ready = {
        queue: sum(int(n) for n in replies[i * steps : (i + 1) * steps])
        for i, queue in enumerate(queues)
    }
    oldest, (seconds, microseconds) = replies[-2], replies[-1]
    server_time = float(seconds) + float(microseconds) / 1e6
    unacked = dict.fromkeys(queues, 0)
    for _tag, payload in client.hscan_iter(UNACKED_KEY):
        routed_to = _routing_key(payload)
        if routed_to is not None:
            unacked[routed_to] = unacked.get(routed_to, 0) + 1
    oldest_unacked_s = max(0.0, server_time - float(oldest[0][1])) if oldest else None
    return BrokerState(ready, unacked, oldest_unacked_s, server_time)


def rabbit_broker_state(reading: RabbitReading, queues: Sequence[str], now: float) -> BrokerState:
    """A RabbitMQ reading as the monitor's broker figures: what is not known stays None."""
    from pipeline.runtime.rabbitmq import UNDELIVERABLE_QUEUE

    notes = [f"queue figures from {reading.source}"]
    if reading.unavailable:
        notes.append(reading.unavailable)
    notes.append("oldest unacked delivery: not available on RabbitMQ")
    missing = [q for q in queues if not reading.queues[q].exists]
    if missing:
        notes.append(f"not declared on the broker yet: {', '.join(missing)}")
    dead = reading.queues.get(UNDELIVERABLE_QUEUE)
    if dead is None or not dead.exists:
        notes.append(f"{UNDELIVERABLE_QUEUE} is not declared: nothing dead-lettered there")
    return BrokerState(
        ready={q: reading.queues[q].ready or 0 for q in queues},
        unacked={q: reading.queues[q].unacked for q in queues},
        oldest_unacked_s=None,
        server_time=now,
        consumers={q: reading.queues[q].consumers for q in queues},
        dead_letters=(dead.ready or 0) + (dead.unacked or 0) if dead and dead.exists else 0,
        notes=tuple(notes),
    )


def _routing_key(payload: bytes | str) -> str | None:
    """kombu stores `[message, exchange, routing_key]` as JSON for each unacked delivery."""
    try:
        message = json.loads(payload)
    except (ValueError, TypeError):
        return None
    if isinstance(message, list) and len(message) == 3 and isinstance(message[2], str):
        return message[2]
    return None


# --- workers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heartbeat:
    """A worker's last `worker-heartbeat` (or online) event."""

    #: The worker's own clock when it sent the event (seconds since the epoch).
    sent_at: float
    #: This process's clock when the event arrived.
    received_at: float
    #: Seconds between heartbeats the worker promised.
    frequency_s: float | None = None


@dataclass(frozen=True)
class WorkerReplies:
    """Celery's `inspect` answers, by node name, as the workers sent them."""

    stats: Mapping[str, Any] = field(default_factory=dict)
    active_queues: Mapping[str, Any] = field(default_factory=dict)
    active: Mapping[str, Any] = field(default_factory=dict)
    reserved: Mapping[str, Any] = field(default_factory=dict)
    scheduled: Mapping[str, Any] = field(default_factory=dict)
    conf: Mapping[str, Any] = field(default_factory=dict)
    #: docpipe's own settings as each worker runs them (celery_app.DOCPIPE_SETTINGS_COMMAND).
    docpipe: Mapping[str, Any] = field(default_factory=dict)

    @property
    def nodes(self) -> list[str]:
        names: set[str] = set()
        for replies in (self.stats, self.active_queues, self.active, self.reserved, self.scheduled):
            names.update(replies)
        return sorted(names)


def inspect_workers(app: Celery, timeout_s: float = DEFAULT_INSPECT_TIMEOUT_S) -> WorkerReplies:
    """Ask every worker; a worker that does not answer within `timeout_s` is absent.

    The first question (stats) waits the whole timeout, as nobody knows how
    many workers there are; the others stop as soon as that many answered.
    """
    stats = app.control.inspect(timeout=timeout_s).stats() or {}
    inspect = app.control.inspect(timeout=timeout_s, limit=len(stats) or None)
    return WorkerReplies(
        stats=stats,
        active_queues=inspect.active_queues() or {},
        active=inspect.active() or {},
        reserved=inspect.reserved() or {},
        scheduled=inspect.scheduled() or {},
        # With defaults: a setting the worker left at Celery's default (task_acks_late
        # False, task_acks_on_timeout unset) is then reported, not missing.
        conf=inspect.conf(with_defaults=True) or {},
        docpipe=_docpipe_settings(app, timeout_s, len(stats) or None),
    )


def _docpipe_settings(app: Celery, timeout_s: float, limit: int | None) -> dict[str, Any]:
    from pipeline.runtime.celery_app import DOCPIPE_SETTINGS_COMMAND

    replies = app.control.broadcast(
        DOCPIPE_SETTINGS_COMMAND, reply=True, timeout=timeout_s, limit=limit
    )
    merged: dict[str, Any] = {}
    for reply in replies or []:
        merged.update(
            {node: answer for node, answer in reply.items() if "llm_rate_limit_calls" in answer}
        )
    return merged


def observe_workers(
    app: Celery,
    *,
    inspect_timeout_s: float = DEFAULT_INSPECT_TIMEOUT_S,
    heartbeat_wait_s: float = DEFAULT_HEARTBEAT_WAIT_S,
) -> tuple[WorkerReplies, dict[str, Heartbeat]]:
    """The workers' inspect replies and their heartbeats, listened for meanwhile.

    Listening starts with Celery's `heartbeat` broadcast (every worker sends
    one at once) and ends when each worker that answered has sent one, or
    `heartbeat_wait_s` after the start.
    """
    started = time.monotonic()
    listener = HeartbeatListener(app).start()
    try:
        replies = inspect_workers(app, inspect_timeout_s)
        while time.monotonic() - started < heartbeat_wait_s:
            if set(replies.nodes) <= set(listener.latest()):
                break
            time.sleep(0.05)
    finally:
        listener.stop()
    return replies, listener.latest()


def pool_name(stats: Mapping[str, Any]) -> str | None:
    """`prefork`, `threads`, `gevent`, `eventlet` or `solo` from a worker's stats reply."""
    implementation = str((stats.get("pool") or {}).get("implementation") or "")
    module = implementation.partition(":")[0].rsplit(".", 1)[-1]
    return POOL_NAMES.get(module, module or None)


def _request_queue(request: Mapping[str, Any]) -> str | None:
    info = request.get("delivery_info") or {}
    queue = info.get("routing_key")
    return str(queue) if queue else None


def _scheduled_request(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    request = entry.get("request")
    return request if isinstance(request, Mapping) else {}


def held_by_workers(replies: WorkerReplies) -> dict[str, dict[str, int]]:
    """Per queue: messages workers run (`active`), hold for a slot (`reserved`) or an ETA."""
    held: dict[str, dict[str, int]] = {}

    def count(kind: str, requests: Iterable[Mapping[str, Any]]) -> None:
        for request in requests:
            queue = _request_queue(request) or "?"
            bucket = held.setdefault(queue, {"active": 0, "reserved": 0, "scheduled": 0})
            bucket[kind] += 1

    for node in replies.nodes:
        count("active", replies.active.get(node) or [])
        count("reserved", replies.reserved.get(node) or [])
        count("scheduled", (_scheduled_request(e) for e in replies.scheduled.get(node) or []))
    return held


def describe_workers(
    replies: WorkerReplies, heartbeats: Mapping[str, Heartbeat], now: float
) -> list[dict[str, Any]]:
    """One row per worker: host, queues, pool, concurrency, active tasks, last heartbeat."""
    rows = []
    for node in replies.nodes:
        stats = replies.stats.get(node) or {}
        pool = stats.get("pool") or {}
        beat = heartbeats.get(node)
        active = replies.active.get(node) or []
        started = [float(r["time_start"]) for r in active if r.get("time_start")]
        rows.append(
            {
                "name": node,
                "host": node.partition("@")[2] or node,
                "pid": stats.get("pid"),
                "queues": sorted(q["name"] for q in replies.active_queues.get(node) or []),
                "pool": pool_name(stats),
                "concurrency": pool.get("max-concurrency"),
                "prefetch_count": stats.get("prefetch_count"),
                "active": len(active),
                "reserved": len(replies.reserved.get(node) or []),
                "scheduled": len(replies.scheduled.get(node) or []),
                "processed": sum((stats.get("total") or {}).values()),
                "uptime_s": stats.get("uptime"),
                "longest_active_s": round(max(now - t for t in started), 3) if started else None,
                "last_heartbeat_s": round(now - beat.received_at, 3) if beat else None,
                "heartbeat_sent_at": beat.sent_at if beat else None,
                "heartbeat_received_at": beat.received_at if beat else None,
            }
        )
    return rows


class HeartbeatListener:
    """Collects workers' heartbeat events from the broker in a background thread.

    Listening starts with Celery's `heartbeat` broadcast (`wakeup=True`): every
    worker sends one at once, then one every 2 s as usual.
    """

    EVENTS = ("worker-heartbeat", "worker-online")

    def __init__(self, app: Celery) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._beats: dict[str, Heartbeat] = {}
        self._receiver: Any = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: Why listening ended early (the broker went away), shown by the live view.
        self.error: BaseException | None = None

    def latest(self) -> dict[str, Heartbeat]:
        with self._lock:
            return dict(self._beats)

    def _on_event(self, event: Mapping[str, Any]) -> None:
        if event.get("type") in self.EVENTS and event.get("hostname"):
            beat = Heartbeat(
                sent_at=float(event.get("timestamp") or 0.0),
                received_at=float(event.get("local_received") or time.time()),
                frequency_s=float(event["freq"]) if event.get("freq") else None,
            )
            with self._lock:
                self._beats[str(event["hostname"])] = beat

    def _listen(self) -> None:
        try:
            with self._app.connection_for_read() as connection:
                receiver = self._app.events.Receiver(connection, handlers={"*": self._on_event})
                self._receiver = receiver
                if self._stopping.is_set():
                    return
                # Ends within a second of `should_stop` (kombu drains with a 1 s timeout).
                receiver.capture(limit=None, timeout=None, wakeup=True)
        except Exception as exc:  # shown by the live view, not fatal to it
            self.error = exc

    def start(self) -> HeartbeatListener:
        self._thread = threading.Thread(target=self._listen, name="heartbeats", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        # Set before reading the receiver: the thread sets the receiver before reading this.
        self._stopping.set()
        if self._receiver is not None:
            self._receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout=3)


# --- the database -------------------------------------------------------------------------


IN_FLIGHT_STATUSES: tuple[str, ...] = tuple(s.value for s in Status if s not in TERMINAL_STATUSES)


def read_documents(
    engine: Engine, now: datetime, window_s: float = DEFAULT_RATE_WINDOW_S
) -> dict[str, Any]:
    """Documents per status, statuses entered per minute over the window, time to drain."""
    since = now - timedelta(seconds=window_s)
    with engine.connect() as conn:
        by_status = {
            str(status): int(count)
            for status, count in conn.execute(
                select(source_documents.c.status, func.count()).group_by(source_documents.c.status)
            )
        }
        entered: dict[str, int] = {}
        earliest: datetime | None = None
        for status, count, first in conn.execute(
            select(
                document_processing_history.c.status,
                func.count(),
                func.min(document_processing_history.c.created_at),
            )
            .where(document_processing_history.c.created_at >= since)
            .group_by(document_processing_history.c.status)
        ):
            entered[str(status)] = int(count)
            first = _aware(first)
            earliest = first if earliest is None or first < earliest else earliest
        oldest = conn.execute(
            select(
                source_documents.c.uuid, source_documents.c.status, source_documents.c.created_at
            )
            .where(source_documents.c.status.in_(IN_FLIGHT_STATUSES))
            .order_by(source_documents.c.created_at)
            .limit(1)
        ).first()
        dead_letters = int(
            conn.execute(select(func.count()).select_from(dead_letter_tasks)).one()[0]
        )
    in_flight = sum(n for status, n in by_status.items() if status in IN_FLIGHT_STATUSES)
    if earliest is not None:
        # Work that began inside the window (a deployment started 60 s ago) is divided
        # by the time since its first transition, not by the whole window.
        window_s = max(1.0, min(window_s, (now - earliest).total_seconds()))
    minutes = window_s / 60.0
    per_minute = {status: round(n / minutes, 3) for status, n in sorted(entered.items())}
    completed_per_s = entered.get(Status.COMPLETED.value, 0) / window_s
    failed = sum(n for s, n in entered.items() if Status(s).is_failure)
    created_at = _aware(oldest.created_at) if oldest is not None else None
    return {
        "by_status": dict(sorted(by_status.items())),
        "total": sum(by_status.values()),
        "in_flight": in_flight,
        "rate_window_s": round(window_s, 3),
        "entered_per_min": per_minute,
        "completed_per_min": round(completed_per_s * 60, 3),
        "failed_per_min": round(failed / minutes, 3),
        # At the completion rate of the window; None while nothing completes.
        "time_to_drain_s": round(in_flight / completed_per_s, 1) if completed_per_s else None,
        "dead_letters": dead_letters,
        "oldest_in_flight": (
            {
                "document_uuid": oldest.uuid,
                "status": oldest.status,
                "age_s": round((now - created_at).total_seconds(), 3),
            }
            if oldest is not None and created_at is not None
            else None
        ),
    }


def _aware(moment: Any) -> Any:
    """SQLite hands back naive UTC for an aggregate (min): tag it."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if isinstance(moment, datetime) and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


# --- the LLM rate limit -------------------------------------------------------------------


def rate_limit_in_use(replies: WorkerReplies, settings: Settings) -> tuple[int, float, str]:
    """(calls, window, where from): the workers' own values when they all report the same.

    The workers are who call the LLM; this process's settings are the fallback
    (no worker answered, or they disagree - each then enforces its own limit).
    """
    reported = {
        (int(answer["llm_rate_limit_calls"]), float(answer["llm_rate_limit_window_s"]))
        for answer in replies.docpipe.values()
    }
    if len(reported) == 1:
        calls, window = reported.pop()
        return calls, window, "workers"
    source = "settings (workers disagree)" if reported else "settings"
    return settings.llm_rate_limit_calls, settings.llm_rate_limit_window_s, source


def read_llm_rate_limit(
    client: redis.Redis | None, limit: int, window_s: float, now: float, source: str = "settings"
) -> dict[str, Any]:
    """Calls in the shared sliding window right now (entries scored by the callers' clocks)."""
    shown = {"limit": limit, "window_s": window_s, "source": source}
    if client is None:
        return {**shown, "calls_in_window": None, "used": None}
    calls = int(client.zcount(LLM_RATE_LIMIT_KEY, now - window_s, "+inf"))
    return {
        "key": LLM_RATE_LIMIT_KEY,
        **shown,
        "calls_in_window": calls,
        "used": round(calls / limit, 4),
    }


# --- the snapshot ----------------------------------------------------------------------------


@dataclass
class Snapshot:
    taken_at: float
    queues: dict[str, dict[str, Any]]
    documents: dict[str, Any]
    workers: list[dict[str, Any]]
    dead_letters: int
    oldest_in_flight_s: float | None
    llm_rate_limit: dict[str, Any]
    oldest_unacked_s: float | None = None
    broker_kind: str = "redis"
    #: RabbitMQ: messages in `docpipe.undeliverable`; None on Redis (no such queue).
    broker_dead_letters: int | None = None
    broker_notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_snapshot(
    broker: BrokerState,
    replies: WorkerReplies,
    heartbeats: Mapping[str, Heartbeat],
    documents: Mapping[str, Any],
    llm_rate_limit: Mapping[str, Any],
    now: float,
    queues: Sequence[str] = QUEUES,
) -> Snapshot:
    """Put the facts read from the broker, the workers and the database together."""
    held = held_by_workers(replies)
    workers = describe_workers(replies, heartbeats, now)
    rows: dict[str, dict[str, Any]] = {}
    for queue in [*queues, *sorted(set(held) - set(queues))]:
        on_workers = held.get(queue, {"active": 0, "reserved": 0, "scheduled": 0})
        rows[queue] = {
            "ready": broker.ready.get(queue, 0),
            "unacked": broker.unacked.get(queue, 0),
            **on_workers,
            "consumers": [w["name"] for w in workers if queue in w["queues"]],
        }
        if broker.consumers is not None:
            rows[queue]["broker_consumers"] = broker.consumers.get(queue)
    oldest = documents.get("oldest_in_flight")
    return Snapshot(
        taken_at=now,
        queues=rows,
        documents=dict(documents),
        workers=workers,
        dead_letters=int(documents.get("dead_letters", 0)),
        oldest_in_flight_s=oldest["age_s"] if oldest else None,
        llm_rate_limit=dict(llm_rate_limit),
        oldest_unacked_s=broker.oldest_unacked_s,
        broker_kind="redis" if broker.consumers is None else "amqp",
        broker_dead_letters=broker.dead_letters,
        broker_notes=list(broker.notes),
    )


@dataclass
class Deployment:
    """Clients for the deployment the settings name; the caller closes it."""

    settings: Settings
    app: Celery
    #: The broker's Redis; None on RabbitMQ (read through pipeline.runtime.rabbitmq).
    broker: redis.Redis | None
    cache: redis.Redis | None
    engine: Engine

    @classmethod
    def connect(cls, settings: Settings, say: Callable[[str], None]) -> Deployment:
        """Clients, once the broker, the cache and the database answered (else exit 2).

        Raises `ConfigurationError` when the settings name no broker deployment
        (a memory:// broker, no docpipe tables) and `ServiceUnavailable` when a
        service does not answer within seconds.
        """
        from sqlalchemy import inspect as inspect_database

        from pipeline.adapters.sql import create_database_engine
        from pipeline.runtime.celery_app import configure
        from pipeline.runtime.preflight import check_database, check_rabbitmq, check_redis

        amqp = settings.broker_kind == "amqp"
        if not amqp and not settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError(
                f"the broker is {redact_url(settings.broker_url)}: this reads a Redis or "
                "RabbitMQ broker",
                hint="set DOCPIPE_BROKER_URL (and DOCPIPE_REDIS_URL, DOCPIPE_DATABASE_URL) to "
                "the deployment's, e.g. DOCPIPE_BROKER_URL=redis://127.0.0.1:6379/0",
            )
        _require_sqlite_file(settings.database_url)
        check_database(settings.database_url, say)
        if amqp:
            check_rabbitmq(settings.broker_url, say)
        else:
            check_redis(settings.broker_url, "the broker", "DOCPIPE_BROKER_URL", say)
        check_redis(settings.redis_url, "state and cache", "DOCPIPE_REDIS_URL", say)
        engine = create_database_engine(settings.database_url)
        with engine.connect() as conn:
            has_documents = inspect_database(conn).has_table(source_documents.name)
        if not has_documents:
            engine.dispose()
            raise ConfigurationError(
                f"no docpipe tables in the database at {redact_url(settings.database_url)}",
                hint="point DOCPIPE_DATABASE_URL at the deployment's database, or create "
                "the schema there with `docpipe db upgrade`",
            )

        timeout = {"socket_connect_timeout": 3, "socket_timeout": 10}
        cache = (
            redis.Redis.from_url(settings.redis_url, **timeout)
            if settings.redis_url.startswith(("redis://", "rediss://", "unix://"))
            else None
        )
        return cls(
            settings=settings,
            app=configure(settings),
            broker=None if amqp else redis.Redis.from_url(settings.broker_url, **timeout),
            cache=cache,
            engine=engine,
        )

    def close(self) -> None:
        if self.broker is not None:
            self.broker.close()
        if self.cache is not None:
            self.cache.close()
        self.engine.dispose()


def _require_sqlite_file(database_url: str) -> None:
    """A SQLite URL must name an existing file: opening it would create an empty one."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    if not Path(url.database).exists():
        raise ServiceUnavailable(
            f"no SQLite database at {url.database}",
            hint="point DOCPIPE_DATABASE_URL at the deployment's database",
        )


def take_snapshot(
    deployment: Deployment,
    heartbeats: Mapping[str, Heartbeat] | None = None,
    *,
    inspect_timeout_s: float = DEFAULT_INSPECT_TIMEOUT_S,
    heartbeat_wait_s: float = DEFAULT_HEARTBEAT_WAIT_S,
    rate_window_s: float = DEFAULT_RATE_WINDOW_S,
) -> Snapshot:
    """Read everything once. Without `heartbeats` (a live listener's), capture some first."""
    settings = deployment.settings
    if heartbeats is None:
        replies, heartbeats = observe_workers(
            deployment.app, inspect_timeout_s=inspect_timeout_s, heartbeat_wait_s=heartbeat_wait_s
        )
    else:
        replies = inspect_workers(deployment.app, inspect_timeout_s)
    broker = read_broker_of(deployment)
    now = time.time()
    documents = read_documents(deployment.engine, datetime.fromtimestamp(now, UTC), rate_window_s)
    calls, window, source = rate_limit_in_use(replies, settings)
    limit = read_llm_rate_limit(deployment.cache, calls, window, now, source)
    return build_snapshot(broker, replies, heartbeats, documents, limit, now)


def read_broker_of(deployment: Deployment, queues: Sequence[str] = QUEUES) -> BrokerState:
    """The broker's figures, from its Redis or from RabbitMQ."""
    if deployment.broker is not None:
        return read_broker(deployment.broker, queues)
    from pipeline.runtime.rabbitmq import read_queues

    reading = read_queues(deployment.settings.broker_url, queues)
    return rabbit_broker_state(reading, queues, time.time())
