"""The document store port, split by role.

A use case asks for the role it needs: the stages write `DerivedRows` under a
fence and move `DocumentRecords` through the status machine
(pipeline.domain.status), the queue processor claims from the `WorkQueue`,
operators list and replay `DeadLetters`. `DocumentStore` joins the four: one
database serves them, and an adapter implements them together so they share
its transactions (pipeline.adapters.sql).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pipeline.domain.models import (
    CanonicalEntity,
    Chunk,
    DocumentCounts,
    DocumentNode,
    Fence,
    HistoryEntry,
    Mention,
    QueueStatus,
    Relationship,
    SourceDocument,
    Status,
)


@dataclass(frozen=True)
class QueueEntry:
    uuid: str
    document_uuid: str
    status: QueueStatus
    attempts: int
    claimed_by: str | None
    claimed_at: float | None
    last_error: str | None


class DocumentRecords(Protocol):
    """Projects, documents and their status (with history), OCR jobs."""

    def ensure_project(self, name: str) -> str:
        """Return the uuid of the project with this name, creating it if needed."""
        ...

    def create_document(
        self, document: SourceDocument, *, unless_content_known: bool = False
    ) -> str:
        """Insert it; the uuid returned is of the document holding its content.

        `unless_content_known`: when the project already has a document with the
        same content_sha256 (created by a concurrent run, say), none is inserted
        and that document's uuid is returned; look-up and insert are atomic.
        """
        ...

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

    def read_and_claim(
        self,
        document_uuid: str,
        *,
        stage: str,
        judge: Callable[[SourceDocument], Status | None],
        with_text: bool = True,
    ) -> SourceDocument | None:
        """Read the document and claim it for a stage delivery in one transaction.

        `judge(document)` (the caller's rule, run while nothing else can move
        the document) gives the status to claim it at, or None to leave it as
        it is (returns None). A claim is `claim_delivery`'s: a fresh fencing
        token, the status moved forward with its history row. KeyError when
        there is no such document. Without `with_text` the document's `raw_text`
        is not read (None): the OCR text of a long document is megabytes, and
        only the stages that use it need it.
        """
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

    def record_ocr_job(
        self, document_uuid: str, job_id: str, client_request_token: str, status: str
    ) -> None: ...

    def update_ocr_job(self, job_id: str, status: str, polls: int) -> None: ...


class DerivedRows(Protocol):
    """The rows the stages derive; each write *replaces* the document's rows of that
    kind, so a redelivered stage leaves identical rows and a reprocess adds nothing."""

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

    def check_fence(self, fence: Fence) -> None:
        """Raise `StaleDelivery` unless the document is still where `fence` claimed it."""
        ...

    def derived_versions(self, document_uuid: str) -> dict[str, list[int | None]]:
        """Per derived table, the distinct processing versions of the document's rows."""
        ...


class WorkQueue(Protocol):
    """The processing queue table (the queue processor's work list)."""

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

    def requeue_new_version(self, document_uuid: str, *, stage: str) -> SourceDocument:
        """`pending` in a new processing version and queued afresh, in one transaction.

        The version bump (`force_status`, history under `stage`), the derived rows
        removed, the open queue row cancelled, the dead letters removed and one new
        pending queue row: what reset, migrate and `run --reprocess` do. KeyError for
        an unknown document.
        """
        ...


@dataclass(frozen=True)
class ReplayedLetter:
    """A dead letter replayed: the document back at `stage`'s running status."""

    document: SourceDocument
    stage: str


class DeadLetters(Protocol):
    """Tasks that gave up, kept for an operator to read, replay or remove."""

    def add_dead_letter(
        self, document_uuid: str, task_name: str, stage: str, error: str, retries: int
    ) -> None:
        """The dead letter row alone (one per document and stage; again, it is updated)."""
        ...

    def dead_letter(
        self,
        document_uuid: str,
        *,
        stage: str,
        processing_version: int,
        task_name: str,
        error: str,
        retries: int,
        fence: Fence | None = None,
    ) -> bool:
        """Move the document to `dead_lettered` and add its dead letter, in one transaction.

        As `advance_status` to `dead_lettered` (False, and nothing written, when
        the document may not move: ended, or another processing version; with a
        stale `fence`, StaleDelivery), plus `add_dead_letter` when it moved.
        """
        ...

    def dead_letters(self) -> list[dict[str, object]]: ...

    def remove_dead_letters(self, document_uuids: Sequence[str] | None = None) -> int: ...

    def replay_dead_letter(self, document_uuid: str) -> ReplayedLetter | None:
        """A `dead_lettered` document back to the stage its newest dead letter names, in one
        transaction: `force_status` to that stage's running status (same version, the
        history row saying which letter it replays), its dead letters removed and an
        open queue row (`enqueue`), so the queue processor resends the stage should its
        message be lost.

        None, with nothing written, when the document is not `dead_lettered` (it moved on)
        or has no dead letter; a deleted document's letters are removed.
        """
        ...


class DocumentStore(DocumentRecords, DerivedRows, WorkQueue, DeadLetters, Protocol):
    """The database (SQLite on the embedded default, PostgreSQL/Supabase in production),
    all four roles on one connection pool."""
