"""Claim-check: every task message carries ids only, even for a 5 MB document."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import Retry
from celery.signals import before_task_publish

from pipeline.app.intake import dispatch, submit_all
from pipeline.app.stages import StageResult
from pipeline.bootstrap import Services
from pipeline.domain.models import Stage, Status
from pipeline.runtime.broker import purge_queues
from pipeline.runtime.celery_app import app
from pipeline.runtime.tasks import _dispatch, retry_task, send_stage, start_ocr_task
from tests.helpers import memory_worker

MAX_MESSAGE_BYTES = 2 * 1024
DOCUMENT_UUID = "00000000-0000-4000-8000-000000000001"


def test_every_message_of_a_5mb_document_run_is_under_2kb(
    make_services: Callable[..., Services], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = make_services(eager=False, broker_url="memory://", ocr_poll_interval_s=0)
    paragraph = (
        "Section 4. The parties agree that the obligations described in this section survive "
        "termination and that notices are delivered in writing to Ms. Jane R. Holloway, who "
        "acknowledges receipt of every schedule and exhibit referred to in this agreement.\n\n"
    )
    text = paragraph * (5 * 1024 * 1024 // len(paragraph) + 1)
    path = tmp_path / "big.txt"
    path.write_text(text)
    assert path.stat().st_size >= 5 * 1024 * 1024

    messages: list[tuple[str, int]] = []

    def capture(sender: str, body: Any, headers: dict[str, Any], **_: Any) -> None:
        size = len(json.dumps(body)) + len(json.dumps(headers, default=str))
        messages.append((sender, size))

    before_task_publish.connect(capture, weak=False)
    try:
        with memory_worker(app, monkeypatch):
            (submission,) = submit_all(services, [path], "p")
            dispatch(services, submission.document_uuid)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                status = services.store.get_document(submission.document_uuid).status
                if status.is_terminal:
                    break
                time.sleep(0.2)
    finally:
        before_task_publish.disconnect(capture)

    assert status is Status.COMPLETED, services.store.get_document(submission.document_uuid)
    published = {name for name, _ in messages}
    assert {"pipeline.start_ocr", "pipeline.stage_relationships"} <= published
    largest = max(size for _, size in messages)
    assert largest < MAX_MESSAGE_BYTES, messages


def test_messages_leave_time_limits_to_the_worker(
    make_services: Callable[..., Services],
) -> None:
    """A publisher's task limits must not ride in its messages: the worker's own apply.

    Celery copies a task's limits (bound from the publisher's configuration)
    into each message, and the worker obeys the message over its own
    settings: an intake process with other limits than the OCR workers', or
    a test process that configured short ones earlier, would impose them.
    """
    make_services(
        eager=False, broker_url="memory://", task_soft_time_limit_s=1000, task_time_limit_s=1100
    )
    headers_seen: list[dict[str, Any]] = []

    def capture(headers: dict[str, Any], **_: Any) -> None:
        headers_seen.append(headers)

    before_task_publish.connect(capture, weak=False)
    try:
        send_stage(Stage.OCR, DOCUMENT_UUID, 1)
        _dispatch(StageResult(poll_job_id="job-1", polls=1), DOCUMENT_UUID, 1)
        # A retry copies the limits of the message it retries: one from an older publisher too.
        start_ocr_task.push_request(
            id="task-1",
            retries=0,
            args=[DOCUMENT_UUID, 1],
            kwargs={},
            timelimit=(1100, 1000),
            called_directly=False,
        )
        try:
            with pytest.raises(Retry):
                retry_task(start_ocr_task, 0.1, RuntimeError("busy"), max_retries=3)
        finally:
            start_ocr_task.pop_request()
    finally:
        before_task_publish.disconnect(capture)
        purge_queues(app)  # nothing consumed them: kombu's memory broker is the process's

    sent = ["pipeline.start_ocr", "pipeline.poll_ocr", "pipeline.start_ocr"]
    assert [h["task"] for h in headers_seen] == sent
    assert [tuple(h["timelimit"]) for h in headers_seen] == [(None, None)] * 3
