"""`DocumentStore` on SQLAlchemy Core: one code path for SQLite and PostgreSQL.

The port's four roles (pipeline.ports.store) are four classes over one engine;
this class joins them, so one object serves a worker and the roles share the
engine's connection pool.
"""

from __future__ import annotations

from sqlalchemy import select

from pipeline.adapters.sql.dead_letters import SqlDeadLetters
from pipeline.adapters.sql.derived import SqlDerivedRows
from pipeline.adapters.sql.documents import SqlDocumentRecords
from pipeline.adapters.sql.schema import dead_letter_tasks
from pipeline.adapters.sql.work_queue import SqlWorkQueue
from pipeline.domain.models import Fence, QueueStatus, SourceDocument, Stage, Status
from pipeline.ports.store import ReplayedLetter


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

    def replay_dead_letter(self, document_uuid: str) -> ReplayedLetter | None:
        """The status back to the stage, the dead letters gone and an open queue row, in one
        transaction.

        Two commits could leave a document at a working status beside the letter it
        was replayed from (a replay then refuses it: the document is no longer
        dead-lettered), or the letter gone with the document still dead-lettered.
        """
        letters = dead_letter_tasks.c
        with self._write() as conn:
            document = self._hot(conn).fetch_document(conn, document_uuid, lock=True, text=False)
            if document is None:
                self._remove_letters_of(conn, document_uuid)
                return None
            if document.status is not Status.DEAD_LETTERED:
                return None
            letter = conn.execute(
                select(letters.stage, letters.error, letters.created_at)
                .where(letters.document_uuid == document_uuid)
                .order_by(letters.created_at.desc(), letters.uuid.desc())
                .limit(1)
            ).first()
            if letter is None:
                return None
            stage = Stage(letter.stage)
            # The dead letter's history row makes way for the replay's (so that a second
            # one can be recorded); the replay's row keeps what the letter said.
            replayed = self._force_status(
                conn,
                document_uuid,
                stage.running_status,
                stage=f"{stage} (dlq replay)",
                bump_version=False,
                note=f"replays the dead letter of {letter.created_at.isoformat()}: {letter.error}",
                supersedes=[Status.DEAD_LETTERED],
            )
            self._remove_letters_of(conn, document_uuid)
            # An open queue row: the queue processor watches the replay as any run in
            # flight, and sends the stage again if its message never arrives.
            self._enqueue(conn, document_uuid)
            return ReplayedLetter(document=replayed, stage=str(stage))

    def requeue_new_version(self, document_uuid: str, *, stage: str) -> SourceDocument:
        """Five writes in one transaction: cut off before its new queue row, a reset left
        a `pending` document nobody would dispatch (until `migrate`); before the derived
        rows went, the old version's rows beside the new version."""
        with self._write() as conn:
            document = self._force_status(
                conn,
                document_uuid,
                Status.PENDING,
                stage=stage,
                bump_version=True,
                note=None,
                supersedes=(),
            )
            self._clear_derived(conn, document_uuid)
            self._close_queue_entry(
                conn, document_uuid, QueueStatus.CANCELLED, f"cancelled by {stage}"
            )
            self._remove_letters_of(conn, document_uuid)
            self._enqueue(conn, document_uuid)
            return document
