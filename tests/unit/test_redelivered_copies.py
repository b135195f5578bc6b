"""Copies of one attempt past the redelivery limit end; they do not multiply.

A task that outlives the visibility timeout is delivered again while it runs, and
both deliveries go on. The redelivery guard counts deliveries per task id and
retry: past `max_redeliveries` it dead-letters the document. When the database
refused that dead letter, every such copy retried it, publishing the next retry
with a fresh count; with the copies that restores keep making, a document's task
outnumbered what the workers could ack and the run never ended (docpipe explore
--seed 1, schedule 28: 22,879 messages of one task queued after 100,000 events,
the document long dead-lettered). Now a copy past the limit whose dead letter
is refused ends when another delivery of its attempt published the retry, and a
verdict for a document that already ended writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import Retry

from pipeline.app.intake import submit_all
from pipeline.app.stages import StageResult
from pipeline.bootstrap import Services
from pipeline.domain.models import Stage, Status
from pipeline.errors import TransientError
from pipeline.runtime.tasks import DELIVERIES_KEY, RETRIED_KEY, run_stage

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
TASK_ID = "task-of-one-attempt"


class DeliveredTask:
    """What `run_stage` uses of a bound Celery task, as a worker delivers it."""

    name = "docpipe.document_node"

    def __init__(self, retries: int = 2) -> None:
        self.request = SimpleNamespace(id=TASK_ID, retries=retries, is_eager=False, kwargs={})
        self.retried: list[dict[str, Any]] = []

    def retry(self, **options: Any) -> Retry:
        self.retried.append(options)
        raise Retry(exc=options.get("exc"))


def _document(services: Services) -> tuple[str, int]:
    (submission,) = submit_all(services, [SAMPLES / "affidavit_of_jane_holloway.txt"], "p")
    document = services.store.get_document(submission.document_uuid)
    return document.uuid, document.processing_version


def _delivered_before(services: Services, task: DeliveredTask, deliveries: int) -> None:
    key = DELIVERIES_KEY.format(task_id=TASK_ID, retries=task.request.retries)
    services.redis.set(key, deliveries)


def _retry_published(services: Services, task: DeliveredTask) -> None:
    """Another delivery of this attempt published its retry (`_marking_retried`)."""
    services.redis.set(RETRIED_KEY.format(task_id=TASK_ID, retries=task.request.retries), 1)


def _stage_not_reached(_: Services) -> StageResult:
    raise AssertionError("a delivery past the redelivery limit must not run the stage")


def _deliver_past_the_limit(task: DeliveredTask, document_uuid: str, version: int) -> str:
    """The document-node stage's task layer for one more delivery of `task`."""
    return run_stage(
        task,  # type: ignore[arg-type]
        Stage.DOCUMENT_NODE,
        document_uuid,
        version,
        _stage_not_reached,
    )


def _refuse_dead_letters(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*_: object, **__: object) -> None:
        raise TransientError("database: connection refused")

    monkeypatch.setattr(services.store, "dead_letter", refused)


def test_a_surplus_copy_whose_dead_letter_is_refused_ends_without_a_retry(
    make_services: Callable[..., Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = make_services(max_redeliveries=3)
    document_uuid, version = _document(services)
    task = DeliveredTask()
    _delivered_before(services, task, 4)
    _retry_published(services, task)
    _refuse_dead_letters(services, monkeypatch)

    ended = _deliver_past_the_limit(task, document_uuid, version)

    assert ended == "unrecorded"
    assert task.retried == []


@pytest.mark.parametrize("before", [3, 4])
def test_a_delivery_past_the_limit_retries_a_refused_dead_letter_when_no_retry_is_out(
    make_services: Callable[..., Services], monkeypatch: pytest.MonkeyPatch, before: int
) -> None:
    """A poison task (its worker killed on every delivery, even the first past the limit):
    nothing else carries the document on, so the verdict is retried."""
    services = make_services(max_redeliveries=3)
    document_uuid, version = _document(services)
    task = DeliveredTask()
    _delivered_before(services, task, before)
    _refuse_dead_letters(services, monkeypatch)

    with pytest.raises(Retry):
        _deliver_past_the_limit(task, document_uuid, version)

    assert len(task.retried) == 1


def test_a_copy_past_the_limit_leaves_a_finished_document_without_a_dead_letter(
    make_services: Callable[..., Services],
) -> None:
    services = make_services(max_redeliveries=3)
    document_uuid, version = _document(services)
    services.store.force_status(document_uuid, Status.COMPLETED, stage="test", bump_version=False)
    task = DeliveredTask()
    _delivered_before(services, task, 5)

    ended = _deliver_past_the_limit(task, document_uuid, version)

    assert ended == "skipped"
    assert services.store.dead_letters() == []
    assert services.store.get_document(document_uuid).status is Status.COMPLETED
