"""What the role modules share: transactions, dialect helpers, row mapping.

Every public store method is exactly one transaction, so a caller (or a worker in
another process) never sees half-written state. Dialect differences live in a
few small helpers: insert-if-absent (`ON CONFLICT DO NOTHING` on both), row
locking for the queue (`FOR UPDATE SKIP LOCKED` on PostgreSQL, the database
write lock taken up front with `BEGIN IMMEDIATE` on SQLite). Connection-level
failures surface as `TransientError` (pipeline.errors).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Row,
    Select,
    Table,
    delete,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError

from pipeline.adapters.sql.hot import (
    CLOSE_QUEUE,
    CLOSE_QUEUE_WITH_ERROR,
    HISTORY,
    DbapiTransaction,
    HotConnection,
    HotSql,
    document_from_columns,
    execute_raw,
)
from pipeline.adapters.sql.schema import (
    BEGIN_IMMEDIATE,
    OPEN_QUEUE_STATUSES,
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


_HOT: dict[str, HotSql] = {}

#: How long a write transaction waits for SQLite's write lock, in this process (the
#: writer lock below) and from another process (the connection's busy timeout).
SQLITE_BUSY_TIMEOUT_SECONDS = 30

#: One writer lock per SQLite database file, shared by every store of this process on it.
_SQLITE_WRITERS: dict[str, threading.RLock] = {}
_SQLITE_WRITERS_GUARD = threading.Lock()


def _sqlite_writer(engine: Engine) -> threading.RLock | None:
    """The process's writer lock for a SQLite engine's database; None on PostgreSQL.

    SQLite lets one connection write at a time. A thread that finds the write
    lock taken sleeps in SQLite's busy handler (1, 2, 5, 10 ms ...) and tries
    again, so threads of one worker queued on it waited milliseconds for a lock
    held for a fraction of one, and paid CPU for each try. Queued on this lock
    instead, the next writer starts as soon as the last one commits; other
    processes still meet the busy timeout.
    """
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database or ""
    if database in ("", ":memory:") or engine.url.query.get("mode") == "memory":
        return threading.RLock()  # this engine's own database
    key = str(Path(database).expanduser().resolve())
    with _SQLITE_WRITERS_GUARD:
        return _SQLITE_WRITERS.setdefault(key, threading.RLock())


class SqlBase:
    """A SQLAlchemy engine (SQLite or PostgreSQL) and the helpers every role uses.

    `clock` gives the timestamps (created_at, claimed_at, stale-claim cutoff);
    wall-clock time when omitted.
    """

    def __init__(self, engine: Engine, *, clock: Clock | None = None) -> None:
        self._engine = engine
        self._clock = clock
        self._writer = _sqlite_writer(engine)

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        """Close the engine's pooled connections."""
        self._engine.dispose()

    # --- helpers ------------------------------------------------------------------
    @contextmanager
    def _writers_turn(self) -> Iterator[None]:
        """On SQLite, this process's threads take turns on the writer lock (`_sqlite_writer`)."""
        writer = self._writer
        _take_turn(writer)
        try:
            yield
        finally:
            if writer is not None:
                writer.release()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock at BEGIN, after this
        process's turn (`_writers_turn`)."""
        with self._writers_turn(), _translate_errors(), self._engine.connect() as conn:
            conn.execution_options(**{BEGIN_IMMEDIATE: True})
            with conn.begin():
                yield conn

    def _hot_write(self) -> HotWrite:
        """`_write` on the pool's DBAPI connection, for `hot` statements only (a stage
        delivery's claim and status transitions): `HotWrite`."""
        return HotWrite(self._engine, self._writer)

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
    def _hot(conn: HotConnection) -> HotSql:
        """This dialect's per-delivery statements (pipeline.adapters.sql.hot), shared."""
        name = conn.dialect.name
        found = _HOT.get(name)
        if found is None:
            if name not in ("sqlite", "postgresql"):
                raise ConfigurationError(f"unsupported database dialect {name!r}")
            found = _HOT[name] = HotSql(name, returning=conn.dialect.update_returning)
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
        document = cls._hot(conn).fetch_document(conn, document_uuid)
        if document is None:
            raise KeyError(f"no document {document_uuid}")
        return document

    @classmethod
    def _check_fence(
        cls, conn: HotConnection, fence: Fence | None, document_uuid: str | None = None
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
        row = cls._hot(conn).fetch_fence(conn, fence.document_uuid)
        if row is None:
            raise StaleDelivery(f"document {fence.document_uuid} no longer exists")
        found = (Status(row[0]), row[1], row[2])
        claimed_status = found[0] if fence.status is None else fence.status
        if found != (claimed_status, fence.processing_version, fence.token):
            raise StaleDelivery(
                f"document {fence.document_uuid} moved on since this delivery claimed it "
                f"(claimed: {claimed_status} v{fence.processing_version}; now: {found[0]} "
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
        conn: HotConnection,
        document_uuid: str,
        processing_version: int,
        stage: str,
        status: Status,
        error_message: str | None,
        celery_task_id: str | None,
        *,
        stamped_now: Any = None,
    ) -> None:
        """Insert-if-absent on (document, version, status); `stamped_now` is the
        transaction's time as stored (`HotSql.stamp`), if it took one already."""
        hot = self._hot(conn)
        hot.execute(
            conn,
            HISTORY,
            {
                "uuid": stable_uuid("history", document_uuid, processing_version, status.value),
                "document_uuid": document_uuid,
                "processing_version": processing_version,
                "stage": stage,
                "status": status.value,
                "error": error_message,
                "task": celery_task_id,
                "now": hot.stamp(self._now()) if stamped_now is None else stamped_now,
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
        self, conn: HotConnection, document_uuid: str, status: QueueStatus, error: str | None
    ) -> None:
        hot = self._hot(conn)
        values: dict[str, Any] = {
            "document_uuid": document_uuid,
            "status": QueueStatus(status).value,
            "now": hot.stamp(self._now()),
        }
        if error is None:
            hot.execute(conn, CLOSE_QUEUE, values)
        else:
            hot.execute(conn, CLOSE_QUEUE_WITH_ERROR, {**values, "error": error})

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


def _document(row: Row[Any]) -> SourceDocument:
    return document_from_columns(dict(row._mapping))


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
        transient = _transient(exc)
        if transient is not None:
            raise transient from exc
        raise


def _transient(exc: BaseException) -> TransientError | None:
    """The TransientError a database error is (`_translate_errors`), or None."""
    if isinstance(exc, DBAPIError) and (
        isinstance(exc, OperationalError) or exc.connection_invalidated
    ):
        return TransientError(f"database unavailable: {exc.orig}")
    return None


def _take_turn(writer: threading.RLock | None) -> None:
    """This thread's turn on a SQLite writer lock (`_sqlite_writer`); None: no turns."""
    if writer is not None and not writer.acquire(timeout=SQLITE_BUSY_TIMEOUT_SECONDS):
        raise TransientError(
            f"database unavailable: no turn to write within {SQLITE_BUSY_TIMEOUT_SECONDS} s"
        )


class HotWrite:
    """`SqlBase._write`'s transaction on the pool's DBAPI connection, for `hot` statements.

    The same transaction `_write` opens, without SQLAlchemy's Connection around
    it (pipeline.adapters.sql.hot says why): the writer's turn on SQLite, BEGIN
    IMMEDIATE there (PostgreSQL's driver begins by itself), COMMIT at the end and
    ROLLBACK on any exception, errors translated alike (`_translate_errors`).
    A class rather than three nested generator context managers (~4 us of CPU
    for the three here, on a path every stage delivery takes once or twice;
    issue 15).
    """

    __slots__ = ("_connection", "_engine", "_transaction", "_writer")

    def __init__(self, engine: Engine, writer: threading.RLock | None) -> None:
        self._engine = engine
        self._writer = writer

    def __enter__(self) -> DbapiTransaction:
        _take_turn(self._writer)
        connection = None
        try:
            connection = self._engine.raw_connection()
            transaction = DbapiTransaction(connection, self._engine.dialect)
            if transaction.dialect.name == "sqlite":
                execute_raw(transaction, "BEGIN IMMEDIATE", {})
        except BaseException as exc:
            self._end(connection, exc)
            raise  # `_end` raised it already where it is a TransientError
        self._connection, self._transaction = connection, transaction
        return transaction

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        connection = self._connection
        if exc is None:
            try:
                self._transaction.commit()
            except BaseException as failed:
                self._end(connection, failed)
                raise
        self._end(connection, exc)

    def _end(self, connection: Any, exc: BaseException | None) -> None:
        """Roll back after `exc` (None: committed), give the connection and the turn back,
        and raise `exc` as a TransientError where it is one."""
        try:
            if connection is not None:
                if exc is not None:
                    with suppress(Exception):  # the original error says more
                        connection.rollback()
                connection.close()
        finally:
            if self._writer is not None:
                self._writer.release()
        transient = None if exc is None else _transient(exc)
        if transient is not None:
            raise transient from exc
