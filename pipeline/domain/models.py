"""Plain data for the pipeline's domain: statuses, stages and the rows they make.

Everything here is immutable and free of I/O so stages, fakes and the
simulator can share it.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

#: Namespace for every derived id: the same document, version and position
#: always give the same uuid, so a redelivered stage rewrites identical rows.
DOCPIPE_NAMESPACE = uuid.UUID("6f1c2d3e-8a4b-5c6d-9e0f-1a2b3c4d5e6f")


_NAMESPACE_BYTES = DOCPIPE_NAMESPACE.bytes


def stable_uuid(*parts: object) -> str:
    """A deterministic uuid5 from the given parts (joined with '/').

    The string `str(uuid.uuid5(DOCPIPE_NAMESPACE, name))` gives, made without a
    `uuid.UUID`, whose checks and formatting cost more than the hash (3.2 against
    7.1 us a call here): every history row and derived row takes one.
    """
    digest = bytearray(
        hashlib.sha1(_NAMESPACE_BYTES + "/".join(map(str, parts)).encode()).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class Status(StrEnum):
    """`source_documents.status` - the one vocabulary of REFERENCE.md."""

    PENDING = "pending"
    OCR_QUEUED = "ocr_queued"
    OCR_PROCESSING = "ocr_processing"
    OCR_COMPLETE = "ocr_complete"
    TEXT_PROCESSING = "text_processing"
    ENTITY_EXTRACTION = "entity_extraction"
    ENTITY_RESOLUTION = "entity_resolution"
    GRAPH_BUILDING = "graph_building"
    COMPLETED = "completed"
    OCR_FAILED = "ocr_failed"
    TEXT_FAILED = "text_failed"
    ENTITY_FAILED = "entity_failed"
    RESOLUTION_FAILED = "resolution_failed"
    GRAPH_FAILED = "graph_failed"
    DEAD_LETTERED = "dead_lettered"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def is_failure(self) -> bool:
        return self in FAILURE_STATUSES


#: Forward order of the happy path; a status never moves backwards within one
#: processing version (a late duplicate delivery cannot undo progress).
PROGRESS_ORDER: tuple[Status, ...] = (
    Status.PENDING,
    Status.OCR_QUEUED,
    Status.OCR_PROCESSING,
    Status.OCR_COMPLETE,
    Status.TEXT_PROCESSING,
    Status.ENTITY_EXTRACTION,
    Status.ENTITY_RESOLUTION,
    Status.GRAPH_BUILDING,
    Status.COMPLETED,
)
FAILURE_STATUSES = frozenset(
    {
        Status.OCR_FAILED,
        Status.TEXT_FAILED,
        Status.ENTITY_FAILED,
        Status.RESOLUTION_FAILED,
        Status.GRAPH_FAILED,
        Status.DEAD_LETTERED,
    }
)
TERMINAL_STATUSES = FAILURE_STATUSES | {Status.COMPLETED}
#: Statuses the plan's migration script re-enqueues.
RESUMABLE_STATUSES = frozenset({Status.PENDING, Status.OCR_PROCESSING, Status.OCR_FAILED})


_RANKS: dict[str, int] = {
    **{status: index for index, status in enumerate(PROGRESS_ORDER)},
    **dict.fromkeys(TERMINAL_STATUSES, len(PROGRESS_ORDER)),
}


def progress_rank(status: Status) -> int:
    """Position on the happy path; terminal statuses rank highest."""
    rank = _RANKS.get(status)
    if rank is None:
        raise ValueError(f"{status!r} has no place on the happy path")
    return rank


class QueueStatus(StrEnum):
    """`document_processing_queue.status`."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Stage(StrEnum):
    """The six stages, in order; `STAGE_ORDER` is the one place order is defined."""

    OCR = "ocr"
    DOCUMENT_NODE = "document_node"
    CHUNKING = "chunking"
    ENTITY_EXTRACTION = "entity_extraction"
    ENTITY_RESOLUTION = "entity_resolution"
    RELATIONSHIPS = "relationship_staging"

    @property
    def running_status(self) -> Status:
        return _STAGE_STATUSES[self][0]

    @property
    def failed_status(self) -> Status:
        return _STAGE_STATUSES[self][1]

    @property
    def queue(self) -> str:
        return _STAGE_QUEUES[self]

    @property
    def next(self) -> Stage | None:
        index = STAGE_ORDER.index(self)
        return STAGE_ORDER[index + 1] if index + 1 < len(STAGE_ORDER) else None


STAGE_ORDER: tuple[Stage, ...] = tuple(Stage)

_STAGE_STATUSES: dict[Stage, tuple[Status, Status]] = {
    Stage.OCR: (Status.OCR_PROCESSING, Status.OCR_FAILED),
    Stage.DOCUMENT_NODE: (Status.TEXT_PROCESSING, Status.TEXT_FAILED),
    Stage.CHUNKING: (Status.TEXT_PROCESSING, Status.TEXT_FAILED),
    Stage.ENTITY_EXTRACTION: (Status.ENTITY_EXTRACTION, Status.ENTITY_FAILED),
    Stage.ENTITY_RESOLUTION: (Status.ENTITY_RESOLUTION, Status.RESOLUTION_FAILED),
    Stage.RELATIONSHIPS: (Status.GRAPH_BUILDING, Status.GRAPH_FAILED),
}
_STAGE_QUEUES: dict[Stage, str] = {
    Stage.OCR: "ocr",
    Stage.DOCUMENT_NODE: "text",
    Stage.CHUNKING: "text",
    Stage.ENTITY_EXTRACTION: "entity",
    Stage.ENTITY_RESOLUTION: "entity",
    Stage.RELATIONSHIPS: "graph",
}
QUEUES: tuple[str, ...] = ("ocr", "text", "entity", "graph")


class FileType(StrEnum):
    """Extensions the pipeline accepts (extensions, never MIME types: failure 9)."""

    PDF = "pdf"
    DOCX = "docx"
    TXT = "txt"
    EML = "eml"


class EntityType(StrEnum):
    """LLM labels (REFERENCE.md); GPE and LOCATION both map to LOCATION."""

    PERSON = "PERSON"
    ORG = "ORG"
    LOCATION = "LOCATION"
    DATE = "DATE"
    MONEY = "MONEY"
    LAW = "LAW"
    CASE = "CASE"
    OTHER = "OTHER"


class Category(StrEnum):
    """Document categories, checked in this order (REFERENCE.md stage 3)."""

    CONTRACT = "contract"
    AFFIDAVIT = "affidavit"
    CORRESPONDENCE = "correspondence"
    EXHIBIT = "exhibit"
    DEPOSITION = "deposition"
    LEGAL_FILING = "legal_filing"
    FINANCIAL = "financial"
    DOCUMENT = "document"


#: `ocr_metadata` key: pages of a PDF refused at intake (over `max_pdf_pages`, not uploaded).
#: Intake writes it, the OCR stage reads it.
INTAKE_PDF_PAGES = "intake_pdf_pages"


@dataclass(frozen=True)
class SourceDocument:
    uuid: str
    project_uuid: str
    original_file_name: str
    file_type: str
    storage_key: str
    size_bytes: int
    status: Status = Status.PENDING
    processing_version: int = 1
    celery_task_id: str | None = None
    error_message: str | None = None
    attempts: int = 0
    raw_text: str | None = None
    ocr_metadata: dict[str, Any] = field(default_factory=dict)
    #: The fencing token of the stage delivery that last claimed the document.
    fence_token: str | None = None
    #: sha256 (hex) of the original file's bytes; None for documents created without one.
    content_sha256: str | None = None
    #: When the row was created / last changed (epoch seconds; set by the store, not compared).
    created_at: float | None = field(default=None, compare=False)
    updated_at: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Fence:
    """Where one stage delivery found (and claimed) its document.

    Every write of that delivery commits only while the document is still
    there: same processing version, same status, same token. A later delivery
    of the same stage claims it with a new token, so an older one that wakes
    up late (a redelivery ran while it stalled) can no longer write.
    """

    document_uuid: str
    processing_version: int
    #: None: the claim only (`claim_only`), whatever status the delivery's own writes set.
    status: Status | None
    token: str

    def claim_only(self) -> Fence:
        """The same claim at any status: for the delivery's verdict (failure, dead letter).

        Its own writes move the status, some without it knowing (a commit whose
        outcome was lost), but only another delivery's claim changes the token: a
        verdict refused for a status this delivery set would leave the document
        where it stopped, with nothing to carry it on.
        """
        return replace(self, status=None)

    @classmethod
    def of(cls, document: SourceDocument) -> Fence:
        if document.fence_token is None:
            raise ValueError(f"document {document.uuid} was not claimed by a delivery")
        return cls(
            document.uuid, document.processing_version, document.status, document.fence_token
        )


@dataclass(frozen=True)
class ExtractedText:
    """Text of one document plus how it was obtained (kept in `ocr_metadata`)."""

    text: str
    pages: int
    method: str


@dataclass(frozen=True)
class DocumentNode:
    """`neo4j_documents`: its uuid is the source document's uuid."""

    uuid: str
    project_uuid: str
    title: str
    category: Category
    cleaned_text: str


@dataclass(frozen=True)
class ChunkSpan:
    """A chunk as the pure chunker returns it: `text[start:end] == self.text`."""

    index: int
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Chunk:
    uuid: str
    document_uuid: str
    chunk_index: int
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class ExtractedEntity:
    """One entity of the LLM's JSON answer, offsets verified against the chunk."""

    value: str
    entity_type: EntityType
    start: int
    end: int
    confidence: float


@dataclass(frozen=True)
class Mention:
    """`neo4j_entity_mentions`; offsets are relative to the chunk's text."""

    uuid: str
    document_uuid: str
    chunk_uuid: str
    chunk_index: int
    value: str
    normalized_value: str
    entity_type: EntityType
    confidence: float
    start: int
    end: int
    canonical_uuid: str | None = None


@dataclass(frozen=True)
class CanonicalEntity:
    uuid: str
    document_uuid: str
    entity_type: EntityType
    canonical_name: str
    normalized_name: str
    mention_count: int


@dataclass(frozen=True, slots=True)
class Relationship:
    """One row of `neo4j_relationships_staging`.

    Slotted: a document has two per mention and one to three per chunk, so a large one
    holds hundreds of thousands of them; without a per-instance `__dict__` each is smaller
    and quicker to build.
    """

    from_id: str
    from_label: str
    to_id: str
    to_label: str
    relationship_type: str
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DocumentCounts:
    chunks: int
    mentions: int
    canonical_entities: int
    relationships: int


@dataclass(frozen=True)
class HistoryEntry:
    document_uuid: str
    processing_version: int
    stage: str
    status: Status
    error_message: str | None
    celery_task_id: str | None
    created_at: float


@dataclass(frozen=True)
class OcrJob:
    """What an `OcrEngine.poll` answers; vendor shapes stay in the adapter."""

    job_id: str
    state: str  # "in_progress" | "succeeded" | "failed"
    text: str = ""
    pages: int = 0
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
