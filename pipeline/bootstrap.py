"""The composition root: the one place that maps settings to adapters.

Nothing here runs at import time. The CLI calls `build_services()` with its
settings; worker processes build theirs lazily on first use (after fork), so
no client is shared across a fork.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import redis

from pipeline.adapters.clock import SystemClock
from pipeline.adapters.redis_features import (
    RedisCache,
    RedisLockManager,
    RedisRateLimiter,
    RedisStateTracker,
)
from pipeline.errors import ConfigurationError
from pipeline.latency import (
    DOCUMENT_DB,
    GRAPH_WRITE,
    LLM_CALL,
    OCR_JOB,
    DelayedDocumentStore,
    LatencyProfile,
    build_profile,
)
from pipeline.parsers import LocalDocumentParser
from pipeline.ports import (
    BlobStore,
    Cache,
    Clock,
    DocumentParser,
    DocumentStore,
    EntityExtractor,
    FaultInjector,
    GraphSink,
    LockManager,
    OcrEngine,
    RateLimiter,
    StateTracker,
)
from pipeline.settings import Settings, get_settings, redact_url

#: Set by the test suite: real cloud adapters then refuse to build unless a test opts in.
UNDER_TEST_ENV = "DOCPIPE_UNDER_TEST"


@dataclass
class Services:
    settings: Settings
    store: DocumentStore
    blobs: BlobStore
    ocr: OcrEngine
    parser: DocumentParser
    extractor: EntityExtractor
    graph: GraphSink
    state: StateTracker
    cache: Cache
    locks: LockManager
    rate_limiter: RateLimiter
    clock: Clock
    redis: redis.Redis
    faults: FaultInjector | None = None


_fake_redis_servers: dict[str, Any] = {}


def redis_client(url: str) -> redis.Redis:
    """A redis-py client; `fakeredis://name` is an in-process server shared by name."""
    if url.startswith("fakeredis://"):
        import fakeredis

        name = url.removeprefix("fakeredis://") or "default"
        server = _fake_redis_servers.setdefault(name, fakeredis.FakeServer())
        client: redis.Redis = fakeredis.FakeRedis(server=server)
        return client
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError(f"unsupported redis url {redact_url(url)!r}")
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)


def build_blob_store(url: str) -> BlobStore:
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        from fakes.blobs import InMemoryBlobStore

        return InMemoryBlobStore()
    if parsed.scheme == "file":
        from pipeline.adapters.local_blob import LocalBlobStore

        return LocalBlobStore(Path(url.removeprefix("file://")))
    raise ConfigurationError(
        f"unsupported blob url {redact_url(url)!r} (use file://DIR or memory://; "
        "s3:// arrives with the production adapters)"
    )


def _refuse_cloud_under_test(settings: Settings, what: str) -> None:
    if os.environ.get(UNDER_TEST_ENV) and not settings.allow_cloud:
        raise ConfigurationError(f"{what} is a real cloud adapter and is disabled under tests")


def latency_profile(settings: Settings) -> LatencyProfile:
    """The simulated services' waits the settings ask for (none by default)."""
    try:
        return build_profile(
            settings.latency_profile,
            time_scale=settings.time_scale,
            seed=settings.latency_seed,
            overrides=settings.latency_overrides,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def build_services(settings: Settings, *, faults: FaultInjector | None = None) -> Services:
    """Every adapter the settings ask for; `faults` reaches the fakes (scenarios, tests)."""
    from pipeline.adapters.sql_store import create_store

    clock = SystemClock()
    latency = latency_profile(settings)
    client = redis_client(settings.redis_url)
    if faults is None and settings.fault_injection:
        from fakes.faults import SharedFaultInjector

        faults = SharedFaultInjector(client)
    blobs = build_blob_store(settings.blob_url)

    ocr: OcrEngine
    if settings.ocr == "fake":
        from fakes.ocr import FakeOcrEngine

        ocr = FakeOcrEngine(
            blobs,
            client,
            polls_until_done=settings.fake_ocr_polls_until_done,
            clock=clock,
            faults=faults,
            job_seconds=latency.sampler(OCR_JOB),
        )
    else:
        _refuse_cloud_under_test(settings, "Textract")
        raise ConfigurationError("DOCPIPE_OCR=textract: the Textract adapter is not built yet")

    parser: DocumentParser = LocalDocumentParser()
    if faults is not None:
        from fakes.parser import FaultyDocumentParser

        parser = FaultyDocumentParser(parser, faults, clock)

    extractor: EntityExtractor
    if settings.llm == "fake":
        from fakes.llm import RuleBasedEntityExtractor

        extractor = RuleBasedEntityExtractor(
            clock=clock, faults=faults, call_seconds=latency.sampler(LLM_CALL)
        )
    else:
        _refuse_cloud_under_test(settings, "OpenAI")
        raise ConfigurationError("DOCPIPE_LLM=openai: the OpenAI adapter is not built yet")

    graph: GraphSink
    if settings.graph_url.startswith("memory://"):
        from fakes.graph import InMemoryGraphSink

        graph = InMemoryGraphSink(clock=clock, write_seconds=latency.sampler(GRAPH_WRITE))
    else:
        raise ConfigurationError(
            f"graph url {redact_url(settings.graph_url)!r}: the Neo4j adapter is not built yet"
        )

    store: DocumentStore = create_store(settings.database_url)
    document_db = latency.sampler(DOCUMENT_DB)
    if document_db is not None:
        store = cast(DocumentStore, DelayedDocumentStore(store, clock, document_db))

    return Services(
        settings=settings,
        store=store,
        blobs=blobs,
        ocr=ocr,
        parser=parser,
        extractor=extractor,
        graph=graph,
        state=RedisStateTracker(client, ttl_seconds=settings.state_ttl_s),
        cache=RedisCache(client),
        locks=RedisLockManager(client),
        rate_limiter=RedisRateLimiter(
            client,
            limit=settings.llm_rate_limit_calls,
            window_seconds=settings.llm_rate_limit_window_s,
        ),
        clock=clock,
        redis=client,
        faults=faults,
    )


_current: Services | None = None
_current_lock = threading.Lock()


def use_services(services: Services | None) -> None:
    """Install the services the tasks of this process use (CLI, tests)."""
    global _current
    with _current_lock:
        _current = services


def current_services() -> Services:
    """The process's services, built from the environment on first use (workers)."""
    global _current
    with _current_lock:
        if _current is None:
            _current = build_services(get_settings())
        return _current
