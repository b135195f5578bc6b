"""Copies of one attempt past the redelivery limit end; they do not multiply.

A task that outlives the visibility timeout is delivered again while it runs, and
both deliveries go on. The redelivery guard counts deliveries per task id and
retry: past `max_redeliveries` it dead-letters the document. When the database
refused that dead letter, every such copy retried it, publishing the next retry
with a fresh count; with the copies that restores keep making, a document's task
outnumbered what the workers could ack and the run never ended (docpipe explore
--seed 1, schedule 28: 22,879 messages of one task queued after 100,000 events,
the document long dead-lettered). Now a copy past the limit ends when another
delivery of its attempt published the retry, and a verdict for a document that
already ended writes nothing.

Nor is a copy of an attempt that published its successor taken for a poison
task: the delivery marks the attempt finished once it has published, and a copy
restored before it acked ends at its start. Taken for one, a fourth copy
dead-lettered the document the third had just carried on to its next stage. A
delivery killed before it published leaves the attempt unmarked: its redelivery
runs the stage again and publishes. A published retry marks the attempt too: a
copy of it ends instead of publishing a second retry, whose deliveries would count
towards the next attempt's limit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
import redis
from celery.exceptions import Reject, Retry

from pipeline.adapters.redis_features import ATTEMPT_FINISHED
from pipeline.app import stages
from pipeline.app.intake import submit_all
from pipeline.app.stages import StageResult
from pipeline.bootstrap import Services
from pipeline.domain.models import Stage, Status
from pipeline.errors import TransientError
from pipeline.harness.simulation.real import RecordingDispatcher
from pipeline.runtime import tasks
from pipeline.runtime.tasks import (
    DELIVERIES_KEY,
    RETRIED_KEY,
    run_stage,
    with_siblings_progress,
)

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


class RetryRefused(DeliveredTask):
    """A delivery whose retry the broker refuses (Celery's `Task.retry` raises Reject)."""

    def retry(self, **options: Any) -> Retry:
        raise Reject("broker: connection refused", requeue=False)


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


@pytest.mark.parametrize("database", ["up", "refusing"])
def test_a_surplus_copy_of_an_attempt_whose_retry_is_out_ends_without_a_dead_letter(
    make_services: Callable[..., Services], monkeypatch: pytest.MonkeyPatch, database: str
) -> None:
    """The retry carries the document on: a dead letter would end a document still going."""
    services = make_services(max_redeliveries=3)
    document_uuid, version = _document(services)
    before = services.store.get_document(document_uuid).status
    task = DeliveredTask()
    _delivered_before(services, task, 4)
    _retry_published(services, task)
    if database == "refusing":
        _refuse_dead_letters(services, monkeypatch)

    ended = _deliver_past_the_limit(task, document_uuid, version)

    assert ended == "skipped"
    assert task.retried == []
    assert services.store.dead_letters() == []
    assert services.store.get_document(document_uuid).status is before


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


def _deliver_document_node(task: DeliveredTask, document_uuid: str, version: int) -> str:
    """One delivery of `task` running the document-node stage's bookkeeping: its claim,
    then the next stage named."""

    def bookkeeping(services: Services) -> StageResult:
        if stages.begin(services, Stage.DOCUMENT_NODE, document_uuid, version) is None:
            return stages.SKIPPED
        return StageResult(next_stage=Stage.CHUNKING)

    return run_stage(task, Stage.DOCUMENT_NODE, document_uuid, version, bookkeeping)  # type: ignore[arg-type]


def _count(services: Services, counter: str) -> int:
    return int(services.redis.get(counter) or 0)


def test_a_copy_of_an_attempt_that_finished_its_stage_is_no_poison_task(
    make_services: Callable[..., Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three deliveries of one attempt started (two died); the third finished the stage and
    chained the next. Later copies, restored before that ack, end: they neither
    dead-letter the document the third carried on nor chain its next stage again."""
    services = make_services(max_redeliveries=3)
    dispatcher = RecordingDispatcher()
    monkeypatch.setattr(services, "dispatcher", dispatcher)
    document_uuid, version = _document(services)
    task = DeliveredTask()
    counter = DELIVERIES_KEY.format(task_id=TASK_ID, retries=task.request.retries)
    _delivered_before(services, task, 2)

    third = _deliver_document_node(task, document_uuid, version)

    assert third == "ok" and [sent.stage for sent in dispatcher.take()] == [Stage.CHUNKING]
    assert _count(services, counter) == ATTEMPT_FINISHED + 3
    for _ in range(4):
        assert _deliver_document_node(task, document_uuid, version) == "skipped"
    assert dispatcher.take() == []
    assert services.store.dead_letters() == []
    assert services.store.get_document(document_uuid).status is Status.TEXT_PROCESSING


def test_a_delivery_that_could_not_publish_its_successor_leaves_its_attempt_unmarked(
    make_services: Callable[..., Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nor its retry, the broker down for both: its own message, requeued, must run the
    stage again. (A retry that is out marks the attempt: the copy of such an attempt ends.)"""
    services = make_services(max_redeliveries=3)

    class BrokerDown(RecordingDispatcher):
        def send_stage(self, *_: Any, **__: Any) -> None:
            raise ConnectionError("broker: connection refused")

    monkeypatch.setattr(services, "dispatcher", BrokerDown())
    document_uuid, version = _document(services)
    task = RetryRefused()
    counter = DELIVERIES_KEY.format(task_id=TASK_ID, retries=task.request.retries)

    with pytest.raises(Reject):
        _deliver_document_node(task, document_uuid, version)

    assert _count(services, counter) == 1


def test_a_delivery_that_polls_ocr_marks_its_attempt_finished(
    make_services: Callable[..., Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OCR start that chained its first poll finished its step as well."""
    services = make_services(max_redeliveries=3)
    document_uuid, version = _document(services)
    polls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        tasks.poll_ocr_task, "apply_async", lambda args, **_: polls.append(tuple(args))
    )
    task = DeliveredTask(retries=0)
    counter = DELIVERIES_KEY.format(task_id=TASK_ID, retries=0)
    _delivered_before(services, task, 2)

    def start(services: Services) -> StageResult:
        assert stages.begin(services, Stage.OCR, document_uuid, version) is not None
        return StageResult(poll_job_id="job-1", polls=1)

    assert run_stage(task, Stage.OCR, document_uuid, version, start) == "ok"  # type: ignore[arg-type]

    assert polls == [(document_uuid, version, "job-1", 1)]
    assert _count(services, counter) == ATTEMPT_FINISHED + 3


def _fail_upstream(task: DeliveredTask, document_uuid: str, version: int) -> str:
    """One delivery of `task` whose document-node stage fails with a transient error."""

    def transient(_: Services) -> StageResult:
        raise TransientError("upstream: 503")

    return run_stage(task, Stage.DOCUMENT_NODE, document_uuid, version, transient)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("task", "raised", "marked"),
    [(DeliveredTask(), Retry, True), (RetryRefused(), Reject, False)],
    ids=["retry-published", "retry-refused"],
)
def test_a_failed_delivery_marks_its_attempt_finished_once_its_retry_is_out(
    make_services: Callable[..., Services],
    task: DeliveredTask,
    raised: type[Exception],
    marked: bool,
) -> None:
    """A delivery whose stage failed and whose retry is out marks its attempt finished, as
    a published successor does: its copy (a redelivery after a kill at the ack, a restore)
    ends instead of running the stage again and publishing a second retry, whose
    deliveries would count towards the next attempt's redelivery limit. A retry the broker
    refused marks nothing: the message is requeued, and runs, and counts, again."""
    services = make_services(max_redeliveries=3)
    document_uuid, version = _document(services)
    counter = DELIVERIES_KEY.format(task_id=TASK_ID, retries=task.request.retries)
    _delivered_before(services, task, 1)

    with pytest.raises(raised):
        _fail_upstream(task, document_uuid, version)

    assert _count(services, counter) == (ATTEMPT_FINISHED if marked else 0) + 2
    if marked:
        assert _fail_upstream(task, document_uuid, version) == "skipped"
        assert len(task.retried) == 1 and services.store.dead_letters() == []


def _fail_without_progress(task: DeliveredTask, document_uuid: str, version: int) -> str:
    def transient(_: Services) -> StageResult:
        raise TransientError("database: connection refused")

    return run_stage(task, Stage.DOCUMENT_NODE, document_uuid, version, transient, stalled=2)  # type: ignore[arg-type]


@pytest.mark.parametrize(("progress_at", "verdict"), [(None, "dead"), (0, "retry"), (2, "retry")])
def test_a_chain_without_progress_counts_its_sibling_chains_progress(
    make_services: Callable[..., Services], progress_at: int | None, verdict: str
) -> None:
    """Attempt 3 of a chain whose attempts 1 and 2 made no progress (stalled 2, max_retries
    2): dead-lettered, unless another delivery of the same task id progressed - at attempt 1
    (then attempts 2 and 3 are the run without progress) or at this very attempt."""
    services = make_services(max_retries=2)
    document_uuid, version = _document(services)
    task = DeliveredTask(retries=2)
    if progress_at is not None:
        with_siblings_progress(services.redis, TASK_ID, progress_at, 0, True)

    if verdict == "dead":
        assert _fail_without_progress(task, document_uuid, version) == "dead_lettered"
        assert len(services.store.dead_letters()) == 1
        return
    with pytest.raises(Retry):
        _fail_without_progress(task, document_uuid, version)
    assert services.store.dead_letters() == []
    assert task.retried[0]["kwargs"]["stalled"] == (2 if progress_at == 0 else 0)


def test_siblings_progress_keeps_the_latest_attempt_and_leaves_redis_errors_to_the_chain() -> None:
    client = fakeredis.FakeRedis()
    assert with_siblings_progress(client, "t", 3, 2, False) == (2, False)  # nothing recorded
    assert with_siblings_progress(client, "t", 1, 0, True) == (0, True)
    assert with_siblings_progress(client, "t", 0, 0, True) == (0, True)  # an older one
    assert client.get("docpipe:progress:t") == b"1"
    assert with_siblings_progress(client, "t", 4, 3, False) == (2, False)  # attempts 2, 3
    assert with_siblings_progress(client, "t", 1, 1, False) == (1, True)  # same attempt

    class Down(fakeredis.FakeRedis):
        def eval(self, *_: Any) -> Any:
            raise redis.ConnectionError("connection refused")

    assert with_siblings_progress(Down(), "t", 4, 3, False) == (3, False)
