"""The store contract on a SQLite file, plus what only SQLite needs (WAL, BEGIN IMMEDIATE)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.adapters.sql import SqlDocumentStore, create_store
from pipeline.adapters.sql import base as sql_base
from pipeline.adapters.sql.hot import HotSql
from pipeline.domain.models import QueueStatus, Status
from pipeline.testing.contracts.store import StoreContract, claim_until_empty, new_document


class TestSqliteDocumentStore(StoreContract):
    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'not' / 'yet' / 'there' / 'docpipe.db'}"


def _sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "docpipe.db"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlDocumentStore]:
    built = create_store(f"sqlite:///{_sqlite_path(tmp_path)}")
    yield built
    built.close()


def test_connections_use_wal_foreign_keys_and_a_busy_timeout(
    store: SqlDocumentStore, tmp_path: Path
) -> None:
    assert _sqlite_path(tmp_path).exists()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


def test_claim_waits_for_the_write_lock_and_then_sees_the_other_claim(
    store: SqlDocumentStore, tmp_path: Path
) -> None:
    """BEGIN IMMEDIATE: claim reads only after the other writer committed.

    Another process claims the row in raw SQL and holds its transaction open;
    our claim must block (not read the stale 'pending' row), then find nothing.
    """
    doc = new_document(store)
    store.enqueue(doc.uuid)
    other = sqlite3.connect(_sqlite_path(tmp_path), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute(
            "UPDATE document_processing_queue SET status = 'processing', claimed_by = 'other',"
            " claimed_at = ?, attempts = 1",
            (datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" "),),
        )
        result: list[object] = []
        claimer = threading.Thread(
            target=lambda: result.append(store.claim("ours", 5, stale_after=60, max_attempts=3))
        )
        claimer.start()
        claimer.join(timeout=0.5)
        assert claimer.is_alive(), "claim did not wait for the write lock"
        other.execute("COMMIT")
        claimer.join(timeout=10)
        assert result == [[]]
    finally:
        other.close()
    [entry] = store.queue_entries(doc.uuid)
    assert (entry.status, entry.claimed_by) == (QueueStatus.PROCESSING, "other")


def _claim_in_process(database_url: str, worker: str) -> list[str]:
    store = create_store(database_url, create=False)
    try:
        claimed: list[str] = []
        while entries := store.claim(worker, limit=2, stale_after=3600, max_attempts=3):
            claimed.extend(entry.document_uuid for entry in entries)
            time.sleep(0.005)  # let the other processes interleave
        return claimed
    finally:
        store.close()


def test_claimers_in_separate_processes_never_share_a_row(
    store: SqlDocumentStore, tmp_path: Path
) -> None:
    docs = [new_document(store, f"{n}.pdf") for n in range(60)]
    for doc in docs:
        store.enqueue(doc.uuid)
    url = f"sqlite:///{_sqlite_path(tmp_path)}"
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(3, mp_context=context) as pool:
        futures = [pool.submit(_claim_in_process, url, f"proc-{n}") for n in range(3)]
        per_process = [future.result(timeout=120) for future in futures]
    claimed = [uuid for got in per_process for uuid in got]
    assert len(claimed) == len(set(claimed)), "a document was claimed twice"
    assert set(claimed) == {doc.uuid for doc in docs}
    assert claim_until_empty(store, "late", limit=5) == []


def test_in_memory_url_shares_one_database(tmp_path: Path) -> None:
    store = create_store("sqlite://")
    try:
        doc = new_document(store)
        assert store.get_document(doc.uuid) == doc
    finally:
        store.close()


def test_a_sqlite_without_update_returning_reads_the_task_id_for_the_history(
    store: SqlDocumentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite before 3.35 has no UPDATE ... RETURNING: the transition reads the document's
    task id with its own statement, in the same DBAPI transaction (`_hot_write`)."""
    monkeypatch.setitem(sql_base._HOT, "sqlite", HotSql("sqlite", returning=False))
    doc = new_document(store)
    store.set_task_id(doc.uuid, "task-7")
    assert store.advance_status(doc.uuid, Status.OCR_PROCESSING, stage="ocr", processing_version=1)
    [entry] = store.history(doc.uuid)
    assert (entry.status, entry.celery_task_id) == (Status.OCR_PROCESSING, "task-7")
