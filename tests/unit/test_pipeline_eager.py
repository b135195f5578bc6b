"""The whole pipeline end to end on the embedded default, in eager mode."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fakes.faults import FaultRule, RedisFaultInjector
from pipeline.app import stages
from pipeline.app.intake import collect_files, dispatch, submit_all
from pipeline.bootstrap import Services
from pipeline.domain.models import EntityType, SourceDocument, Stage, Status
from pipeline.runtime.tasks import stage_lock_name
from tests.conftest import SAMPLES
from tests.helpers import GOOD_TEXT, run_files

MakeServices = Callable[..., Services]


def test_sample_documents_all_complete_with_entities(services: Services) -> None:
    files = collect_files([SAMPLES])
    kinds = Counter(f.suffix for f in files)
    assert kinds[".pdf"] >= 2 and kinds[".docx"] >= 1 and kinds[".txt"] >= 1 and kinds[".eml"] >= 1

    rows = run_files(services, files)

    for name, row in rows.items():
        assert row["status"] == "completed", (name, row["error"])
        assert row["chunks"] >= 1, name
        assert row["mentions"] > 0, name
        assert 0 < row["canonical_entities"] <= row["mentions"], name  # type: ignore[operator]
    found_types = {
        m.entity_type
        for row in rows.values()
        for m in services.store.get_mentions(str(row["document_uuid"]))
    }
    assert {EntityType.PERSON, EntityType.ORG, EntityType.DATE, EntityType.MONEY} <= found_types


def test_only_the_stages_that_use_the_ocr_text_read_it_with_their_claim(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long document's text is megabytes: the other stages' claims leave it unread."""
    claims: list[tuple[str, bool]] = []
    real = services.store.read_and_claim

    def recording(document_uuid: str, **keywords: Any) -> SourceDocument | None:
        claims.append((keywords["stage"], keywords.get("with_text", True)))
        return real(document_uuid, **keywords)

    monkeypatch.setattr(services.store, "read_and_claim", recording)
    path = tmp_path / "affidavit.txt"
    path.write_text(GOOD_TEXT)

    (row,) = run_files(services, [path]).values()

    assert row["status"] == "completed", row["error"]
    assert [stage for stage, _ in claims] == [str(stage) for stage in Stage]
    assert [stage for stage, with_text in claims if with_text] == ["ocr", "document_node"]


def test_bad_inputs_fail_alone_with_readable_reasons(services: Services, tmp_path: Path) -> None:
    inputs = tmp_path / "inbox"
    inputs.mkdir()
    real_pdf = next(SAMPLES.glob("*.pdf")).read_bytes()
    (inputs / "empty.txt").write_bytes(b"")
    (inputs / "truncated.pdf").write_bytes(real_pdf[:300])
    (inputs / "notes.xyz").write_bytes(b"some notes")
    (inputs / "not_really.pdf").write_bytes(b"Just a plain text file pretending to be a PDF.\n")
    (inputs / "picture.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (inputs / "good.txt").write_text(GOOD_TEXT)

    rows = run_files(services, collect_files([inputs]))

    assert rows["good.txt"]["status"] == "completed"
    expected_failures = {
        "empty.txt": "empty",
        "truncated.pdf": "pdf",
        "notes.xyz": "unsupported file type",
        "not_really.pdf": "does not match",
        "picture.txt": "does not match",
    }
    for name, fragment in expected_failures.items():
        row = rows[name]
        assert row["status"] == Status.OCR_FAILED, (name, row)
        error = str(row["error"])
        assert error.startswith("ocr: "), error
        assert fragment in error.lower(), (name, error)
        assert "Traceback" not in error


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("latin1.txt", GOOD_TEXT.replace("Agreement", "Agreement – café").encode("cp1252")),
        ("nul_bytes.txt", GOOD_TEXT.encode().replace(b"Section 2.", b"Section\x00 2.\x00")),
        ("utf16.txt", GOOD_TEXT.encode("utf-16")),
    ],
)
def test_legacy_encodings_and_nul_bytes_complete(
    services: Services, tmp_path: Path, name: str, payload: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(payload)
    row = run_files(services, [path])[name]
    assert row["status"] == "completed", row["error"]
    node = services.store.get_document_node(str(row["document_uuid"]))
    assert "\x00" not in node.cleaned_text
    assert "Holloway" in node.cleaned_text


def test_each_transition_is_in_history_and_mirrored_in_the_state_hash(
    services: Services, tmp_path: Path
) -> None:
    path = tmp_path / "agreement.txt"
    path.write_text(GOOD_TEXT)
    row = run_files(services, [path])["agreement.txt"]
    uuid = str(row["document_uuid"])

    statuses = [entry.status for entry in services.store.history(uuid)]
    assert statuses == [
        Status.OCR_QUEUED,
        Status.OCR_PROCESSING,
        Status.OCR_COMPLETE,
        Status.TEXT_PROCESSING,
        Status.ENTITY_EXTRACTION,
        Status.ENTITY_RESOLUTION,
        Status.GRAPH_BUILDING,
        Status.COMPLETED,
    ]
    state = services.state.get(uuid)
    for stage in Stage:
        assert state[f"{stage}_status"] == "completed", (stage, state)
        assert float(state[f"{stage}_timestamp"]) > 0
    assert state["last_status"] == "completed"


def _dump(services: Services, uuid: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row that belongs to the document, without timestamps."""
    store = services.store
    engine: sa.Engine = store.engine  # type: ignore[attr-defined]
    tables = {
        "source_documents": "uuid",
        "neo4j_documents": "uuid",
        "neo4j_chunks": "document_uuid",
        "neo4j_entity_mentions": "document_uuid",
        "neo4j_canonical_entities": "document_uuid",
        "neo4j_relationships_staging": "document_uuid",
        "document_processing_history": "document_uuid",
        "textract_jobs": "document_uuid",
    }
    metadata = sa.MetaData()
    metadata.reflect(engine)
    dump: dict[str, list[tuple[object, ...]]] = {}
    with engine.connect() as conn:
        for name, key in tables.items():
            table = metadata.tables[name]
            columns = [
                c
                for c in table.columns
                # The fencing token is per delivery: a second run claims a new one.
                if c.name not in {"created_at", "updated_at", "uuid", "fence_token"}
                or (
                    c.name == "uuid"
                    and name not in {"document_processing_history", "textract_jobs"}
                )
            ]
            rows = conn.execute(sa.select(*columns).where(table.c[key] == uuid)).all()
            dump[name] = sorted((tuple(r) for r in rows), key=repr)
    return dump


def test_running_any_stage_twice_leaves_identical_rows(services: Services, tmp_path: Path) -> None:
    path = tmp_path / "agreement.txt"
    path.write_text(GOOD_TEXT * 3)
    (submission,) = submit_all(services, [path], "p")
    uuid = submission.document_uuid
    version = services.store.get_document(uuid).processing_version

    def twice(run: Callable[[], stages.StageResult]) -> stages.StageResult:
        first = run()
        after_first = _dump(services, uuid)
        second = run()
        assert _dump(services, uuid) == after_first
        assert second.next_stage == first.next_stage
        return first

    twice(lambda: stages.start_ocr(services, uuid, version, attempt="a1"))
    for stage in (
        Stage.DOCUMENT_NODE,
        Stage.CHUNKING,
        Stage.ENTITY_EXTRACTION,
        Stage.ENTITY_RESOLUTION,
        Stage.RELATIONSHIPS,
    ):
        function = stages.STAGE_FUNCTIONS[stage]
        if stage is Stage.RELATIONSHIPS:
            function(services, uuid, version)
            done = _dump(services, uuid)
            # A duplicate delivery after completion is a no-op.
            assert function(services, uuid, version).skipped
            assert _dump(services, uuid) == done
        else:
            twice(lambda function=function: function(services, uuid, version))  # type: ignore[misc]
    document = services.store.get_document(uuid)
    assert document.status is Status.COMPLETED
    history = [(h.processing_version, h.status) for h in services.store.history(uuid)]
    assert len(history) == len(set(history))


def test_reprocessing_replaces_derived_rows_instead_of_adding(
    services: Services, tmp_path: Path
) -> None:
    path = tmp_path / "agreement.txt"
    path.write_text(GOOD_TEXT)
    row = run_files(services, [path])["agreement.txt"]
    uuid = str(row["document_uuid"])
    before = services.store.counts(uuid)

    services.store.force_status(uuid, Status.PENDING, stage="reprocess", bump_version=True)
    dispatch(services, uuid)

    document = services.store.get_document(uuid)
    assert document.status is Status.COMPLETED
    assert document.processing_version == 2
    assert services.store.counts(uuid) == before
    assert {h.processing_version for h in services.store.history(uuid)} == {1, 2}


def _faulty(make_services: MakeServices, *rules: FaultRule) -> tuple[Services, RedisFaultInjector]:
    services = make_services()
    injector = RedisFaultInjector(services.redis, rules)
    injector.arm()
    return make_services(faults=injector, redis_url=services.settings.redis_url), injector


def test_transient_llm_errors_are_retried_until_success(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services, injector = _faulty(make_services, FaultRule(port="llm", kind="throttle", first=2))
    path = tmp_path / "a.txt"
    path.write_text(GOOD_TEXT)
    row = run_files(services, [path])["a.txt"]
    assert row["status"] == "completed", row["error"]
    assert injector.fired() == [2]


def test_permanent_errors_are_never_retried(make_services: MakeServices, tmp_path: Path) -> None:
    services, injector = _faulty(
        make_services, FaultRule(port="llm", kind="permanent", message="model refused the request")
    )
    path = tmp_path / "a.txt"
    path.write_text(GOOD_TEXT)
    row = run_files(services, [path])["a.txt"]
    assert row["status"] == Status.ENTITY_FAILED
    assert row["error"] == "entity_extraction: model refused the request"
    assert injector.calls() == [1]


def test_exhausted_retries_dead_letter_the_document(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services, injector = _faulty(make_services, FaultRule(port="llm", kind="transient"))
    path = tmp_path / "a.txt"
    path.write_text(GOOD_TEXT)
    row = run_files(services, [path])["a.txt"]
    assert row["status"] == Status.DEAD_LETTERED
    assert injector.calls() == [services.settings.max_retries + 1]
    (letter,) = services.store.dead_letters()
    assert letter["document_uuid"] == row["document_uuid"]
    assert letter["stage"] == "entity_extraction"


def test_malformed_llm_json_is_retried_then_fails_never_an_empty_success(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services, _ = _faulty(make_services, FaultRule(port="llm", kind="malformed"))
    path = tmp_path / "a.txt"
    path.write_text(GOOD_TEXT)
    row = run_files(services, [path])["a.txt"]
    assert row["status"] == Status.DEAD_LETTERED
    assert "malformed" in str(row["error"]).lower() or "json" in str(row["error"]).lower()
    assert row["mentions"] == 0


def test_malformed_answer_once_then_good_completes_without_caching_the_bad_one(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services, _ = _faulty(make_services, FaultRule(port="llm", kind="malformed", first=1))
    path = tmp_path / "a.txt"
    path.write_text(GOOD_TEXT)
    row = run_files(services, [path])["a.txt"]
    assert row["status"] == "completed"
    assert int(str(row["mentions"])) > 0


def test_a_stage_whose_lock_is_held_elsewhere_never_runs_unlocked(
    services: Services, tmp_path: Path
) -> None:
    path = tmp_path / "a.txt"
    path.write_text(GOOD_TEXT)
    (submission,) = submit_all(services, [path], "p")
    uuid = submission.document_uuid
    lock = stage_lock_name(uuid, services.store.get_document(uuid).processing_version, Stage.OCR)
    held = services.locks.acquire(lock, ttl_seconds=60, owner="another-worker")
    assert held is not None

    dispatch(services, uuid)

    document = services.store.get_document(uuid)
    assert document.status is Status.OCR_QUEUED  # retried, then dropped: OCR never ran
    assert document.raw_text is None
    services.locks.release(lock, held)
    dispatch(services, uuid)
    assert services.store.get_document(uuid).status is Status.COMPLETED
