"""The database schema in SQLAlchemy Core, shared by SQLite and PostgreSQL.

snake_case everywhere, uuid primary keys stored as String(36) (one code path
for both databases), timezone-aware timestamps, and CHECK constraints that
hold the status columns to the one vocabulary of `pipeline.domain.models`
(REFERENCE failure 3: a value outside it is rejected by the database itself).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    text,
)

from pipeline.domain.models import QueueStatus, Status

#: Connection execution option read by the SQLite "begin" listener of
#: `pipeline.adapters.sql`: emit `BEGIN IMMEDIATE` (take the write lock
#: up front) instead of a deferred `BEGIN`. Ignored on other databases.
BEGIN_IMMEDIATE = "docpipe_begin_immediate"

#: Serialises concurrent `create_schema` calls on PostgreSQL (advisory lock key).
_SCHEMA_LOCK_KEY = 0x646F6370  # "docp"

#: (project, content hash) lookups of the intake; created by `create_all` and migration 3.
CONTENT_INDEX = "ix_source_documents_project_uuid_content_sha256"

OPEN_QUEUE_STATUSES: tuple[QueueStatus, ...] = (QueueStatus.PENDING, QueueStatus.PROCESSING)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database.

    PostgreSQL stores `timestamptz`; SQLite has no time zones, so values are
    stored as naive UTC and come back tagged with UTC.
    """

    impl = DateTime
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _uuid_pk() -> Column[str]:
    return Column("uuid", String(36), primary_key=True)


def _created_at() -> Column[datetime]:
    return Column("created_at", UtcDateTime(), nullable=False, server_default=func.now())


def _updated_at() -> Column[datetime]:
    return Column("updated_at", UtcDateTime(), nullable=False, server_default=func.now())


def _derived_version() -> Column[int]:
    """The processing version a derived row was written for (NULL: written unfenced)."""
    return Column("processing_version", Integer)


def _in_check(column: str, values: tuple[str, ...], name: str) -> CheckConstraint:
    quoted = ", ".join(f"'{value}'" for value in values)
    return CheckConstraint(f"{column} IN ({quoted})", name=name)


STATUS_VALUES: tuple[str, ...] = tuple(status.value for status in Status)
QUEUE_STATUS_VALUES: tuple[str, ...] = tuple(status.value for status in QueueStatus)

projects = Table(
    "projects",
    metadata,
    _uuid_pk(),
    Column("name", String(255), nullable=False, unique=True),
    _created_at(),
    _updated_at(),
)

source_documents = Table(
    "source_documents",
    metadata,
    _uuid_pk(),
    Column("project_uuid", String(36), ForeignKey("projects.uuid"), nullable=False, index=True),
    Column("original_file_name", Text, nullable=False),
    Column("file_type", String(32), nullable=False),
    Column("storage_key", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("status", String(32), nullable=False, index=True),
    Column("processing_version", Integer, nullable=False, server_default=text("1")),
    Column("celery_task_id", String(255)),
    Column("error_message", Text),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("raw_text", Text),
    Column("ocr_metadata", JSON, nullable=False),
    #: The fencing token of the stage delivery that last claimed the row (stages.begin).
    Column("fence_token", String(64)),
    #: sha256 of the file's bytes: `docpipe run` finds a file it already has (intake).
    Column("content_sha256", String(64)),
    _created_at(),
    _updated_at(),
    _in_check("status", STATUS_VALUES, "status"),
    Index(CONTENT_INDEX, "project_uuid", "content_sha256"),
)

document_processing_queue = Table(
    "document_processing_queue",
    metadata,
    _uuid_pk(),
    Column(
        "document_uuid",
        String(36),
        ForeignKey("source_documents.uuid"),
        nullable=False,
        index=True,
    ),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("claimed_by", String(255)),
    Column("claimed_at", UtcDateTime()),
    Column("last_error", Text),
    _created_at(),
    _updated_at(),
    _in_check("status", QUEUE_STATUS_VALUES, "status"),
)
_open_queue_row = document_processing_queue.c.status.in_([s.value for s in OPEN_QUEUE_STATUSES])
#: At most one open (pending/processing) queue row per document.
Index(
    "uq_document_processing_queue_open_document",
    document_processing_queue.c.document_uuid,
    unique=True,
    postgresql_where=_open_queue_row,
    sqlite_where=_open_queue_row,
)
Index(
    "ix_document_processing_queue_status_created_at",
    document_processing_queue.c.status,
    document_processing_queue.c.created_at,
)

textract_jobs = Table(
    "textract_jobs",
    metadata,
    _uuid_pk(),
    Column(
        "document_uuid",
        String(36),
        ForeignKey("source_documents.uuid"),
        nullable=False,
        index=True,
    ),
    Column("job_id", String(255), nullable=False, unique=True),
    Column("client_request_token", String(255), nullable=False),
    Column("status", String(32), nullable=False),
    Column("polls", Integer, nullable=False, server_default=text("0")),
    _created_at(),
    _updated_at(),
)

neo4j_documents = Table(
    "neo4j_documents",
    metadata,
    Column("uuid", String(36), ForeignKey("source_documents.uuid"), primary_key=True),
    Column("project_uuid", String(36), nullable=False, index=True),
    Column("title", Text, nullable=False),
    Column("category", String(32), nullable=False),
    Column("cleaned_text", Text, nullable=False),
    _derived_version(),
    _created_at(),
    _updated_at(),
)

neo4j_chunks = Table(
    "neo4j_chunks",
    metadata,
    _uuid_pk(),
    Column("document_uuid", String(36), nullable=False, index=True),
    Column("chunk_index", Integer, nullable=False),
    Column("start_offset", Integer, nullable=False),
    Column("end_offset", Integer, nullable=False),
    Column("text", Text, nullable=False),
    _derived_version(),
    _created_at(),
    _updated_at(),
    UniqueConstraint("document_uuid", "chunk_index"),
)

neo4j_entity_mentions = Table(
    "neo4j_entity_mentions",
    metadata,
    _uuid_pk(),
    Column("document_uuid", String(36), nullable=False, index=True),
    # Deferred: replacing a document's chunks (same deterministic ids) inside one
    # transaction is checked at commit, not between the DELETE and the INSERT.
    Column(
        "chunk_uuid",
        String(36),
        ForeignKey("neo4j_chunks.uuid", deferrable=True, initially="DEFERRED"),
        nullable=False,
        index=True,
    ),
    Column("chunk_index", Integer, nullable=False),
    Column("value", Text, nullable=False),
    Column("normalized_value", Text, nullable=False),
    Column("entity_type", String(32), nullable=False),
    Column("confidence", Float, nullable=False),
    Column("start_offset", Integer, nullable=False),
    Column("end_offset", Integer, nullable=False),
    Column("canonical_uuid", String(36), index=True),
    _derived_version(),
    _created_at(),
    _updated_at(),
)

neo4j_canonical_entities = Table(
    "neo4j_canonical_entities",
    metadata,
    _uuid_pk(),
    Column("document_uuid", String(36), nullable=False, index=True),
    Column("entity_type", String(32), nullable=False),
    Column("canonical_name", Text, nullable=False),
    Column("normalized_name", Text, nullable=False),
    Column("mention_count", Integer, nullable=False),
    _derived_version(),
    _created_at(),
    _updated_at(),
)

neo4j_relationships_staging = Table(
    "neo4j_relationships_staging",
    metadata,
    _uuid_pk(),
    Column("document_uuid", String(36), nullable=False, index=True),
    Column("from_id", String(255), nullable=False),
    Column("from_label", String(64), nullable=False),
    Column("to_id", String(255), nullable=False),
    Column("to_label", String(64), nullable=False),
    Column("relationship_type", String(64), nullable=False),
    Column("properties", JSON, nullable=False),
    _derived_version(),
    _created_at(),
    _updated_at(),
    UniqueConstraint("from_id", "to_id", "relationship_type"),
)

#: Append-only: one row per (document, version, status) transition.
document_processing_history = Table(
    "document_processing_history",
    metadata,
    _uuid_pk(),
    Column("document_uuid", String(36), nullable=False, index=True),
    Column("processing_version", Integer, nullable=False),
    Column("stage", String(64), nullable=False),
    Column("status", String(32), nullable=False),
    Column("error_message", Text),
    Column("celery_task_id", String(255)),
    _created_at(),
    UniqueConstraint("document_uuid", "processing_version", "status"),
    _in_check("status", STATUS_VALUES, "status"),
)

#: Append-only: tasks whose retries ran out.
dead_letter_tasks = Table(
    "dead_letter_tasks",
    metadata,
    _uuid_pk(),
    Column("document_uuid", String(36), nullable=False, index=True),
    Column("task_name", String(255), nullable=False),
    Column("stage", String(64), nullable=False),
    Column("error", Text, nullable=False),
    Column("retries", Integer, nullable=False),
    _created_at(),
)

#: Tables holding a document's derived rows, children first (delete order).
DERIVED_TABLES: tuple[Table, ...] = (
    neo4j_relationships_staging,
    neo4j_entity_mentions,
    neo4j_canonical_entities,
    neo4j_chunks,
    neo4j_documents,
)


def create_schema(engine: Engine) -> None:
    """Create every table and index that does not exist yet (idempotent).

    Safe to call from several processes at once: SQLite takes the write lock
    up front (`BEGIN IMMEDIATE`), PostgreSQL an advisory transaction lock.
    """
    with engine.connect().execution_options(**{BEGIN_IMMEDIATE: True}) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        metadata.create_all(conn)
