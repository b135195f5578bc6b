"""The dead-letter role: dead_letter_tasks rows, listed, replayed and removed."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Sequence

from sqlalchemy import (
    Connection,
    delete,
    select,
)

from pipeline.adapters.sql.base import (
    SqlBase,
)
from pipeline.adapters.sql.schema import (
    dead_letter_tasks,
)


class SqlDeadLetters(SqlBase):
    """`DeadLetters` on SQL."""

    # --- dead letters -------------------------------------------------------------
    def add_dead_letter(
        self, document_uuid: str, task_name: str, stage: str, error: str, retries: int
    ) -> None:
        """One dead letter per document and stage: recording it again (a retry after the
        commit's outcome was lost) updates that row instead of adding a second one."""
        with self._write() as conn:
            self._upsert_dead_letter(conn, document_uuid, task_name, stage, error, retries)

    def _upsert_dead_letter(
        self,
        conn: Connection,
        document_uuid: str,
        task_name: str,
        stage: str,
        error: str,
        retries: int,
    ) -> None:
        """`add_dead_letter` inside the caller's write transaction."""
        table = dead_letter_tasks.c
        values = {"task_name": task_name, "error": error, "retries": retries}
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

    @staticmethod
    def _remove_letters_of(conn: Connection, document_uuid: str) -> None:
        """The document's dead letters removed, inside the caller's write transaction."""
        letters = dead_letter_tasks.c
        conn.execute(delete(dead_letter_tasks).where(letters.document_uuid == document_uuid))

    def remove_dead_letters(self, document_uuids: Sequence[str] | None = None) -> int:
        """Remove all dead letters, or those of the given documents; returns how many."""
        statement = delete(dead_letter_tasks)
        if document_uuids is not None:
            if not document_uuids:
                return 0
            statement = statement.where(dead_letter_tasks.c.document_uuid.in_(document_uuids))
        with self._write() as conn:
            return int(conn.execute(statement).rowcount)
