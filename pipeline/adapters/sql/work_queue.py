"""The work-queue role: document_processing_queue rows claimed with SKIP LOCKED."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    or_,
    select,
    true,
    update,
)

from pipeline.adapters.sql.base import (
    SqlBase,
    _stale_note,
)
from pipeline.adapters.sql.schema import (
    document_processing_queue,
    source_documents,
)
from pipeline.domain.models import (
    QueueStatus,
    Stage,
    Status,
)
from pipeline.errors import TransientError
from pipeline.ports import QueueEntry


class SqlWorkQueue(SqlBase):
    """`WorkQueue` on SQL."""

    # --- the processing queue -------------------------------------------------------
    def enqueue(self, document_uuid: str) -> str:
        """A pending row, unless the document already has an open one (its uuid is returned).

        The partial unique index allows one open row per document; a concurrent
        enqueue loses the insert (`ON CONFLICT DO NOTHING`, which waits for the
        winner's commit on PostgreSQL) and then reads the winner's row.
        """
        with self._write() as conn:
            return self._enqueue(conn, document_uuid)

    def _enqueue(self, conn: Connection, document_uuid: str) -> str:
        """`enqueue` inside the caller's write transaction."""
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

    def _fail_never_dispatched(
        self, conn: Connection, document_uuid: str, max_attempts: int, row: Any
    ) -> None:
        """A document still `pending` when its queue row runs out of attempts fails, with why.

        No dispatch ever committed (`ocr_queued` is its first write), so no message
        carries it: left `pending` beside a failed queue row it would be lost, without
        a reason. Later statuses are left alone; a message may still be on its way.
        """
        docs = source_documents.c
        found = conn.execute(
            select(docs.status, docs.processing_version, docs.celery_task_id).where(
                docs.uuid == document_uuid
            )
        ).first()
        if found is None or Status(found.status) is not Status.PENDING:
            return
        failed = Stage.OCR.failed_status
        last = row.last_error or "no error was recorded"
        error = f"{Stage.OCR}: never dispatched in {max_attempts} attempts (last: {last})"
        changed = conn.execute(
            update(source_documents)
            .where(
                docs.uuid == document_uuid,
                docs.status == Status.PENDING.value,
                docs.processing_version == found.processing_version,
            )
            .values(status=failed.value, error_message=error, updated_at=self._now())
        ).rowcount
        if changed:
            self._record_history(
                conn,
                document_uuid,
                found.processing_version,
                str(Stage.OCR),
                failed,
                error,
                found.celery_task_id,
            )

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
                exhausted = [row for row in rows if row.attempts >= max_attempts]
                if exhausted:
                    conn.execute(
                        update(document_processing_queue)
                        .where(queue.uuid.in_([row.uuid for row in exhausted]))
                        .values(
                            status=QueueStatus.FAILED.value,
                            last_error=f"max attempts ({max_attempts}) exceeded",
                            updated_at=now,
                        )
                    )
                    for row in exhausted:
                        self._fail_never_dispatched(conn, row.document_uuid, max_attempts, row)
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
