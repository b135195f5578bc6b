"""`docpipe soak`: the deployment under a steady stream for a while; does anything grow?

The plan's checklist asks that Redis memory stays bounded and every key
expires. This runs the plan's worker layout on a private stack (the same
redis-server and workers as `docpipe load`: pipeline/harness/localstack.py,
`worker_layout` in loadtest.py) with the reference latency profile scaled in
time, submits documents at a steady rate below the layout's bound (an open
loop: a thread submits on a fixed schedule), and every `sample_every_s`
records:

- Redis: `used_memory`, connected clients, keys by family (SCAN with COUNT,
  never KEYS), keys without a TTL, bytes per key (MEMORY USAGE of a few keys
  of each family), queue lengths, kombu's `unacked` hash and how many of its
  messages are scheduled (an ETA: retries and OCR polls waiting in a worker);
- every worker process and its pool children: RSS and open file descriptors
  (from /proc, no new dependency);
- the database: rows per table and connections (pg_stat_activity on
  PostgreSQL; on SQLite the workers' descriptors open on the database file).

After the warm-up a least-squares slope per minute is fitted to each series
and compared with `SoakBounds`; a key without a TTL outside the queues and
kombu's bookkeeping fails the run outright. Keys that do expire (one
`docpipe:deliveries:*` key per task for 7 days...) grow during any run
shorter than their TTL; the growth they explain is taken out of the memory
slope, and their steady state at a production volume is projected from the
measured keys per document and the TTLs in the code and settings.

Every wait is bounded in time, every loop in count; only 127.0.0.1 is used.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from pipeline.adapters.embedded_ocr import JOB_KEY as OCR_JOB_KEY
from pipeline.adapters.latency import LatencyProfile
from pipeline.adapters.redis_features import (
    CACHE_PREFIX,
    LOCK_PREFIX,
    RATE_LIMIT_PREFIX,
    STATE_KEY,
)
from pipeline.domain.models import QUEUES, TERMINAL_STATUSES, Stage, Status
from pipeline.errors import ConfigurationError
from pipeline.extras import HARNESS_MODULES, require_extra
from pipeline.harness.layout import PLAN_LAYOUT, WorkerSpec, parse_layout
from pipeline.harness.localstack import PostgresDatabases, pool_children, start_redis
from pipeline.harness.perf.loadtest import stack_values, worker_layout
from pipeline.runtime.monitor import UNACKED_INDEX_KEY, UNACKED_KEY
from pipeline.runtime.tasks import DELIVERIES_KEY, PROGRESS_KEY, RETRIED_KEY
from pipeline.settings import Settings

Progress = Callable[[str], None]
Sample = dict[str, float]
OnSample = Callable[[Sample, float], None]

#: Keys that may live without a TTL: the queues themselves (lists named after the queue,
#: with kombu's priority suffix `\x06\x16N` when priorities are used) and kombu's own
#: bookkeeping of the Redis transport (kombu 5.7, kombu/transport/redis.py):
#: `_kombu.binding.<exchange>` (the routing table, one set per exchange),
#: `_kombu.binding_permanent.<exchange>` (the bindings of queues without an expiry, which
#: keep that table alive), `_kombu.binding_deadlines` (a sorted set of when the bindings
#: of expiring queues - the pidbox reply queues of `celery inspect` - may be swept),
#: `unacked` (hash of delivered, unacknowledged messages) and `unacked_index` (their
#: delivery times, for the visibility-timeout restore). `unacked_mutex` is kombu's too
#: but is set with an expiry, so it is not listed. One key each, or one per exchange:
#: their number is checked to stay flat.
KOMBU_BOOKKEEPING = (
    "_kombu.binding",
    "_kombu.binding_permanent",
    "_kombu.binding_deadlines",
    UNACKED_KEY,
    UNACKED_INDEX_KEY,
)
QUEUE_FAMILY = "queue"
ALLOWED_WITHOUT_TTL = frozenset((QUEUE_FAMILY, *KOMBU_BOOKKEEPING))


def _family_prefix(template: str) -> str:
    """`docpipe:deliveries:{task_id}:{retries}` -> `docpipe:deliveries:`."""
    return template.split("{", 1)[0]


#: Families by key prefix, longest first; anything else is `<first two segments>:*`. The
#: prefixes are the adapters' own, so a renamed key moves its family with it.
FAMILY_PREFIXES = tuple(
    (prefix, prefix.rstrip(":.-") or prefix)
    for prefix in sorted(
        (
            _family_prefix(OCR_JOB_KEY),
            _family_prefix(DELIVERIES_KEY),
            _family_prefix(RETRIED_KEY),
            _family_prefix(PROGRESS_KEY),
            RATE_LIMIT_PREFIX,
            CACHE_PREFIX,
            LOCK_PREFIX,
            _family_prefix(STATE_KEY),
            "_kombu.binding.",
            "_kombu.binding_permanent.",
            "celery-task-meta-",
        ),
        key=len,
        reverse=True,
    )
)
#: Keys of each family whose MEMORY USAGE is read per sample (their mean is bytes per key).
#: SCAN visits keys in hash-table order, so a small sample is mostly the same keys
#: sample after sample: with 20, the estimate of the cache family (values of 0.1-5 KB)
#: moved by +-20 % and the "unexplained" memory with it (one 10-minute soak: -79 KB/min).
MEMORY_SAMPLE_KEYS = 200
#: SCAN's COUNT hint: keys per round trip.
SCAN_COUNT = 1000
#: The soak's default submission rate: this fraction of the layout's bottleneck bound.
DEFAULT_RATE_FRACTION = 0.3
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class SoakBounds:
    """What "bounded" means, per minute after the warm-up (slopes of least-squares fits).

    Chosen so that a leak of one object per document shows at the soak's rate
    (tens of documents a minute) while the noise of a healthy run does not:
    - Redis memory the key families do not explain (allocator and dict
      overhead, client buffers): 64 KB/min, about 1 KB per document at
      60 documents a minute; a key family that grows is counted, not hidden;
    - worker RSS: 2 MB/min per worker (main process plus pool children):
      Python's arenas settle after the warm-up, a leak of 30 KB per document
      at 60 a minute crosses it;
    - open descriptors per worker: 1 per minute (one more connection in 10
      minutes passes; one per document does not);
    - Redis clients and database connections: 1 per minute (pools fill, then stay);
    - documents in flight and queue lengths: 2 per minute (below capacity
      nothing piles up; a growing backlog means the rate is above capacity,
      which is a finding about the rate, not a leak);
    - kombu's `unacked` hash: 2 messages per minute;
    - keys without a TTL outside the queues and kombu's bookkeeping: none, ever;
    - the worker that writes the graph, when the graph is in memory
      (GRAPH_URL=memory://, the stand-in for Neo4j): its RSS may also grow by
      160 KB per document completed. That sink keeps every node and edge in
      the worker process, by design; measured 115 KB per document in that
      worker's RSS on the samples and variants (tracemalloc: ~72 KB of the
      sink's objects per document), so a leak smaller than the margin hides there.
    """

    redis_unexplained_kb_per_min: float = 64.0
    worker_rss_mb_per_min: float = 2.0
    worker_fds_per_min: float = 1.0
    connections_per_min: float = 1.0
    backlog_per_min: float = 2.0
    unacked_per_min: float = 2.0
    keys_without_ttl: int = 0
    memory_graph_kb_per_document: float = 160.0


@dataclass(frozen=True)
class SoakConfig:
    settings: Settings
    profile: LatencyProfile
    files: Sequence[Path]
    report_dir: Path
    duration_s: float = 600.0
    warmup_s: float = 60.0
    sample_every_s: float = 5.0
    #: Documents per minute submitted; None: DEFAULT_RATE_FRACTION of the bottleneck bound.
    rate_per_min: float | None = None
    #: Generated documents (legal prose as pdf/docx/eml/txt, 1-3 pages) added to `files`.
    variants: int = 20
    seed: int = 0
    layout: Sequence[WorkerSpec] = field(default_factory=lambda: parse_layout(PLAN_LAYOUT))
    bounds: SoakBounds = SoakBounds()
    production_docs_per_day: float = 10_000.0
    #: A PostgreSQL admin URL: the run gets a throw-away database there instead of SQLite.
    postgres_admin_url: str | None = None
    keep_workdir: bool = False


# --- fitting and judging (pure) ----------------------------------------------------------------


def slope_per_minute(times_s: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of `values` over `times_s` (seconds), per minute; nan below 2 times."""
    points = [(t, v) for t, v in zip(times_s, values, strict=True) if math.isfinite(v)]
    if len({t for t, _ in points}) < 2:
        return math.nan
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    covariance = sum((t - mean_t) * (v - mean_v) for t, v in points)
    variance = sum((t - mean_t) ** 2 for t, _ in points)
    return covariance / variance * 60.0


def after_warmup(samples: Sequence[Sample], warmup_s: float) -> list[Sample]:
    return [s for s in samples if s["t_s"] >= warmup_s]


def series_slopes(samples: Sequence[Sample], warmup_s: float) -> dict[str, float]:
    """The slope per minute of every column after the warm-up (a missing value counts as 0)."""
    kept = after_warmup(samples, warmup_s)
    columns = sorted({c for s in kept for c in s} - {"t_s"})
    times = [s["t_s"] for s in kept]
    return {c: slope_per_minute(times, [s.get(c, 0.0) for s in kept]) for c in columns}


@dataclass(frozen=True)
class Check:
    name: str
    series: str
    measured: float
    bound: float
    unit: str

    @property
    def passed(self) -> bool:
        # nan (too few samples) fails: an unmeasured series is not a bounded one.
        return self.measured <= self.bound

    def describe(self) -> str:
        verdict = "within" if self.passed else "BEYOND"
        return (
            f"{self.name}: {self.measured:.3g} {self.unit} {verdict} the bound "
            f"{self.bound:g} {self.unit} ({self.series})"
        )


def checks(
    samples: Sequence[Sample],
    warmup_s: float,
    bounds: SoakBounds,
    *,
    graph_workers: Collection[str] = (),
) -> list[Check]:
    """Every bound applied to the series it bounds (columns follow `Sampler`'s names).

    `graph_workers` hold the in-memory graph: their RSS bound grows with the
    documents completed (`SoakBounds.memory_graph_kb_per_document`).
    """
    kept = after_warmup(samples, warmup_s)
    slopes = series_slopes(samples, warmup_s)
    completed_per_min = slopes.get("documents_completed", math.nan)
    columns = sorted({c for s in kept for c in s})
    result = [
        Check(
            "keys without a TTL (not queues or kombu bookkeeping)",
            "unexpected_keys_without_ttl",
            max((s.get("unexpected_keys_without_ttl", 0.0) for s in kept), default=math.nan),
            float(bounds.keys_without_ttl),
            "keys (max)",
        ),
        Check(
            "Redis memory not explained by key families",
            "redis_unexplained_memory_kb",
            slopes.get("redis_unexplained_memory_kb", math.nan),
            bounds.redis_unexplained_kb_per_min,
            "KB/min",
        ),
        Check(
            "Redis connected clients",
            "redis_connected_clients",
            slopes.get("redis_connected_clients", math.nan),
            bounds.connections_per_min,
            "clients/min",
        ),
        Check(
            "documents in flight (backlog)",
            "documents_in_flight",
            slopes.get("documents_in_flight", math.nan),
            bounds.backlog_per_min,
            "documents/min",
        ),
        Check(
            "kombu unacked messages",
            "unacked",
            slopes.get("unacked", math.nan),
            bounds.unacked_per_min,
            "messages/min",
        ),
        Check(
            "database connections",
            "db_connections",
            slopes.get("db_connections", math.nan),
            bounds.connections_per_min,
            "connections/min",
        ),
    ]
    for column in columns:
        kind, _, name = column.partition(":")
        if kind == "queue":
            result.append(
                Check(
                    f"queue {name} length", column, slopes[column], bounds.backlog_per_min, "/min"
                )
            )
        elif kind == "keys" and name in ALLOWED_WITHOUT_TTL and name != QUEUE_FAMILY:
            result.append(
                Check(f"kombu {name} keys", column, slopes[column], bounds.unacked_per_min, "/min")
            )
        elif kind == "rss_mb" and name in graph_workers:
            graph_mb = max(0.0, completed_per_min) * bounds.memory_graph_kb_per_document / 1024
            result.append(
                Check(
                    f"worker {name} RSS (+{bounds.memory_graph_kb_per_document:g} KB/document "
                    "for the in-memory graph)",
                    column,
                    slopes[column],
                    bounds.worker_rss_mb_per_min + graph_mb,
                    "MB/min",
                )
            )
        elif kind == "rss_mb":
            result.append(
                Check(
                    f"worker {name} RSS",
                    column,
                    slopes[column],
                    bounds.worker_rss_mb_per_min,
                    "MB/min",
                )
            )
        elif kind == "fds":
            result.append(
                Check(
                    f"worker {name} open files",
                    column,
                    slopes[column],
                    bounds.worker_fds_per_min,
                    "/min",
                )
            )
    return result


def keys_per_document(samples: Sequence[Sample], warmup_s: float) -> dict[str, float]:
    """Keys of each family per completed document: slope of its count / slope of completions."""
    slopes = series_slopes(samples, warmup_s)
    completed = slopes.get("documents_completed", math.nan)
    if not completed or not math.isfinite(completed) or completed <= 0:
        return {}
    return {
        column.removeprefix("keys:"): max(0.0, slope / completed)
        for column, slope in slopes.items()
        if column.startswith("keys:") and math.isfinite(slope)
    }


@dataclass(frozen=True)
class FamilyProjection:
    family: str
    keys_per_document: float
    ttl_s: float | None
    keys: float
    bytes_per_key: float
    megabytes: float
    basis: str


def project_family(
    family: str,
    *,
    docs_per_day: float,
    keys_per_document: float,
    ttl_s: float | None,
    observed_max: float,
    bytes_per_key: float,
) -> FamilyProjection:
    """Steady-state keys of one family at `docs_per_day` (Little's law: rate x lifetime).

    A family whose keys live until their TTL holds arrival rate x keys per
    document x TTL keys. Keys deleted before their TTL (locks, released when a
    stage ends) or living shorter than the soak do not accumulate: the most
    seen at once is kept as the estimate when it is larger.
    """
    if ttl_s is None:
        keys, basis = observed_max, "no TTL: the most seen during the soak"
    else:
        accumulated = docs_per_day / SECONDS_PER_DAY * keys_per_document * ttl_s
        keys, basis = accumulated, f"{docs_per_day:g}/day x {keys_per_document:.2f}/doc x TTL"
        if observed_max > accumulated:
            keys, basis = observed_max, "released before the TTL: the most seen during the soak"
    return FamilyProjection(
        family=family,
        keys_per_document=keys_per_document,
        ttl_s=ttl_s,
        keys=keys,
        bytes_per_key=bytes_per_key,
        megabytes=keys * bytes_per_key / 1e6,
        basis=basis,
    )


def configured_ttls(settings: Settings) -> dict[str, float | None]:
    """Each family's TTL as the code and settings set it (production values, not scaled)."""
    from pipeline.adapters.embedded_ocr import JOB_TTL_SECONDS
    from pipeline.runtime.tasks import DELIVERIES_TTL_S

    ttls: dict[str, float | None] = {
        key_family(DELIVERIES_KEY): float(DELIVERIES_TTL_S),
        key_family(RETRIED_KEY): float(DELIVERIES_TTL_S),
        key_family(PROGRESS_KEY): float(DELIVERIES_TTL_S),
        key_family(STATE_KEY): float(settings.state_ttl_s),
        key_family(CACHE_PREFIX): float(settings.cache_ttl_s),
        key_family(LOCK_PREFIX): float(settings.lock_ttl_s),
        key_family(RATE_LIMIT_PREFIX): settings.llm_rate_limit_window_s,
        key_family(OCR_JOB_KEY): float(JOB_TTL_SECONDS),
    }
    ttls.update(dict.fromkeys(ALLOWED_WITHOUT_TTL))
    return ttls


# --- sampling ----------------------------------------------------------------------------------


def key_family(key: bytes | str) -> str:
    name = key.decode(errors="replace") if isinstance(key, bytes) else key
    for prefix, family in FAMILY_PREFIXES:
        if name.startswith(prefix):
            return family
    if name in QUEUES or name.split("\x06\x16")[0] in QUEUES:
        return QUEUE_FAMILY
    if name in KOMBU_BOOKKEEPING or name == "unacked_mutex":
        return name
    if name.endswith(".reply.celery.pidbox"):
        return "reply.celery.pidbox"
    head = name.split(":")
    return ":".join(head[:2]) + (":*" if len(head) > 2 else "")


@dataclass
class FamilyStats:
    keys: int = 0
    without_ttl: int = 0
    max_ttl_s: float = 0.0
    sampled_bytes: int = 0
    sampled_keys: int = 0

    @property
    def bytes_per_key(self) -> float:
        return self.sampled_bytes / self.sampled_keys if self.sampled_keys else 0.0


def scan_families(
    client: redis.Redis, *, memory_sample: int = MEMORY_SAMPLE_KEYS, count: int = SCAN_COUNT
) -> dict[str, FamilyStats]:
    """Keys of one database by family: how many, how many without a TTL, bytes per key."""
    families: dict[str, FamilyStats] = {}
    weighed: dict[str, int] = {}
    cursor = 0
    for _ in range(1_000_000):  # SCAN ends when the cursor comes back to 0
        cursor, keys = client.scan(cursor=cursor, count=count)
        if keys:
            with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.pttl(key)
                ttls = pipe.execute()
            weigh: list[tuple[bytes | str, FamilyStats]] = []
            for key, ttl_ms in zip(keys, ttls, strict=True):
                if ttl_ms == -2:  # expired between SCAN and PTTL
                    continue
                family = key_family(key)
                stats = families.setdefault(family, FamilyStats())
                stats.keys += 1
                if ttl_ms == -1:
                    stats.without_ttl += 1
                else:
                    stats.max_ttl_s = max(stats.max_ttl_s, ttl_ms / 1000)
                if weighed.get(family, 0) < memory_sample:
                    weighed[family] = weighed.get(family, 0) + 1
                    weigh.append((key, stats))
            _weigh(client, weigh)
        if cursor == 0:
            break
    return families


def _weigh(client: redis.Redis, keys: Sequence[tuple[bytes | str, FamilyStats]]) -> None:
    if not keys:
        return
    try:
        with client.pipeline(transaction=False) as pipe:
            for key, _ in keys:
                pipe.memory_usage(key, samples=0)
            sizes = pipe.execute()
    except redis.ResponseError:  # a Redis without MEMORY USAGE (fakeredis): no sizes
        return
    for (_, stats), size in zip(keys, sizes, strict=True):
        if size is not None:
            stats.sampled_bytes += int(size)
            stats.sampled_keys += 1


def server_info(client: redis.Redis) -> dict[str, Any]:
    """INFO, or nothing from a server without it (fakeredis)."""
    try:
        info: dict[str, Any] = client.info()
    except redis.ResponseError:
        return {}
    return info


def memory_overheads(client: redis.Redis) -> dict[str, float]:
    """Bytes Redis spends beside the keys' own (MEMORY STATS): clients, scripts, hash tables.

    The hash tables of every database's keyspace and expiry index grow by
    doubling with the number of keys; they are the keys' cost, counted here.
    A server without MEMORY STATS (fakeredis) gives zeros.
    """
    try:
        stats: dict[str, Any] = client.memory_stats()
    except redis.ResponseError:
        return {"clients": 0.0, "scripts": 0.0, "hashtables": 0.0}
    hashtables = 0.0
    for name, value in stats.items():
        if name.startswith("db.") and isinstance(value, dict):
            hashtables += sum(float(v) for k, v in value.items() if k.startswith("overhead."))
    return {
        "clients": float(stats.get("clients.normal", 0)),
        "scripts": float(stats.get("lua.caches", 0)) + float(stats.get("functions.caches", 0)),
        "hashtables": hashtables,
    }


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a prefork worker's pool children), gone ones left out."""
    found, pending = [], [pid]
    for _ in range(10_000):
        if not pending:
            break
        current = pending.pop()
        try:
            pending.extend(pool_children(current))
        except (FileNotFoundError, ProcessLookupError):
            continue
        found.append(current)
    return found


def process_rss_kb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1])
    return 0.0


def open_files(pid: int) -> list[str]:
    """Where each open descriptor of `pid` points (unreadable ones as '')."""
    folder = Path(f"/proc/{pid}/fd")
    targets = []
    for entry in os.listdir(folder):
        try:
            targets.append(os.readlink(folder / entry))
        except OSError:
            targets.append("")
    return targets


def unacked_scheduled(client: redis.Redis) -> tuple[int, int]:
    """Messages in kombu's `unacked` hash, and how many of them carry an ETA (scheduled)."""
    scheduled = 0
    values = client.hvals("unacked")
    for value in values:
        try:
            message = json.loads(value)[0]
            if message.get("headers", {}).get("eta"):
                scheduled += 1
        except (ValueError, IndexError, AttributeError, TypeError):
            continue
    return len(values), scheduled


class Sampler:
    """One row of figures per call: Redis (both databases), worker processes, database."""

    def __init__(
        self,
        clients: Sequence[redis.Redis],
        database_url: str,
        workers: Mapping[str, int],
        *,
        submitted: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clients = list(clients)
        self._engine: Engine = create_engine(_sqlalchemy_url(database_url), poolclass=NullPool)
        self._sqlite_path = _sqlite_path(database_url)
        self._workers = dict(workers)
        self._submitted = submitted
        self._clock = clock
        self._started = clock()
        #: The latest statistics of every family seen (bytes per key, TTLs), and the most keys.
        self.families: dict[str, FamilyStats] = {}
        self.max_ttl_s: dict[str, float] = {}
        #: Every worker process (pool children included) at every sample: RSS, descriptors.
        self.process_rows: list[dict[str, object]] = []

    def sample(self) -> Sample:
        row: Sample = {"t_s": self._clock() - self._started}
        row.update(self._redis())
        row.update(self._processes(row["t_s"]))
        row.update(self._database())
        return row

    def close(self) -> None:
        self._engine.dispose()

    def _redis(self) -> Sample:
        row: Sample = {}
        families: dict[str, FamilyStats] = {}
        info = server_info(self._clients[0])
        row["redis_used_memory_kb"] = float(info.get("used_memory", 0)) / 1024
        row["redis_connected_clients"] = float(info.get("connected_clients", 0))
        overheads = memory_overheads(self._clients[0])
        row["redis_clients_memory_kb"] = overheads["clients"] / 1024
        row["redis_hashtables_memory_kb"] = overheads["hashtables"] / 1024
        for client in self._clients:
            for name, stats in scan_families(client).items():
                merged = families.setdefault(name, FamilyStats())
                merged.keys += stats.keys
                merged.without_ttl += stats.without_ttl
                merged.max_ttl_s = max(merged.max_ttl_s, stats.max_ttl_s)
                merged.sampled_bytes += stats.sampled_bytes
                merged.sampled_keys += stats.sampled_keys
        explained = 0.0
        for name, stats in families.items():
            row[f"keys:{name}"] = float(stats.keys)
            row[f"without_ttl:{name}"] = float(stats.without_ttl)
            explained += stats.keys * stats.bytes_per_key
            self.max_ttl_s[name] = max(self.max_ttl_s.get(name, 0.0), stats.max_ttl_s)
            known = self.families.get(name)
            if known is None or stats.sampled_keys or not known.sampled_keys:
                self.families[name] = stats
        row["redis_keys"] = float(sum(s.keys for s in families.values()))
        row["unexpected_keys_without_ttl"] = float(
            sum(s.without_ttl for n, s in families.items() if n not in ALLOWED_WITHOUT_TTL)
        )
        # What the keys, the clients' buffers, the scripts and the keyspace's own hash
        # tables take; the rest is Redis at rest (constant) or something growing unseen.
        explained += sum(overheads.values())
        row["redis_explained_memory_kb"] = explained / 1024
        row["redis_unexplained_memory_kb"] = row["redis_used_memory_kb"] - explained / 1024
        broker = self._clients[0]
        for queue in QUEUES:
            row[f"queue:{queue}"] = float(broker.llen(queue))
        unacked, scheduled = unacked_scheduled(broker)
        row["unacked"] = float(unacked)
        row["scheduled"] = float(scheduled)
        return row

    def _processes(self, t_s: float) -> Sample:
        row: Sample = {}
        database_handles = 0
        for name, pid in self._workers.items():
            rss_kb = fds = processes = 0.0
            for member in process_tree(pid):
                try:
                    member_rss_kb = process_rss_kb(member)
                    targets = open_files(member)
                except (FileNotFoundError, ProcessLookupError):
                    continue  # exited between the listing and the read
                rss_kb += member_rss_kb
                processes += 1
                fds += len(targets)
                if self._sqlite_path is not None:
                    database_handles += sum(1 for t in targets if t == self._sqlite_path)
                self.process_rows.append(
                    {
                        "t_s": round(t_s, 3),
                        "worker": name,
                        "pid": member,
                        "role": "main" if member == pid else "child",
                        "rss_mb": round(member_rss_kb / 1024, 3),
                        "fds": len(targets),
                    }
                )
            row[f"rss_mb:{name}"] = rss_kb / 1024
            row[f"fds:{name}"] = fds
            row[f"processes:{name}"] = processes
        if self._sqlite_path is not None:
            row["db_connections"] = float(database_handles)
        return row

    def _database(self) -> Sample:
        row: Sample = {}
        with self._engine.connect() as conn:
            if self._engine.dialect.name == "sqlite":
                tables = conn.execute(
                    text("SELECT name FROM sqlite_master WHERE type = 'table'")
                ).scalars()
            else:
                tables = conn.execute(
                    text(
                        "SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
                    )
                ).scalars()
                row["db_connections"] = float(
                    conn.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    ).scalar_one()
                )
            for table in sorted(tables):
                quoted = self._engine.dialect.identifier_preparer.quote(table)
                count = conn.execute(text(f"SELECT count(*) FROM {quoted}")).scalar_one()
                row[f"rows:{table}"] = float(count)
            statuses = conn.execute(
                text("SELECT status, count(*) FROM source_documents GROUP BY status")
            ).all()
        counts = {str(status): int(n) for status, n in statuses}
        terminal = {s.value for s in TERMINAL_STATUSES}
        row["documents_submitted"] = float(self._submitted())
        row["documents_completed"] = float(counts.get(Status.COMPLETED.value, 0))
        row["documents_failed"] = float(
            sum(n for s, n in counts.items() if s in terminal and s != Status.COMPLETED.value)
        )
        row["documents_in_flight"] = float(sum(n for s, n in counts.items() if s not in terminal))
        return row


def _sqlalchemy_url(database_url: str) -> str:
    url = make_url(database_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def _sqlite_path(database_url: str) -> str | None:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    return str(Path(url.database).resolve())


# --- documents and submission ---------------------------------------------------------------------


def generate_variants(folder: Path, count: int, seed: int) -> list[Path]:
    """`count` generated documents (legal prose, 1-3 pages), pdf, docx, eml and txt in turn."""
    from pipeline.harness.scenarios.documents import render
    from pipeline.harness.scenarios.model import Generated

    folder.mkdir(parents=True, exist_ok=True)
    kinds = ("pdf", "docx", "eml", "txt")
    paths = []
    for index in range(count):
        kind = kinds[index % len(kinds)]
        rng = random.Random(f"soak:{seed}:{index}")
        name = f"variant-{index:03d}.{kind}"
        spec = Generated(type=kind, pages=1 + index % 3)  # type: ignore[arg-type]
        path = folder / name
        path.write_bytes(render(spec, rng, name))
        paths.append(path)
    return paths


class Submitter:
    """Submits the files in turn at `rate_per_min` from a thread, on a fixed schedule.

    An open loop: the next submission is due at start + n / rate whatever the
    pipeline does, so a pipeline that falls behind shows as a growing backlog.
    A submission that fails is counted and the schedule goes on.
    """

    def __init__(
        self, services: Any, project_uuid: str, files: Sequence[Path], rate_per_min: float
    ):
        self._services = services
        self._project = project_uuid
        self._files = list(files)
        self._interval = 60.0 / rate_per_min
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-submit", daemon=True)
        self.submitted = 0
        self.errors: list[str] = []

    def _run(self) -> None:
        from pipeline.app.intake import submit_and_dispatch

        started = time.monotonic()
        for n in range(10_000_000):
            if self._stop.wait(max(0.0, started + n * self._interval - time.monotonic())):
                return
            path = self._files[n % len(self._files)]
            try:
                submit_and_dispatch(self._services, path, self._project)
                self.submitted += 1
            except Exception as exc:  # counted and reported; the soak goes on
                if len(self.errors) < 20:
                    self.errors.append(f"{path.name}: {type(exc).__name__}: {exc}")

    def __enter__(self) -> Submitter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


# --- the run --------------------------------------------------------------------------------


def default_rate_per_min(config: SoakConfig) -> tuple[float, dict[str, Any]]:
    """DEFAULT_RATE_FRACTION of the layout's bottleneck bound (chunks measured on the files)."""
    from pipeline.harness.perf.loadtest import bottleneck_bound
    from pipeline.harness.simulation.predict import document_shapes

    shapes = document_shapes(config.files)
    chunks = statistics.fmean(len(s.chunk_keys) for s in shapes) if shapes else 0.0
    settings, scale = config.settings, config.profile.time_scale
    bound = bottleneck_bound(
        config.profile,
        config.layout,
        chunks_per_document=chunks,
        rate_limit_calls=settings.llm_rate_limit_calls,
        rate_limit_window_s=settings.llm_rate_limit_window_s * scale,
    )
    return bound["docs_per_s"] * 60 * DEFAULT_RATE_FRACTION, bound


def worker_queues(layout: Sequence[WorkerSpec]) -> dict[str, tuple[str, ...]]:
    """A name for each worker of the layout, in its order: its queues, numbered if repeated."""
    names = ["+".join(w.queues) for w in layout]
    return {
        (name if names.count(name) == 1 else f"{name}-{index}"): worker.queues
        for index, (name, worker) in enumerate(zip(names, layout, strict=True))
    }


@contextmanager
def _database(config: SoakConfig, workdir: Path) -> Iterator[str]:
    if config.postgres_admin_url is None:
        yield f"sqlite:///{workdir / 'soak.db'}"
        return
    databases = PostgresDatabases(config.postgres_admin_url)
    databases.ping()
    try:
        yield databases.create()
    finally:
        databases.drop_all()


def run_soak(
    config: SoakConfig,
    say: Progress = lambda message: None,
    on_sample: OnSample = lambda sample, duration: None,
) -> dict[str, Any]:
    """The soak, its judgement and its report files; returns the summary."""
    from pipeline.bootstrap import start
    from pipeline.ports.services import use_services

    require_extra("harness", HARNESS_MODULES["soak"], "docpipe soak")
    if config.warmup_s >= config.duration_s:
        raise ConfigurationError(
            "the warm-up must end before the soak does (--warmup < --duration)"
        )
    config.report_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="docpipe-soak-"))
    try:
        files = [
            *config.files,
            *generate_variants(workdir / "documents", config.variants, config.seed),
        ]
        if not files:
            raise ConfigurationError("no documents to submit")
        bound: dict[str, Any] = {}
        rate = config.rate_per_min
        if rate is None:
            rate, bound = default_rate_per_min(config)
        say(f"submitting {rate:.1f} documents/min from {len(files)} files")
        samples: list[Sample] = []
        with start_redis(workdir) as server, _database(config, workdir) as database_url:
            values = stack_values(config.settings, config.profile, project_name="soak")
            values.update(
                database_url=database_url,
                blob_url=f"file://{workdir / 'blobs'}",
                broker_url=server.url(0),
                redis_url=server.url(1),
                eager="false",
            )
            with worker_layout(workdir, values, config.layout, say, name="soak") as (workers, _):
                pids = {
                    name: process.pid
                    for name, process in zip(
                        worker_queues(config.layout), workers.processes, strict=True
                    )
                }
                services = start(Settings(_env_file=None, **values))  # type: ignore[call-arg]
                clients = [server.client(0), server.client(1)]
                try:
                    project = services.store.ensure_project("soak")
                    with Submitter(services, project, files, rate) as submitter:
                        sampler = Sampler(
                            clients, database_url, pids, submitted=lambda: submitter.submitted
                        )
                        try:
                            samples = _sample_until(config, sampler, workers, on_sample)
                        finally:
                            sampler.close()
                    submit_errors = submitter.errors
                    families, max_ttls = sampler.families, sampler.max_ttl_s
                    process_rows = sampler.process_rows
                finally:
                    use_services(None)
                    services.close()
                    for client in clients:
                        client.close()
        summary = summarize(
            config, samples, families, max_ttls, rate, bound, submit_errors, database_url
        )
        write_report(config.report_dir, summary, samples, process_rows)
        return summary
    finally:
        if config.keep_workdir:
            say(f"work files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _sample_until(
    config: SoakConfig, sampler: Sampler, workers: Any, on_sample: OnSample
) -> list[Sample]:
    samples: list[Sample] = []
    started = time.monotonic()
    limit = int(config.duration_s / config.sample_every_s) + 2
    for n in range(limit):
        due = started + n * config.sample_every_s
        if due - started > config.duration_s:
            break
        time.sleep(max(0.0, due - time.monotonic()))
        if (gone := workers.exited()) is not None:
            raise ConfigurationError(
                f"a worker exited during the soak (exit code {gone.returncode}); "
                f"see {workers.logs[gone.pid]}"
            )
        sample = sampler.sample()
        samples.append(sample)
        on_sample(sample, config.duration_s)
    return samples


# --- the summary and the report ------------------------------------------------------------


def _series(samples: Sequence[Sample], column: str, warmup_s: float) -> dict[str, float]:
    values = [s.get(column, 0.0) for s in samples]
    kept = after_warmup(samples, warmup_s)
    return {
        "start": values[0] if values else math.nan,
        "end": values[-1] if values else math.nan,
        "max": max(values, default=math.nan),
        "slope_per_min": slope_per_minute(
            [s["t_s"] for s in kept], [s.get(column, 0.0) for s in kept]
        ),
    }


def _per_document(samples: Sequence[Sample], column: str, warmup_s: float, scale: float) -> float:
    """The growth of `column` per completed document (slope over completion slope) x scale."""
    slopes = series_slopes(samples, warmup_s)
    completed = slopes.get("documents_completed", math.nan)
    if not completed or not math.isfinite(completed) or completed <= 0:
        return math.nan
    return slopes.get(column, math.nan) / completed * scale


def summarize(
    config: SoakConfig,
    samples: Sequence[Sample],
    families: Mapping[str, FamilyStats],
    max_ttls: Mapping[str, float],
    rate_per_min: float,
    bound: Mapping[str, Any],
    submit_errors: Sequence[str],
    database_url: str,
) -> dict[str, Any]:
    warmup = config.warmup_s
    last = samples[-1] if samples else {}
    graph_queue = Stage.RELATIONSHIPS.queue
    in_memory_graph = config.settings.graph_url.startswith("memory://")
    judged = checks(
        samples,
        warmup,
        config.bounds,
        graph_workers=[n for n, q in worker_queues(config.layout).items() if graph_queue in q]
        if in_memory_graph
        else [],
    )
    failures = [c.describe() for c in judged if not c.passed]
    if (judged_samples := len(after_warmup(samples, warmup))) < 3:
        failures.append(f"too few samples after the warm-up ({judged_samples}) to fit a slope")
    if not last.get("documents_completed"):
        failures.append("no document completed: nothing was soaked")
    per_document = keys_per_document(samples, warmup)
    ttls = configured_ttls(config.settings)
    family_names = sorted(
        {c.removeprefix("keys:") for s in samples for c in s if c.startswith("keys:")}
    )
    redis_families: dict[str, Any] = {}
    projections: list[FamilyProjection] = []
    for name in family_names:
        stats = families.get(name, FamilyStats())
        count = _series(samples, f"keys:{name}", warmup)
        ttl = ttls.get(name, max_ttls.get(name) or None)
        redis_families[name] = {
            "keys_end": count["end"],
            "keys_max": count["max"],
            "slope_per_min": count["slope_per_min"],
            "keys_per_document": per_document.get(name),
            "without_ttl_end": last.get(f"without_ttl:{name}", 0.0),
            "allowed_without_ttl": name in ALLOWED_WITHOUT_TTL,
            "ttl_configured_s": ttl,
            "ttl_observed_max_s": max_ttls.get(name) or None,
            "bytes_per_key": stats.bytes_per_key,
        }
        projections.append(
            project_family(
                name,
                docs_per_day=config.production_docs_per_day,
                keys_per_document=per_document.get(name, 0.0),
                ttl_s=ttl,
                observed_max=count["max"],
                bytes_per_key=stats.bytes_per_key,
            )
        )
    completed = _series(samples, "documents_completed", warmup)
    workers = {
        column.removeprefix("rss_mb:"): {
            "processes": last.get(f"processes:{column.removeprefix('rss_mb:')}"),
            "rss_mb": _series(samples, column, warmup),
            "rss_kb_per_document": _per_document(samples, column, warmup, 1024.0),
            "open_files": _series(samples, f"fds:{column.removeprefix('rss_mb:')}", warmup),
        }
        for column in sorted(last)
        if column.startswith("rss_mb:")
    }
    return {
        "duration_s": config.duration_s,
        "warmup_s": warmup,
        "sample_every_s": config.sample_every_s,
        "samples": len(samples),
        "time_scale": config.profile.time_scale,
        "layout": [asdict(w) for w in config.layout],
        "database": make_url(database_url).get_backend_name(),
        "rate_per_min": rate_per_min,
        "bound_per_min": bound.get("docs_per_s", math.nan) * 60 if bound else None,
        "documents": {
            "submitted": last.get("documents_submitted", 0.0),
            "completed": last.get("documents_completed", 0.0),
            "failed": last.get("documents_failed", 0.0),
            "in_flight_end": last.get("documents_in_flight", 0.0),
            "completed_per_min": completed["slope_per_min"],
            "submit_errors": list(submit_errors),
        },
        "redis": {
            "used_memory_kb": _series(samples, "redis_used_memory_kb", warmup),
            "unexplained_memory_kb": _series(samples, "redis_unexplained_memory_kb", warmup),
            "connected_clients": _series(samples, "redis_connected_clients", warmup),
            "keys": _series(samples, "redis_keys", warmup),
            "unexpected_keys_without_ttl_max": max(
                (s.get("unexpected_keys_without_ttl", 0.0) for s in samples), default=0.0
            ),
            "unacked": _series(samples, "unacked", warmup),
            "scheduled": _series(samples, "scheduled", warmup),
            "queues": {q: _series(samples, f"queue:{q}", warmup) for q in QUEUES},
            "families": redis_families,
            "kombu_bookkeeping_without_ttl": list(KOMBU_BOOKKEEPING),
        },
        "workers": workers,
        "database_rows": {
            column.removeprefix("rows:"): _series(samples, column, warmup)
            for column in sorted(last)
            if column.startswith("rows:")
        },
        "database_connections": _series(samples, "db_connections", warmup),
        "projection": {
            "docs_per_day": config.production_docs_per_day,
            "families": {p.family: asdict(p) for p in projections},
            "total_keys": sum(p.keys for p in projections),
            "total_mb": sum(p.megabytes for p in projections),
        },
        "bounds": asdict(config.bounds),
        "checks": [{**asdict(c), "passed": c.passed} for c in judged],
        "passed": not failures,
        "failures": failures,
    }


def json_ready(value: Any) -> Any:
    """`value` with every nan or infinity as None: the JSON stays strict (jq reads it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def write_report(
    report_dir: Path,
    summary: Mapping[str, Any],
    samples: Sequence[Sample],
    process_rows: Sequence[Mapping[str, object]] = (),
) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "soak.json").write_text(
        json.dumps(json_ready(summary), indent=2, default=str, allow_nan=False) + "\n"
    )
    columns = ["t_s", *sorted({c for s in samples for c in s} - {"t_s"})]
    with (report_dir / "soak_samples.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for sample in samples:
            writer.writerow([f"{sample.get(c, 0.0):.6g}" for c in columns])
    with (report_dir / "soak_processes.csv").open("w", newline="") as handle:
        fields = ["t_s", "worker", "pid", "role", "rss_mb", "fds"]
        process_writer = csv.DictWriter(handle, fields)
        process_writer.writeheader()
        process_writer.writerows(process_rows)
    with (report_dir / "soak_checks.csv").open("w", newline="") as handle:
        fields = ["name", "series", "measured", "bound", "unit", "passed"]
        checks_writer = csv.DictWriter(handle, fields)
        checks_writer.writeheader()
        checks_writer.writerows(summary["checks"])
    write_chart(report_dir / "soak.png", summary, samples)


def write_chart(path: Path, summary: Mapping[str, Any], samples: Sequence[Sample]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["t_s"] / 60 for s in samples]
    columns = sorted({c for s in samples for c in s})

    def plot(ax: Any, names: Sequence[str], label: Callable[[str], str] = str) -> None:
        for name in names:
            ax.plot(minutes, [s.get(name, 0.0) for s in samples], label=label(name))
        ax.axvline(summary["warmup_s"] / 60, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("minutes")
        if names:
            ax.legend(fontsize=7)

    fig, axes = plt.subplots(2, 3, figsize=(18, 9))
    plot(axes[0][0], ["documents_submitted", "documents_completed", "documents_in_flight"])
    axes[0][0].set(title="Documents", ylabel="documents")
    plot(
        axes[0][1],
        ["redis_used_memory_kb", "redis_explained_memory_kb", "redis_unexplained_memory_kb"],
    )
    axes[0][1].set(title="Redis memory (explained: keys x bytes/key)", ylabel="KB")
    plot(
        axes[0][2],
        [c for c in columns if c.startswith("keys:")],
        lambda c: c.removeprefix("keys:").replace("\x06\x16", "/"),
    )
    axes[0][2].set(title="Redis keys by family", ylabel="keys", yscale="symlog", ylim=(0, None))
    plot(axes[1][0], [c for c in columns if c.startswith("rss_mb:")], lambda c: c[7:])
    axes[1][0].set(title="Worker RSS (with pool children)", ylabel="MB")
    plot(axes[1][1], [c for c in columns if c.startswith("fds:")], lambda c: c[4:])
    axes[1][1].set(title="Worker open files", ylabel="descriptors")
    plot(
        axes[1][2],
        [c for c in columns if c.startswith("rows:")] + ["db_connections", "unacked", "scheduled"],
        lambda c: c.removeprefix("rows:"),
    )
    axes[1][2].set(
        title="Database rows, connections; kombu unacked", yscale="symlog", ylim=(0, None)
    )
    verdict = "PASSED" if summary["passed"] else "FAILED"
    fig.suptitle(
        f"docpipe soak {verdict}: {summary['documents']['completed']:.0f} documents in "
        f"{summary['duration_s'] / 60:.1f} min at {summary['rate_per_min']:.1f}/min "
        f"(warm-up {summary['warmup_s']:g} s dotted), time scale {summary['time_scale']:g}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
