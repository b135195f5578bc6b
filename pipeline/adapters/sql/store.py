"""`DocumentStore` on SQLAlchemy Core: one code path for SQLite and PostgreSQL.

The port's four roles (pipeline.ports.store) are four classes over one engine;
this class joins them, so one object serves a worker and the roles share the
engine's connection pool.
"""

from __future__ import annotations

from pipeline.adapters.sql.dead_letters import SqlDeadLetters
from pipeline.adapters.sql.derived import SqlDerivedRows
from pipeline.adapters.sql.documents import SqlDocumentRecords
from pipeline.adapters.sql.work_queue import SqlWorkQueue
from pipeline.domain.models import Fence, Status


class SqlDocumentStore(SqlDocumentRecords, SqlDerivedRows, SqlWorkQueue, SqlDeadLetters):
    """The `DocumentStore` port on a SQLAlchemy engine (SQLite or PostgreSQL).

    `clock` gives the timestamps (created_at, claimed_at, stale-claim cutoff);
    wall-clock time when omitted.
    """

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
        """The terminal `dead_lettered` status and the dead letter in one transaction.

        Two commits could leave one without the other: a dead letter beside a
        document that a later delivery then completed, or the status without the
        row an operator replays from. Returns whether the document moved (nothing
        is written when it did not); a stale `fence` raises StaleDelivery.
        """
        with self._write() as conn:
            moved = self._advance_status(
                conn,
                document_uuid,
                Status.DEAD_LETTERED,
                stage=stage,
                processing_version=processing_version,
                error_message=error,
                celery_task_id=None,
                fence=fence,
            )
            if moved:
                self._upsert_dead_letter(conn, document_uuid, task_name, stage, error, retries)
            return moved
