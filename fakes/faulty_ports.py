"""Scenario faults on every infrastructure port: wrappers the composition root adds.

pipeline/bootstrap.py puts these around the blob store, the document store,
the graph sink, the cache, the locks, the state hash, the rate limiter and
the dispatcher - only when fault injection is on. Each consults the
FaultInjector (rules in Redis, so worker processes follow them) before the
call, with the port and operation names of the scenario fault catalogue
(pipeline/harness/scenarios/model.py FAULT_CATALOGUE), and fails the way the
real adapter fails: the Redis-backed ports with `redis.ConnectionError`, the
rate limiter with `RateLimited` (it fails closed), the database with the
`TransientError` the SQL store translates connection failures into.

The document store is wrapped by method name (`STORE_ROLES`), so it keeps
working when the store port is split by role.
"""

from __future__ import annotations

import inspect
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import redis

from pipeline.domain.models import (
    CanonicalEntity,
    Chunk,
    DocumentNode,
    Mention,
    Relationship,
    Stage,
)
from pipeline.errors import RateLimited, TransientError
from pipeline.ports import (
    BlobStore,
    Cache,
    Clock,
    CountedAcquisition,
    Dispatcher,
    FaultInjector,
    GraphSink,
    LockManager,
    RateLimiter,
    StartedRecord,
    StateTracker,
)
from pipeline.ports.services import Services

#: DocumentStore method -> its role (the scenario catalogue's `store` operations): the
#: role protocols of pipeline/ports/store.py (DocumentRecords, DerivedRows, WorkQueue,
#: DeadLetters), by method name, so one proxy serves the joined store or any single role.
STORE_ROLES: dict[str, str] = {
    # documents and their status, fences, OCR job rows
    "ensure_project": "documents",
    "create_document": "documents",
    "get_document": "documents",
    "last_activity": "documents",
    "list_documents": "documents",
    "find_by_content": "documents",
    "match_uuid_prefix": "documents",
    "statuses": "documents",
    "advance_status": "documents",
    "claim_delivery": "documents",
    "read_and_claim": "documents",
    "force_status": "documents",
    "record_attempt": "documents",
    "set_task_id": "documents",
    "save_raw_text": "documents",
    "history": "documents",
    "record_ocr_job": "documents",
    "update_ocr_job": "documents",
    "ocr_jobs": "documents",
    # rows derived from the text
    "save_document_node": "derived",
    "get_document_node": "derived",
    "replace_chunks": "derived",
    "get_chunks": "derived",
    "replace_mentions": "derived",
    "get_mentions": "derived",
    "replace_canonical_entities": "derived",
    "get_canonical_entities": "derived",
    "replace_relationships": "derived",
    "get_relationships": "derived",
    "clear_derived": "derived",
    "counts": "derived",
    "derived_versions": "derived",
    "check_fence": "derived",
    # the work queue
    "enqueue": "queue",
    "claim": "queue",
    "keep_claim": "queue",
    "finish_queue_entry": "queue",
    "queue_entries": "queue",
    "requeue_new_version": "queue",
    # dead letters
    "add_dead_letter": "dead_letters",
    "dead_letter": "dead_letters",
    "dead_letters": "dead_letters",
    "remove_dead_letters": "dead_letters",
    "replay_dead_letter": "dead_letters",
}

#: Store methods that write: only they can lose their connection mid-transaction or
#: commit without the caller knowing.
STORE_WRITES = frozenset(
    {
        "ensure_project",
        "create_document",
        "advance_status",
        "claim_delivery",
        "read_and_claim",
        "force_status",
        "record_attempt",
        "set_task_id",
        "save_raw_text",
        "record_ocr_job",
        "update_ocr_job",
        "save_document_node",
        "replace_chunks",
        "replace_mentions",
        "replace_canonical_entities",
        "replace_relationships",
        "clear_derived",
        "enqueue",
        "claim",
        "keep_claim",
        "finish_queue_entry",
        "requeue_new_version",
        "add_dead_letter",
        "dead_letter",
        "remove_dead_letters",
        "replay_dead_letter",
    }
)


def kill_worker(faults: FaultInjector, reason: str) -> None:
    """The worker dies now: the injector knows how (WorkerKilled in the simulator)."""
    killer: Callable[[str], None] | None = getattr(faults, "kill_worker", None)
    if killer is not None:
        killer(reason)
    os.kill(os.getpid(), signal.SIGKILL)  # pragma: no cover - the injector always knows


def consult(
    faults: FaultInjector, clock: Clock, port: str, operation: str, document_uuid: str | None
) -> str | None:
    """Raise the scheduled error, wait the scheduled latency; the response kind, if any."""
    effect = faults.before(port, operation, document_uuid)
    if effect.latency_s > 0:
        clock.sleep(effect.latency_s)
    return effect.response


def _after(faults: FaultInjector, response: str | None, port: str, operation: str) -> None:
    """What a fault does once the call went through."""
    if response == "kill_worker_after":
        kill_worker(faults, f"injected kill_worker_after on {port}.{operation}")
    if response == "commit_unknown":
        raise TransientError(
            f"database unavailable: connection lost during COMMIT of {port}.{operation} "
            "(injected commit_unknown: it was committed)"
        )


def _redis_call(
    faults: FaultInjector, clock: Clock, port: str, operation: str, document_uuid: str | None
) -> str | None:
    """Consult the faults for a Redis-backed port: errors come as redis-py raises them."""
    try:
        return consult(faults, clock, port, operation, document_uuid)
    except TransientError as exc:
        raise redis.ConnectionError(f"Error while reading from redis: {exc}") from None


def _document_of_key(key: str) -> str | None:
    """`documents/<uuid>/original.pdf` (pipeline.app.intake.storage_key) -> the uuid."""
    parts = key.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "documents" else None


def _document_of_lock(name: str) -> str | None:
    """Lock names start with the document uuid (`<uuid>:<stage>:v<version>[:<step>]`)."""
    head, _, _ = name.partition(":")
    return head or None


class FaultyBlobStore:
    def __init__(self, inner: BlobStore, faults: FaultInjector, clock: Clock) -> None:
        self._inner = inner
        self._faults = faults
        self._clock = clock

    @property
    def inner(self) -> BlobStore:
        """The store behind the faults (what the settings asked for)."""
        return self._inner

    def put(self, key: str, data: bytes) -> None:
        response = consult(self._faults, self._clock, "blobs", "put", _document_of_key(key))
        self._inner.put(key, data)
        _after(self._faults, response, "blobs", "put")

    def get(self, key: str) -> bytes:
        response = consult(self._faults, self._clock, "blobs", "get", _document_of_key(key))
        data = self._inner.get(key)
        _after(self._faults, response, "blobs", "get")
        return data

    def size(self, key: str) -> int:
        return self._inner.size(key)

    def delete(self, key: str) -> None:
        self._inner.delete(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class FaultyDocumentStore:
    """Any document store, faulted per role (`STORE_ROLES`); other attributes pass through.

    `connection_lost` on a write raises before it (a transaction rolled back);
    `commit_unknown` raises after it (committed, but the caller cannot know):
    the stage must be idempotent when it retries.
    """

    def __init__(self, inner: Any, faults: FaultInjector, clock: Clock) -> None:
        self._inner = inner
        self._faults = faults
        self._clock = clock
        self._signatures: dict[str, inspect.Signature | None] = {}

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        role = STORE_ROLES.get(name)
        if role is None or not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            document = self._document(name, attribute, args, kwargs)
            response = consult(self._faults, self._clock, "store", role, document)
            if response == "connection_lost":
                raise TransientError(
                    f"database unavailable: server closed the connection during {name} "
                    "(injected connection_lost: rolled back)"
                )
            result = attribute(*args, **kwargs)
            if response == "commit_unknown" and name not in STORE_WRITES:
                response = None  # a read has no commit to lose
            _after(self._faults, response, "store", role)
            return result

        return call

    def _document(
        self, name: str, method: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> str | None:
        if name not in self._signatures:
            try:
                self._signatures[name] = inspect.signature(method)
            except (TypeError, ValueError):
                self._signatures[name] = None
        signature = self._signatures[name]
        if signature is None:
            return None
        try:
            arguments = signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            return None
        value = arguments.get("document_uuid")
        if isinstance(value, str):
            return value
        document = arguments.get("document") or arguments.get("node")
        found = getattr(document, "uuid", None)
        return found if isinstance(found, str) else None


class FaultyGraphSink:
    def __init__(self, inner: GraphSink, faults: FaultInjector, clock: Clock) -> None:
        self._inner = inner
        self._faults = faults
        self._clock = clock

    def write(
        self,
        document: DocumentNode,
        chunks: Sequence[Chunk],
        mentions: Sequence[Mention],
        entities: Sequence[CanonicalEntity],
        relationships: Sequence[Relationship],
    ) -> None:
        response = consult(self._faults, self._clock, "graph", "write", document.uuid)
        self._inner.write(document, chunks, mentions, entities, relationships)
        if response == "commit_unknown":
            raise TransientError(
                "graph write: connection lost before the commit was confirmed "
                "(injected commit_unknown: it was written)"
            )
        _after(self._faults, response, "graph", "write")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class FaultyCache:
    def __init__(self, inner: Cache, faults: FaultInjector, clock: Clock) -> None:
        self._inner = inner
        self._faults = faults
        self._clock = clock

    def get(self, key: str) -> str | None:
        response = _redis_call(self._faults, self._clock, "cache", "get", None)
        value = self._inner.get(key)
        _after(self._faults, response, "cache", "get")
        return value

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """One call of the `get` operation: one round trip, as a fault would meet it."""
        response = _redis_call(self._faults, self._clock, "cache", "get", None)
        values = self._inner.get_many(keys)
        _after(self._faults, response, "cache", "get")
        return values

    def set(self, key: str, value: str, ttl_seconds: int) -> None:
        response = _redis_call(self._faults, self._clock, "cache", "set", None)
        self._inner.set(key, value, ttl_seconds)
        _after(self._faults, response, "cache", "set")


class FaultyLockManager:
    def __init__(self, inner: LockManager, faults: FaultInjector, clock: Clock) -> None:
        self._inner = inner
        self._faults = faults
        self._clock = clock

    def acquire(self, name: str, ttl_seconds: int, owner: str | None = None) -> str | None:
        document = _document_of_lock(name)
        response = _redis_call(self._faults, self._clock, "locks", "acquire", document)
        token = self._inner.acquire(name, ttl_seconds, owner=owner)
        _after(self._faults, response, "locks", "acquire")
        return token

    def release(self, name: str, token: str) -> None:
        document = _document_of_lock(name)
        response = _redis_call(self._faults, self._clock, "locks", "release", document)
        self._inner.release(name, token)
        _after(self._faults, response, "locks", "release")


class FaultyStateTracker:
    """The state hash's faults; `locks` is the inner lock manager (`record_and_release`)."""

    def __init__(
        self, inner: StateTracker, faults: FaultInjector, clock: Clock, *, locks: LockManager
    ) -> None:
        self._inner = inner
        self._faults = faults
        self._clock = clock
        self._locks = locks

    def record(
        self, document_uuid: str, stage: str, status: str, metadata: dict[str, Any] | None = None
    ) -> None:
        response = _redis_call(self._faults, self._clock, "state", "record", document_uuid)
        self._inner.record(document_uuid, stage, status, metadata)
        _after(self._faults, response, "state", "record")

    def record_and_release(
        self,
        document_uuid: str,
        stage: str,
        status: str,
        *,
        lock_name: str,
        token: str,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """The faults of `locks.release` and then of `state.record`, each consulted once.

        Each acts as when the two were separate calls, the release first: a
        failed release leaves the lock to expire and the state is still written; a
        failed state write raises after the lock was released; a fault acting
        after the release (a kill) comes before the state write.
        """
        try:
            released = _redis_call(
                self._faults, self._clock, "locks", "release", _document_of_lock(lock_name)
            )
        except redis.RedisError:
            self.record(document_uuid, stage, status, metadata)
            return
        if released is not None:
            self._locks.release(lock_name, token)
            _after(self._faults, released, "locks", "release")
            self.record(document_uuid, stage, status, metadata)
            return
        try:
            recorded = _redis_call(self._faults, self._clock, "state", "record", document_uuid)
        except redis.RedisError:
            self._locks.release(lock_name, token)
            raise
        self._inner.record_and_release(
            document_uuid, stage, status, lock_name=lock_name, token=token, metadata=metadata
        )
        _after(self._faults, recorded, "state", "record")

    def mark_attempt_finished(self, counter: str) -> None:
        self._inner.mark_attempt_finished(counter)

    def acquire_counted_and_record_started(
        self,
        document_uuid: str,
        stage: str,
        *,
        lock_name: str,
        ttl_seconds: int,
        owner: str,
        counter: str,
        counter_ttl_s: int,
        limit: int,
        replacing: Sequence[str],
    ) -> CountedAcquisition:
        """The faults of `locks.acquire`, then of `state.record` if "started" was written.

        As when the two were separate calls: a failed acquisition writes nothing; a
        failed state write raises with the lock taken and the delivery counted (left
        to expire, as the task layer leaves a lock when Redis fails), the hash as it was.
        """
        acquiring = _redis_call(
            self._faults, self._clock, "locks", "acquire", _document_of_lock(lock_name)
        )
        counted = self._inner.acquire_counted_and_record_started(
            document_uuid,
            stage,
            lock_name=lock_name,
            ttl_seconds=ttl_seconds,
            owner=owner,
            counter=counter,
            counter_ttl_s=counter_ttl_s,
            limit=limit,
            replacing=replacing,
        )
        _after(self._faults, acquiring, "locks", "acquire")
        if counted.started is None:
            return counted
        try:
            recorded = _redis_call(self._faults, self._clock, "state", "record", document_uuid)
        except redis.RedisError:
            self._inner.unrecord_started(counted.started)
            raise
        _after(self._faults, recorded, "state", "record")
        return counted

    def unrecord_started(self, started: StartedRecord) -> None:
        self._inner.unrecord_started(started)

    def get(self, document_uuid: str) -> dict[str, str]:
        return self._inner.get(document_uuid)


class FaultyRateLimiter:
    """The limiter's backend failing: the limiter fails closed, as RedisRateLimiter does."""

    def __init__(self, inner: RateLimiter, faults: FaultInjector, clock: Clock) -> None:
        self._inner = inner
        self._faults = faults
        self._clock = clock

    def acquire(self, name: str, tokens: int = 0) -> None:
        try:
            response = consult(self._faults, self._clock, "rate_limiter", "acquire", None)
        except TransientError as exc:
            raise RateLimited(
                f"rate limiter unavailable (ConnectionError: {exc}); refusing the call"
            ) from None
        self._inner.acquire(name, tokens)
        _after(self._faults, response, "rate_limiter", "acquire")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class FaultyDispatcher:
    """Publishing a stage: fails, is slow, is sent twice, or gets a stale twin.

    `stale_version` sends the message as asked and one more carrying the
    previous processing version (what a message queued before a reprocess
    looks like when it is finally delivered).
    """

    def __init__(self, inner: Dispatcher, faults: FaultInjector, clock: Clock) -> None:
        self._inner = inner
        self._faults = faults
        self._clock = clock

    def send_stage(
        self, stage: Stage, document_uuid: str, version: int, *, task_id: str | None = None
    ) -> None:
        response = consult(self._faults, self._clock, "dispatcher", "send_stage", document_uuid)
        self._inner.send_stage(stage, document_uuid, version, task_id=task_id)
        if response == "duplicate":
            self._inner.send_stage(stage, document_uuid, version)
        elif response == "stale_version":
            self._inner.send_stage(stage, document_uuid, version - 1)


_WRAPPERS = (
    FaultyBlobStore,
    FaultyDocumentStore,
    FaultyGraphSink,
    FaultyCache,
    FaultyLockManager,
    FaultyStateTracker,
    FaultyDispatcher,
)


def unfaulted(services: Services) -> Services:
    """The same services without the fault wrappers: the scenario runner's own view.

    The runner submits, claims, dispatches and reads results through these, so
    a fault hits the pipeline's work (the current services, which tasks use) and
    never the bookkeeping of the experiment itself.
    """
    plain: dict[str, Any] = {
        name: value._inner
        for name in ("blobs", "store", "graph", "cache", "locks", "state", "dispatcher")
        if isinstance(value := getattr(services, name), _WRAPPERS)
    }
    return replace(services, **plain)
