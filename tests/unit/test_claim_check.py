"""Claim-check: every task message carries ids only, even for a 5 MB document."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery.contrib.testing.worker import start_worker
from celery.signals import before_task_publish

from pipeline.app.intake import dispatch, submit_all
from pipeline.bootstrap import Services
from pipeline.domain.models import QUEUES, Status
from pipeline.runtime.celery_app import app

MAX_MESSAGE_BYTES = 2 * 1024


def test_every_message_of_a_5mb_document_run_is_under_2kb(
    make_services: Callable[..., Services], tmp_path: Path
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
        with start_worker(
            app, pool="threads", concurrency=2, perform_ping_check=False, queues=list(QUEUES)
        ):
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
