"""Schema migrations for `docpipe db upgrade`: numbered steps, recorded in `schema_version`.

Deliberately small (no Alembic): step 1 is the baseline, `create_all` of
`pipeline.adapters.sql.schema` (idempotent: it creates only what is missing, so
it also adopts a database that `create_store` created before versions were
recorded). A later schema change appends a step that takes a Connection and
alters what exists. Each applied step is one row of `schema_version`.

Runs under the same lock as `create_schema` (PostgreSQL: a transaction-level
advisory lock, which also works through a transaction-mode pooler such as
Supabase's on port 6543; SQLite: BEGIN IMMEDIATE), all in one transaction,
so concurrent upgrades serialise and a failed step leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    inspect,
    select,
    text,
)

# The same lock key as schema.create_schema: upgrades and store start-ups never interleave.
from pipeline.adapters.sql.schema import (
    _SCHEMA_LOCK_KEY,
    BEGIN_IMMEDIATE,
    CONTENT_INDEX,
    DERIVED_TABLES,
    UtcDateTime,
    metadata,
)

_version_metadata = MetaData()
schema_version = Table(
    "schema_version",
    _version_metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(255), nullable=False),
    Column("applied_at", UtcDateTime(), nullable=False),
)


def _baseline(conn: Connection) -> None:
    metadata.create_all(conn)


def _fenced_writes(conn: Connection) -> None:
    """source_documents.fence_token, and the processing version on every derived row.

    A database created by this code's `create_all` already has them; one made
    before gets them added (nullable: existing rows were written unfenced).
    """
    added = [("source_documents", "fence_token", "VARCHAR(64)")]
    added += [(table.name, "processing_version", "INTEGER") for table in DERIVED_TABLES]
    inspector = inspect(conn)
    for table, column, sql_type in added:
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))


def _content_hash(conn: Connection) -> None:
    """source_documents.content_sha256 and its (project, hash) index: `run` skips known files.

    Documents created before have no hash (NULL): their files are not recognised.
    """
    columns = {c["name"] for c in inspect(conn).get_columns("source_documents")}
    if "content_sha256" not in columns:
        conn.execute(text("ALTER TABLE source_documents ADD COLUMN content_sha256 VARCHAR(64)"))
    conn.execute(
        text(
            f"CREATE INDEX IF NOT EXISTS {CONTENT_INDEX} "
            "ON source_documents (project_uuid, content_sha256)"
        )
    )


#: (version, description, step): append only; never edit an applied step.
MIGRATIONS: tuple[tuple[int, str, Callable[[Connection], None]], ...] = (
    (1, "baseline: every docpipe table, index and check constraint", _baseline),
    (2, "fenced stage writes: fence_token, processing_version on derived rows", _fenced_writes),
    (3, "content hash of each document's file (re-running the same files)", _content_hash),
)
LATEST_VERSION = MIGRATIONS[-1][0]


@dataclass(frozen=True)
class UpgradeResult:
    from_version: int
    to_version: int
    applied: list[int] = field(default_factory=list)
    created_tables: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.applied or self.created_tables)


def current_version(conn: Connection) -> int:
    if not inspect(conn).has_table(schema_version.name):
        return 0
    value = conn.execute(
        select(schema_version.c.version).order_by(schema_version.c.version.desc())
    ).scalar()
    return int(value or 0)


def upgrade(engine: Engine) -> UpgradeResult:
    """Apply every step above the recorded version; a second run changes nothing."""
    with engine.connect().execution_options(**{BEGIN_IMMEDIATE: True}) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        before = set(inspect(conn).get_table_names())
        _version_metadata.create_all(conn)
        start = current_version(conn)
        applied: list[int] = []
        for version, description, step in MIGRATIONS:
            if version <= start:
                continue
            step(conn)
            conn.execute(
                insert(schema_version).values(
                    version=version, description=description, applied_at=datetime.now(UTC)
                )
            )
            applied.append(version)
        after = set(inspect(conn).get_table_names())
    return UpgradeResult(
        from_version=start,
        to_version=applied[-1] if applied else start,
        applied=applied,
        created_tables=sorted(after - before),
    )
