"""The old sequential pipeline: one document at a time, all six stages, one process.

The baseline the plan's 3-5x promise is measured against. It calls the same
stage functions (pipeline/app/stages.py) with the same services as the Celery
tasks, so the comparison is fair: only the execution model differs. The OCR
job is polled by sleeping the poll interval on the clock, as the old OCR task
did; a failed attempt waits out pipeline.app.policy's countdown on the clock, the
same retry budget as the tasks'. No Celery, no broker, no locks (nothing runs
beside it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.app import stages
from pipeline.app.intake import claim_own, submit_file
from pipeline.app.policy import decide, metered
from pipeline.app.stages import StageResult
from pipeline.domain.models import Stage, Status
from pipeline.errors import TransientError
from pipeline.ports.services import Services

log = logging.getLogger(__name__)


class _StageGaveUp(Exception):
    """A stage's attempts ended: dead-lettered or failed, already recorded."""


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
        except _StageGaveUp:
            break
        if result.skipped:
            break
        stage = result.next_stage
        attempt += 1
    return services.store.statuses([document_uuid])[document_uuid]


def _run_with_retries(
    services: Services, stage: Stage, document_uuid: str, version: int, attempt: int
) -> StageResult:
    """Attempts of one stage under pipeline.app.policy; raises _StageGaveUp once it is recorded."""
    stalled = 0
    tries = 0
    while True:
        try:
            with metered() as meter:
                return _run_stage(
                    services, stage, document_uuid, version, f"monolith:{attempt}:{tries}"
                )
        except Exception as exc:
            decision = decide(
                stage,
                exc,
                attempt=tries,
                stalled=stalled,
                progressed=meter.progressed,
                settings=services.settings,
                retryable=(TransientError,),
            )
            if decision.action == "retry":
                services.clock.sleep(decision.countdown)
                stalled = decision.stalled
                tries += 1
                continue
            log.warning("sequential %s: %s", document_uuid, decision.error)
            if decision.action == "dead_letter":
                stages.dead_letter(
                    services,
                    document_uuid,
                    version,
                    stage,
                    decision.error,
                    task_name="monolith",
                    retries=tries,
                )
            else:
                stages.fail(
                    services, document_uuid, version, stage, stage.failed_status, decision.error
                )
            raise _StageGaveUp(decision.error) from exc


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
