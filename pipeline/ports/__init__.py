"""Ports: the small protocols stages talk to, in domain terms.

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
    DocumentCounts,
    DocumentNode,
    ExtractedText,
    Fence,
    FileType,
    HistoryEntry,
    Mention,
    OcrJob,
    QueueStatus,
    Relationship,
    SourceDocument,
    Stage,
    Status,
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


class EntityExtractor(Protocol):
    """One call per chunk; answers the LLM's JSON text, parsed by the domain."""

    @property
    def model(self) -> str:
        """Identifies the model (part of the cache key)."""
        ...

    def extract(self, text: str) -> str:
        """Return the raw JSON answer: {"entities": [{entity,label,start,end,confidence}]}."""
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


@dataclass(frozen=True)
class QueueEntry:
    uuid: str
    document_uuid: str
    status: QueueStatus
    attempts: int
    claimed_by: str | None
    claimed_at: float | None
    last_error: str | None


class DocumentStore(Protocol):
    """The database (SQLite on the embedded default, PostgreSQL/Supabase in production).

    Writes of derived rows *replace* a document's rows for that stage, so a
    redelivered stage leaves identical rows and a reprocess adds nothing.
    """

    # --- projects and documents -------------------------------------------------
    def ensure_project(self, name: str) -> str:
        """Return the uuid of the project with this name, creating it if needed."""
        ...

    def create_document(self, document: SourceDocument) -> None: ...

    def get_document(self, document_uuid: str) -> SourceDocument:
        """Raises KeyError when there is no such document."""
        ...

    def last_activity(self, document_uuid: str) -> float:
        """Epoch seconds of the document's last change or OCR poll; KeyError if unknown."""
        ...

    def list_documents(self, statuses: Sequence[Status] | None = None) -> list[SourceDocument]: ...

    def find_by_content(self, project_uuid: str, content_sha256: str) -> SourceDocument | None:
        """The project's earliest document whose file had these bytes (sha256), or None."""
        ...

    def match_uuid_prefix(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Uuids of documents that start with `prefix` (a short uuid), at most `limit`."""
        ...

    def statuses(self, document_uuids: Sequence[str]) -> dict[str, Status]:
        """The current status of each given document (unknown ids are left out)."""
        ...

    def advance_status(
        self,
        document_uuid: str,
        status: Status,
        *,
        stage: str,
        processing_version: int,
        error_message: str | None = None,
        celery_task_id: str | None = None,
        fence: Fence | None = None,
    ) -> bool:
        """Move the document to `status` and record the transition in history.

        Only moves forward on the happy path (a failure status is always
        accepted unless the document is already terminal); a call for a stale
        processing version changes nothing. Returns whether the row changed.
        The history row is written at most once per (document, version, status).
        With a `fence`, raises `StaleDelivery` (and changes nothing) unless the
        document is still where that delivery claimed it.
        """
        ...

    def claim_delivery(
        self,
        document_uuid: str,
        *,
        processing_version: int,
        found_status: Status,
        status: Status,
        stage: str,
    ) -> SourceDocument | None:
        """A stage delivery claims the document: new fencing token, status moved to `status`.

        None when the document is no longer in that version at `found_status`.
        """
        ...

    def check_fence(self, fence: Fence) -> None:
        """Raise `StaleDelivery` unless the document is still where `fence` claimed it."""
        ...

    def derived_versions(self, document_uuid: str) -> dict[str, list[int | None]]:
        """Per derived table, the distinct processing versions of the document's rows."""
        ...

    def force_status(
        self,
        document_uuid: str,
        status: Status,
        *,
        stage: str,
        bump_version: bool,
        note: str | None = None,
        supersedes: Sequence[Status] = (),
    ) -> SourceDocument:
        """Operator override (reset/replay/reprocess): set status, clear the error.

        Without a version bump the history row of `status` (and those of the
        `supersedes` statuses) in this version is replaced by one recorded now,
        carrying `note`: a replayed dead letter shows after the dead letter, and
        a second dead letter can be recorded again.
        """
        ...

    def record_attempt(self, document_uuid: str) -> None: ...

    def set_task_id(self, document_uuid: str, celery_task_id: str) -> None: ...

    def save_raw_text(
        self,
        document_uuid: str,
        raw_text: str,
        ocr_metadata: dict[str, object],
        *,
        fence: Fence | None = None,
    ) -> None: ...

    def history(self, document_uuid: str) -> list[HistoryEntry]: ...

    # --- OCR jobs -------------------------------------------------------------------
    def record_ocr_job(
        self, document_uuid: str, job_id: str, client_request_token: str, status: str
    ) -> None: ...

    def update_ocr_job(self, job_id: str, status: str, polls: int) -> None: ...

    # --- derived rows (each call replaces the document's rows of that kind) ----
    def save_document_node(self, node: DocumentNode, *, fence: Fence | None = None) -> None: ...

    def get_document_node(self, document_uuid: str) -> DocumentNode: ...

    def replace_chunks(
        self, document_uuid: str, chunks: Sequence[Chunk], *, fence: Fence | None = None
    ) -> None: ...

    def get_chunks(self, document_uuid: str) -> list[Chunk]: ...

    def replace_mentions(
        self, document_uuid: str, mentions: Sequence[Mention], *, fence: Fence | None = None
    ) -> None: ...

    def get_mentions(self, document_uuid: str) -> list[Mention]: ...

    def replace_canonical_entities(
        self,
        document_uuid: str,
        entities: Sequence[CanonicalEntity],
        mention_canonical: dict[str, str],
        *,
        fence: Fence | None = None,
    ) -> None:
        """Replace the entities and set each mention's canonical uuid, atomically."""
        ...

    def get_canonical_entities(self, document_uuid: str) -> list[CanonicalEntity]: ...

    def replace_relationships(
        self,
        document_uuid: str,
        relationships: Sequence[Relationship],
        *,
        fence: Fence | None = None,
    ) -> None: ...

    def get_relationships(self, document_uuid: str) -> list[Relationship]: ...

    def clear_derived(self, document_uuid: str) -> None:
        """Delete node, chunks, mentions, entities and relationships (reprocess/reset)."""
        ...

    def counts(self, document_uuid: str) -> DocumentCounts: ...

    # --- the processing queue -------------------------------------------------------
    def enqueue(self, document_uuid: str) -> str:
        """Add a pending queue row (idempotent per document while one is open)."""
        ...

    def claim(
        self,
        worker: str,
        limit: int,
        stale_after: float,
        max_attempts: int,
        *,
        documents: Sequence[str] | None = None,
    ) -> list[QueueEntry]:
        """Atomically claim up to `limit` pending rows (or stale processing ones).

        `documents` restricts the claim to those documents (a direct run claims its own).
        """
        ...

    def keep_claim(self, entry_uuid: str) -> None:
        """Undo the attempt a claim counted (its document is progressing in a stage)."""
        ...

    def finish_queue_entry(
        self, document_uuid: str, status: QueueStatus, error: str | None = None
    ) -> None: ...

    def queue_entries(self, document_uuid: str | None = None) -> list[QueueEntry]: ...

    # --- dead letters -------------------------------------------------------------
    def add_dead_letter(
        self, document_uuid: str, task_name: str, stage: str, error: str, retries: int
    ) -> None: ...

    def dead_letters(self) -> list[dict[str, object]]: ...

    def remove_dead_letters(self, document_uuids: Sequence[str] | None = None) -> int: ...


class StateTracker(Protocol):
    """The Redis document-state hash `doc:state:{uuid}` (7-day TTL)."""

    def record(
        self, document_uuid: str, stage: str, status: str, metadata: dict[str, object] | None = None
    ) -> None: ...

    def get(self, document_uuid: str) -> dict[str, str]: ...


class Cache(Protocol):
    """Versioned cache: every key carries the document's processing version."""

    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str, ttl_seconds: int) -> None: ...


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
    """Shared sliding window; raises `RateLimited` (fail closed) when over or unsure."""

    def acquire(self, name: str) -> None: ...


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
