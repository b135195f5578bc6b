"""The services a use case runs on: one adapter per port, and the process's current set.

This module holds only the type and the process-wide slot; which adapter backs
each port is decided by the composition root (pipeline.bootstrap), so
importing a use case (stages, intake, queue processor, ...) costs the ports and
the settings, not redis-py, pypdf or python-docx.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import ConfigurationError
from pipeline.ports import (
    BlobStore,
    Cache,
    Clock,
    Dispatcher,
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
from pipeline.settings import Settings

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)


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
    dispatcher: Dispatcher
    faults: FaultInjector | None = None

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Release what holds connections: the SQL engine's pool, the graph driver, Redis.

        The adapters without a `close()` (in-memory fakes, the rule-based
        extractor) hold nothing to release. A failing close is logged, not
        raised: the others are still closed.
        """
        for name, resource in (("store", self.store), ("graph", self.graph)):
            closer = getattr(resource, "close", None)  # DelayedDocumentStore forwards it
            if closer is None:
                continue
            try:
                closer()
            except Exception as exc:
                log.warning("closing the %s failed: %s", name, type(exc).__name__)
        try:
            self.redis.close()
        except Exception as exc:
            log.warning("closing the redis client failed: %s", type(exc).__name__)


_current: Services | None = None
_factory: Callable[[], Services] | None = None
_current_lock = threading.Lock()


def set_services_factory(factory: Callable[[], Services]) -> None:
    """How `current_services()` builds the services of a process that was given none.

    The composition root installs its builder (settings from the environment)
    when it is imported; a Celery worker imports it with its task modules.
    """
    global _factory
    _factory = factory


def use_services(services: Services | None) -> None:
    """Install the services the tasks of this process use (CLI, tests); None forgets them."""
    global _current
    with _current_lock:
        _current = services


def close_current_services() -> None:
    """Close the process's services, if it built or was given any, and forget them."""
    global _current
    with _current_lock:
        services, _current = _current, None
    if services is not None:
        services.close()


def current_services() -> Services:
    """The process's services, built by the installed factory on first use (workers)."""
    global _current
    with _current_lock:
        if _current is None:
            if _factory is None:
                raise ConfigurationError(
                    "no services: import pipeline.bootstrap (the composition root) first"
                )
            _current = _factory()
        return _current
