"""The documents-and-status role: projects, documents, status writes, history, OCR jobs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    delete,
    func,
    select,
    text,
    update,
)

from pipeline.adapters.sql.base import (
    SqlBase,
    _document,
    _strip_nul,
)
from pipeline.adapters.sql.hot import CLAIM, CLAIM_MOVING, TASK_ID, HotConnection
from pipeline.adapters.sql.schema import (
    document_processing_history,
    projects,
    source_documents,
    textract_jobs,
)
from pipeline.adapters.tokens import fresh_token
from pipeline.domain.models import (
    Fence,
    HistoryEntry,
    QueueStatus,
    SourceDocument,
    Status,
    progress_rank,
    stable_uuid,
)
from pipeline.domain.status import allowed_predecessors


class SqlDocumentRecords(SqlBase):
    """`DocumentRecords` on SQL."""

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

    def create_document(
        self, document: SourceDocument, *, unless_content_known: bool = False
    ) -> str:
        """Insert the document; returns the uuid of the document that holds its content.

        With `unless_content_known`, a project that already has a document with the
        same content_sha256 gets no second one: that document's uuid is returned.
        The look-up and the insert are one transaction, serialized per content
        (SQLite's write lock is taken at BEGIN; PostgreSQL takes an advisory lock on
        project and hash), so two runs of the same new file make one document.
        """
        with self._write() as conn:
            if self._exists(conn, source_documents, document.uuid):
                raise ValueError(f"document {document.uuid} already exists")
            if not self._exists(conn, projects, document.project_uuid):
                raise KeyError(f"no project {document.project_uuid}")
            if unless_content_known and document.content_sha256 is not None:
                holder = self._content_holder(conn, document.project_uuid, document.content_sha256)
                if holder is not None:
                    return holder
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
        return document.uuid

    @staticmethod
    def _content_holder(conn: Connection, project_uuid: str, content_sha256: str) -> str | None:
        if conn.dialect.name == "postgresql":
            # Held until commit: a concurrent insert of the same content waits, then sees ours.
            conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                {"key": f"docpipe:content:{project_uuid}:{content_sha256}"},
            )
        query = _earliest_with_content(project_uuid, content_sha256).with_only_columns(
            source_documents.c.uuid
        )
        holder: str | None = conn.execute(query).scalar_one_or_none()
        return holder

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
        with self._read() as conn:
            row = conn.execute(_earliest_with_content(project_uuid, content_sha256)).first()
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
        current status it may move from (`allowed_predecessors`), so two
        workers racing (or a late redelivery) cannot move it backwards; with a
        `fence`, only while the delivery still holds the document (else
        StaleDelivery, found by reading the row only when nothing matched). A
        terminal status closes the document's open queue row in the same
        commit: a crash or outage right after it cannot leave the row open.
        Every stage delivery's own transitions: on the DBAPI connection (`_hot_write`).
        """
        with self._hot_write() as conn:
            return self._advance_status(
                conn,
                document_uuid,
                Status(status),
                stage=stage,
                processing_version=processing_version,
                error_message=error_message,
                celery_task_id=celery_task_id,
                fence=fence,
            )

    def _advance_status(
        self,
        conn: HotConnection,
        document_uuid: str,
        status: Status,
        *,
        stage: str,
        processing_version: int,
        error_message: str | None,
        celery_task_id: str | None,
        fence: Fence | None,
    ) -> bool:
        """`advance_status` inside the caller's write transaction."""
        error = error_message if status.is_failure else None
        allowed = [s.value for s in allowed_predecessors(status)]
        params: dict[str, Any] = {
            "uuid": document_uuid,
            "version": processing_version,
            "status": status.value,
            "error": error,
            "task": celery_task_id,
        }
        # A fence of this very document goes into the UPDATE's own WHERE: the check and
        # the write are one statement (on PostgreSQL the UPDATE re-checks a row another
        # transaction changed meanwhile). A claim-only fence (any status) and any other
        # fence are checked first, the row locked (`_check_fence`).
        fenced_status = None
        if fence is not None and fence.document_uuid == document_uuid:
            fenced_status = fence.status
        one_step = fenced_status is not None
        hot = self._hot(conn)
        params["now"] = hot.stamp(self._now())
        if fence is not None and fenced_status is not None:
            params.update(
                fence_status=fenced_status.value,
                fence_version=fence.processing_version,
                fence_token=fence.token,
            )
        else:
            self._check_fence(conn, fence)
        changed, task_id = hot.advance(conn, params, allowed, fenced=one_step)
        if not changed:
            if one_step:
                # Stale (StaleDelivery), or the status may not move from where it is.
                self._check_fence(conn, fence)
            return False
        if not hot.returning:
            task_id = hot.execute(conn, TASK_ID, {"uuid": document_uuid}).fetchone()[0]
        self._record_history(
            conn,
            document_uuid,
            processing_version,
            stage,
            status,
            error,
            task_id,
            stamped_now=params["now"],
        )
        if status.is_terminal:
            self._close_queue_entry(
                conn,
                document_uuid,
                QueueStatus.FAILED if status.is_failure else QueueStatus.COMPLETED,
                error,
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
        params: dict[str, Any] = {
            "uuid": document_uuid,
            "version": processing_version,
            "found": Status(found_status).value,
            "token": fresh_token(),
        }
        moves = progress_rank(status) > progress_rank(found_status)
        if moves:
            params["status"] = Status(status).value
        with self._write() as conn:
            hot = self._hot(conn)
            params["now"] = hot.stamp(self._now())
            changed = hot.execute(conn, CLAIM_MOVING if moves else CLAIM, params).rowcount
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

    def read_and_claim(
        self,
        document_uuid: str,
        *,
        stage: str,
        judge: Callable[[SourceDocument], Status | None],
        with_text: bool = True,
    ) -> SourceDocument | None:
        """`claim_delivery` with the read in its transaction: one commit, no re-read.

        The row is locked from the read on (FOR UPDATE on PostgreSQL; SQLite
        holds the write lock from BEGIN IMMEDIATE), so what `judge` saw is what
        the UPDATE changes; the claimed document is the read one with the new
        values, not read again. Every delivery runs it: on the DBAPI connection
        (`_hot_write`).
        """
        with self._hot_write() as conn:
            hot = self._hot(conn)
            fields = hot.fetch_document_fields(conn, document_uuid, lock=True, text=with_text)
            if fields is None:
                raise KeyError(f"no document {document_uuid}")
            found = SourceDocument(**fields)
            wanted = judge(found)
            if wanted is None:
                return None
            status = Status(wanted)
            now = self._now()
            params: dict[str, Any] = {
                "uuid": document_uuid,
                "version": found.processing_version,
                "found": found.status.value,
                "token": fresh_token(),
                "now": hot.stamp(now),
            }
            moves = progress_rank(status) > progress_rank(found.status)
            if moves:
                params["status"] = status.value
            changed = hot.execute(conn, CLAIM_MOVING if moves else CLAIM, params).rowcount
            if changed != 1:  # the row lock makes this unreachable; never claim blind
                raise RuntimeError(f"document {document_uuid} changed under its row lock")
            if moves:
                fields["status"], fields["error_message"] = status, None
            fields["fence_token"], fields["updated_at"] = params["token"], now.timestamp()
            claimed = SourceDocument(**fields)
            if moves:
                self._record_history(
                    conn,
                    document_uuid,
                    found.processing_version,
                    stage,
                    status,
                    None,
                    found.celery_task_id,
                    stamped_now=params["now"],
                )
            return claimed

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
        with self._write() as conn:
            return self._force_status(
                conn,
                document_uuid,
                status,
                stage=stage,
                bump_version=bump_version,
                note=note,
                supersedes=supersedes,
            )

    def _force_status(
        self,
        conn: Connection,
        document_uuid: str,
        status: Status,
        *,
        stage: str,
        bump_version: bool,
        note: str | None,
        supersedes: Sequence[Status],
    ) -> SourceDocument:
        """`force_status` inside the caller's write transaction."""
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


def _earliest_with_content(project_uuid: str, content_sha256: str) -> Select[Any]:
    """The project's earliest document with these bytes: the one that holds the content."""
    docs = source_documents.c
    return (
        select(source_documents)
        .where(docs.project_uuid == project_uuid, docs.content_sha256 == content_sha256)
        .order_by(docs.created_at, docs.uuid)
        .limit(1)
    )
