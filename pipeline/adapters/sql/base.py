"""What the role modules share: transactions, dialect helpers, row mapping.

Every public store method is exactly one transaction, so a caller (or a worker in
another process) never sees half-written state. Dialect differences live in a
few small helpers: insert-if-absent (`ON CONFLICT DO NOTHING` on both), row
locking for the queue (`FOR UPDATE SKIP LOCKED` on PostgreSQL, the database
write lock taken up front with `BEGIN IMMEDIATE` on SQLite). Connection-level
failures surface as `TransientError` (pipeline.errors).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Row,
    Select,
    Table,
    Update,
    bindparam,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError

from pipeline.adapters.sql.schema import (
    BEGIN_IMMEDIATE,
    OPEN_QUEUE_STATUSES,
    document_processing_history,
    document_processing_queue,
    source_documents,
)
from pipeline.domain.models import (
    Fence,
    QueueStatus,
    Relationship,
    SourceDocument,
    Status,
    stable_uuid,
)
from pipeline.errors import ConfigurationError, StaleDelivery, TransientError
from pipeline.ports import Clock

_OPEN = [status.value for status in OPEN_QUEUE_STATUSES]


@dataclass(frozen=True)
class HotStatements:
    """The statements every stage delivery runs, built once per dialect with bound parameters.

    A statement built per call costs SQLAlchemy its construction and its cache key
    (~0.1-0.2 ms of CPU each, more than SQLite's own work); a statement object
    built once keeps its cache key, and its compiled form stays in the engine's
    cache. Parameters are named `p_*`: a SET clause refuses bound names equal to
    column names.
    """

    #: The whole document row (`p_uuid`).
    document: Select[Any]
    #: The same, row-locked until commit on PostgreSQL (SQLite: the write lock is held).
    document_locked: Select[Any]
    #: Status, version and fencing token of `p_uuid`, row-locked on PostgreSQL.
    fence: Select[Any]
    #: A new fencing token (`p_token`, `p_now`) if `p_uuid` is still at `p_version`, `p_found`.
    claim: Update
    #: `claim` that also moves the status to `p_status` (clearing the error).
    claim_moving: Update
    #: Forward-only status change of `p_uuid` at `p_version` from one of `p_allowed`:
    #: `p_status`, `p_error`, `p_now`, and the task id `p_task` unless None. Returns the
    #: document's task id (None when the dialect has no UPDATE ... RETURNING).
    advance: Update
    #: `advance` only while the delivery's fence holds (`p_fence_status`, `p_fence_version`,
    #: `p_fence_token`): the fence check and the write are one statement.
    advance_fenced: Update
    #: Insert-if-absent of one history row (its columns by name).
    history: Insert
    #: Close the document's open queue row: `p_doc`, `p_status`, `p_now` (and `p_error`).
    close_queue: Update
    close_queue_with_error: Update


_HOT: dict[str, HotStatements] = {}


class SqlBase:
    """A SQLAlchemy engine (SQLite or PostgreSQL) and the helpers every role uses.

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
    def _hot(conn: Connection) -> HotStatements:
        """This dialect's hot statements (built on first use, then shared by every store)."""
        name = conn.dialect.name
        found = _HOT.get(name)
        if found is None:
            found = _HOT[name] = _build_hot(conn)
        return found

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

    @classmethod
    def _load_document(cls, conn: Connection, document_uuid: str) -> SourceDocument:
        row = conn.execute(cls._hot(conn).document, {"p_uuid": document_uuid}).one_or_none()
        if row is None:
            raise KeyError(f"no document {document_uuid}")
        return _document(row)

    @classmethod
    def _check_fence(
        cls, conn: Connection, fence: Fence | None, document_uuid: str | None = None
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
        row = conn.execute(cls._hot(conn).fence, {"p_uuid": fence.document_uuid}).one_or_none()
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
            self._hot(conn).history,
            {
                "uuid": stable_uuid("history", document_uuid, processing_version, status.value),
                "document_uuid": document_uuid,
                "processing_version": processing_version,
                "stage": stage,
                "status": status.value,
                "error_message": error_message,
                "celery_task_id": celery_task_id,
                "created_at": self._now(),
            },
        )

    def _replace_fenced(
        self, table: Table, document_uuid: str, rows: list[dict[str, Any]], fence: Fence | None
    ) -> None:
        """Replace the document's rows of `table` in one transaction, if the fence holds."""
        with self._write() as conn:
            self._check_fence(conn, fence, document_uuid)
            self._replace(conn, table, document_uuid, rows)

    @staticmethod
    def _replace(
        conn: Connection, table: Table, document_uuid: str, rows: list[dict[str, Any]]
    ) -> None:
        conn.execute(delete(table).where(table.c.document_uuid == document_uuid))
        if rows:
            conn.execute(table.insert(), rows)

    def _close_queue_entry(
        self, conn: Connection, document_uuid: str, status: QueueStatus, error: str | None
    ) -> None:
        hot = self._hot(conn)
        values: dict[str, Any] = {
            "p_doc": document_uuid,
            "p_status": QueueStatus(status).value,
            "p_now": self._now(),
        }
        if error is None:
            conn.execute(hot.close_queue, values)
        else:
            conn.execute(hot.close_queue_with_error, {**values, "p_error": error})

    @staticmethod
    def _open_queue_uuid(conn: Connection, document_uuid: str) -> str | None:
        queue = document_processing_queue.c
        found = conn.execute(
            select(queue.uuid).where(queue.document_uuid == document_uuid, queue.status.in_(_OPEN))
        ).scalar_one_or_none()
        return None if found is None else str(found)


def _build_hot(conn: Connection) -> HotStatements:
    docs, queue = source_documents.c, document_processing_queue.c
    postgres = conn.dialect.name == "postgresql"
    document = select(source_documents).where(docs.uuid == bindparam("p_uuid"))
    fence = select(docs.status, docs.processing_version, docs.fence_token).where(
        docs.uuid == bindparam("p_uuid")
    )
    claim = update(source_documents).where(
        docs.uuid == bindparam("p_uuid"),
        docs.processing_version == bindparam("p_version"),
        docs.status == bindparam("p_found"),
    )
    claim_values: dict[str, Any] = {
        "fence_token": bindparam("p_token"),
        "updated_at": bindparam("p_now"),
    }
    advance = (
        update(source_documents)
        .where(
            docs.uuid == bindparam("p_uuid"),
            docs.processing_version == bindparam("p_version"),
            docs.status.in_(bindparam("p_allowed", expanding=True)),
        )
        .values(
            status=bindparam("p_status"),
            error_message=bindparam("p_error"),
            updated_at=bindparam("p_now"),
            # The task id only when one is given, as a dict of values would.
            celery_task_id=func.coalesce(
                bindparam("p_task", type_=docs.celery_task_id.type), docs.celery_task_id
            ),
        )
    )
    if conn.dialect.update_returning:
        advance = advance.returning(docs.celery_task_id)
    advance_fenced = advance.where(
        docs.status == bindparam("p_fence_status"),
        docs.processing_version == bindparam("p_fence_version"),
        docs.fence_token == bindparam("p_fence_token"),
    )
    close_queue = (
        update(document_processing_queue)
        .where(queue.document_uuid == bindparam("p_doc"), queue.status.in_(_OPEN))
        .values(status=bindparam("p_status"), updated_at=bindparam("p_now"))
    )
    return HotStatements(
        document=document,
        document_locked=document.with_for_update() if postgres else document,
        fence=fence.with_for_update() if postgres else fence,
        claim=claim.values(**claim_values),
        claim_moving=claim.values(**claim_values, status=bindparam("p_status"), error_message=None),
        advance=advance,
        advance_fenced=advance_fenced,
        history=SqlBase._insert_ignore(conn, document_processing_history),
        close_queue=close_queue,
        close_queue_with_error=close_queue.values(last_error=bindparam("p_error")),
    )


def relationship_uuid(relationship: Relationship) -> str:
    """The staging row's id: stable over its natural key (from, to, type)."""
    return stable_uuid(
        "relationship", relationship.from_id, relationship.to_id, relationship.relationship_type
    )


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
