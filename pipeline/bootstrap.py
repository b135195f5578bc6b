"""The composition root: the one place that maps settings to adapters.

Nothing here connects at import time. The CLI calls `start()` with its
settings (build the services, configure Celery, install them as current);
worker processes build theirs lazily on first use (after fork), through the
factory this module gives pipeline.ports.services, so no client is shared across a
fork. The stage-chaining port (`Dispatcher`) is wired here to Celery.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import redis

from pipeline.adapters.clock import SystemClock
from pipeline.adapters.latency import (
    DOCUMENT_DB,
    GRAPH_WRITE,
    LLM_CALL,
    OCR_JOB,
    DelayedDocumentStore,
    LatencyProfile,
    build_profile,
)
from pipeline.adapters.parsers import ExtractionLimits, LocalDocumentParser
from pipeline.adapters.redis_features import (
    RedisCache,
    RedisLockManager,
    RedisRateLimiter,
    RedisStateTracker,
)
from pipeline.app.rate_limited import RateLimitedEntityExtractor, needs_llm_rate_limit
from pipeline.errors import ConfigurationError
from pipeline.ports import (
    BlobStore,
    Clock,
    Dispatcher,
    DocumentParser,
    DocumentStore,
    EntityExtractor,
    FaultInjector,
    GraphSink,
    OcrEngine,
    RateLimiter,
)
from pipeline.ports.services import Services as Services  # re-exported: callers build and use them
from pipeline.ports.services import current_services as current_services
from pipeline.ports.services import set_services_factory
from pipeline.ports.services import use_services as use_services
from pipeline.settings import Settings, get_settings, is_loopback_url, redact_url

#: Set by the test suite: real cloud adapters then refuse to build unless a test opts in.
UNDER_TEST_ENV = "DOCPIPE_UNDER_TEST"


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


def discard_fake_redis_server(url: str) -> None:
    """Forget the in-process server of a `fakeredis://name` url (its data goes with it)."""
    if url.startswith("fakeredis://"):
        _fake_redis_servers.pop(url.removeprefix("fakeredis://") or "default", None)


def build_blob_store(url: str) -> BlobStore:
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        from pipeline.adapters.memory_blob import InMemoryBlobStore

        return InMemoryBlobStore()
    if parsed.scheme == "file":
        from pipeline.adapters.local_blob import LocalBlobStore

        return LocalBlobStore(Path(url.removeprefix("file://")))
    raise ConfigurationError(
        f"unsupported blob url {redact_url(url)!r} (use file://DIR or memory://; "
        "s3://BUCKET/PREFIX needs the settings: see build_s3_blob_store)"
    )


def _refuse_cloud_under_test(settings: Settings, what: str) -> None:
    if os.environ.get(UNDER_TEST_ENV) and not settings.allow_cloud:
        raise ConfigurationError(f"{what} is a real cloud adapter and is disabled under tests")


def build_openai_extractor(settings: Settings) -> EntityExtractor:
    """DOCPIPE_LLM=openai: the SDK client is built here, never at import (fork-safe)."""
    if not is_loopback_url(settings.openai_base_url):
        _refuse_cloud_under_test(settings, "OpenAI")
    if settings.openai_api_key is None:
        raise ConfigurationError("DOCPIPE_LLM=openai needs DOCPIPE_OPENAI_API_KEY")
    from pipeline.adapters.openai_llm import OpenAIEntityExtractor, create_openai_client

    client = create_openai_client(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        timeout_s=settings.openai_timeout_s,
    )
    return OpenAIEntityExtractor(client, settings.openai_model, timeout_s=settings.openai_timeout_s)


NEO4J_SCHEMES = ("neo4j", "neo4j+s", "neo4j+ssc", "bolt", "bolt+s", "bolt+ssc")


def build_neo4j_sink(settings: Settings) -> GraphSink:
    """DOCPIPE_GRAPH_URL=neo4j://... or bolt://...: the driver connects lazily, on first write."""
    url = settings.graph_url
    if urlparse(url).scheme not in NEO4J_SCHEMES:
        raise ConfigurationError(
            f"unsupported graph url {redact_url(url)!r} (use memory:// or "
            f"{', '.join(s + '://' for s in NEO4J_SCHEMES)})"
        )
    if not is_loopback_url(url):
        _refuse_cloud_under_test(settings, "Neo4j")
    from pipeline.adapters.neo4j_graph import Neo4jGraphSink, create_neo4j_driver

    password = settings.neo4j_password
    driver = create_neo4j_driver(
        url,
        user=settings.neo4j_user,
        password=None if password is None else password.get_secret_value(),
        timeout_s=settings.neo4j_timeout_s,
    )
    return Neo4jGraphSink(driver, settings.neo4j_database, timeout_s=settings.neo4j_timeout_s)


def s3_location(settings: Settings) -> tuple[str, str]:
    """(bucket, prefix) of `DOCPIPE_BLOB_URL=s3://bucket/prefix` (or DOCPIPE_S3_BUCKET)."""
    parsed = urlparse(settings.blob_url)
    if parsed.scheme != "s3":
        raise ConfigurationError(
            "DOCPIPE_OCR=textract reads documents from S3: set DOCPIPE_BLOB_URL=s3://BUCKET/PREFIX"
        )
    bucket = parsed.netloc or settings.s3_bucket or ""
    if not bucket:
        raise ConfigurationError("s3:// blob url without a bucket: set it or DOCPIPE_S3_BUCKET")
    return bucket, parsed.path.strip("/")


def aws_client(settings: Settings, service: str, what: str) -> Any:
    """A boto3 client for `service`; refused under tests unless it points at a local simulator.

    Credentials come from boto3's own chain (AWS_* env vars, shared config,
    instance role), never from our logs or reports.
    """
    if not is_loopback_url(settings.aws_endpoint_url):
        _refuse_cloud_under_test(settings, what)
    from pipeline.adapters.aws import build_client

    return build_client(
        service,
        region=settings.aws_region,
        endpoint_url=settings.aws_endpoint_url,
        max_attempts=settings.aws_max_attempts,
        connect_timeout_s=settings.aws_connect_timeout_s,
        read_timeout_s=settings.aws_read_timeout_s,
    )


def build_s3_blob_store(settings: Settings) -> BlobStore:
    """DOCPIPE_BLOB_URL=s3://bucket/prefix: the client is built here, never at import."""
    from pipeline.adapters.s3_blob import S3BlobStore

    bucket, prefix = s3_location(settings)
    return S3BlobStore(aws_client(settings, "s3", "S3"), bucket, prefix)


def build_textract_engine(settings: Settings, blobs: BlobStore) -> OcrEngine:
    """DOCPIPE_OCR=textract: jobs read the objects the S3 blob store wrote."""
    from pipeline.adapters.textract import TextractOcrEngine

    bucket, prefix = s3_location(settings)
    return TextractOcrEngine(
        aws_client(settings, "textract", "Textract"),
        bucket,
        prefix=prefix,
        min_confidence=settings.textract_min_confidence,
    )


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


def build_services(
    settings: Settings,
    *,
    faults: FaultInjector | None = None,
    clock: Clock | None = None,
    rate_limiter: RateLimiter | None = None,
    dispatcher: Dispatcher | None = None,
) -> Services:
    """Every adapter the settings ask for; `faults` reaches the fakes (scenarios, tests).

    `clock` replaces the wall clock, `rate_limiter` the shared Redis window and
    `dispatcher` Celery (the simulator passes virtual ones and its own broker model).
    """
    from pipeline.adapters.sql import create_store
    from pipeline.runtime.tasks import (
        CeleryDispatcher,  # celery is imported only when services are built
    )

    clock = clock if clock is not None else SystemClock()
    latency = latency_profile(settings)
    limits = ExtractionLimits.from_settings(settings)
    client = redis_client(settings.redis_url)
    if faults is None and settings.fault_injection:
        from fakes.faults import SharedFaultInjector

        faults = SharedFaultInjector(client, clock=clock)
    blobs = (
        build_s3_blob_store(settings)
        if urlparse(settings.blob_url).scheme == "s3"
        else build_blob_store(settings.blob_url)
    )

    ocr: OcrEngine
    if settings.ocr == "fake":
        from pipeline.adapters.embedded_ocr import EmbeddedOcrEngine
        from pipeline.adapters.local_ocr import build_scan_reader

        ocr = EmbeddedOcrEngine(
            blobs,
            client,
            polls_until_done=settings.fake_ocr_polls_until_done,
            clock=clock,
            faults=faults,
            job_seconds=latency.sampler(OCR_JOB),
            limits=limits,
            scans=build_scan_reader(settings),
            # Recognised pages survive a killed OCR worker: a redelivered poll resumes.
            page_cache=RedisCache(client),
            page_cache_ttl_s=settings.cache_ttl_s,
        )
    else:
        ocr = build_textract_engine(settings, blobs)

    parser: DocumentParser = LocalDocumentParser(limits)
    if faults is not None:
        from fakes.parser import FaultyDocumentParser

        parser = FaultyDocumentParser(parser, faults, clock)

    extractor: EntityExtractor
    if settings.llm == "fake":
        from pipeline.adapters.rule_based_llm import RuleBasedEntityExtractor

        extractor = RuleBasedEntityExtractor(
            clock=clock, faults=faults, call_seconds=latency.sampler(LLM_CALL)
        )
    else:
        extractor = build_openai_extractor(settings)
    if rate_limiter is None:
        rate_limiter = RedisRateLimiter(
            client,
            limit=settings.llm_rate_limit_calls,
            window_seconds=settings.llm_rate_limit_window_s,
            token_limit=settings.llm_rate_limit_tokens,
        )
    if faults is not None:
        # The limiter's backend failing (it fails closed): before the extractor takes it.
        from fakes.faulty_ports import FaultyRateLimiter

        rate_limiter = FaultyRateLimiter(rate_limiter, faults, clock)
    if needs_llm_rate_limit(settings, simulated_llm_latency=latency.sampler(LLM_CALL) is not None):
        extractor = RateLimitedEntityExtractor(
            extractor, rate_limiter, clock, max_wait_s=settings.llm_rate_limit_max_wait_s
        )

    graph: GraphSink
    if settings.graph_url.startswith("memory://"):
        from pipeline.adapters.memory_graph import InMemoryGraphSink

        graph = InMemoryGraphSink(clock=clock, write_seconds=latency.sampler(GRAPH_WRITE))
    else:
        graph = build_neo4j_sink(settings)

    store: DocumentStore = create_store(settings.database_url)
    document_db = latency.sampler(DOCUMENT_DB)
    if document_db is not None:
        store = cast(DocumentStore, DelayedDocumentStore(store, clock, document_db))

    services = Services(
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
        rate_limiter=rate_limiter,
        clock=clock,
        redis=client,
        dispatcher=dispatcher if dispatcher is not None else CeleryDispatcher(),
        faults=faults,
    )
    if faults is not None:
        _wrap_with_faults(services, faults)
    return services


def _wrap_with_faults(services: Services, faults: FaultInjector) -> None:
    """Scenario faults on the infrastructure ports (fakes/faulty_ports.py).

    Only when faults are on: production services carry no wrapper. The OCR
    engine, parser and LLM consult the injector themselves (above). The OCR
    engine keeps the blob store it was built with: its reads are the OCR
    service's, not the pipeline's.
    """
    from fakes.faulty_ports import (
        FaultyBlobStore,
        FaultyCache,
        FaultyDispatcher,
        FaultyDocumentStore,
        FaultyGraphSink,
        FaultyLockManager,
        FaultyStateTracker,
    )

    clock = services.clock
    services.blobs = FaultyBlobStore(services.blobs, faults, clock)
    services.store = cast(DocumentStore, FaultyDocumentStore(services.store, faults, clock))
    services.graph = FaultyGraphSink(services.graph, faults, clock)
    services.cache = FaultyCache(services.cache, faults, clock)
    services.state = FaultyStateTracker(services.state, faults, clock, locks=services.locks)
    services.locks = FaultyLockManager(services.locks, faults, clock)
    services.dispatcher = FaultyDispatcher(services.dispatcher, faults, clock)


def start(
    settings: Settings,
    *,
    faults: FaultInjector | None = None,
    clock: Clock | None = None,
    rate_limiter: RateLimiter | None = None,
    dispatcher: Dispatcher | None = None,
) -> Services:
    """Build the services, configure the Celery app for `settings`, install them as current.

    The one start-up sequence of a process that sends or runs stages (the CLI,
    scenario runs, load tests, test stacks); the keywords go to
    `build_services`. The caller closes them: `use_services(None)`, then
    `services.close()`.
    """
    from pipeline.runtime import celery_app

    services = build_services(
        settings, faults=faults, clock=clock, rate_limiter=rate_limiter, dispatcher=dispatcher
    )
    celery_app.configure(settings)
    use_services(services)
    return services


def _services_from_environment() -> Services:
    return build_services(get_settings())


# A process given no services (a Celery worker child) builds them from its
# environment on first use; Celery imports this module with the task modules.
set_services_factory(_services_from_environment)
