"""In-memory stores start from a copy of the schema: the same schema the DDL makes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from pipeline.adapters.sql import create_database_engine, create_store
from pipeline.adapters.sql.migrations import upgrade
from pipeline.adapters.sql.store import SqlDocumentStore

#: The schema as SQLite records it (tables, indexes, their SQL text).
MASTER = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"


def master_of_store(store: SqlDocumentStore) -> list[tuple[str, ...]]:
    with store.engine.connect() as conn:
        return [tuple(row) for row in conn.exec_driver_sql(MASTER)]


def master_of_file(path: Path) -> list[tuple[str, ...]]:
    with sqlite3.connect(path) as conn:
        return [tuple(row) for row in conn.execute(MASTER)]


def test_an_in_memory_store_has_the_schema_create_schema_makes(tmp_path: Path) -> None:
    # A file database is created by running the DDL (create_schema), never from the copy.
    on_disk = create_store(f"sqlite:///{tmp_path / 'ddl.db'}")
    on_disk.close()
    in_memory = create_store("sqlite://")
    try:
        copied = master_of_store(in_memory)
    finally:
        in_memory.close()
    assert copied == master_of_file(tmp_path / "ddl.db")
    assert {"source_documents", "neo4j_chunks", "dead_letter_tasks"} <= {row[1] for row in copied}


def test_it_is_the_schema_the_migrations_make(tmp_path: Path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'migrated.db'}")
    upgrade(engine)
    engine.dispose()
    migrated = [
        row for row in master_of_file(tmp_path / "migrated.db") if row[2] != "schema_version"
    ]
    in_memory = create_store("sqlite://")
    try:
        assert master_of_store(in_memory) == migrated
    finally:
        in_memory.close()


def test_each_in_memory_store_is_its_own_database() -> None:
    first, second = create_store("sqlite://"), create_store("sqlite://")
    try:
        first.ensure_project("only-in-the-first")
        with second.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM projects").scalar() == 0
        with first.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM projects").scalar() == 1
            # The connection's settings are the engine's, not the copy's: foreign keys on.
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            with pytest.raises(IntegrityError):
                conn.exec_driver_sql(
                    "INSERT INTO neo4j_documents (uuid, project_uuid, title, category, "
                    "cleaned_text) VALUES ('no-such-document', 'p', 't', 'c', 'text')"
                )
    finally:
        first.close()
        second.close()
