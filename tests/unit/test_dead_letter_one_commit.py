"""A dead letter and the document's `dead_lettered` status are one commit, and fenced.

Written as two commits (the dead letter row, then the status), a failure between
them left a dead letter beside a document in a working status; the task ran
again and, with its fault gone, completed the document: a dead letter an
operator would replay for a completed document. A delivery overtaken by another
(a visibility-timeout redelivery that claimed the document) dead-lettered the
document under its successor. And a fence left by the worker thread's previous
task fenced the next task's verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery.exceptions import Retry
from sqlalchemy import text

from pipeline.app import stages
from pipeline.app.intake import submit_all
from pipeline.app.stages import StageResult
from pipeline.bootstrap import Services
from pipeline.domain.models import Fence, Stage, Status
from pipeline.errors import TransientError
from pipeline.runtime.tasks import DELIVERIES_KEY, run_stage

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


class DeliveredTask:
    """What `run_stage` uses of a bound Celery task, as a worker delivers it."""

    name = "docpipe.document_node"

    def __init__(self, task_id: str, retries: int = 0) -> None:
        self.request = SimpleNamespace(id=task_id, retries=retries, is_eager=False, kwargs={})

    def retry(self, **options: Any) -> Retry:
        raise Retry(exc=options.get("exc"))


def _documents(services: Services, *names: str) -> list[tuple[str, int]]:
    submitted = submit_all(services, [SAMPLES / name for name in names], "p")
    found = [services.store.get_document(s.document_uuid) for s in submitted]
    return [(d.uuid, d.processing_version) for d in found]


def _run_stage_of(
    stage: Stage, task: DeliveredTask, document: tuple[str, int], call: Callable[[Services], Any]
) -> str:
    return run_stage(task, stage, *document, call)  # type: ignore[arg-type]


def _run(task: DeliveredTask, document: tuple[str, int], call: Callable[[Services], Any]) -> str:
    return _run_stage_of(Stage.DOCUMENT_NODE, task, document, call)


def test_a_refused_status_write_leaves_no_dead_letter_behind(
    make_services: Callable[..., Services],
) -> None:
    services = make_services(max_redeliveries=3)
    (document,) = _documents(services, "affidavit_of_jane_holloway.txt")
    with services.store.engine.begin() as conn:  # type: ignore[attr-defined]
        # The database refuses the terminal status (a write that fails mid-transaction).
        conn.execute(
            text(
                "CREATE TRIGGER refuse_dead_lettered BEFORE UPDATE OF status ON source_documents "
                "WHEN NEW.status = 'dead_lettered' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        )
    task = DeliveredTask("poison")
    services.redis.set(DELIVERIES_KEY.format(task_id="poison", retries=0), 4)

    def not_reached(_: Services) -> StageResult:
        raise AssertionError("past the redelivery limit the stage does not run")

    outcome = _run(task, document, not_reached)

    # The refusal fails the document with its reason, and leaves no dead letter behind.
    assert outcome == "failed"
    assert services.store.dead_letters() == []
    failed = services.store.get_document(document[0])
    assert failed.status is Stage.DOCUMENT_NODE.failed_status
    assert "refused" in (failed.error_message or "")


def test_an_overtaken_delivery_dead_letters_nothing(
    make_services: Callable[..., Services],
) -> None:
    services = make_services(max_retries=0)
    (document,) = _documents(services, "affidavit_of_jane_holloway.txt")

    def overtaken_then_failing(s: Services) -> StageResult:
        assert stages.begin(s, Stage.DOCUMENT_NODE, *document) is not None
        # A redelivery of the same task claims the document while this delivery runs.
        s.store.read_and_claim(
            document[0], stage=str(Stage.DOCUMENT_NODE), judge=lambda d: d.status
        )
        raise TransientError("the parser timed out")

    outcome = _run(DeliveredTask("slow"), document, overtaken_then_failing)

    assert outcome == "skipped"
    assert services.store.dead_letters() == []
    assert services.store.get_document(document[0]).status is Stage.DOCUMENT_NODE.running_status


def test_the_previous_task_s_claim_does_not_fence_the_next_verdict(
    make_services: Callable[..., Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = make_services(max_retries=0)
    first, second = _documents(
        services, "affidavit_of_jane_holloway.txt", "counsel_correspondence.eml"
    )

    def claim_and_finish(s: Services) -> StageResult:
        claimed = stages.begin(s, Stage.DOCUMENT_NODE, *first)
        assert claimed is not None
        stages.mark(
            s, claimed, Stage.DOCUMENT_NODE, Stage.DOCUMENT_NODE.failed_status, error="done with it"
        )
        return stages.SKIPPED

    _run(DeliveredTask("first"), first, claim_and_finish)

    def redis_down(*_: object, **__: object) -> None:
        raise redis.ConnectionError("Redis restarting")

    # The next task on this thread cannot even take its lock; with no retry left it is
    # dead-lettered, whatever the previous task claimed.
    monkeypatch.setattr(services.state, "acquire_counted_and_record_started", redis_down)
    with pytest.raises(redis.ConnectionError):
        _run(DeliveredTask("second"), second, lambda s: stages.SKIPPED)

    assert services.store.get_document(second[0]).status is Status.DEAD_LETTERED
    assert [letter["document_uuid"] for letter in services.store.dead_letters()] == [second[0]]


def test_a_verdict_after_the_delivery_s_own_transition_is_recorded(
    make_services: Callable[..., Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OCR poll moved the document to `ocr_complete` and could not chain the next stage,
    with no retry left: the dead letter is this delivery's own, not a stale one. Fenced at
    the status it claimed (`ocr_processing`) it was refused, and the document sat at
    `ocr_complete` with nothing to carry it on (docpipe explore --seed 3, schedule 36)."""
    services = make_services(max_retries=0)
    (document,) = _documents(services, "affidavit_of_jane_holloway.txt")

    def completes_ocr(s: Services) -> StageResult:
        claimed = stages.begin(s, Stage.OCR, *document)
        assert claimed is not None
        stages.mark(s, claimed, Stage.OCR, Status.OCR_COMPLETE, fence=Fence.of(claimed))
        return StageResult(next_stage=Stage.DOCUMENT_NODE)

    def broker_down(*_: object, **__: object) -> None:
        raise TransientError("broker unreachable")

    monkeypatch.setattr(services.dispatcher, "send_stage", broker_down)
    outcome = _run_stage_of(Stage.OCR, DeliveredTask("poll"), document, completes_ocr)

    assert outcome == "dead_lettered"
    assert services.store.get_document(document[0]).status is Status.DEAD_LETTERED
    assert [letter["stage"] for letter in services.store.dead_letters()] == ["ocr"]


def test_a_verdict_after_a_transition_whose_commit_was_not_heard_of_is_recorded(
    make_services: Callable[..., Services],
) -> None:
    """The stage's own transition committed, but the caller saw the connection drop (commit
    outcome unknown), and no retry was left. Fenced at the status it claimed, the dead
    letter was refused and the document sat at `ocr_complete` (docpipe explore --seed 0,
    schedule 26: `store.commit_unknown` at p=0.38). Only another delivery's claim makes
    the verdict stale."""
    services = make_services(max_retries=0)
    (document,) = _documents(services, "affidavit_of_jane_holloway.txt")

    def completes_unheard(s: Services) -> StageResult:
        claimed = stages.begin(s, Stage.OCR, *document)
        assert claimed is not None
        s.store.advance_status(
            document[0],
            Status.OCR_COMPLETE,
            stage=str(Stage.OCR),
            processing_version=document[1],
            fence=Fence.of(claimed),
        )
        raise TransientError("database: server closed the connection (commit outcome unknown)")

    outcome = _run_stage_of(Stage.OCR, DeliveredTask("unheard"), document, completes_unheard)

    assert outcome == "dead_lettered"
    assert services.store.get_document(document[0]).status is Status.DEAD_LETTERED
    assert [letter["stage"] for letter in services.store.dead_letters()] == ["ocr"]
