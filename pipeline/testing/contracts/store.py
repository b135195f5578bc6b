"""The `DocumentStore` contract for `SqlDocumentStore`: SQLite (unit) and PostgreSQL (integration).

Subclasses provide a `database_url` fixture naming an empty (or emptied)
database; every test builds its stores through `make_store`, so a test can open
a second store (its own engine and pool, like another worker process) on the
same database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Table, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from pipeline.adapters.sql import SqlDocumentStore, create_store
from pipeline.adapters.sql.hot import DbapiTransaction
from pipeline.adapters.sql.schema import (
    DERIVED_TABLES,
    create_schema,
    document_processing_history,
    neo4j_canonical_entities,
    neo4j_chunks,
    neo4j_documents,
    neo4j_entity_mentions,
    neo4j_relationships_staging,
)
from pipeline.domain.models import (
    CanonicalEntity,
    Category,
    Chunk,
    DocumentCounts,
    DocumentNode,
    EntityType,
    Fence,
    Mention,
    QueueStatus,
    Relationship,
    SourceDocument,
    Stage,
    Status,
    stable_uuid,
)
from pipeline.errors import StaleDelivery, TransientError
from pipeline.testing.clocks import ManualClock

StoreFactory = Callable[[], SqlDocumentStore]


def _dead_letter(
    store: SqlDocumentStore,
    document_uuid: str,
    version: int,
    error: str,
    *,
    stage: str = "ocr",
    fence: Fence | None = None,
) -> bool:
    return store.dead_letter(
        document_uuid,
        stage=stage,
        processing_version=version,
        task_name="t",
        error=error,
        retries=1,
        fence=fence,
    )


@contextmanager
def failing(
    monkeypatch: pytest.MonkeyPatch, store: SqlDocumentStore, method: str, message: str
) -> Iterator[None]:
    """Inside the block `store.<method>` raises RuntimeError(message), and the block must
    raise it: a write cut off midway, to check that its transaction left nothing."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError(message)

    with monkeypatch.context() as patched:
        patched.setattr(store, method, refuse)
        with pytest.raises(RuntimeError, match=message):
            yield


def new_document(store: SqlDocumentStore, name: str = "contract.pdf") -> SourceDocument:
    project_uuid = store.ensure_project("contract-tests")
    document_uuid = stable_uuid("contract-test", name, time.monotonic_ns())
    document = SourceDocument(
        uuid=document_uuid,
        project_uuid=project_uuid,
        original_file_name=name,
        file_type="pdf",
        storage_key=f"documents/{document_uuid}.pdf",
        size_bytes=1234,
    )
    store.create_document(document)
    return document


def chunks_for(document_uuid: str, count: int) -> list[Chunk]:
    return [
        Chunk(
            uuid=stable_uuid(document_uuid, 1, "chunk", index),
            document_uuid=document_uuid,
            chunk_index=index,
            start=index * 10,
            end=index * 10 + 10,
            text=f"chunk {index:04d}",
        )
        for index in range(count)
    ]


def mentions_for(chunks: list[Chunk], per_chunk: int = 2) -> list[Mention]:
    return [
        Mention(
            uuid=stable_uuid(chunk.uuid, "mention", n),
            document_uuid=chunk.document_uuid,
            chunk_uuid=chunk.uuid,
            chunk_index=chunk.chunk_index,
            value=f"Acme {n}",
            normalized_value=f"acme {n}",
            entity_type=EntityType.ORG,
            confidence=0.875,
            start=n,
            end=n + 4,
        )
        for chunk in chunks
        for n in range(per_chunk)
    ]


def entities_for(document_uuid: str, count: int) -> list[CanonicalEntity]:
    return [
        CanonicalEntity(
            uuid=stable_uuid(document_uuid, "entity", n),
            document_uuid=document_uuid,
            entity_type=EntityType.ORG,
            canonical_name=f"Acme {n}",
            normalized_name=f"acme {n}",
            mention_count=2,
        )
        for n in range(count)
    ]


def relationships_for(chunks: list[Chunk]) -> list[Relationship]:
    return [
        Relationship(
            from_id=chunk.uuid,
            from_label="Chunk",
            to_id=chunk.document_uuid,
            to_label="Document",
            relationship_type="BELONGS_TO",
            properties={"chunk_index": chunk.chunk_index, "nested": {"ok": [1, 2]}},
        )
        for chunk in chunks
    ]


def dump(store: SqlDocumentStore, table: Table, document_uuid: str) -> list[dict[str, Any]]:
    """Every column of the document's rows except the timestamps, in uuid order."""
    key = table.c.uuid if table is neo4j_documents else table.c.document_uuid
    with store.engine.connect() as conn:
        rows = conn.execute(select(table).where(key == document_uuid).order_by(table.c.uuid))
        return [
            {k: v for k, v in row._mapping.items() if k not in ("created_at", "updated_at")}
            for row in rows
        ]


def claim_until_empty(store: SqlDocumentStore, worker: str, limit: int) -> list[str]:
    claimed: list[str] = []
    while entries := store.claim(worker, limit=limit, stale_after=3600, max_attempts=3):
        claimed.extend(entry.document_uuid for entry in entries)
    return claimed


class StoreContract:
    """Subclasses provide a `database_url` fixture: a clean database per test."""

    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock(start=time.time(), tick=0.001)

    @pytest.fixture
    def make_store(self, database_url: str, clock: ManualClock) -> Iterator[StoreFactory]:
        stores: list[SqlDocumentStore] = []

        def factory() -> SqlDocumentStore:
            store = create_store(database_url, clock=clock)
            stores.append(store)
            return store

        yield factory
        for store in stores:
            store.close()

    @pytest.fixture
    def store(self, make_store: StoreFactory) -> SqlDocumentStore:
        return make_store()

    # --- schema -------------------------------------------------------------------
    def test_create_schema_is_idempotent(self, store: SqlDocumentStore) -> None:
        document = new_document(store)
        create_schema(store.engine)
        create_schema(store.engine)
        assert store.get_document(document.uuid) == document

    def test_check_constraint_rejects_a_status_outside_the_vocabulary(
        self, store: SqlDocumentStore
    ) -> None:
        document = new_document(store)
        with pytest.raises(IntegrityError), store.engine.begin() as conn:
            conn.execute(
                text("UPDATE source_documents SET status = 'ocr_done' WHERE uuid = :uuid"),
                {"uuid": document.uuid},
            )
        assert store.get_document(document.uuid).status is Status.PENDING

    def test_database_allows_one_open_queue_row_per_document(self, store: SqlDocumentStore) -> None:
        document = new_document(store)
        store.enqueue(document.uuid)
        insert = text(
            "INSERT INTO document_processing_queue (uuid, document_uuid, status, attempts)"
            " VALUES (:uuid, :document_uuid, 'processing', 0)"
        )
        with pytest.raises(IntegrityError), store.engine.begin() as conn:
            conn.execute(insert, {"uuid": "raw-open", "document_uuid": document.uuid})
        store.finish_queue_entry(document.uuid, QueueStatus.COMPLETED)
        with store.engine.begin() as conn:  # a closed row does not count
            conn.execute(insert, {"uuid": "raw-open", "document_uuid": document.uuid})

    # --- projects and documents -------------------------------------------------
    def test_ensure_project_is_idempotent(self, store: SqlDocumentStore) -> None:
        first = store.ensure_project("matter-1")
        assert store.ensure_project("matter-1") == first
        assert store.ensure_project("matter-2") != first

    def test_created_document_round_trips(self, store: SqlDocumentStore) -> None:
        project_uuid = store.ensure_project("matter")
        document = SourceDocument(
            uuid=stable_uuid("round-trip"),
            project_uuid=project_uuid,
            original_file_name="Émile's deposition.pdf",
            file_type="pdf",
            storage_key="documents/x.pdf",
            size_bytes=5_000_000_000,
            status=Status.OCR_QUEUED,
            processing_version=2,
            celery_task_id="task-1",
            attempts=1,
            ocr_metadata={"pages": 3, "engine": {"name": "textract"}},
        )
        store.create_document(document)
        assert store.get_document(document.uuid) == document

    def test_get_document_raises_key_error_for_unknown_uuid(self, store: SqlDocumentStore) -> None:
        with pytest.raises(KeyError, match="no document missing"):
            store.get_document("missing")

    def test_create_document_twice_is_refused(self, store: SqlDocumentStore) -> None:
        document = new_document(store)
        with pytest.raises(ValueError, match="already exists"):
            store.create_document(document)

    def test_list_documents_in_creation_order_filtered_by_status(
        self, store: SqlDocumentStore
    ) -> None:
        docs = [new_document(store, f"doc-{n}.pdf") for n in range(3)]
        store.advance_status(docs[1].uuid, Status.OCR_QUEUED, stage="intake", processing_version=1)
        assert [d.uuid for d in store.list_documents()] == [d.uuid for d in docs]
        assert [d.uuid for d in store.list_documents([Status.PENDING])] == [
            docs[0].uuid,
            docs[2].uuid,
        ]
        assert [d.uuid for d in store.list_documents([Status.OCR_QUEUED])] == [docs[1].uuid]
        assert store.list_documents([]) == []

    def test_find_by_content_returns_the_projects_earliest_document_with_that_hash(
        self, store: SqlDocumentStore
    ) -> None:
        digest = "ab" * 32
        project = store.ensure_project("contract-tests")
        other_project = store.ensure_project("contract-tests-other")
        first, second, elsewhere = (
            SourceDocument(
                stable_uuid("content", n, time.monotonic_ns()), p, f"{n}.txt", "txt", f"k{n}", 1,
                content_sha256=digest,
            )
            for n, p in ((1, project), (2, project), (3, other_project))
        )  # fmt: skip
        for document in (first, second, elsewhere):
            store.create_document(document)
        assert store.get_document(first.uuid).content_sha256 == digest
        found = store.find_by_content(project, digest)
        assert found is not None and found.uuid == first.uuid
        found_elsewhere = store.find_by_content(other_project, digest)
        assert found_elsewhere is not None and found_elsewhere.uuid == elsewhere.uuid
        assert store.find_by_content(project, "cd" * 32) is None

    def test_a_known_content_is_not_created_again(self, store: SqlDocumentStore) -> None:
        digest = "ef" * 32
        project = store.ensure_project("contract-tests")
        other_project = store.ensure_project("contract-tests-other")

        def document(n: int, project_uuid: str) -> SourceDocument:
            uuid = stable_uuid("known", n, time.monotonic_ns())
            return SourceDocument(
                uuid, project_uuid, f"{n}.txt", "txt", f"k{n}", 1, content_sha256=digest
            )

        first = document(1, project)
        assert store.create_document(first, unless_content_known=True) == first.uuid
        again = document(2, project)
        assert store.create_document(again, unless_content_known=True) == first.uuid
        with pytest.raises(KeyError):
            store.get_document(again.uuid)  # nothing inserted
        elsewhere = document(3, other_project)
        assert store.create_document(elsewhere, unless_content_known=True) == elsewhere.uuid
        plain = document(4, project)  # without the flag the same bytes may be a document again
        assert store.create_document(plain) == plain.uuid

    def test_concurrent_creates_of_one_content_make_one_document(
        self, make_store: StoreFactory
    ) -> None:
        stores = [make_store(), make_store()]
        project = stores[0].ensure_project("contract-tests")
        digest = "0a" * 32
        barrier = threading.Barrier(8)

        def create(n: int) -> str:
            document = SourceDocument(
                stable_uuid("race", n, time.monotonic_ns()), project, "same.pdf", "pdf",
                f"k{n}", 1, content_sha256=digest,
            )  # fmt: skip
            barrier.wait()
            return stores[n % 2].create_document(document, unless_content_known=True)

        with ThreadPoolExecutor(8) as pool:
            holders = set(pool.map(create, range(8)))
        assert len(holders) == 1
        (holder,) = holders
        found = stores[0].find_by_content(project, digest)
        assert found is not None and found.uuid == holder
        same = [d for d in stores[0].list_documents() if d.content_sha256 == digest]
        assert [d.uuid for d in same] == [holder]

    def test_match_uuid_prefix_finds_documents_by_the_start_of_their_uuid(
        self, store: SqlDocumentStore
    ) -> None:
        docs = [new_document(store, f"prefix-{n}.pdf") for n in range(2)]
        for doc in docs:
            assert store.match_uuid_prefix(doc.uuid[:8].upper()) == [doc.uuid]
            assert store.match_uuid_prefix(doc.uuid) == [doc.uuid]
        assert store.match_uuid_prefix("") == []
        assert store.match_uuid_prefix("%") == []  # never a LIKE wildcard
        assert store.match_uuid_prefix("0" * 36 + "x") == []
        assert len(store.match_uuid_prefix(docs[0].uuid[:1], limit=1)) <= 1

    def test_documents_carry_their_row_timestamps(self, store: SqlDocumentStore) -> None:
        doc = new_document(store)
        loaded = store.get_document(doc.uuid)
        assert loaded.created_at is not None and loaded.updated_at is not None
        store.advance_status(doc.uuid, Status.OCR_QUEUED, stage="intake", processing_version=1)
        moved = store.get_document(doc.uuid)
        assert moved.updated_at is not None and moved.updated_at >= loaded.created_at

    # --- status -------------------------------------------------------------------
    def test_advance_status_moves_forward_only(self, store: SqlDocumentStore) -> None:
        doc = new_document(store)
        assert store.advance_status(
            doc.uuid, Status.OCR_QUEUED, stage="intake", processing_version=1
        )
        assert store.advance_status(
            doc.uuid, Status.TEXT_PROCESSING, stage="document_node", processing_version=1
        )
        assert not store.advance_status(
            doc.uuid, Status.OCR_PROCESSING, stage="ocr", processing_version=1
        )
        assert not store.advance_status(
            doc.uuid, Status.TEXT_PROCESSING, stage="chunking", processing_version=1
        )
        assert store.get_document(doc.uuid).status is Status.TEXT_PROCESSING

    def test_failure_is_accepted_and_keeps_its_error(self, store: SqlDocumentStore) -> None:
        doc = new_document(store)
        store.advance_status(doc.uuid, Status.ENTITY_EXTRACTION, stage="x", processing_version=1)
        assert store.advance_status(
            doc.uuid,
            Status.OCR_FAILED,
            stage="ocr",
            processing_version=1,
            error_message="textract said no",
            celery_task_id="task-9",
        )
        stored = store.get_document(doc.uuid)
        assert stored.status is Status.OCR_FAILED
        assert stored.error_message == "textract said no"
        assert stored.celery_task_id == "task-9"
        last = store.history(doc.uuid)[-1]
        assert (last.status, last.error_message, last.celery_task_id) == (
            Status.OCR_FAILED,
            "textract said no",
            "task-9",
        )

    @pytest.mark.parametrize("terminal", [Status.COMPLETED, Status.DEAD_LETTERED])
    def test_terminal_status_never_changes(self, store: SqlDocumentStore, terminal: Status) -> None:
        doc = new_document(store)
        assert store.advance_status(doc.uuid, terminal, stage="x", processing_version=1)
        for status in (Status.OCR_QUEUED, Status.GRAPH_FAILED, Status.COMPLETED, terminal):
            assert not store.advance_status(doc.uuid, status, stage="x", processing_version=1)
        assert store.get_document(doc.uuid).status is terminal

    def test_stale_processing_version_changes_nothing(self, store: SqlDocumentStore) -> None:
        doc = new_document(store)
        store.force_status(doc.uuid, Status.PENDING, stage="reprocess", bump_version=True)
        assert not store.advance_status(
            doc.uuid, Status.OCR_QUEUED, stage="intake", processing_version=1
        )
        assert not store.advance_status(
            doc.uuid, Status.OCR_FAILED, stage="ocr", processing_version=1, error_message="late"
        )
        stored = store.get_document(doc.uuid)
        assert (stored.status, stored.processing_version, stored.error_message) == (
            Status.PENDING,
            2,
            None,
        )

    def test_history_is_written_once_per_version_and_status(self, store: SqlDocumentStore) -> None:
        doc = new_document(store)
        store.advance_status(doc.uuid, Status.OCR_QUEUED, stage="intake", processing_version=1)
        store.advance_status(doc.uuid, Status.OCR_QUEUED, stage="intake", processing_version=1)
        store.force_status(doc.uuid, Status.PENDING, stage="reset", bump_version=False)
        # Moves again (pending -> ocr_queued) but (v1, ocr_queued) is already recorded.
        assert store.advance_status(
            doc.uuid, Status.OCR_QUEUED, stage="intake", processing_version=1
        )
        history = store.history(doc.uuid)
        assert [(h.processing_version, h.status) for h in history] == [
            (1, Status.OCR_QUEUED),
            (1, Status.PENDING),
        ]
        assert history[0].stage == "intake"
        assert history[0].created_at < history[1].created_at

    def test_concurrent_identical_transitions_change_the_row_once(
        self, make_store: StoreFactory
    ) -> None:
        stores = [make_store(), make_store()]
        doc = new_document(stores[0])
        barrier = threading.Barrier(8)

        def advance(n: int) -> bool:
            barrier.wait()
            return stores[n % 2].advance_status(
                doc.uuid, Status.OCR_PROCESSING, stage="ocr", processing_version=1
            )

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(advance, range(8)))
        assert results.count(True) == 1
        assert [h.status for h in stores[0].history(doc.uuid)] == [Status.OCR_PROCESSING]

    def test_force_status_bumps_version_clears_error_and_records_history(
        self, store: SqlDocumentStore
    ) -> None:
        doc = new_document(store)
        store.advance_status(
            doc.uuid, Status.TEXT_FAILED, stage="chunking", processing_version=1, error_message="x"
        )
        forced = store.force_status(doc.uuid, Status.PENDING, stage="reprocess", bump_version=True)
        assert (forced.status, forced.processing_version, forced.error_message) == (
            Status.PENDING,
            2,
            None,
        )
        assert store.get_document(doc.uuid) == forced
        assert [(h.processing_version, h.status, h.stage) for h in store.history(doc.uuid)] == [
            (1, Status.TEXT_FAILED, "chunking"),
            (2, Status.PENDING, "reprocess"),
        ]
        assert store.advance_status(doc.uuid, Status.OCR_QUEUED, stage="i", processing_version=2)
        unbumped = store.force_status(
            doc.uuid, Status.OCR_QUEUED, stage="replay", bump_version=False
        )
        assert unbumped.processing_version == 2

    def test_force_status_back_to_an_earlier_status_records_it_again_as_the_newest_row(
        self, store: SqlDocumentStore
    ) -> None:
        """A dead letter replayed: the history shows the replay after the dead letter."""
        doc = new_document(store)
        for status in (Status.OCR_QUEUED, Status.DEAD_LETTERED):
            store.advance_status(doc.uuid, status, stage="ocr", processing_version=1)
        store.force_status(
            doc.uuid, Status.OCR_QUEUED, stage="ocr (dlq replay)", bump_version=False
        )
        assert [(h.stage, h.status) for h in store.history(doc.uuid)] == [
            ("ocr", Status.DEAD_LETTERED),
            ("ocr (dlq replay)", Status.OCR_QUEUED),
        ]
        # Superseding the dead letter lets a second one be recorded after the replay.
        store.force_status(
            doc.uuid,
            Status.OCR_QUEUED,
            stage="ocr (dlq replay)",
            bump_version=False,
            note="replays the dead letter",
            supersedes=[Status.DEAD_LETTERED],
        )
        store.advance_status(doc.uuid, Status.DEAD_LETTERED, stage="ocr", processing_version=1)
        assert [(h.stage, h.status, h.error_message) for h in store.history(doc.uuid)] == [
            ("ocr (dlq replay)", Status.OCR_QUEUED, "replays the dead letter"),
            ("ocr", Status.DEAD_LETTERED, None),
        ]

    def test_force_status_of_unknown_document_raises_key_error(
        self, store: SqlDocumentStore
    ) -> None:
        with pytest.raises(KeyError):
            store.force_status("missing", Status.PENDING, stage="reset", bump_version=True)

    def test_set_task_id_never_overwrites_a_later_status(self, store: SqlDocumentStore) -> None:
        # REFERENCE failure 8: the worker got ahead of the intake that enqueued it.
        doc = new_document(store)
        assert store.advance_status(
            doc.uuid, Status.OCR_PROCESSING, stage="ocr", processing_version=1
        )
        store.set_task_id(doc.uuid, "intake-task")
        assert not store.advance_status(
            doc.uuid, Status.OCR_QUEUED, stage="intake", processing_version=1
        )
        stored = store.get_document(doc.uuid)
        assert (stored.status, stored.celery_task_id) == (Status.OCR_PROCESSING, "intake-task")

    def test_record_attempt_increments(self, store: SqlDocumentStore) -> None:
        doc = new_document(store)
        store.record_attempt(doc.uuid)
        store.record_attempt(doc.uuid)
        assert store.get_document(doc.uuid).attempts == 2

    def test_raw_text_with_nul_is_saved_without_it(self, store: SqlDocumentStore) -> None:
        doc = new_document(store)
        store.save_raw_text(doc.uuid, "page\x00 one\n\x00", {"pages": 1, "lines": [1, 2]})
        stored = store.get_document(doc.uuid)
        assert stored.raw_text == "page one\n"
        assert stored.ocr_metadata == {"pages": 1, "lines": [1, 2]}

    def test_ocr_jobs_are_recorded_once_and_updated(self, store: SqlDocumentStore) -> None:
        doc = new_document(store)
        store.record_ocr_job(doc.uuid, "job-1", "token-1", "in_progress")
        store.record_ocr_job(doc.uuid, "job-1", "token-1", "in_progress")
        store.record_ocr_job(doc.uuid, "job-2", "token-2", "in_progress")
        store.update_ocr_job("job-1", "failed", polls=4)
        jobs = store.ocr_jobs(doc.uuid)
        assert all(job["created_at"] <= job["updated_at"] for job in jobs)  # type: ignore[operator]
        keys = ("job_id", "client_request_token", "status", "polls")
        assert [{key: job[key] for key in keys} for job in jobs] == [
            {"job_id": "job-1", "client_request_token": "token-1", "status": "failed", "polls": 4},
            {
                "job_id": "job-2",
                "client_request_token": "token-2",
                "status": "in_progress",
                "polls": 0,
            },
        ]
        with pytest.raises(KeyError):
            store.update_ocr_job("job-404", "failed", polls=1)

    # --- derived rows -------------------------------------------------------------
    def test_document_node_saved_twice_is_one_identical_row(self, store: SqlDocumentStore) -> None:
        doc = new_document(store)
        node = DocumentNode(doc.uuid, doc.project_uuid, "Title", Category.CONTRACT, "clean text")
        store.save_document_node(node)
        before = dump(store, neo4j_documents, doc.uuid)
        store.save_document_node(node)
        assert dump(store, neo4j_documents, doc.uuid) == before
        assert len(before) == 1
        assert store.get_document_node(doc.uuid) == node
        with pytest.raises(KeyError):
            store.get_document_node("missing")

    def test_replace_chunks_is_idempotent_and_drops_extras(self, store: SqlDocumentStore) -> None:
        doc = new_document(store)
        chunks = chunks_for(doc.uuid, 5)
        store.replace_chunks(doc.uuid, chunks)
        before = dump(store, neo4j_chunks, doc.uuid)
        store.replace_chunks(doc.uuid, chunks)
        assert dump(store, neo4j_chunks, doc.uuid) == before
        assert store.get_chunks(doc.uuid) == chunks
        store.replace_chunks(doc.uuid, chunks[:2])
        assert store.get_chunks(doc.uuid) == chunks[:2]

    def test_replace_chunks_rejects_rows_of_another_document(self, store: SqlDocumentStore) -> None:
        doc = new_document(store)
        with pytest.raises(ValueError, match="passed for document"):
            store.replace_chunks(doc.uuid, chunks_for("other", 1))

    def test_replace_mentions_is_idempotent_and_drops_extras(self, store: SqlDocumentStore) -> None:
        doc = new_document(store)
        chunks = chunks_for(doc.uuid, 3)
        store.replace_chunks(doc.uuid, chunks)
        mentions = mentions_for(chunks)
        store.replace_mentions(doc.uuid, mentions)
        before = dump(store, neo4j_entity_mentions, doc.uuid)
        store.replace_mentions(doc.uuid, mentions)
        assert dump(store, neo4j_entity_mentions, doc.uuid) == before
        assert store.get_mentions(doc.uuid) == mentions
        store.replace_mentions(doc.uuid, mentions[:1])
        assert store.get_mentions(doc.uuid) == mentions[:1]

    def test_rechunking_with_the_same_ids_keeps_mentions(self, store: SqlDocumentStore) -> None:
        doc = new_document(store)
        chunks = chunks_for(doc.uuid, 2)
        store.replace_chunks(doc.uuid, chunks)
        store.replace_mentions(doc.uuid, mentions_for(chunks))
        store.replace_chunks(doc.uuid, chunks)  # a redelivered chunking stage
        assert store.counts(doc.uuid) == DocumentCounts(2, 4, 0, 0)

    def test_replace_canonical_entities_sets_mention_canonical_ids(
        self, store: SqlDocumentStore
    ) -> None:
        doc = new_document(store)
        chunks = chunks_for(doc.uuid, 2)
        store.replace_chunks(doc.uuid, chunks)
        mentions = mentions_for(chunks)
        store.replace_mentions(doc.uuid, mentions)
        entities = entities_for(doc.uuid, 2)
        mapping = {m.uuid: entities[i % 2].uuid for i, m in enumerate(mentions)}
        store.replace_canonical_entities(doc.uuid, entities, mapping)
        before = (
            dump(store, neo4j_canonical_entities, doc.uuid),
            dump(store, neo4j_entity_mentions, doc.uuid),
        )
        store.replace_canonical_entities(doc.uuid, entities, mapping)
        after = (
            dump(store, neo4j_canonical_entities, doc.uuid),
            dump(store, neo4j_entity_mentions, doc.uuid),
        )
        assert after == before
        assert store.get_canonical_entities(doc.uuid) == entities
        assert {m.uuid: m.canonical_uuid for m in store.get_mentions(doc.uuid)} == mapping
        # Fewer entities: the extra one goes, and so do the mentions' links to it.
        store.replace_canonical_entities(
            doc.uuid, entities[:1], {mentions[0].uuid: entities[0].uuid}
        )
        assert store.get_canonical_entities(doc.uuid) == entities[:1]
        links = {m.uuid: m.canonical_uuid for m in store.get_mentions(doc.uuid)}
        assert links == {m.uuid: (entities[0].uuid if m == mentions[0] else None) for m in mentions}

    def test_replace_relationships_is_idempotent_and_drops_extras(
        self, store: SqlDocumentStore
    ) -> None:
        doc = new_document(store)
        relationships = relationships_for(chunks_for(doc.uuid, 3))
        store.replace_relationships(doc.uuid, relationships)
        before = dump(store, neo4j_relationships_staging, doc.uuid)
        store.replace_relationships(doc.uuid, relationships)
        assert dump(store, neo4j_relationships_staging, doc.uuid) == before
        assert sorted(store.get_relationships(doc.uuid), key=lambda r: r.from_id) == sorted(
            relationships, key=lambda r: r.from_id
        )
        assert store.get_relationships(doc.uuid)[0].properties["nested"] == {"ok": [1, 2]}
        store.replace_relationships(doc.uuid, relationships[:1])
        assert store.get_relationships(doc.uuid) == relationships[:1]

    def test_clear_derived_removes_every_derived_row_and_counts_follow(
        self, store: SqlDocumentStore
    ) -> None:
        doc, other = new_document(store, "a.pdf"), new_document(store, "b.pdf")
        for d in (doc, other):
            store.save_document_node(
                DocumentNode(d.uuid, d.project_uuid, "T", Category.DOCUMENT, "text")
            )
            chunks = chunks_for(d.uuid, 3)
            store.replace_chunks(d.uuid, chunks)
            mentions = mentions_for(chunks)
            store.replace_mentions(d.uuid, mentions)
            entities = entities_for(d.uuid, 2)
            store.replace_canonical_entities(d.uuid, entities, {mentions[0].uuid: entities[0].uuid})
            store.replace_relationships(d.uuid, relationships_for(chunks))
        assert store.counts(doc.uuid) == DocumentCounts(
            chunks=3, mentions=6, canonical_entities=2, relationships=3
        )
        store.advance_status(doc.uuid, Status.OCR_QUEUED, stage="intake", processing_version=1)
        store.clear_derived(doc.uuid)
        assert store.counts(doc.uuid) == DocumentCounts(0, 0, 0, 0)
        with pytest.raises(KeyError):
            store.get_document_node(doc.uuid)
        assert store.counts(other.uuid) == DocumentCounts(3, 6, 2, 3)
        assert len(store.history(doc.uuid)) == 1  # history is not derived data
        assert dump(store, document_processing_history, doc.uuid)

    # --- the processing queue -------------------------------------------------------
    def test_enqueue_is_idempotent_while_a_row_is_open(self, store: SqlDocumentStore) -> None:
        doc = new_document(store)
        first = store.enqueue(doc.uuid)
        assert store.enqueue(doc.uuid) == first
        [entry] = store.claim("w1", limit=5, stale_after=60, max_attempts=3)
        assert entry.uuid == first
        assert store.enqueue(doc.uuid) == first  # processing is still open
        store.finish_queue_entry(doc.uuid, QueueStatus.COMPLETED)
        second = store.enqueue(doc.uuid)
        assert second != first
        assert [(e.uuid, e.status) for e in store.queue_entries(doc.uuid)] == [
            (first, QueueStatus.COMPLETED),
            (second, QueueStatus.PENDING),
        ]

    def test_concurrent_enqueues_make_one_open_row(self, make_store: StoreFactory) -> None:
        stores = [make_store(), make_store()]
        doc = new_document(stores[0])
        barrier = threading.Barrier(6)

        def enqueue(n: int) -> str:
            barrier.wait()
            return stores[n % 2].enqueue(doc.uuid)

        with ThreadPoolExecutor(6) as pool:
            results = set(pool.map(enqueue, range(6)))
        assert len(results) == 1
        assert len(stores[0].queue_entries(doc.uuid)) == 1

    def test_claim_takes_oldest_pending_rows_up_to_the_limit(
        self, store: SqlDocumentStore, clock: ManualClock
    ) -> None:
        docs = [new_document(store, f"{n}.pdf") for n in range(4)]
        for doc in docs:
            store.enqueue(doc.uuid)
        entries = store.claim("w1", limit=3, stale_after=60, max_attempts=3)
        assert [e.document_uuid for e in entries] == [d.uuid for d in docs[:3]]
        assert all(
            (e.status, e.claimed_by, e.attempts) == (QueueStatus.PROCESSING, "w1", 1)
            for e in entries
        )
        assert entries[0].claimed_at is not None
        assert abs(entries[0].claimed_at - clock.now()) < 1
        assert store.queue_entries(docs[0].uuid) == [entries[0]]
        assert [e.document_uuid for e in store.claim("w2", 3, 60, 3)] == [docs[3].uuid]
        assert store.claim("w2", 3, 60, 3) == []
        assert store.claim("w2", 0, 60, 3) == []

    def test_concurrent_claimers_never_share_a_row(self, make_store: StoreFactory) -> None:
        stores = [make_store(), make_store()]
        docs = [new_document(stores[0], f"{n}.pdf") for n in range(40)]
        for doc in docs:
            stores[0].enqueue(doc.uuid)
        barrier = threading.Barrier(4)

        def claimer(n: int) -> list[str]:
            barrier.wait()
            return claim_until_empty(stores[n % 2], f"worker-{n}", limit=3)

        with ThreadPoolExecutor(4) as pool:
            per_worker = list(pool.map(claimer, range(4)))
        claimed = [uuid for got in per_worker for uuid in got]
        assert len(claimed) == len(set(claimed)), "a document was claimed twice"
        assert set(claimed) == {d.uuid for d in docs}
        entries = stores[0].queue_entries()
        assert all(e.status is QueueStatus.PROCESSING and e.attempts == 1 for e in entries)

    def test_a_stale_claim_is_reclaimed_after_stale_after(
        self, store: SqlDocumentStore, clock: ManualClock
    ) -> None:
        doc = new_document(store)
        store.enqueue(doc.uuid)
        [first] = store.claim("dead-worker", limit=1, stale_after=60, max_attempts=3)
        clock.advance(30)
        assert store.claim("w2", limit=1, stale_after=60, max_attempts=3) == []
        clock.advance(31)
        [again] = store.claim("w2", limit=1, stale_after=60, max_attempts=3)
        assert (again.uuid, again.claimed_by, again.attempts) == (first.uuid, "w2", 2)
        assert again.last_error == "stale claim by dead-worker reclaimed"
        assert store.queue_entries(doc.uuid) == [again]

    def test_a_row_past_max_attempts_fails_instead_of_being_claimed(
        self, store: SqlDocumentStore, clock: ManualClock
    ) -> None:
        doc, fresh = new_document(store, "a.pdf"), new_document(store, "b.pdf")
        store.enqueue(doc.uuid)
        for n in range(3):
            [entry] = store.claim(f"w{n}", limit=1, stale_after=60, max_attempts=3)
            assert entry.attempts == n + 1
            clock.advance(61)
        store.enqueue(fresh.uuid)
        entries = store.claim("w9", limit=1, stale_after=60, max_attempts=3)
        assert [e.document_uuid for e in entries] == [fresh.uuid]
        [failed] = store.queue_entries(doc.uuid)
        assert (failed.status, failed.attempts, failed.last_error) == (
            QueueStatus.FAILED,
            3,
            "max attempts (3) exceeded",
        )

    def test_an_exhausted_row_fails_its_never_dispatched_document_with_the_reason(
        self, store: SqlDocumentStore, clock: ManualClock
    ) -> None:
        """`pending` beside a failed row would be lost; a dispatched document is left alone."""
        never, queued = new_document(store, "never.pdf"), new_document(store, "queued.pdf")
        store.advance_status(queued.uuid, Status.OCR_QUEUED, stage="ocr", processing_version=1)
        for doc in (never, queued):
            store.enqueue(doc.uuid)
        for _ in range(3):
            store.claim("w", limit=2, stale_after=60, max_attempts=3)
            clock.advance(61)
        assert store.claim("w", limit=2, stale_after=60, max_attempts=3) == []

        failed = store.get_document(never.uuid)
        assert failed.status is Status.OCR_FAILED
        assert failed.error_message is not None and "never dispatched" in failed.error_message
        assert [h.status for h in store.history(never.uuid)] == [Status.OCR_FAILED]
        assert store.get_document(queued.uuid).status is Status.OCR_QUEUED  # a message may come
        assert {e.status for e in store.queue_entries()} == {QueueStatus.FAILED}

    def test_finish_queue_entry_closes_the_open_row(self, store: SqlDocumentStore) -> None:
        doc = new_document(store)
        store.enqueue(doc.uuid)
        store.claim("w1", limit=1, stale_after=60, max_attempts=3)
        store.finish_queue_entry(doc.uuid, QueueStatus.FAILED, error="ocr_failed: boom")
        [entry] = store.queue_entries(doc.uuid)
        assert (entry.status, entry.last_error) == (QueueStatus.FAILED, "ocr_failed: boom")
        store.finish_queue_entry(doc.uuid, QueueStatus.COMPLETED)  # nothing open: no-op
        assert store.queue_entries(doc.uuid) == [entry]
        assert store.claim("w1", limit=1, stale_after=0, max_attempts=3) == []

    def test_keep_claim_gives_back_the_attempt_never_below_zero(
        self, store: SqlDocumentStore
    ) -> None:
        doc = new_document(store)
        store.enqueue(doc.uuid)
        (entry,) = store.claim("w1", limit=1, stale_after=60, max_attempts=3)
        assert entry.attempts == 1
        store.keep_claim(entry.uuid)
        store.keep_claim(entry.uuid)
        (kept,) = store.queue_entries(doc.uuid)
        assert (kept.status, kept.attempts, kept.claimed_by) == (QueueStatus.PROCESSING, 0, "w1")

    @pytest.mark.parametrize(
        ("status", "error", "closed_as"),
        [
            (Status.COMPLETED, None, QueueStatus.COMPLETED),
            (Status.TEXT_FAILED, "chunking: boom", QueueStatus.FAILED),
            (Status.DEAD_LETTERED, "ocr: gave up", QueueStatus.FAILED),
        ],
    )
    def test_a_terminal_status_closes_the_queue_row_in_the_same_commit(
        self, store: SqlDocumentStore, status: Status, error: str | None, closed_as: QueueStatus
    ) -> None:
        doc = new_document(store)
        store.enqueue(doc.uuid)
        store.claim("w1", limit=1, stale_after=60, max_attempts=3)
        store.advance_status(doc.uuid, Status.OCR_QUEUED, stage="ocr", processing_version=1)
        [entry] = store.queue_entries(doc.uuid)
        assert entry.status is QueueStatus.PROCESSING

        assert store.advance_status(
            doc.uuid, status, stage="graph", processing_version=1, error_message=error
        )
        [entry] = store.queue_entries(doc.uuid)
        assert (entry.status, entry.last_error) == (closed_as, error)

    # --- dead letters -------------------------------------------------------------
    def test_dead_letters_add_list_remove(self, store: SqlDocumentStore) -> None:
        store.add_dead_letter("doc-1", "pipeline.extract_text", Stage.OCR, "boom", 3)
        store.add_dead_letter("doc-2", "pipeline.chunk_text", Stage.CHUNKING, "bang", 5)
        store.add_dead_letter("doc-3", "pipeline.stage_graph", Stage.RELATIONSHIPS, "oops", 1)
        letters = store.dead_letters()
        assert [letter["document_uuid"] for letter in letters] == ["doc-3", "doc-2", "doc-1"]
        assert letters[2] == {
            "document_uuid": "doc-1",
            "task_name": "pipeline.extract_text",
            "stage": "ocr",
            "error": "boom",
            "retries": 3,
            "created_at": letters[2]["created_at"],
        }
        assert isinstance(letters[2]["created_at"], str)
        assert "T" in letters[2]["created_at"]
        assert store.remove_dead_letters([]) == 0
        assert store.remove_dead_letters(["doc-2", "doc-404"]) == 1
        assert [letter["document_uuid"] for letter in store.dead_letters()] == ["doc-3", "doc-1"]
        assert store.remove_dead_letters() == 2
        assert store.dead_letters() == []

    def test_dead_letter_moves_the_document_and_adds_its_letter_once(
        self, store: SqlDocumentStore
    ) -> None:
        doc = new_document(store)
        store.advance_status(doc.uuid, Status.OCR_QUEUED, stage="ocr", processing_version=1)

        assert _dead_letter(store, doc.uuid, 1, "gave up")
        # Again (a retry after the commit's outcome was lost): terminal, nothing more written.
        assert not _dead_letter(store, doc.uuid, 1, "gave up")

        moved = store.get_document(doc.uuid)
        assert (moved.status, moved.error_message) == (Status.DEAD_LETTERED, "gave up")
        assert [(d["document_uuid"], d["stage"]) for d in store.dead_letters()] == [
            (doc.uuid, "ocr")
        ]
        assert [h.status for h in store.history(doc.uuid)][-1] is Status.DEAD_LETTERED

    def _requeue_candidate(self, store: SqlDocumentStore) -> SourceDocument:
        """A document with chunks, an open queue row and a dead letter (of an earlier run)."""
        doc = new_document(store)
        store.enqueue(doc.uuid)
        store.replace_chunks(doc.uuid, chunks_for(doc.uuid, 2))
        store.add_dead_letter(doc.uuid, "t", "chunking", "gave up", 1)
        return doc

    def test_requeue_new_version_resets_everything_and_queues_the_document_at_once(
        self, store: SqlDocumentStore
    ) -> None:
        doc = self._requeue_candidate(store)

        requeued = store.requeue_new_version(doc.uuid, stage="reset")

        assert (requeued.status, requeued.processing_version) == (Status.PENDING, 2)
        assert store.get_document(doc.uuid) == requeued
        assert store.counts(doc.uuid) == DocumentCounts(0, 0, 0, 0)
        assert [e.status for e in store.queue_entries(doc.uuid)] == [
            QueueStatus.CANCELLED,
            QueueStatus.PENDING,
        ]
        assert store.dead_letters() == []
        last = store.history(doc.uuid)[-1]
        assert (last.stage, last.status, last.processing_version) == ("reset", Status.PENDING, 2)
        with pytest.raises(KeyError):
            store.requeue_new_version("no-such-document", stage="reset")

    def test_a_requeue_that_fails_midway_writes_nothing(
        self, store: SqlDocumentStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        doc = self._requeue_candidate(store)
        before = store.get_document(doc.uuid)

        with failing(monkeypatch, store, "_enqueue", "queue insert failed"):
            store.requeue_new_version(doc.uuid, stage="reset")

        assert store.get_document(doc.uuid) == before
        assert store.counts(doc.uuid).chunks == 2
        assert [e.status for e in store.queue_entries(doc.uuid)] == [QueueStatus.PENDING]
        assert [d["document_uuid"] for d in store.dead_letters()] == [doc.uuid]

    def test_a_replay_moves_the_document_back_removes_its_letters_and_queues_it_at_once(
        self, store: SqlDocumentStore
    ) -> None:
        doc = new_document(store)
        store.advance_status(doc.uuid, Status.OCR_COMPLETE, stage="ocr", processing_version=1)
        assert _dead_letter(store, doc.uuid, 1, "parser gave up", stage="document_node")

        replay = store.replay_dead_letter(doc.uuid)

        assert replay is not None and replay.stage == "document_node"
        assert (replay.document.status, replay.document.processing_version) == (
            Status.TEXT_PROCESSING,
            1,
        )
        assert store.get_document(doc.uuid) == replay.document
        assert store.dead_letters() == []
        assert [e.status for e in store.queue_entries(doc.uuid)] == [QueueStatus.PENDING]
        last = store.history(doc.uuid)[-1]
        assert (last.stage, last.status) == ("document_node (dlq replay)", Status.TEXT_PROCESSING)
        assert last.error_message and "parser gave up" in last.error_message
        assert Status.DEAD_LETTERED not in [h.status for h in store.history(doc.uuid)]
        # Replayed once: the document is no longer dead-lettered.
        assert store.replay_dead_letter(doc.uuid) is None

    def test_a_replay_that_fails_midway_writes_nothing(
        self, store: SqlDocumentStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Status, letters and queue row commit together: a replay cut off before its
        queue row leaves the document dead-lettered with its letter, to be replayed again."""
        doc = new_document(store)
        assert _dead_letter(store, doc.uuid, 1, "gave up")

        with failing(monkeypatch, store, "_enqueue", "queue insert failed"):
            store.replay_dead_letter(doc.uuid)

        assert store.get_document(doc.uuid).status is Status.DEAD_LETTERED
        assert [d["document_uuid"] for d in store.dead_letters()] == [doc.uuid]
        assert store.queue_entries(doc.uuid) == []
        assert store.replay_dead_letter(doc.uuid) is not None

    def test_a_replay_leaves_a_moved_on_document_alone_and_drops_a_deleted_ones_letters(
        self, store: SqlDocumentStore
    ) -> None:
        moved_on = new_document(store)
        store.add_dead_letter(moved_on.uuid, "t", "ocr", "old verdict", 1)
        store.add_dead_letter("no-such-document", "t", "ocr", "orphan", 1)

        assert store.replay_dead_letter(moved_on.uuid) is None
        assert store.replay_dead_letter("no-such-document") is None

        assert [d["document_uuid"] for d in store.dead_letters()] == [moved_on.uuid]
        assert store.get_document(moved_on.uuid).status is Status.PENDING
        assert store.queue_entries(moved_on.uuid) == []

    def test_dead_letter_writes_nothing_for_a_document_that_may_not_move(
        self, store: SqlDocumentStore
    ) -> None:
        done = new_document(store)
        store.force_status(done.uuid, Status.COMPLETED, stage="test", bump_version=False)
        other_version = new_document(store)

        assert not _dead_letter(store, done.uuid, 1, "late verdict")
        assert not _dead_letter(store, other_version.uuid, 2, "late verdict")

        assert store.dead_letters() == []
        assert store.get_document(done.uuid).status is Status.COMPLETED
        assert store.get_document(other_version.uuid).status is Status.PENDING

    def test_dead_letter_with_a_stale_fence_is_refused(self, store: SqlDocumentStore) -> None:
        doc = new_document(store)
        store.advance_status(doc.uuid, Status.OCR_COMPLETE, stage="ocr", processing_version=1)
        overtaken = self._claim(store, doc, Status.OCR_COMPLETE)
        self._claim(store, doc, Status.ENTITY_EXTRACTION)  # a redelivery claims it again

        with pytest.raises(StaleDelivery):
            _dead_letter(
                store, doc.uuid, 1, "overtaken", stage="entity_extraction", fence=overtaken
            )

        assert store.dead_letters() == []
        assert store.get_document(doc.uuid).status is Status.ENTITY_EXTRACTION

    def test_a_claim_only_fence_holds_at_any_status_until_another_claim(
        self, store: SqlDocumentStore
    ) -> None:
        doc = new_document(store)
        store.advance_status(doc.uuid, Status.OCR_COMPLETE, stage="ocr", processing_version=1)
        claim = self._claim(store, doc, Status.OCR_COMPLETE)
        # The delivery's own transition moves the status, not the claim.
        store.advance_status(
            doc.uuid,
            Status.ENTITY_RESOLUTION,
            stage="entity_extraction",
            processing_version=1,
            fence=claim,
        )
        with pytest.raises(StaleDelivery):
            store.check_fence(claim)
        store.check_fence(claim.claim_only())

        self._claim(store, doc, Status.ENTITY_RESOLUTION)  # another delivery claims it

        with pytest.raises(StaleDelivery, match="claimed by a later delivery"):
            store.check_fence(claim.claim_only())

    # --- fenced stage writes ------------------------------------------------------
    def _claim(self, store: SqlDocumentStore, doc: SourceDocument, found: Status) -> Fence:
        claimed = store.claim_delivery(
            doc.uuid,
            processing_version=doc.processing_version,
            found_status=found,
            status=Status.ENTITY_EXTRACTION,
            stage="entity_extraction",
        )
        assert claimed is not None and claimed.fence_token is not None
        return Fence.of(claimed)

    def test_a_claim_moves_the_status_once_and_refuses_a_document_that_moved(
        self, store: SqlDocumentStore
    ) -> None:
        doc = new_document(store)
        fence = self._claim(store, doc, Status.PENDING)
        assert fence.status is Status.ENTITY_EXTRACTION
        assert [h.status for h in store.history(doc.uuid)] == [Status.ENTITY_EXTRACTION]
        stale_read = store.claim_delivery(
            doc.uuid,
            processing_version=1,
            found_status=Status.PENDING,
            status=Status.ENTITY_EXTRACTION,
            stage="entity_extraction",
        )
        assert stale_read is None

    def test_read_and_claim_judges_the_read_document_and_claims_it_in_one_go(
        self, store: SqlDocumentStore
    ) -> None:
        doc = new_document(store)
        seen: list[Status] = []

        def to_extraction(found: SourceDocument) -> Status | None:
            seen.append(found.status)
            return Status.ENTITY_EXTRACTION

        claimed = store.read_and_claim(doc.uuid, stage="entity_extraction", judge=to_extraction)
        assert seen == [Status.PENDING]
        assert claimed is not None and claimed.fence_token is not None
        # What it returns is what is stored (updated_at is not compared).
        assert claimed == store.get_document(doc.uuid)
        assert claimed.status is Status.ENTITY_EXTRACTION
        assert [h.status for h in store.history(doc.uuid)] == [Status.ENTITY_EXTRACTION]
        # A redelivery at the same status: a new token, no new history row, earlier fence out.
        again = store.read_and_claim(doc.uuid, stage="entity_extraction", judge=to_extraction)
        assert again is not None and again.fence_token not in (None, claimed.fence_token)
        assert seen == [Status.PENDING, Status.ENTITY_EXTRACTION]
        assert [h.status for h in store.history(doc.uuid)] == [Status.ENTITY_EXTRACTION]
        with pytest.raises(StaleDelivery):
            store.check_fence(Fence.of(claimed))
        store.check_fence(Fence.of(again))

    def test_read_and_claim_leaves_a_document_its_judge_refuses(
        self, store: SqlDocumentStore
    ) -> None:
        doc = new_document(store)
        assert store.read_and_claim(doc.uuid, stage="ocr", judge=lambda found: None) is None
        assert store.get_document(doc.uuid) == doc
        assert store.history(doc.uuid) == []
        with pytest.raises(KeyError):
            store.read_and_claim("no-such-document", stage="ocr", judge=lambda f: Status.PENDING)

    def test_a_claim_reads_the_ocr_text_only_when_asked(self, store: SqlDocumentStore) -> None:
        doc = new_document(store)
        store.save_raw_text(doc.uuid, "the OCR text", {"pages": 1})

        without = store.read_and_claim(
            doc.uuid, stage="ocr", judge=lambda f: Status.OCR_PROCESSING, with_text=False
        )
        assert without is not None
        assert (without.raw_text, without.ocr_metadata) == (None, {"pages": 1})
        assert without.status is Status.OCR_PROCESSING and without.fence_token is not None
        assert store.get_document(doc.uuid).raw_text == "the OCR text"  # only not read

        with_text = store.read_and_claim(doc.uuid, stage="ocr", judge=lambda f: f.status)
        assert with_text is not None and with_text.raw_text == "the OCR text"

    def test_a_claim_that_fails_after_its_update_writes_nothing(
        self, store: SqlDocumentStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The claim runs on the DBAPI connection (`_hot_write`): its own ROLLBACK, its own
        turn on the writer, its connection back to the pool, whatever goes wrong."""
        doc = new_document(store)

        with failing(monkeypatch, store, "_record_history", "history insert failed"):
            store.read_and_claim(doc.uuid, stage="ocr", judge=lambda f: Status.OCR_PROCESSING)
        assert store.get_document(doc.uuid) == doc  # the UPDATE before it was rolled back
        for _ in range(3):  # more claims than a leaked turn or connection would allow
            claimed = store.read_and_claim(
                doc.uuid, stage="ocr", judge=lambda f: Status.OCR_PROCESSING
            )
            assert claimed is not None and claimed.status is Status.OCR_PROCESSING
        assert [h.status for h in store.history(doc.uuid)] == [Status.OCR_PROCESSING]

    @pytest.mark.parametrize("where", ["history insert", "commit"])
    def test_a_claim_cut_off_by_the_database_is_transient_and_leaves_nothing_held(
        self, store: SqlDocumentStore, monkeypatch: pytest.MonkeyPatch, where: str
    ) -> None:
        """A database error inside the claim's transaction or at its COMMIT (`HotWrite`):
        a TransientError (worth a retry), nothing written, and neither the writer's turn
        nor the connection kept, so another thread's claim goes through at once."""
        doc = new_document(store)
        lost = OperationalError("statement", {}, Exception("disk I/O error"))

        def refuse(*args: object, **kwargs: object) -> None:
            raise lost

        with monkeypatch.context() as patched:
            if where == "commit":
                patched.setattr(DbapiTransaction, "commit", refuse)
            else:
                patched.setattr(store, "_record_history", refuse)
            with pytest.raises(TransientError, match="disk I/O error"):
                store.read_and_claim(doc.uuid, stage="ocr", judge=lambda f: Status.OCR_PROCESSING)
        assert store.get_document(doc.uuid) == doc
        checked_out = getattr(store.engine.pool, "checkedout", None)
        if checked_out is not None:
            assert checked_out() == 0
        # The writer's turn is a reentrant lock: only another thread would wait on a leaked one.
        with ThreadPoolExecutor(max_workers=1) as other:
            claimed = other.submit(
                store.read_and_claim, doc.uuid, stage="ocr", judge=lambda f: Status.OCR_PROCESSING
            ).result(timeout=10)
        assert claimed is not None and claimed.status is Status.OCR_PROCESSING

    def test_a_later_delivery_fences_the_earlier_one_out_of_every_write(
        self, store: SqlDocumentStore
    ) -> None:
        doc = new_document(store)
        first = self._claim(store, doc, Status.PENDING)
        chunks = chunks_for(doc.uuid, 2)
        store.replace_chunks(doc.uuid, chunks, fence=first)
        second = self._claim(store, doc, Status.ENTITY_EXTRACTION)  # the redelivery
        assert second.token != first.token
        store.replace_mentions(doc.uuid, mentions_for(chunks), fence=second)
        entities = entities_for(doc.uuid, 1)
        mention_canonical = {m.uuid: entities[0].uuid for m in mentions_for(chunks)}
        store.replace_canonical_entities(doc.uuid, entities, mention_canonical, fence=second)
        before = {table.name: dump(store, table, doc.uuid) for table in DERIVED_TABLES}
        node = DocumentNode(doc.uuid, doc.project_uuid, "t", Category.DOCUMENT, "text")

        late_writes: list[Callable[[], object]] = [
            lambda: store.replace_mentions(doc.uuid, mentions_for(chunks, 1), fence=first),
            lambda: store.replace_chunks(doc.uuid, chunks[:1], fence=first),
            lambda: store.replace_canonical_entities(doc.uuid, [], {}, fence=first),
            lambda: store.replace_relationships(doc.uuid, relationships_for(chunks), fence=first),
            lambda: store.save_document_node(node, fence=first),
            lambda: store.save_raw_text(doc.uuid, "late text", {}, fence=first),
            lambda: store.advance_status(
                doc.uuid, Status.COMPLETED, stage="x", processing_version=1, fence=first
            ),
            lambda: store.check_fence(first),
        ]
        for late in late_writes:
            with pytest.raises(StaleDelivery, match="claimed by a later delivery"):
                late()

        assert {table.name: dump(store, table, doc.uuid) for table in DERIVED_TABLES} == before
        document = store.get_document(doc.uuid)
        assert (document.status, document.raw_text) == (Status.ENTITY_EXTRACTION, None)
        assert all(m.canonical_uuid == entities[0].uuid for m in store.get_mentions(doc.uuid))

    def test_a_fence_expires_when_the_status_or_version_moves_on(
        self, store: SqlDocumentStore
    ) -> None:
        doc = new_document(store)
        fence = self._claim(store, doc, Status.PENDING)
        assert store.advance_status(
            doc.uuid, Status.ENTITY_RESOLUTION, stage="r", processing_version=1, fence=fence
        )
        with pytest.raises(StaleDelivery, match="now: entity_resolution"):
            store.replace_mentions(doc.uuid, [], fence=fence)
        fence = self._claim(store, doc, Status.ENTITY_RESOLUTION)
        store.force_status(doc.uuid, Status.PENDING, stage="reprocess", bump_version=True)
        with pytest.raises(StaleDelivery):
            store.replace_mentions(doc.uuid, [], fence=fence)

    def test_fenced_derived_rows_carry_the_processing_version(
        self, store: SqlDocumentStore
    ) -> None:
        doc = new_document(store)
        fence = self._claim(store, doc, Status.PENDING)
        chunks = chunks_for(doc.uuid, 2)
        store.replace_chunks(doc.uuid, chunks, fence=fence)
        store.replace_mentions(doc.uuid, mentions_for(chunks), fence=fence)
        versions = store.derived_versions(doc.uuid)
        assert versions["neo4j_chunks"] == [1]
        assert versions["neo4j_entity_mentions"] == [1]
        assert versions["neo4j_documents"] == []
