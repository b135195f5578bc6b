"""The old sequential pipeline: one document at a time, all six stages, one process.

The baseline the plan's 3-5x promise is measured against. It calls the same
stage functions (pipeline/stages.py) with the same services as the Celery
tasks, so the comparison is fair: only the execution model differs. The OCR
job is polled by sleeping the poll interval on the clock, as the old OCR task
did. No Celery, no broker, no locks (nothing runs beside it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline import stages
from pipeline.bootstrap import Services
from pipeline.domain.models import Stage, Status
from pipeline.errors import TransientError
from pipeline.intake import claim_own, submit_file
from pipeline.stages import StageResult

log = logging.getLogger(__name__)

#: A document that keeps failing transiently gives up after this many tries per stage.
MAX_TRIES = 3


@dataclass(frozen=True)
class SequentialResult:
    file: str
    document_uuid: str
    status: Status
    started_at: float
    finished_at: float

    @property
    def seconds(self) -> float:
        return self.finished_at - self.started_at


def process_document(services: Services, document_uuid: str) -> Status:
    """Run one submitted document through every stage, here and now; returns its status."""
    document = services.store.get_document(document_uuid)
    version = document.processing_version
    stages.mark(services, document, Stage.OCR, Status.OCR_QUEUED)
    attempt = 0
    stage: Stage | None = Stage.OCR
    while stage is not None:
        try:
            result = _run_with_retries(services, stage, document_uuid, version, attempt)
        except Exception as exc:
            reason = f"{stage}: {exc or type(exc).__name__}"
            log.warning("sequential %s failed: %s", document_uuid, reason)
            stages.fail(services, document_uuid, version, stage, stage.failed_status, reason)
            break
        if result.skipped:
            break
        stage = result.next_stage
        attempt += 1
    return services.store.statuses([document_uuid])[document_uuid]


def _run_with_retries(
    services: Services, stage: Stage, document_uuid: str, version: int, attempt: int
) -> StageResult:
    for tries in range(1, MAX_TRIES + 1):
        try:
            return _run_stage(
                services, stage, document_uuid, version, f"monolith:{attempt}:{tries}"
            )
        except TransientError:
            if tries == MAX_TRIES:
                raise
            services.clock.sleep(services.settings.retry_backoff_base_s * 2**tries)
    raise AssertionError("unreachable")  # pragma: no cover


def _run_stage(
    services: Services, stage: Stage, document_uuid: str, version: int, attempt: str
) -> StageResult:
    if stage is not Stage.OCR:
        return stages.STAGE_FUNCTIONS[stage](services, document_uuid, version)
    result = stages.start_ocr(services, document_uuid, version, attempt)
    settings = services.settings
    # Bounded: poll_ocr raises once ocr_max_polls is reached.
    for _ in range(settings.ocr_max_polls + 1):
        if result.poll_job_id is None:
            return result
        services.clock.sleep(settings.ocr_poll_interval_s)
        result = stages.poll_ocr(services, document_uuid, version, result.poll_job_id, result.polls)
    raise TransientError("OCR polling did not finish")  # pragma: no cover


def run_sequential(
    services: Services,
    files: Sequence[Path],
    *,
    min_seconds: float = 0.0,
    max_documents: int | None = None,
    whole_rounds: bool = True,
    on_done: Callable[[SequentialResult], None] = lambda result: None,
) -> list[SequentialResult]:
    """Process `files` in order, one at a time, cycling until `min_seconds` have passed.

    With `whole_rounds` the run only stops at the end of a round over the
    files, so every file counts equally. `max_documents` bounds the run.
    """
    if not files:
        return []
    limit = max_documents if max_documents is not None else max(len(files), 10_000)
    project_uuid = services.store.ensure_project(services.settings.project_name)
    started = time.monotonic()
    results: list[SequentialResult] = []
    while len(results) < limit:
        index = len(results) % len(files)
        elapsed = time.monotonic() - started
        if results and elapsed >= min_seconds and (index == 0 or not whole_rounds):
            break
        path = files[index]
        begun = time.time()
        submission = submit_file(services, path, project_uuid)
        claim_own(services, submission.document_uuid, worker="monolith")
        status = process_document(services, submission.document_uuid)
        result = SequentialResult(str(path), submission.document_uuid, status, begun, time.time())
        results.append(result)
        on_done(result)
    return results
