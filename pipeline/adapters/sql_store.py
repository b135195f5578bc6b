"""`DocumentStore` on SQLAlchemy Core: one code path for SQLite and PostgreSQL.

Every public method is exactly one transaction, so a caller (or a worker in
another process) never sees half-written state. Dialect differences live in a
few small helpers: insert-if-absent (`ON CONFLICT DO NOTHING` on both), row
locking for the queue (`FOR UPDATE SKIP LOCKED` on PostgreSQL, the database
write lock taken up front with `BEGIN IMMEDIATE` on SQLite) and engine setup.
Connection-level failures surface as `TransientError` (pipeline.errors).
"""

from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    inspect,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.pool import StaticPool
from sqlalchemy.util import LRUCache

from pipeline.adapters.schema import (
    BEGIN_IMMEDIATE,
    DERIVED_TABLES,
    OPEN_QUEUE_STATUSES,
    create_schema,
    dead_letter_tasks,
    document_processing_history,
    document_processing_queue,
    metadata,
    neo4j_canonical_entities,
    neo4j_chunks,
    neo4j_documents,
    neo4j_entity_mentions,
    neo4j_relationships_staging,
    projects,
    source_documents,
    textract_jobs,
)
from pipeline.domain.models import (
    PROGRESS_ORDER,
    TERMINAL_STATUSES,
    CanonicalEntity,
    Category,
    Chunk,
    DocumentCounts,
    DocumentNode,
    EntityType,
    Fence,
    HistoryEntry,
    Mention,
    QueueStatus,
    Relationship,
    SourceDocument,
    Status,
    progress_rank,
    stable_uuid,
)
from pipeline.errors import ConfigurationError, StaleDelivery, TransientError
from pipeline.ports import Clock, QueueEntry
from pipeline.settings import redact_url

#: How long a SQLite connection waits for another process's write lock.
SQLITE_BUSY_TIMEOUT_SECONDS = 30

_OPEN = [status.value for status in OPEN_QUEUE_STATUSES]


class SqlDocumentStore:
    """The `DocumentStore` port on a SQLAlchemy engine (SQLite or PostgreSQL).

    `clock` gives the timestamps (created_at, claimed_at, stale-claim cutoff);
    wall-clock time when omitted.
    """

    def __init__(self, engine: Engine, *, clock: Clock | None = None) -> None:
        self._engine = engine
        self._clock = clock

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        """Close the engine's pooled connections."""
        self._engine.dispose()

    # --- projects and documents -------------------------------------------------
    def ensure_project(self, name: str) -> str:
        with self._write() as conn:
            conn.execute(
                self._insert_ignore(conn, projects).values(
                    uuid=stable_uuid("project", name), name=name, **self._stamps()
                )
            )
            return str(
                conn.execute(select(projects.c.uuid).where(projects.c.name == name)).scalar_one()
            )

    def create_document(self, document: SourceDocument) -> None:
        with self._write() as conn:
            if self._exists(conn, source_documents, document.uuid):
                raise ValueError(f"document {document.uuid} already exists")
            if not self._exists(conn, projects, document.project_uuid):
                raise KeyError(f"no project {document.project_uuid}")
            conn.execute(
                source_documents.insert().values(
                    uuid=document.uuid,
                    project_uuid=document.project_uuid,
                    original_file_name=document.original_file_name,
                    file_type=document.file_type,
                    storage_key=document.storage_key,
                    size_bytes=document.size_bytes,
                    status=Status(document.status).value,
                    processing_version=document.processing_version,
                    celery_task_id=document.celery_task_id,
                    error_message=document.error_message,
                    attempts=document.attempts,
                    raw_text=_strip_nul(document.raw_text),
                    ocr_metadata=dict(document.ocr_metadata),
                    content_sha256=document.content_sha256,
                    **self._stamps(),
                )
            )

    def get_document(self, document_uuid: str) -> SourceDocument:
        with self._read() as conn:
            return self._load_document(conn, document_uuid)

    def last_activity(self, document_uuid: str) -> float:
        """When the document last showed progress (epoch seconds): its row or an OCR poll."""
        docs, jobs = source_documents.c, textract_jobs.c
        with self._read() as conn:
            updated = conn.execute(
                select(docs.updated_at).where(docs.uuid == document_uuid)
            ).scalar_one_or_none()
            if updated is None:
                raise KeyError(document_uuid)
            polled = conn.execute(
                select(func.max(jobs.updated_at)).where(jobs.document_uuid == document_uuid)
            ).scalar_one()
        latest: datetime = updated if polled is None else max(updated, polled)
        return latest.timestamp()

    def find_by_content(self, project_uuid: str, content_sha256: str) -> SourceDocument | None:
        """The project's earliest document with this content hash, or None."""
        docs = source_documents.c
        query = (
            select(source_documents)
            .where(docs.project_uuid == project_uuid, docs.content_sha256 == content_sha256)
            .order_by(docs.created_at, docs.uuid)
            .limit(1)
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        return None if row is None else _document(row)

    def match_uuid_prefix(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Uuids of documents starting with `prefix` (hex digits and dashes), at most `limit`."""
        if not prefix or any(c not in "0123456789abcdef-" for c in prefix.lower()):
            return []
        docs = source_documents.c
        query = (
            select(docs.uuid)
            .where(docs.uuid.like(f"{prefix.lower()}%"))
            .order_by(docs.uuid)
            .limit(limit)
        )
        with self._read() as conn:
            return [str(value) for value in conn.execute(query).scalars()]

    def list_documents(self, statuses: Sequence[Status] | None = None) -> list[SourceDocument]:
        query = select(source_documents).order_by(
            source_documents.c.created_at, source_documents.c.uuid
        )
        if statuses is not None:
            query = query.where(source_documents.c.status.in_([Status(s).value for s in statuses]))
        with self._read() as conn:
            return [_document(row) for row in conn.execute(query)]

    def statuses(self, document_uuids: Sequence[str]) -> dict[str, Status]:
        """Status of each given document, in one light query per 500 ids."""
        found: dict[str, Status] = {}
        column = source_documents.c
        with self._read() as conn:
            for start in range(0, len(document_uuids), 500):
                batch = list(document_uuids[start : start + 500])
                query = select(column.uuid, column.status).where(column.uuid.in_(batch))
                found.update((row.uuid, Status(row.status)) for row in conn.execute(query))
        return found

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
        """Forward-only, race-free: one conditional UPDATE decides.

        The UPDATE only matches the document in this processing version with a
        current status it may move from (`_allowed_predecessors`), so two
        workers racing (or a late redelivery) cannot move it backwards. A
        terminal status closes the document's open queue row in the same
        commit: a crash or outage right after it cannot leave the row open.
        """
        status = Status(status)
        docs = source_documents.c
        values: dict[str, Any] = {
            "status": status.value,
            "error_message": error_message if status.is_failure else None,
            "updated_at": self._now(),
        }
        if celery_task_id is not None:
            values["celery_task_id"] = celery_task_id
        allowed = [s.value for s in _allowed_predecessors(status)]
        with self._write() as conn:
            self._check_fence(conn, fence)
            changed = conn.execute(
                update(source_documents)
                .where(
                    docs.uuid == document_uuid,
                    docs.processing_version == processing_version,
                    docs.status.in_(allowed),
                )
                .values(**values)
            ).rowcount
            if changed != 1:
                return False
            task_id = (
                celery_task_id
                or conn.execute(
                    select(docs.celery_task_id).where(docs.uuid == document_uuid)
                ).scalar_one()
            )
            self._record_history(
                conn,
                document_uuid,
                processing_version,
                stage,
                status,
                values["error_message"],
                task_id,
            )
            if status.is_terminal:
                self._close_queue_entry(
                    conn,
                    document_uuid,
                    QueueStatus.FAILED if status.is_failure else QueueStatus.COMPLETED,
                    values["error_message"],
                )
            return True

    def claim_delivery(
        self,
        document_uuid: str,
        *,
        processing_version: int,
        found_status: Status,
        status: Status,
        stage: str,
    ) -> SourceDocument | None:
        """Claim the document for one stage delivery: a fresh fencing token, and `status`.

        Matches only while the document is still in `processing_version` at
        `found_status` (what the delivery read); None when it moved on in
        between. Moving to a later `status` records the transition in history,
        as `advance_status` does. Any earlier delivery's token stops matching.
        """
        docs = source_documents.c
        values: dict[str, Any] = {"fence_token": uuidlib.uuid4().hex, "updated_at": self._now()}
        moves = progress_rank(status) > progress_rank(found_status)
        if moves:
            values.update(status=Status(status).value, error_message=None)
        with self._write() as conn:
            changed = conn.execute(
                update(source_documents)
                .where(
                    docs.uuid == document_uuid,
                    docs.processing_version == processing_version,
                    docs.status == Status(found_status).value,
                )
                .values(**values)
            ).rowcount
            if changed != 1:
                return None
            document = self._load_document(conn, document_uuid)
            if moves:
                self._record_history(
                    conn,
                    document_uuid,
                    processing_version,
                    stage,
                    Status(status),
                    None,
                    document.celery_task_id,
                )
            return document

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
        status = Status(status)
        docs = source_documents.c
        values: dict[str, Any] = {
            "status": status.value,
            "error_message": None,
            # An operator override cuts off every delivery in flight.
            "fence_token": None,
            "updated_at": self._now(),
        }
        if bump_version:
            values["processing_version"] = docs.processing_version + 1
        with self._write() as conn:
            self._update_document(conn, document_uuid, values)
            document = self._load_document(conn, document_uuid)
            if not bump_version:
                # Back to a status this version already had (a dead letter replayed): the
                # override is an event of its own, so its history row moves to now under
                # the stage given (one row per status and version, as everywhere); the
                # rows it `supersedes` go, so that they can be recorded again.
                hist = document_processing_history.c
                gone = [status.value, *(Status(s).value for s in supersedes)]
                conn.execute(
                    delete(document_processing_history).where(
                        hist.document_uuid == document_uuid,
                        hist.processing_version == document.processing_version,
                        hist.status.in_(gone),
                    )
                )
            self._record_history(
                conn,
                document_uuid,
                document.processing_version,
                stage,
                status,
                note,
                document.celery_task_id,
            )
            return document

    def record_attempt(self, document_uuid: str) -> None:
        with self._write() as conn:
            self._update_document(
                conn,
                document_uuid,
                {"attempts": source_documents.c.attempts + 1, "updated_at": self._now()},
            )

    def set_task_id(self, document_uuid: str, celery_task_id: str) -> None:
        """Only the task id: never the status (REFERENCE failure 8)."""
        with self._write() as conn:
            self._update_document(
                conn, document_uuid, {"celery_task_id": celery_task_id, "updated_at": self._now()}
            )

    def save_raw_text(
        self,
        document_uuid: str,
        raw_text: str,
        ocr_metadata: dict[str, object],
        *,
        fence: Fence | None = None,
    ) -> None:
        """Store the OCR text. NUL characters are dropped: PostgreSQL text refuses them."""
        with self._write() as conn:
            self._check_fence(conn, fence, document_uuid)
            self._update_document(
                conn,
                document_uuid,
                {
                    "raw_text": _strip_nul(raw_text),
                    "ocr_metadata": dict(ocr_metadata),
                    "updated_at": self._now(),
                },
            )

    def history(self, document_uuid: str) -> list[HistoryEntry]:
        hist = document_processing_history.c
        with self._read() as conn:
            rows = conn.execute(
                select(document_processing_history).where(hist.document_uuid == document_uuid)
            ).all()
        entries = [
            HistoryEntry(
                document_uuid=row.document_uuid,
                processing_version=row.processing_version,
                stage=row.stage,
                status=Status(row.status),
                error_message=row.error_message,
                celery_task_id=row.celery_task_id,
                created_at=row.created_at.timestamp(),
            )
            for row in rows
        ]
        entries.sort(key=lambda e: (e.created_at, e.processing_version, progress_rank(e.status)))
        return entries

    # --- OCR jobs -------------------------------------------------------------------
    def record_ocr_job(
        self, document_uuid: str, job_id: str, client_request_token: str, status: str
    ) -> None:
        """Insert-if-absent on the job id: recording the same job twice is a no-op."""
        with self._write() as conn:
            conn.execute(
                self._insert_ignore(conn, textract_jobs).values(
                    uuid=stable_uuid("textract_job", job_id),
                    document_uuid=document_uuid,
                    job_id=job_id,
                    client_request_token=client_request_token,
                    status=status,
                    polls=0,
                    **self._stamps(),
                )
            )

    def update_ocr_job(self, job_id: str, status: str, polls: int) -> None:
        with self._write() as conn:
            changed = conn.execute(
                update(textract_jobs)
                .where(textract_jobs.c.job_id == job_id)
                .values(status=status, polls=polls, updated_at=self._now())
            ).rowcount
            if changed == 0:
                raise KeyError(f"no OCR job {job_id}")

    def ocr_jobs(self, document_uuid: str) -> list[dict[str, object]]:
        """The document's OCR job rows (job id, token, status, polls, timestamps)."""
        jobs = textract_jobs.c
        with self._read() as conn:
            rows = conn.execute(
                select(
                    jobs.job_id,
                    jobs.client_request_token,
                    jobs.status,
                    jobs.polls,
                    jobs.created_at,
                    jobs.updated_at,
                )
                .where(jobs.document_uuid == document_uuid)
                .order_by(jobs.created_at, jobs.uuid)
            ).all()
        return [dict(row._mapping) for row in rows]

    # --- derived rows (each call replaces the document's rows of that kind) ----
    def save_document_node(self, node: DocumentNode, *, fence: Fence | None = None) -> None:
        with self._write() as conn:
            self._check_fence(conn, fence, node.uuid)
            conn.execute(delete(neo4j_documents).where(neo4j_documents.c.uuid == node.uuid))
            conn.execute(
                neo4j_documents.insert().values(
                    uuid=node.uuid,
                    project_uuid=node.project_uuid,
                    title=node.title,
                    category=Category(node.category).value,
                    cleaned_text=node.cleaned_text,
                    processing_version=_version(fence),
                    **self._stamps(),
                )
            )

    def get_document_node(self, document_uuid: str) -> DocumentNode:
        with self._read() as conn:
            row = conn.execute(
                select(neo4j_documents).where(neo4j_documents.c.uuid == document_uuid)
            ).one_or_none()
        if row is None:
            raise KeyError(f"no document node {document_uuid}")
        return DocumentNode(
            uuid=row.uuid,
            project_uuid=row.project_uuid,
            title=row.title,
            category=Category(row.category),
            cleaned_text=row.cleaned_text,
        )

    def replace_chunks(
        self, document_uuid: str, chunks: Sequence[Chunk], *, fence: Fence | None = None
    ) -> None:
        _check_owner(document_uuid, (chunk.document_uuid for chunk in chunks))
        stamps = self._stamps()
        rows = [
            {
                "uuid": chunk.uuid,
                "document_uuid": document_uuid,
                "chunk_index": chunk.chunk_index,
                "start_offset": chunk.start,
                "end_offset": chunk.end,
                "text": chunk.text,
                "processing_version": _version(fence),
                **stamps,
            }
            for chunk in chunks
        ]
        with self._write() as conn:
            self._check_fence(conn, fence, document_uuid)
            self._replace(conn, neo4j_chunks, document_uuid, rows)

    def get_chunks(self, document_uuid: str) -> list[Chunk]:
        table = neo4j_chunks.c
        with self._read() as conn:
            rows = conn.execute(
                select(neo4j_chunks)
                .where(table.document_uuid == document_uuid)
                .order_by(table.chunk_index)
            ).all()
        return [
            Chunk(
                uuid=row.uuid,
                document_uuid=row.document_uuid,
                chunk_index=row.chunk_index,
                start=row.start_offset,
                end=row.end_offset,
                text=row.text,
            )
            for row in rows
        ]

    def replace_mentions(
        self, document_uuid: str, mentions: Sequence[Mention], *, fence: Fence | None = None
    ) -> None:
        _check_owner(document_uuid, (mention.document_uuid for mention in mentions))
        stamps = self._stamps()
        rows = [
            {
                "uuid": mention.uuid,
                "document_uuid": document_uuid,
                "chunk_uuid": mention.chunk_uuid,
                "chunk_index": mention.chunk_index,
                "value": mention.value,
                "normalized_value": mention.normalized_value,
                "entity_type": EntityType(mention.entity_type).value,
                "confidence": mention.confidence,
                "start_offset": mention.start,
                "end_offset": mention.end,
                "canonical_uuid": mention.canonical_uuid,
                "processing_version": _version(fence),
                **stamps,
            }
            for mention in mentions
        ]
        with self._write() as conn:
            self._check_fence(conn, fence, document_uuid)
            self._replace(conn, neo4j_entity_mentions, document_uuid, rows)

    def get_mentions(self, document_uuid: str) -> list[Mention]:
        table = neo4j_entity_mentions.c
        with self._read() as conn:
            rows = conn.execute(
                select(neo4j_entity_mentions)
                .where(table.document_uuid == document_uuid)
                .order_by(table.chunk_index, table.start_offset, table.end_offset, table.uuid)
            ).all()
        return [
            Mention(
                uuid=row.uuid,
                document_uuid=row.document_uuid,
                chunk_uuid=row.chunk_uuid,
                chunk_index=row.chunk_index,
                value=row.value,
                normalized_value=row.normalized_value,
                entity_type=EntityType(row.entity_type),
                confidence=row.confidence,
                start=row.start_offset,
                end=row.end_offset,
                canonical_uuid=row.canonical_uuid,
            )
            for row in rows
        ]

    def replace_canonical_entities(
        self,
        document_uuid: str,
        entities: Sequence[CanonicalEntity],
        mention_canonical: dict[str, str],
        *,
        fence: Fence | None = None,
    ) -> None:
        """Replace the entities; every mention of the document gets its canonical
        uuid from `mention_canonical` (NULL when absent: old ids are gone)."""
        _check_owner(document_uuid, (entity.document_uuid for entity in entities))
        now = self._now()
        rows = [
            {
                "uuid": entity.uuid,
                "document_uuid": document_uuid,
                "entity_type": EntityType(entity.entity_type).value,
                "canonical_name": entity.canonical_name,
                "normalized_name": entity.normalized_name,
                "mention_count": entity.mention_count,
                "processing_version": _version(fence),
                "created_at": now,
                "updated_at": now,
            }
            for entity in entities
        ]
        mentions = neo4j_entity_mentions.c
        with self._write() as conn:
            self._check_fence(conn, fence, document_uuid)
            self._replace(conn, neo4j_canonical_entities, document_uuid, rows)
            conn.execute(
                update(neo4j_entity_mentions)
                .where(mentions.document_uuid == document_uuid)
                .values(canonical_uuid=None, updated_at=now)
            )
            if mention_canonical:
                conn.execute(
                    update(neo4j_entity_mentions)
                    .where(
                        mentions.uuid == bindparam("mention_uuid"),
                        mentions.document_uuid == document_uuid,
                    )
                    .values(canonical_uuid=bindparam("canonical"), updated_at=now),
                    [
                        {"mention_uuid": mention_uuid, "canonical": canonical}
                        for mention_uuid, canonical in mention_canonical.items()
                    ],
                )

    def get_canonical_entities(self, document_uuid: str) -> list[CanonicalEntity]:
        table = neo4j_canonical_entities.c
        with self._read() as conn:
            rows = conn.execute(
                select(neo4j_canonical_entities)
                .where(table.document_uuid == document_uuid)
                .order_by(table.entity_type, table.normalized_name, table.uuid)
            ).all()
        return [
            CanonicalEntity(
                uuid=row.uuid,
                document_uuid=row.document_uuid,
                entity_type=EntityType(row.entity_type),
                canonical_name=row.canonical_name,
                normalized_name=row.normalized_name,
                mention_count=row.mention_count,
            )
            for row in rows
        ]

    def replace_relationships(
        self,
        document_uuid: str,
        relationships: Sequence[Relationship],
        *,
        fence: Fence | None = None,
    ) -> None:
        """Row uuids derive from (from_id, to_id, type), the table's natural key."""
        stamps = self._stamps()
        rows = [
            {
                "uuid": relationship_uuid(rel),
                "document_uuid": document_uuid,
                "from_id": rel.from_id,
                "from_label": rel.from_label,
                "to_id": rel.to_id,
                "to_label": rel.to_label,
                "relationship_type": rel.relationship_type,
                "properties": dict(rel.properties),
                "processing_version": _version(fence),
                **stamps,
            }
            for rel in relationships
        ]
        with self._write() as conn:
            self._check_fence(conn, fence, document_uuid)
            self._replace(conn, neo4j_relationships_staging, document_uuid, rows)

    def check_fence(self, fence: Fence) -> None:
        """Raise `StaleDelivery` unless the delivery still holds the document (no write).

        For writes outside the database (the graph sink): checked right before them.
        """
        with self._read() as conn:
            self._check_fence(conn, fence)

    def derived_versions(self, document_uuid: str) -> dict[str, list[int | None]]:
        """Per derived table, the distinct processing versions of the document's rows."""
        found: dict[str, list[int | None]] = {}
        with self._read() as conn:
            for table in DERIVED_TABLES:
                owner = table.c.uuid if table is neo4j_documents else table.c.document_uuid
                versions = conn.execute(
                    select(table.c.processing_version).where(owner == document_uuid).distinct()
                ).scalars()
                found[table.name] = sorted(versions, key=lambda v: -1 if v is None else v)
        return found

    def get_relationships(self, document_uuid: str) -> list[Relationship]:
        table = neo4j_relationships_staging.c
        with self._read() as conn:
            rows = conn.execute(
                select(neo4j_relationships_staging)
                .where(table.document_uuid == document_uuid)
                .order_by(table.relationship_type, table.from_id, table.to_id)
            ).all()
        return [
            Relationship(
                from_id=row.from_id,
                from_label=row.from_label,
                to_id=row.to_id,
                to_label=row.to_label,
                relationship_type=row.relationship_type,
                properties=dict(row.properties or {}),
            )
            for row in rows
        ]

    def clear_derived(self, document_uuid: str) -> None:
        with self._write() as conn:
            for table in DERIVED_TABLES:
                key = table.c.uuid if table is neo4j_documents else table.c.document_uuid
                conn.execute(delete(table).where(key == document_uuid))

    def counts(self, document_uuid: str) -> DocumentCounts:
        def count(conn: Connection, table: Table) -> int:
            query = select(func.count()).select_from(table)
            return int(
                conn.execute(query.where(table.c.document_uuid == document_uuid)).scalar_one()
            )

        with self._read() as conn:
            return DocumentCounts(
                chunks=count(conn, neo4j_chunks),
                mentions=count(conn, neo4j_entity_mentions),
                canonical_entities=count(conn, neo4j_canonical_entities),
                relationships=count(conn, neo4j_relationships_staging),
            )

    # --- the processing queue -------------------------------------------------------
    def enqueue(self, document_uuid: str) -> str:
        """A pending row, unless the document already has an open one (its uuid is returned).

        The partial unique index allows one open row per document; a concurrent
        enqueue loses the insert (`ON CONFLICT DO NOTHING`, which waits for the
        winner's commit on PostgreSQL) and then reads the winner's row.
        """
        with self._write() as conn:
            existing = self._open_queue_uuid(conn, document_uuid)
            if existing is not None:
                return existing
            new_uuid = str(uuidlib.uuid4())
            inserted = conn.execute(
                self._insert_ignore(conn, document_processing_queue).values(
                    uuid=new_uuid,
                    document_uuid=document_uuid,
                    status=QueueStatus.PENDING.value,
                    attempts=0,
                    **self._stamps(),
                )
            ).rowcount
            if inserted == 1:
                return new_uuid
            existing = self._open_queue_uuid(conn, document_uuid)
            if existing is None:  # the winner closed its row in between: a rare race
                raise TransientError(f"enqueue of {document_uuid} raced; retry")
            return existing

    def claim(
        self,
        worker: str,
        limit: int,
        stale_after: float,
        max_attempts: int,
        *,
        documents: Sequence[str] | None = None,
    ) -> list[QueueEntry]:
        """Claim up to `limit` rows, oldest first, atomically.

        Candidates are pending rows and processing rows whose claim is older
        than `stale_after` seconds (their worker is presumed dead). A candidate
        that already used `max_attempts` is failed instead of claimed. Two
        claimers never get the same row: PostgreSQL locks the candidates with
        `FOR UPDATE SKIP LOCKED` (a concurrent claimer skips them), SQLite runs
        the whole method under the database write lock (`BEGIN IMMEDIATE`).
        """
        if limit <= 0:
            return []
        queue = document_processing_queue.c
        now = self._now()
        cutoff = now - timedelta(seconds=stale_after)
        claimed: list[QueueEntry] = []
        seen: list[str] = []
        with self._write() as conn:
            while len(claimed) < limit:
                query = (
                    select(document_processing_queue)
                    .where(
                        or_(
                            queue.status == QueueStatus.PENDING.value,
                            and_(
                                queue.status == QueueStatus.PROCESSING.value,
                                queue.claimed_at < cutoff,
                            ),
                        ),
                        queue.uuid.not_in(seen),
                        true() if documents is None else queue.document_uuid.in_(documents),
                    )
                    .order_by(queue.created_at, queue.uuid)
                    .limit(limit - len(claimed))
                )
                rows = conn.execute(self._lock_skip_locked(conn, query)).all()
                if not rows:
                    break
                seen.extend(row.uuid for row in rows)
                exhausted = [row.uuid for row in rows if row.attempts >= max_attempts]
                if exhausted:
                    conn.execute(
                        update(document_processing_queue)
                        .where(queue.uuid.in_(exhausted))
                        .values(
                            status=QueueStatus.FAILED.value,
                            last_error=f"max attempts ({max_attempts}) exceeded",
                            updated_at=now,
                        )
                    )
                fresh = [row for row in rows if row.attempts < max_attempts]
                if not fresh:
                    continue
                conn.execute(
                    update(document_processing_queue)
                    .where(queue.uuid.in_([row.uuid for row in fresh]))
                    .values(
                        status=QueueStatus.PROCESSING.value,
                        claimed_by=worker,
                        claimed_at=now,
                        attempts=queue.attempts + 1,
                        updated_at=now,
                    )
                )
                claimed.extend(
                    QueueEntry(
                        uuid=row.uuid,
                        document_uuid=row.document_uuid,
                        status=QueueStatus.PROCESSING,
                        attempts=row.attempts + 1,
                        claimed_by=worker,
                        claimed_at=now.timestamp(),
                        last_error=_stale_note(row) or row.last_error,
                    )
                    for row in fresh
                )
                stale = [row for row in fresh if row.status == QueueStatus.PROCESSING.value]
                for row in stale:
                    conn.execute(
                        update(document_processing_queue)
                        .where(queue.uuid == row.uuid)
                        .values(last_error=_stale_note(row))
                    )
        return claimed

    def keep_claim(self, entry_uuid: str) -> None:
        """Give back the attempt a claim counted: its document is in a stage and progressing.

        A long stage (a Textract backlog) outlives several stale windows; each
        reclaim would otherwise use up an attempt and fail a healthy row.
        """
        queue = document_processing_queue.c
        with self._write() as conn:
            conn.execute(
                update(document_processing_queue)
                .where(queue.uuid == entry_uuid, queue.attempts > 0)
                .values(attempts=queue.attempts - 1, updated_at=self._now())
            )

    def finish_queue_entry(
        self, document_uuid: str, status: QueueStatus, error: str | None = None
    ) -> None:
        """Close the document's open queue row (no-op when it has none)."""
        with self._write() as conn:
            self._close_queue_entry(conn, document_uuid, status, error)

    def _close_queue_entry(
        self, conn: Connection, document_uuid: str, status: QueueStatus, error: str | None
    ) -> None:
        queue = document_processing_queue.c
        values: dict[str, Any] = {"status": QueueStatus(status).value, "updated_at": self._now()}
        if error is not None:
            values["last_error"] = error
        conn.execute(
            update(document_processing_queue)
            .where(queue.document_uuid == document_uuid, queue.status.in_(_OPEN))
            .values(**values)
        )

    def queue_entries(self, document_uuid: str | None = None) -> list[QueueEntry]:
        queue = document_processing_queue.c
        query = select(document_processing_queue).order_by(queue.created_at, queue.uuid)
        if document_uuid is not None:
            query = query.where(queue.document_uuid == document_uuid)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            QueueEntry(
                uuid=row.uuid,
                document_uuid=row.document_uuid,
                status=QueueStatus(row.status),
                attempts=row.attempts,
                claimed_by=row.claimed_by,
                claimed_at=row.claimed_at.timestamp() if row.claimed_at is not None else None,
                last_error=row.last_error,
            )
            for row in rows
        ]

    # --- dead letters -------------------------------------------------------------
    def add_dead_letter(
        self, document_uuid: str, task_name: str, stage: str, error: str, retries: int
    ) -> None:
        """One dead letter per document and stage: recording it again (a retry after the
        commit's outcome was lost) updates that row instead of adding a second one."""
        table = dead_letter_tasks.c
        values = {"task_name": task_name, "error": error, "retries": retries}
        with self._write() as conn:
            existing = conn.execute(
                select(table.uuid)
                .where(table.document_uuid == document_uuid, table.stage == stage)
                .limit(1)
            ).scalar()
            if existing is not None:
                conn.execute(
                    dead_letter_tasks.update()
                    .where(table.uuid == existing)
                    .values(**values, created_at=self._now())
                )
                return
            conn.execute(
                dead_letter_tasks.insert().values(
                    uuid=str(uuidlib.uuid4()),
                    document_uuid=document_uuid,
                    stage=stage,
                    created_at=self._now(),
                    **values,
                )
            )

    def dead_letters(self) -> list[dict[str, object]]:
        """Newest first; `created_at` as an ISO 8601 string."""
        table = dead_letter_tasks.c
        with self._read() as conn:
            rows = conn.execute(
                select(dead_letter_tasks).order_by(table.created_at.desc(), table.uuid.desc())
            ).all()
        return [
            {
                "document_uuid": row.document_uuid,
                "task_name": row.task_name,
                "stage": row.stage,
                "error": row.error,
                "retries": row.retries,
                "created_at": row.created_at.isoformat(),
            }
            for row in rows
        ]

    def remove_dead_letters(self, document_uuids: Sequence[str] | None = None) -> int:
        """Remove all dead letters, or those of the given documents; returns how many."""
        statement = delete(dead_letter_tasks)
        if document_uuids is not None:
            if not document_uuids:
                return 0
            statement = statement.where(dead_letter_tasks.c.document_uuid.in_(document_uuids))
        with self._write() as conn:
            return int(conn.execute(statement).rowcount)

    # --- helpers ------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock at BEGIN."""
        with _translate_errors(), self._engine.connect() as conn:
            conn.execution_options(**{BEGIN_IMMEDIATE: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with _translate_errors(), self._engine.connect() as conn, conn.begin():
            yield conn

    def _now(self) -> datetime:
        seconds = self._clock.now() if self._clock is not None else time.time()
        return datetime.fromtimestamp(seconds, UTC)

    def _stamps(self) -> dict[str, datetime]:
        now = self._now()
        return {"created_at": now, "updated_at": now}

    @staticmethod
    def _insert_ignore(conn: Connection, table: Table) -> Insert:
        """INSERT ... ON CONFLICT DO NOTHING (insert-if-absent) for either dialect."""
        if conn.dialect.name == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        if conn.dialect.name == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing()
        raise ConfigurationError(f"unsupported database dialect {conn.dialect.name!r}")

    @staticmethod
    def _lock_skip_locked(conn: Connection, query: Select[Any]) -> Select[Any]:
        """Row locks where the database has them; SQLite already holds the write lock."""
        if conn.dialect.name == "postgresql":
            return query.with_for_update(skip_locked=True)
        return query

    @staticmethod
    def _exists(conn: Connection, table: Table, row_uuid: str) -> bool:
        query = select(table.c.uuid).where(table.c.uuid == row_uuid)
        return conn.execute(query).first() is not None

    @staticmethod
    def _load_document(conn: Connection, document_uuid: str) -> SourceDocument:
        row = conn.execute(
            select(source_documents).where(source_documents.c.uuid == document_uuid)
        ).one_or_none()
        if row is None:
            raise KeyError(f"no document {document_uuid}")
        return _document(row)

    @staticmethod
    def _check_fence(
        conn: Connection, fence: Fence | None, document_uuid: str | None = None
    ) -> None:
        """In the caller's transaction: the document is still where the delivery claimed it.

        PostgreSQL locks the row (FOR UPDATE) until the write commits, so no claim
        or status change can slip in between the check and the write; SQLite
        already holds the database write lock (BEGIN IMMEDIATE).
        """
        if fence is None:
            return
        if document_uuid is not None and document_uuid != fence.document_uuid:
            raise ValueError(f"fence of {fence.document_uuid} passed for {document_uuid}")
        docs = source_documents.c
        query = select(docs.status, docs.processing_version, docs.fence_token).where(
            docs.uuid == fence.document_uuid
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).one_or_none()
        if row is None:
            raise StaleDelivery(f"document {fence.document_uuid} no longer exists")
        found = (Status(row.status), row.processing_version, row.fence_token)
        if found != (fence.status, fence.processing_version, fence.token):
            raise StaleDelivery(
                f"document {fence.document_uuid} moved on since this delivery claimed it "
                f"(claimed: {fence.status} v{fence.processing_version}; now: {found[0]} "
                f"v{found[1]}{'' if found[2] == fence.token else ', claimed by a later delivery'})"
            )

    @staticmethod
    def _update_document(conn: Connection, document_uuid: str, values: dict[str, Any]) -> None:
        changed = conn.execute(
            update(source_documents)
            .where(source_documents.c.uuid == document_uuid)
            .values(**values)
        ).rowcount
        if changed == 0:
            raise KeyError(f"no document {document_uuid}")

    def _record_history(
        self,
        conn: Connection,
        document_uuid: str,
        processing_version: int,
        stage: str,
        status: Status,
        error_message: str | None,
        celery_task_id: str | None,
    ) -> None:
        """Insert-if-absent on (document, version, status)."""
        conn.execute(
            self._insert_ignore(conn, document_processing_history).values(
                uuid=stable_uuid("history", document_uuid, processing_version, status.value),
                document_uuid=document_uuid,
                processing_version=processing_version,
                stage=stage,
                status=status.value,
                error_message=error_message,
                celery_task_id=celery_task_id,
                created_at=self._now(),
            )
        )

    @staticmethod
    def _replace(
        conn: Connection, table: Table, document_uuid: str, rows: list[dict[str, Any]]
    ) -> None:
        conn.execute(delete(table).where(table.c.document_uuid == document_uuid))
        if rows:
            conn.execute(table.insert(), rows)

    @staticmethod
    def _open_queue_uuid(conn: Connection, document_uuid: str) -> str | None:
        queue = document_processing_queue.c
        found = conn.execute(
            select(queue.uuid).where(queue.document_uuid == document_uuid, queue.status.in_(_OPEN))
        ).scalar_one_or_none()
        return None if found is None else str(found)


def relationship_uuid(relationship: Relationship) -> str:
    """The staging row's id: stable over its natural key (from, to, type)."""
    return stable_uuid(
        "relationship", relationship.from_id, relationship.to_id, relationship.relationship_type
    )


def _allowed_predecessors(status: Status) -> list[Status]:
    """Current statuses `advance_status` may move from to reach `status`."""
    if status.is_failure:
        return [s for s in Status if s not in TERMINAL_STATUSES]
    rank = progress_rank(status)
    return [s for s in PROGRESS_ORDER if s not in TERMINAL_STATUSES and progress_rank(s) < rank]


def _document(row: Row[Any]) -> SourceDocument:
    return SourceDocument(
        uuid=row.uuid,
        project_uuid=row.project_uuid,
        original_file_name=row.original_file_name,
        file_type=row.file_type,
        storage_key=row.storage_key,
        size_bytes=row.size_bytes,
        status=Status(row.status),
        processing_version=row.processing_version,
        celery_task_id=row.celery_task_id,
        error_message=row.error_message,
        attempts=row.attempts,
        raw_text=row.raw_text,
        ocr_metadata=dict(row.ocr_metadata or {}),
        fence_token=row.fence_token,
        content_sha256=row.content_sha256,
        created_at=row.created_at.timestamp() if row.created_at is not None else None,
        updated_at=row.updated_at.timestamp() if row.updated_at is not None else None,
    )


def _stale_note(row: Row[Any]) -> str | None:
    if row.status != QueueStatus.PROCESSING.value:
        return None
    return f"stale claim by {row.claimed_by} reclaimed"


def _version(fence: Fence | None) -> int | None:
    return None if fence is None else fence.processing_version


def _strip_nul(text: str | None) -> str | None:
    return None if text is None else text.replace("\x00", "")


def _check_owner(document_uuid: str, owners: Iterable[str]) -> None:
    for owner in owners:
        if owner != document_uuid:
            raise ValueError(f"row of document {owner} passed for document {document_uuid}")


@contextmanager
def _translate_errors() -> Iterator[None]:
    """Lost connections, lock timeouts, deadlocks: worth a retry."""
    try:
        yield
    except DBAPIError as exc:
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            raise TransientError(f"database unavailable: {exc.orig}") from exc
        raise


# --- engine construction ------------------------------------------------------------
def create_store(
    database_url: str, *, create: bool = True, clock: Clock | None = None
) -> SqlDocumentStore:
    """Build the store for a `sqlite:///path` or `postgresql://...` URL.

    `create` runs `create_schema` (idempotent). The caller owns the store and
    should `close()` it (workers: one per process, built after fork).
    """
    engine = create_database_engine(database_url)
    if create:
        try:
            create_schema(engine)
            missing = missing_columns(engine)
        except OperationalError as exc:
            engine.dispose()
            raise TransientError(f"database unavailable: {exc.orig}") from exc
        if missing:
            engine.dispose()
            # `create_all` adds tables, never columns: a database made by an older
            # docpipe would fail later on its first query, as "no such column".
            raise ConfigurationError(
                f"the database at {redact_url(database_url)} has an older schema (missing "
                f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})",
                hint=f"run `docpipe db upgrade --database-url {redact_url(database_url)}` "
                "once, then run this command again",
            )
    return SqlDocumentStore(engine, clock=clock)


def missing_columns(engine: Engine) -> list[str]:
    """`table.column` of this code's schema that the database's existing tables lack."""
    with engine.connect() as conn:
        inspector = inspect(conn)
        present = set(inspector.get_table_names())
        missing = []
        for table in metadata.sorted_tables:
            if table.name in present:
                have = {column["name"] for column in inspector.get_columns(table.name)}
                missing += [f"{table.name}.{c.name}" for c in table.columns if c.name not in have]
    return missing


def create_database_engine(database_url: str) -> Engine:
    """An engine configured for the pipeline; PostgreSQL URLs use psycopg 3."""
    try:
        url = make_url(database_url)
    except ArgumentError:
        raise ConfigurationError(
            f"{redact_url(database_url)!r} is not a database URL "
            "(use sqlite:///PATH or postgresql://USER@HOST:PORT/DB)"
        ) from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url)
    if backend in ("postgresql", "postgres"):
        url, connect_args = postgres_engine_options(url)
        if "connect_timeout" not in url.query:
            # libpq would wait for the OS's TCP timeout (minutes) on a host that never answers.
            connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    raise ConfigurationError(f"unsupported database URL scheme {url.drivername!r}")


#: Seconds libpq waits for a PostgreSQL connection unless the URL sets connect_timeout.
POSTGRES_CONNECT_TIMEOUT_S = 10

#: Supabase's transaction-mode pooler (Supavisor): host suffix and port.
SUPABASE_POOLER_HOST = ".pooler.supabase.com"
SUPABASE_TRANSACTION_PORT = 6543


def postgres_engine_options(url: URL) -> tuple[URL, dict[str, Any]]:
    """The psycopg 3 URL and connect arguments for a PostgreSQL / Supabase URL.

    libpq options in the query (`sslmode=require`, `sslrootcert=...`,
    `connect_timeout=...`) stay in the URL and reach libpq unchanged.
    `prepare_threshold` is psycopg's, not libpq's: it is taken out of the query
    and passed as a connect argument (`none` disables prepared statements, which
    a transaction-mode pooler needs: the next transaction may run on another
    server connection that never saw the statement). On Supabase's pooler port
    6543 prepared statements are disabled unless the URL says otherwise.
    """
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    connect_args: dict[str, Any] = {}
    query = dict(url.query)
    if "prepare_threshold" in query:
        raw = query.pop("prepare_threshold")
        value = raw[-1] if isinstance(raw, tuple) else raw
        if value.strip().lower() in ("", "none", "null", "off", "false"):
            connect_args["prepare_threshold"] = None
        else:
            try:
                connect_args["prepare_threshold"] = int(value)
            except ValueError:
                raise ConfigurationError(
                    f"prepare_threshold must be an integer or 'none', not {value!r}"
                ) from None
        url = url.set(query=query)
    elif (url.host or "").endswith(SUPABASE_POOLER_HOST) and url.port == SUPABASE_TRANSACTION_PORT:
        connect_args["prepare_threshold"] = None
    return url, connect_args


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
    connect_args: dict[str, Any] = {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
    if in_memory:
        # One shared connection, or every checkout would see its own empty database.
        connect_args["check_same_thread"] = False
        engine = create_engine(url, connect_args=connect_args, poolclass=StaticPool)
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args=connect_args)
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)
    if in_memory:
        # Throw-away databases (simulated runs, tests) build an engine each; sharing the
        # compiled statements spares each one compiling every query again (same dialect,
        # same statements: SQLAlchemy's cache key is the statement's structure).
        return engine.execution_options(compiled_cache=_IN_MEMORY_COMPILED_CACHE)
    return engine


#: Compiled statements shared by the in-memory SQLite engines of this process.
_IN_MEMORY_COMPILED_CACHE: LRUCache[Any, Any] = LRUCache(2000)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (see _on_sqlite_begin): the pysqlite recipe.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _on_sqlite_begin(conn: Connection) -> None:
    """Write transactions take the lock up front.

    A deferred transaction that reads and then writes can fail at once with
    SQLITE_BUSY (busy_timeout cannot help when its snapshot is stale); with
    BEGIN IMMEDIATE writers simply queue for the lock.
    """
    immediate = conn.get_execution_options().get(BEGIN_IMMEDIATE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
