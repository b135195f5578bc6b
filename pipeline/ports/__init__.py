"""Ports: the small protocols stages talk to, in domain terms.

The store port lives in pipeline.ports.store (split by role), Services (every
port a process uses, with `close()`) in pipeline.ports.services; both are
importable from here.

No port leaks a vendor type. Every adapter raises `TransientError` or
`PermanentError` (pipeline.errors) for failures a stage should act on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pipeline.domain.models import (
    CanonicalEntity,
    Chunk,
    DocumentNode,
    ExtractedText,
    FileType,
    Mention,
    OcrJob,
    Relationship,
    Stage,
)
from pipeline.ports.store import (
    DeadLetters as DeadLetters,
)
from pipeline.ports.store import (
    DerivedRows as DerivedRows,
)
from pipeline.ports.store import (
    DocumentRecords as DocumentRecords,
)
from pipeline.ports.store import (
    DocumentStore as DocumentStore,
)
from pipeline.ports.store import (
    QueueEntry as QueueEntry,
)
from pipeline.ports.store import (
    WorkQueue as WorkQueue,
)


class Clock(Protocol):
    """Time as the pipeline sees it: a real wait in broker mode, virtual in simulation."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class BlobStore(Protocol):
    """Object storage for original files (S3 in production)."""

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def size(self, key: str) -> int: ...

    def delete(self, key: str) -> None:
        """Deleting a missing key is not an error (as on S3)."""
        ...


@dataclass(frozen=True)
class OcrRequest:
    document_uuid: str
    storage_key: str
    file_type: str
    #: Differs per attempt so a retry never gets an old failed job back (failure 11).
    client_request_token: str


class OcrEngine(Protocol):
    """Textract's asynchronous shape: start a job, then poll it without blocking."""

    def start(self, request: OcrRequest) -> str:
        """Start text detection; returns the job id."""
        ...

    def poll(self, job_id: str) -> OcrJob: ...


class DocumentParser(Protocol):
    """Local text extraction (DOCX, TXT, EML); PDFs go through the OcrEngine."""

    def extract(self, file_type: FileType, data: bytes, document_uuid: str) -> ExtractedText: ...

    def detect_file_type(self, file_name: str, data: bytes) -> FileType:
        """The type from the name's suffix, checked against the content."""
        ...

    def page_count(self, data: bytes) -> int | None:
        """A PDF's page count from its page tree (None when it cannot be read)."""
        ...


@dataclass(frozen=True)
class LlmAnswer:
    """One LLM request's answer: one JSON text per chunk sent, and the tokens it used."""

    #: `{"entities": [...]}` per chunk, in the order sent (parsed by the domain).
    payloads: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int


class EntityExtractor(Protocol):
    """Answers the LLM's JSON text per chunk, parsed and verified by the domain.

    `extract` sends one chunk in one request; `extract_many` packs several
    chunks into one request (`pipeline.domain.packing`) and answers per chunk.
    """

    @property
    def model(self) -> str:
        """Identifies the model (part of the cache key)."""
        ...

    def extract(self, text: str) -> str:
        """Return the raw JSON answer: {"entities": [{entity,label,start,end,confidence}]}."""
        ...

    def extract_many(self, texts: Sequence[str]) -> LlmAnswer:
        """One request for all `texts` (one text goes exactly as `extract` sends it).

        Raises `MalformedResponse` when the answer as a whole cannot be read; a
        single chunk's unreadable answer is a payload the domain parser rejects.
        """
        ...

    def request_tokens(self, texts: Sequence[str]) -> int:
        """Estimated tokens one request for `texts` uses, prompt and answer.

        What packing budgets (`DOCPIPE_LLM_PACK_TOKENS`) and what the request
        reserves of the shared tokens-per-window limit.
        """
        ...


class GraphSink(Protocol):
    """Where staged relationships go (Neo4j in production): MERGE on stable ids."""

    def write(
        self,
        document: DocumentNode,
        chunks: Sequence[Chunk],
        mentions: Sequence[Mention],
        entities: Sequence[CanonicalEntity],
        relationships: Sequence[Relationship],
    ) -> None: ...


class StateTracker(Protocol):
    """The Redis document-state hash `doc:state:{uuid}` (7-day TTL)."""

    def record(
        self, document_uuid: str, stage: str, status: str, metadata: dict[str, object] | None = None
    ) -> None: ...

    def record_and_release(
        self,
        document_uuid: str,
        stage: str,
        status: str,
        *,
        lock_name: str,
        token: str,
        metadata: dict[str, object] | None = None,
    ) -> None:
        """`record`, and `LockManager.release(lock_name, token)` in the same round trip.

        A stage delivery's last two Redis writes (issue 15). Raises only when the
        state was not recorded, after releasing the lock as `LockManager.release`
        would on its own (Redis being down leaves it to expire); a release that
        fails while the state is recorded is not an error, as the lock expires.
        """
        ...

    def mark_attempt_finished(self, counter: str) -> None:
        """Mark the attempt whose deliveries `counter` counts
        (`acquire_counted_and_record_started`) finished: a delivery of it published what
        carries its document on. A later copy of it is told so by its acquisition, and is
        no poison task. Best effort: not waited for, and lost with a broken connection."""
        ...

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
        """Count one more delivery under the key `counter`; unless over `limit`, `acquire` the
        lock `lock_name` for `owner`; with the lock, `record(document_uuid, stage, "started")`
        and `{stage}_started_by`, the lock's token (which delivery wrote it).

        One atomic round trip for what a stage delivery does first (the redelivery guard,
        its lock, its state; issue 15); the count expires `counter_ttl_s` after its last
        delivery. Over the limit the lock is not tried.

        "started" is written only when the lock was taken and the hash does not
        show the stage past it: its `{stage}_status` is absent or one of `replacing`.
        So the usual duplicate - a redelivery of a finished stage - changes nothing.
        The acquisition's `started` says what was written and what it replaced;
        the claim that follows decides: kept if it claims the document, undone
        (`unrecord_started`) if not.
        """
        ...

    def unrecord_started(self, started: StartedRecord) -> None:
        """Undo the "started" an acquisition wrote, unless the stage's status was written since
        or another delivery's "started" replaced it (`{stage}_started_by` is not its token).

        `last_status` goes back only while it still reads "started". Never raises:
        Redis down leaves the "started" (the hash only informs; the claim decides).
        """
        ...

    def get(self, document_uuid: str) -> dict[str, str]: ...


class Cache(Protocol):
    """Versioned cache: every key carries the document's processing version."""

    def get(self, key: str) -> str | None: ...

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """The values of `keys`, in their order (None for a miss), in one round trip."""
        ...

    def set(self, key: str, value: str, ttl_seconds: int) -> None: ...


@dataclass(frozen=True)
class StartedRecord:
    """The "started" write of a lock acquisition (`acquire_counted_and_record_started`).

    `replaced` holds the values it overwrote (`{stage}_status`, `{stage}_timestamp`,
    `{stage}_started_by`, `last_status`), None for a field that was absent: what
    `unrecord_started` restores.
    """

    document_uuid: str
    stage: str
    #: The lock token written as `{stage}_started_by`: tells this write from any later one.
    token: str
    replaced: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class CountedAcquisition:
    """What `StateTracker.acquire_counted_and_record_started` found: the delivery count,
    and the lock's token.

    `token` is None when the count went over the limit (the lock was not tried)
    or when another owner holds the lock. `started` is the state hash's "started"
    write made with it (`StateTracker.acquire_counted_and_record_started`), if any.
    """

    deliveries: int
    token: str | None
    started: StartedRecord | None = None
    #: Another delivery of this attempt published its successor or its retry
    #: (`mark_attempt_finished`): this one is a copy (a visibility-timeout restore, a
    #: redelivery after a kill at the ack); the lock was not tried.
    finished: bool = False


class LockManager(Protocol):
    """Non-blocking per-document-and-stage locks; never run unlocked on failure."""

    def acquire(self, name: str, ttl_seconds: int, owner: str | None = None) -> str | None:
        """Returns this acquisition's token, None when someone else holds the lock.

        Another acquisition by the same `owner` (a redelivery of the same task id)
        takes the lock over with a new token; the older token can no longer release it.
        """
        ...

    def release(self, name: str, token: str) -> None: ...


class RateLimiter(Protocol):
    """Shared sliding window; raises `RateLimited` (fail closed) when over or unsure.

    Counts requests, and with a token limit also the `tokens` each request
    reserves (requests and tokens per window, as OpenAI enforces them).
    """

    def acquire(self, name: str, tokens: int = 0) -> None: ...


@dataclass(frozen=True)
class FaultEffect:
    """What a fault asks a fake to do besides raising: wait, or answer wrongly."""

    latency_s: float = 0.0
    #: "malformed" or "empty": the fake returns a bad answer instead of raising.
    response: str | None = None


NO_FAULT = FaultEffect()


class FaultInjector(Protocol):
    """Scenario faults, consulted by fakes before each operation.

    Its state lives where every worker process can see it (Redis), so a fault
    scheduled by a test reaches workers in other processes (failure 14).
    """

    def before(self, port: str, operation: str, document_uuid: str | None) -> FaultEffect:
        """Raise the scheduled error, if any; otherwise say what else to do."""
        ...


class Dispatcher(Protocol):
    """Stage chaining: sends a document's next stage to whoever runs stages.

    Application code (intake, queue processor, dead-letter replay) sends through
    this port and never imports the Celery tasks; the composition root wires
    the Celery implementation (pipeline.runtime.tasks.CeleryDispatcher).
    """

    def send_stage(
        self, stage: Stage, document_uuid: str, version: int, *, task_id: str | None = None
    ) -> None: ...
