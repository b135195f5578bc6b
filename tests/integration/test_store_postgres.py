"""The store contract on a throw-away PostgreSQL database, plus SKIP LOCKED claiming."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from pipeline.adapters.sql import SqlDocumentStore, create_database_engine, create_store
from pipeline.adapters.sql.schema import create_schema, metadata
from pipeline.domain.models import SourceDocument, Status
from pipeline.errors import TransientError
from pipeline.ports import QueueEntry
from pipeline.testing.contracts.store import StoreContract, new_document

pytestmark = pytest.mark.integration


def _empty_database(database_url: str) -> None:
    """Schema present, every table empty (one database per module, cleaned per test)."""
    engine = create_database_engine(database_url)
    try:
        create_schema(engine)
        names = ", ".join(table.name for table in metadata.sorted_tables)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} CASCADE"))
    finally:
        engine.dispose()


class TestPostgresDocumentStore(StoreContract):
    @pytest.fixture
    def database_url(self, postgres_url: str) -> str:
        _empty_database(postgres_url)
        return postgres_url


@pytest.fixture
def store(postgres_url: str) -> Iterator[SqlDocumentStore]:
    _empty_database(postgres_url)
    built = create_store(postgres_url)
    yield built
    built.close()


def test_plain_postgresql_urls_use_psycopg_3(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    engine = create_database_engine(plain)
    try:
        assert engine.dialect.driver == "psycopg"
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_claim_skips_rows_another_transaction_has_locked(
    store: SqlDocumentStore, postgres_url: str
) -> None:
    """FOR UPDATE SKIP LOCKED: a claim neither waits for nor takes a locked row."""
    docs = [new_document(store, f"{n}.pdf") for n in range(3)]
    for doc in docs:
        store.enqueue(doc.uuid)
    other = create_engine(postgres_url, poolclass=NullPool)
    result: list[list[QueueEntry]] = []
    try:
        with other.begin() as conn:
            conn.execute(
                text(
                    "SELECT uuid FROM document_processing_queue"
                    " WHERE document_uuid = :uuid FOR UPDATE"
                ),
                {"uuid": docs[0].uuid},
            )
            claimer = threading.Thread(
                target=lambda: result.append(store.claim("w1", 10, stale_after=60, max_attempts=3))
            )
            claimer.start()
            claimer.join(timeout=5)
            assert not claimer.is_alive(), "claim waited for a locked row"
        claimer.join()
        assert [e.document_uuid for e in result[0]] == [d.uuid for d in docs[1:]]
        [entry] = store.claim("w2", limit=10, stale_after=60, max_attempts=3)
        assert entry.document_uuid == docs[0].uuid
    finally:
        other.dispose()


def test_a_claim_whose_connection_the_server_dropped_is_transient(
    store: SqlDocumentStore, postgres_url: str
) -> None:
    """The claim's own transaction (`_hot_write`): a connection lost mid-claim is a
    TransientError (a retry), and the pool replaces it for the next claim."""
    doc = new_document(store)
    other = create_engine(postgres_url, poolclass=NullPool)

    def drop_my_connection(found: SourceDocument) -> Status:
        with other.begin() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        return Status.OCR_PROCESSING

    try:
        with pytest.raises(TransientError, match="database unavailable"):
            store.read_and_claim(doc.uuid, stage="ocr", judge=drop_my_connection)
    finally:
        other.dispose()
    claimed = store.read_and_claim(doc.uuid, stage="ocr", judge=lambda f: Status.OCR_PROCESSING)
    assert claimed is not None and claimed.status is Status.OCR_PROCESSING
