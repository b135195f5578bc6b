"""The statements every stage delivery runs, as SQL text on the DBAPI cursor.

A stage delivery reads and claims its document, may check its fence and
advance its status, and writes a history row: a few statements on one row
each, in a transaction the caller opened with `SqlBase._write`. Through
SQLAlchemy's statement execution each costs ~0.1 ms of CPU, several times
SQLite's own work (a whole claim on the raw cursor: ~0.06 ms); it was most of
the task layer's CPU per hop (issue 15). So these few run here on the
connection's DBAPI cursor, inside the same transaction, while everything else
stays SQLAlchemy Core. The claim and a stage's status transitions, all of
whose statements are here, also run without SQLAlchemy's Connection
(`DbapiTransaction`, `SqlBase._hot_write`): its checkout, begin, commit and
checkin cost ~25 us of CPU per transaction alone, more in a busy threads
worker.

What SQLAlchemy did for them is done here, for both dialects: parameters
(`:name` in the text, `%(name)s` for psycopg), timestamps (naive UTC text in
SQLAlchemy's SQLite format, timezone-aware on PostgreSQL), the JSON column
(text on SQLite), and errors (wrapped as SQLAlchemy's DBAPIError, the
connection invalidated on a disconnect, as `Connection.execute` does).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection

from pipeline.adapters.sql.schema import OPEN_QUEUE_STATUSES
from pipeline.domain.models import SourceDocument, Status

#: The columns of a document row, in the order `fetch_document_fields` reads them.
DOCUMENT_COLUMNS = (
    "uuid",
    "project_uuid",
    "original_file_name",
    "file_type",
    "storage_key",
    "size_bytes",
    "status",
    "processing_version",
    "celery_task_id",
    "error_message",
    "attempts",
    "raw_text",
    "ocr_metadata",
    "fence_token",
    "content_sha256",
    "created_at",
    "updated_at",
)
_COLUMNS = ", ".join(DOCUMENT_COLUMNS)

#: What SQLAlchemy's SQLite DATETIME stores (naive UTC); rows written either way sort alike.
_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"
_PLACEHOLDER = re.compile(r":(\w+)")

DOCUMENT = f"SELECT {_COLUMNS} FROM source_documents WHERE uuid = :uuid"
#: The row without its OCR text (NULL in its place): megabytes for a long document, read
#: by one stage and not by the others' claims.
DOCUMENT_WITHOUT_TEXT = DOCUMENT.replace("raw_text", "NULL", 1)
FENCE = "SELECT status, processing_version, fence_token FROM source_documents WHERE uuid = :uuid"
#: The document's task id, where UPDATE ... RETURNING is missing (SQLite before 3.35).
TASK_ID = "SELECT celery_task_id FROM source_documents WHERE uuid = :uuid"
CLAIM = (
    "UPDATE source_documents SET fence_token = :token, updated_at = :now"
    " WHERE uuid = :uuid AND processing_version = :version AND status = :found"
)
CLAIM_MOVING = (
    "UPDATE source_documents"
    " SET fence_token = :token, updated_at = :now, status = :status, error_message = NULL"
    " WHERE uuid = :uuid AND processing_version = :version AND status = :found"
)
#: `{allowed}` becomes one placeholder per status the document may move from.
ADVANCE = (
    "UPDATE source_documents"
    " SET status = :status, error_message = :error, updated_at = :now,"
    " celery_task_id = COALESCE(:task, celery_task_id)"
    " WHERE uuid = :uuid AND processing_version = :version AND status IN ({allowed})"
)
#: `ADVANCE` only while the delivery's fence holds: the check and the write in one statement.
FENCED = (
    " AND status = :fence_status AND processing_version = :fence_version"
    " AND fence_token = :fence_token"
)
RETURNING_TASK = " RETURNING celery_task_id"
HISTORY = (
    "INSERT INTO document_processing_history"
    " (uuid, document_uuid, processing_version, stage, status, error_message,"
    " celery_task_id, created_at)"
    " VALUES (:uuid, :document_uuid, :processing_version, :stage, :status, :error,"
    " :task, :now) ON CONFLICT DO NOTHING"
)

_OPEN_QUEUE = ", ".join(f"'{status.value}'" for status in OPEN_QUEUE_STATUSES)
#: Close the document's open queue row (a terminal status, in the same commit).
CLOSE_QUEUE = (
    "UPDATE document_processing_queue SET status = :status, updated_at = :now"
    f" WHERE document_uuid = :document_uuid AND status IN ({_OPEN_QUEUE})"
)
CLOSE_QUEUE_WITH_ERROR = (
    "UPDATE document_processing_queue SET status = :status, updated_at = :now,"
    " last_error = :error"
    f" WHERE document_uuid = :document_uuid AND status IN ({_OPEN_QUEUE})"
)


class HotConnection(Protocol):
    """What the statements here use of a transaction's connection: SQLAlchemy's
    `Connection`, or a `DbapiTransaction`."""

    @property
    def connection(self) -> Any: ...

    @property
    def dialect(self) -> Dialect: ...

    def invalidate(self, exception: BaseException | None = None) -> None: ...


class DbapiTransaction:
    """A write transaction on the pool's DBAPI connection (`SqlBase._hot_write`)."""

    __slots__ = ("connection", "dialect")

    def __init__(self, connection: PoolProxiedConnection, dialect: Dialect) -> None:
        self.connection = connection
        self.dialect = dialect

    def invalidate(self, exception: BaseException | None = None) -> None:
        self.connection.invalidate(exception)

    def commit(self) -> None:
        """COMMIT, its failure raised as `Connection.commit` raises it (`execute_raw`)."""
        try:
            self.connection.commit()
        except self.dialect.loaded_dbapi.Error as exc:
            raise _wrapped(self, "COMMIT", {}, exc, None) from exc


class HotSql:
    """The hot statements for one dialect (`sqlite` or `postgresql`)."""

    def __init__(self, dialect: str, *, returning: bool) -> None:
        self.postgres = dialect == "postgresql"
        #: UPDATE ... RETURNING works (SQLite 3.35+, PostgreSQL).
        self.returning = returning
        self._text: dict[str, str] = {}

    def sql(self, template: str) -> str:
        """The template in this driver's parameter style (cached)."""
        found = self._text.get(template)
        if found is None:
            found = _PLACEHOLDER.sub(r"%(\1)s", template) if self.postgres else template
            self._text[template] = found
        return found

    def stamp(self, moment: datetime) -> Any:
        """A timezone-aware timestamp as the column stores it."""
        if self.postgres:
            return moment
        return moment.astimezone(UTC).replace(tzinfo=None).strftime(_SQLITE_DATETIME)

    def execute(self, conn: HotConnection, template: str, params: Mapping[str, Any]) -> Any:
        """Run one template on the transaction's DBAPI cursor (`execute_raw`)."""
        return execute_raw(conn, self.sql(template), params)

    def fetch_document(
        self, conn: HotConnection, document_uuid: str, *, lock: bool = False, text: bool = True
    ) -> SourceDocument | None:
        """The document row, or None; `lock` holds it until commit on PostgreSQL; without
        `text` its `raw_text` is None, not read."""
        fields = self.fetch_document_fields(conn, document_uuid, lock=lock, text=text)
        return None if fields is None else SourceDocument(**fields)

    def fetch_document_fields(
        self, conn: HotConnection, document_uuid: str, *, lock: bool = False, text: bool = True
    ) -> dict[str, Any] | None:
        """`fetch_document` as the document's fields by name (`document_fields`)."""
        template = DOCUMENT if text else DOCUMENT_WITHOUT_TEXT
        if lock and self.postgres:
            template += " FOR UPDATE"
        row = self.execute(conn, template, {"uuid": document_uuid}).fetchone()
        return (
            None if row is None else document_fields(dict(zip(DOCUMENT_COLUMNS, row, strict=True)))
        )

    def fetch_fence(self, conn: HotConnection, document_uuid: str) -> tuple[str, int, str] | None:
        """(status, processing version, fencing token), row-locked on PostgreSQL; None if gone."""
        template = FENCE + " FOR UPDATE" if self.postgres else FENCE
        row = self.execute(conn, template, {"uuid": document_uuid}).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def advance(
        self, conn: HotConnection, params: dict[str, Any], allowed: Sequence[str], *, fenced: bool
    ) -> tuple[bool, str | None]:
        """The forward-only status UPDATE: (changed, the document's task id if known)."""
        names = [f"allowed_{index}" for index in range(len(allowed))]
        template = ADVANCE.format(allowed=", ".join(f":{name}" for name in names) or "NULL")
        if fenced:
            template += FENCED
        if self.returning:
            template += RETURNING_TASK
        values = {**params, **dict(zip(names, allowed, strict=True))}
        cursor = self.execute(conn, template, values)
        if self.returning:
            row = cursor.fetchone()
            return (False, None) if row is None else (True, row[0])
        return cursor.rowcount == 1, None


def execute_raw(conn: HotConnection, statement: str, params: Mapping[str, Any]) -> Any:
    """Run one statement on the connection's DBAPI cursor and return the cursor.

    Errors come out as `Connection.execute` raises them: wrapped in SQLAlchemy's
    DBAPIError, the connection invalidated when the database went away.
    """
    cursor = conn.connection.cursor()
    try:
        cursor.execute(statement, params)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _wrapped(conn, statement, params, exc, cursor) from exc
    return cursor


def _wrapped(
    conn: HotConnection, statement: str, params: Mapping[str, Any], exc: Any, cursor: Any
) -> Exception:
    """A DBAPI error as SQLAlchemy raises it; the connection invalidated if it was lost."""
    lost = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
    if lost:
        conn.invalidate(exc)
    wrapped: Exception = DBAPIError.instance(
        statement,
        dict(params),
        exc,
        conn.dialect.loaded_dbapi.Error,
        connection_invalidated=lost,
        dialect=conn.dialect,
    )
    return wrapped


def document_from_columns(values: Mapping[str, Any]) -> SourceDocument:
    """A source_documents row, by column name, as the domain's document.

    The one mapping for both ways a row comes back: SQLAlchemy's (JSON decoded,
    timestamps as datetimes) and the DBAPI cursor's (SQLite's JSON and naive UTC
    timestamps as text).
    """
    return SourceDocument(**document_fields(values))


def document_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """`document_from_columns` as the keyword arguments of `SourceDocument`: a claim
    builds the claimed document from them with its own values in place."""
    ocr_metadata = values["ocr_metadata"]
    if isinstance(ocr_metadata, str):
        ocr_metadata = json.loads(ocr_metadata)
    return {
        "uuid": values["uuid"],
        "project_uuid": values["project_uuid"],
        "original_file_name": values["original_file_name"],
        "file_type": values["file_type"],
        "storage_key": values["storage_key"],
        "size_bytes": values["size_bytes"],
        "status": Status(values["status"]),
        "processing_version": values["processing_version"],
        "celery_task_id": values["celery_task_id"],
        "error_message": values["error_message"],
        "attempts": values["attempts"],
        "raw_text": values["raw_text"],
        "ocr_metadata": dict(ocr_metadata or {}),
        "fence_token": values["fence_token"],
        "content_sha256": values["content_sha256"],
        "created_at": _epoch(values["created_at"]),
        "updated_at": _epoch(values["updated_at"]),
    }


def _epoch(value: datetime | str | None) -> float | None:
    """A stored timestamp as epoch seconds (SQLite hands back its naive UTC text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
