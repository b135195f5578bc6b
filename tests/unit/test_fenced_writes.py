"""Issue 11.1: a delivery overtaken by its redelivery writes nothing (sim mode, virtual time).

The scenario `stalled_call_outlives_visibility_timeout` runs in the simulator:
the first LLM call stalls past the visibility timeout, the message is restored
and delivered again while the first delivery still runs. With the fence the
late delivery's writes are refused; with the fence switched off the same run
leaves a completed document whose mentions lost their canonical entities, and
the referential-integrity invariant reports it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pipeline.adapters.sql import SqlDocumentStore
from pipeline.app import stages
from pipeline.app.intake import dispatch, submit_all
from pipeline.bootstrap import Services
from pipeline.domain.models import Stage, Status
from pipeline.errors import PermanentError
from pipeline.harness.scenarios.model import load_scenario
from pipeline.harness.scenarios.runner import RunReport, run_scenario
from pipeline.ports import LlmAnswer

SCENARIO = (
    Path(__file__).resolve().parents[2]
    / "scenarios"
    / "stalled_call_outlives_visibility_timeout.yaml"
)


def _sim_run(tmp_path: Path) -> RunReport:
    return run_scenario(load_scenario(SCENARIO), SCENARIO, "sim", workdir=tmp_path)


def test_the_stalled_delivery_is_fenced_out_and_the_document_stays_intact(
    tmp_path: Path,
) -> None:
    report = _sim_run(tmp_path)
    assert report.skipped is None, report.skipped
    assert report.passed, [c for c in report.checks if not c.passed] or report.error
    # The stalled delivery's message came back after the visibility timeout.
    assert report.sim["counts"].get("restore", 0) >= 1
    integrity = [c for c in report.checks if c.name == "referential integrity"]
    assert [c.passed for c in integrity] == [True]


def test_without_the_fence_the_late_write_unlinks_every_mention_of_a_completed_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SqlDocumentStore, "_check_fence", staticmethod(lambda *a, **k: None))
    report = _sim_run(tmp_path)
    assert not report.passed
    (integrity,) = [c for c in report.checks if c.name == "referential integrity"]
    assert not integrity.passed
    # One document (the one whose chunk the stalled call was) lost every canonical link.
    found = re.findall(
        r"(doc-\d\.txt): (\d+)/(\d+) mentions without a canonical entity", integrity.measured
    )
    assert len(found) == 1, integrity.measured
    name, unlinked, total = found[0]
    assert int(unlinked) == int(total) == _mention_count(report, name)
    # It looks done; only its rows say otherwise.
    assert [d.status for d in report.documents] == ["completed"] * 3


def _mention_count(report: RunReport, name: str) -> int:
    (document,) = [d for d in report.documents if d.name == name]
    return document.mentions


class _OvertakenExtractor:
    """Wraps the extractor: during the first call, a redelivery claims the document."""

    def __init__(self, inner: Any, services: Services, document_uuid: str) -> None:
        self._inner = inner
        self._services = services
        self._document_uuid = document_uuid
        self.overtaken = False

    @property
    def model(self) -> str:
        return str(self._inner.model)

    def request_tokens(self, texts: Sequence[str]) -> int:
        return int(self._inner.request_tokens(texts))

    def extract_many(self, texts: Sequence[str]) -> LlmAnswer:
        if not self.overtaken:
            self.overtaken = True
            # What the visibility-timeout redelivery's `begin` does, on another worker
            # thread, while this call stalls.
            redelivery = threading.Thread(
                target=stages.begin,
                args=(self._services, Stage.ENTITY_EXTRACTION, self._document_uuid, 1),
            )
            redelivery.start()
            redelivery.join()
        answer: LlmAnswer = self._inner.extract_many(texts)
        return answer


def test_an_overtaken_delivery_is_acked_as_stale_not_failed_and_writes_nothing(
    services: Services, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "overtaken.txt"
    path.write_text("Jane Holloway of Acme Corporation signed in Boston on July 14, 2024. " * 20)
    (submission,) = submit_all(services, [path], "p")
    uuid = submission.document_uuid
    overtaking = _OvertakenExtractor(services.extractor, services, uuid)
    services.extractor = overtaking

    with caplog.at_level(logging.WARNING, logger="pipeline.runtime.tasks"):
        dispatch(services, uuid)

    assert overtaking.overtaken
    document = services.store.get_document(uuid)
    # Not a failure of the document: no error, no dead letter; the delivery that took it
    # over (here only a claim) carries it on, so nothing was chained by the stale one.
    assert (document.status, document.error_message) == (Status.ENTITY_EXTRACTION, None)
    assert services.store.dead_letters() == []
    assert services.store.get_mentions(uuid) == []
    assert "stale delivery, writes discarded" in caplog.text


def test_db_upgrade_adds_the_fence_columns_to_a_database_made_before_them(
    tmp_path: Path,
) -> None:
    import sqlalchemy as sa

    from pipeline.adapters.sql import create_store
    from pipeline.adapters.sql.migrations import upgrade
    from pipeline.adapters.sql.schema import DERIVED_TABLES

    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = create_store(url)
    engine = store.engine
    # A database as the code before the fence made it: no token, no version on derived rows.
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE source_documents DROP COLUMN fence_token"))
        for table in DERIVED_TABLES:
            conn.execute(sa.text(f"ALTER TABLE {table.name} DROP COLUMN processing_version"))

    result = upgrade(engine)

    assert 2 in result.applied
    inspector = sa.inspect(engine)
    assert "fence_token" in {c["name"] for c in inspector.get_columns("source_documents")}
    for table in DERIVED_TABLES:
        assert "processing_version" in {c["name"] for c in inspector.get_columns(table.name)}
    store.close()


class _OvertakenThenFailingExtractor(_OvertakenExtractor):
    """Overtaken by a redelivery during its first call, which then fails for good."""

    def extract_many(self, texts: Sequence[str]) -> LlmAnswer:
        first = not self.overtaken
        answer = super().extract_many(texts)
        if first:
            raise PermanentError("401 Unauthorized (a late, permanent failure)")
        return answer


def test_an_overtaken_delivery_cannot_fail_the_document_its_successor_carries_on(
    services: Services, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "overtaken.txt"
    path.write_text("Jane Holloway of Acme Corporation signed in Boston on July 14, 2024. " * 20)
    (submission,) = submit_all(services, [path], "p")
    uuid = submission.document_uuid
    services.extractor = _OvertakenThenFailingExtractor(services.extractor, services, uuid)

    with caplog.at_level(logging.WARNING, logger="pipeline.runtime.tasks"):
        dispatch(services, uuid)

    document = services.store.get_document(uuid)
    assert (document.status, document.error_message) == (Status.ENTITY_EXTRACTION, None)
    assert "stale delivery, failure discarded" in caplog.text
