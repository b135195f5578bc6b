"""A task's database effects, applied when the task ends in virtual time.

The simulator runs a stage function to the end at its start time (the fakes'
latencies only advance the virtual clock). A real delivery commits its rows
at the end, after its slow calls: a delivery that stalls past the visibility
timeout writes *after* its redelivery has moved the document on. To
reproduce that, `DeferredStore` holds back a delivery's fenced writes (the
calls passing `fence=`, and `check_fence`) while it runs and replays them,
in order, when the scheduler reaches its end; the store's fence then
decides, as it does between real processes.

Claims (`read_and_claim`, `claim_delivery`), reads and unfenced writes (OCR job rows, the
redelivery guard's dead letters) go through at once. Redis effects (cache, state
hash, locks) and the in-memory graph sink are not deferred.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.ports import DocumentStore

#: Fenced writes that answer whether the document moved.
DEFERRED_TRANSITIONS = frozenset({"advance_status", "dead_letter"})


class DeferredStore:
    """Wraps a `DocumentStore`; inside `deferring()` fenced writes wait for `apply`."""

    def __init__(self, inner: DocumentStore) -> None:
        self._inner = inner
        self._pending: list[Callable[[], object]] | None = None

    @contextmanager
    def deferring(self) -> Iterator[list[Callable[[], object]]]:
        """Collect the fenced writes made inside the block; yields the list they go to."""
        pending: list[Callable[[], object]] = []
        self._pending = pending
        try:
            yield pending
        finally:
            self._pending = None

    @staticmethod
    def apply(pending: list[Callable[[], object]]) -> None:
        """Commit collected writes in order; the first refused one (StaleDelivery) stops them."""
        while pending:
            pending.pop(0)()

    def check_fence(self, fence: Any) -> None:
        if self._pending is not None:
            self._pending.append(lambda: self._inner.check_fence(fence))
            return
        self._inner.check_fence(fence)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._pending is None or kwargs.get("fence") is None:
                return attribute(*args, **kwargs)
            self._pending.append(lambda: attribute(*args, **kwargs))
            # A transition answers whether the row changed; the fence decides at the end,
            # so a deferred one is taken as made (it only gates the state hash).
            return True if name in DEFERRED_TRANSITIONS else None

        return call


def install(services: Any) -> DeferredStore:
    """Put a `DeferredStore` directly around the SQL store (under any latency or fault
    wrapper: a fault then fires when the stage calls, and a write it lets through -
    `commit_unknown` - is committed at the delivery's end like any other)."""
    from fakes.faulty_ports import FaultyDocumentStore
    from pipeline.adapters.latency import DelayedDocumentStore

    wrappers = (DelayedDocumentStore, FaultyDocumentStore)
    outer = services.store
    if not isinstance(outer, wrappers):
        deferred = DeferredStore(outer)
        services.store = deferred
        return deferred
    holder = outer
    while isinstance(holder._inner, wrappers):
        holder = holder._inner
    deferred = DeferredStore(holder._inner)
    holder._inner = deferred
    return deferred
