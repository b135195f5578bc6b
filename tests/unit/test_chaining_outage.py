"""A stage whose successor cannot be published is retried, not acked and forgotten.

The broker being down for longer than the publish retries (a Redis restart
under load) used to strand documents in text_processing: the stage committed,
publishing the next stage raised, the failed task was acked, and nothing was
left to carry the document on. Runs a real in-thread worker on the memory
transport; the first publishes of one stage fail as a down broker makes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError

from pipeline.app.intake import dispatch, submit_all
from pipeline.bootstrap import Services
from pipeline.domain.models import Stage, Status
from pipeline.errors import TransientError
from pipeline.runtime.celery_app import app
from pipeline.runtime.tasks import STAGE_TASKS
from tests.helpers import memory_worker

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def _broker_refuses(monkeypatch: pytest.MonkeyPatch, task: Any, *, times: int) -> list[Any]:
    """`task`'s first `times` publishes fail as with the broker down; their args are returned."""
    publish = task.apply_async
    refused: list[Any] = []

    def refusing(*args: Any, **kwargs: Any) -> Any:
        if len(refused) < times:
            refused.append(kwargs.get("args"))
            raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return publish(*args, **kwargs)

    monkeypatch.setattr(task, "apply_async", refusing)
    return refused


def _run_one(
    services: Services, path: Path, monkeypatch: pytest.MonkeyPatch, timeout_s: float = 60
) -> Status:
    with memory_worker(app, monkeypatch):
        (submission,) = submit_all(services, [path], "p")
        dispatch(services, submission.document_uuid)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = services.store.get_document(submission.document_uuid).status
            if status.is_terminal:
                return status
            time.sleep(0.1)
    return status


@pytest.mark.parametrize("failing", [Stage.ENTITY_EXTRACTION, Stage.RELATIONSHIPS])
def test_a_next_stage_that_cannot_be_published_is_published_again(
    make_services: Callable[..., Services], monkeypatch: pytest.MonkeyPatch, failing: Stage
) -> None:
    services = make_services(
        eager=False, broker_url="memory://", retry_backoff_base_s=0.05, retry_backoff_max_s=0.1
    )
    refused = _broker_refuses(monkeypatch, STAGE_TASKS[failing], times=2)

    status = _run_one(services, SAMPLES / "affidavit_of_jane_holloway.txt", monkeypatch)

    assert len(refused) == 2
    assert status is Status.COMPLETED, services.store.get_document(refused[0][0])
    document_uuid = refused[0][0]
    assert services.store.counts(document_uuid).chunks > 0


def test_a_stage_that_never_gets_its_successor_out_is_dead_lettered_with_the_reason(
    make_services: Callable[..., Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = make_services(
        eager=False,
        broker_url="memory://",
        retry_backoff_base_s=0.05,
        retry_backoff_max_s=0.1,
        max_retries=2,
    )

    def broker_down(*_: Any, **__: Any) -> Any:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(STAGE_TASKS[Stage.CHUNKING], "apply_async", broker_down)

    status = _run_one(services, SAMPLES / "affidavit_of_jane_holloway.txt", monkeypatch)

    assert status is Status.DEAD_LETTERED
    (letter,) = services.store.dead_letters()
    assert letter["stage"] == str(Stage.DOCUMENT_NODE)
    assert "Connection refused" in str(letter["error"])


@pytest.mark.parametrize(
    "sample", ["affidavit_of_jane_holloway.txt", "complaint_holloway_v_meridian.pdf"]
)
def test_a_lock_that_cannot_be_released_does_not_stop_the_chain(
    make_services: Callable[..., Services], monkeypatch: pytest.MonkeyPatch, sample: str
) -> None:
    """Redis going away between the stage's commit and its lock release (seen in a restart).

    The PDF's OCR start chains a poll of the same stage: the start's lock, left
    behind until its TTL, must not make the poll retry out its budget and be
    dropped as a duplicate (found by docpipe explore). A stage that finishes
    releases its lock with the state's last write, one script: Redis gone there
    fails both, and the task retries its chaining under the lock it still holds.
    """
    services = make_services(
        eager=False,
        broker_url="memory://",
        retry_backoff_base_s=0.05,
        retry_backoff_max_s=0.1,
        ocr_poll_interval_s=0.05,
    )
    release = services.locks.release
    record_and_release = services.state.record_and_release
    failed: list[str] = []

    def redis_gone_once(lock_name: str) -> None:
        if not failed:
            failed.append(lock_name)
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")

    def release_unless_gone(name: str, token: str) -> None:
        redis_gone_once(name)
        release(name, token)

    def record_and_release_unless_gone(*args: Any, lock_name: str, **kwargs: Any) -> None:
        redis_gone_once(lock_name)
        record_and_release(*args, lock_name=lock_name, **kwargs)

    monkeypatch.setattr(services.locks, "release", release_unless_gone)
    monkeypatch.setattr(services.state, "record_and_release", record_and_release_unless_gone)

    status = _run_one(services, SAMPLES / sample, monkeypatch)

    assert failed and failed[0].split(":")[1] == Stage.OCR
    assert status is Status.COMPLETED


def test_a_worker_whose_database_is_down_at_its_first_task_retries_it(
    make_services: Callable[..., Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker builds its services on its first task; the database may be down right then."""
    import pipeline.runtime.tasks

    services = make_services(
        eager=False, broker_url="memory://", retry_backoff_base_s=0.05, retry_backoff_max_s=0.1
    )
    refused: list[int] = []

    def database_down_twice() -> Services:
        if len(refused) < 2:
            refused.append(1)
            raise TransientError("database unavailable: connection refused")
        return services

    monkeypatch.setattr(pipeline.runtime.tasks, "current_services", database_down_twice)
    monkeypatch.setattr(pipeline.runtime.tasks, "get_settings", lambda: services.settings)

    status = _run_one(services, SAMPLES / "affidavit_of_jane_holloway.txt", monkeypatch)

    assert len(refused) == 2
    assert status is Status.COMPLETED


def test_a_soft_time_limit_while_the_worker_builds_its_services_retries_the_task(
    make_services: Callable[..., Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh pool child on a loaded host may pass its soft limit before any stage runs.

    Raised out of the task, the limit would fail it and Celery would ack the
    message: the document would stay queued with nothing left to move it.
    """
    import pipeline.runtime.tasks

    services = make_services(
        eager=False, broker_url="memory://", retry_backoff_base_s=0.05, retry_backoff_max_s=0.1
    )
    interrupted: list[int] = []

    def soft_limit_once() -> Services:
        if not interrupted:
            interrupted.append(1)
            raise SoftTimeLimitExceeded()
        return services

    monkeypatch.setattr(pipeline.runtime.tasks, "current_services", soft_limit_once)
    monkeypatch.setattr(pipeline.runtime.tasks, "get_settings", lambda: services.settings)

    status = _run_one(services, SAMPLES / "affidavit_of_jane_holloway.txt", monkeypatch)

    assert interrupted == [1]
    assert status is Status.COMPLETED


def test_a_chaining_failure_after_the_stage_kept_work_restarts_the_retry_count(
    make_services: Callable[..., Services], monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_retries 0: an attempt without progress is the last. Entity extraction keeps its
    answers, then cannot publish its successor: that attempt progressed, so it is retried
    (it was judged without progress and dead-lettered; docpipe explore, schedule 599)."""
    services = make_services(
        eager=False,
        broker_url="memory://",
        retry_backoff_base_s=0.05,
        retry_backoff_max_s=0.1,
        max_retries=0,
    )
    refused = _broker_refuses(monkeypatch, STAGE_TASKS[Stage.ENTITY_RESOLUTION], times=1)

    status = _run_one(services, SAMPLES / "affidavit_of_jane_holloway.txt", monkeypatch)

    assert len(refused) == 1
    assert status is Status.COMPLETED, services.store.dead_letters()
