"""The queue processor (plan step 4, corrected): claims queue rows and sends their documents.

Keeps the intake rule (rows first, committed, then the message): a claimed
row's document is dispatched through the Dispatcher port after its status is
committed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.app import stages
from pipeline.domain.models import (
    QueueStatus,
    SourceDocument,
    Stage,
    Status,
    progress_rank,
)
from pipeline.errors import TransientError
from pipeline.ports import QueueEntry
from pipeline.ports.services import Services
from pipeline.redaction import redact

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


@dataclass
class QueueBatch:
    """What one claim-and-dispatch cycle did, per document uuid."""

    claimed: list[str] = field(default_factory=list)
    #: Sent to the `ocr` queue (rows first, then the message).
    dispatched: list[str] = field(default_factory=list)
    #: Queue rows closed without a dispatch: the document had already finished.
    closed: dict[str, str] = field(default_factory=dict)
    #: Already past `ocr_queued`: a stage owns it; the row stays open until it finishes.
    in_flight: list[str] = field(default_factory=list)
    #: In flight but without progress for longer than the stale window: the message
    #: carrying it was lost (e.g. a broker restart); its current stage was sent again.
    resumed: dict[str, str] = field(default_factory=dict)
    #: Dispatch failed; the row stays claimed and is retried once its claim goes stale.
    errors: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "claimed": list(self.claimed),
            "dispatched": list(self.dispatched),
            "closed": dict(self.closed),
            "in_flight": list(self.in_flight),
            "resumed": dict(self.resumed),
            "errors": dict(self.errors),
        }


def process_queue_once(services: Services, worker: str, batch: int) -> list[str]:
    """Claim up to `batch` pending (or stale) queue rows and dispatch them; returns uuids sent."""
    return process_queue_batch(services, worker, batch).dispatched


def process_queue_batch(services: Services, worker: str, batch: int) -> QueueBatch:
    """`process_queue_once` with the full account of what happened to each claimed row.

    A claimed document that is `pending` or `ocr_queued` (its previous
    dispatcher died before or after sending) is dispatched; one already
    finished gets its row closed as completed or failed; one a stage is
    working on is left alone (the pipeline closes its row), unless it showed
    no progress for `queue_stale_after_s`: then the message carrying it is
    presumed lost and its current stage is sent again (stages are
    idempotent, and a duplicate finds the stage's lock or the status moved
    on). A dispatch that
    fails leaves the row claimed, so it is retried when the claim goes stale;
    on the last allowed attempt the document is failed (`ocr_failed`) with
    the reason, so it shows up for `reset --failed`.
    """
    settings = services.settings
    entries = services.store.claim(
        worker, batch, settings.queue_stale_after_s, settings.queue_max_attempts
    )
    result = QueueBatch(claimed=[entry.document_uuid for entry in entries])
    for entry in entries:
        _handle_claimed(services, entry, result)
    return result


def _handle_claimed(services: Services, entry: QueueEntry, result: QueueBatch) -> None:
    document_uuid = entry.document_uuid
    store = services.store
    try:
        document = store.get_document(document_uuid)
    except KeyError:
        store.finish_queue_entry(document_uuid, QueueStatus.FAILED, "document no longer exists")
        result.closed[document_uuid] = str(QueueStatus.FAILED)
        return
    if document.status is Status.COMPLETED:
        store.finish_queue_entry(document_uuid, QueueStatus.COMPLETED)
        result.closed[document_uuid] = str(QueueStatus.COMPLETED)
        return
    if document.status.is_failure:
        store.finish_queue_entry(
            document_uuid, QueueStatus.FAILED, document.error_message or str(document.status)
        )
        result.closed[document_uuid] = str(QueueStatus.FAILED)
        return
    if progress_rank(document.status) > progress_rank(Status.OCR_QUEUED):
        idle_s = services.clock.now() - store.last_activity(document_uuid)
        if idle_s < services.settings.queue_stale_after_s:
            store.keep_claim(entry.uuid)
            result.in_flight.append(document_uuid)
            return
        stage = RESUME_STAGE[document.status]
        log.warning(
            "queue: %s is %s with no progress for %.0f s; sending %s again",
            document_uuid,
            document.status,
            idle_s,
            stage,
        )
        try:
            services.dispatcher.send_stage(stage, document_uuid, document.processing_version)
        except Exception as exc:  # broker down: the claim goes stale and this runs again
            result.errors[document_uuid] = redact(f"could not resume: {exc}")[:2000]
            return
        result.resumed[document_uuid] = str(stage)
        return
    try:
        _dispatch(services, document)
    except Exception as exc:  # broker or database down: keep the claim, retry when stale
        reason = redact(f"could not dispatch: {type(exc).__name__}: {exc}")[:2000]
        log.warning("queue: %s %s (attempt %d)", document_uuid, reason, entry.attempts)
        result.errors[document_uuid] = reason
        if entry.attempts >= services.settings.queue_max_attempts:
            give_up(services, document_uuid, reason)
        return
    result.dispatched.append(document_uuid)


#: The stage to send again for a document stuck in a running status. A document in
#: `text_processing` restarts at the document node (chunking follows it).
RESUME_STAGE: dict[Status, Stage] = {
    Status.OCR_PROCESSING: Stage.OCR,
    Status.OCR_COMPLETE: Stage.DOCUMENT_NODE,
    Status.TEXT_PROCESSING: Stage.DOCUMENT_NODE,
    Status.ENTITY_EXTRACTION: Stage.ENTITY_EXTRACTION,
    Status.ENTITY_RESOLUTION: Stage.ENTITY_RESOLUTION,
    Status.GRAPH_BUILDING: Stage.RELATIONSHIPS,
}


def _dispatch(services: Services, document: SourceDocument) -> None:
    task_id = stages.dispatch(services, document.uuid)
    if document.status is Status.OCR_QUEUED:
        # A re-dispatch after a stale claim: `ocr_queued` was already committed
        # (with the lost task's id), so only the new task id is recorded.
        services.store.set_task_id(document.uuid, task_id)


def give_up(services: Services, document_uuid: str, reason: str) -> None:
    """The last allowed dispatch failed: the document fails (`ocr_failed`) with the reason."""
    try:
        document = services.store.get_document(document_uuid)
        stages.fail(
            services,
            document_uuid,
            document.processing_version,
            Stage.OCR,
            Status.OCR_FAILED,
            f"{Stage.OCR}: {reason}",
        )
        services.store.finish_queue_entry(document_uuid, QueueStatus.FAILED, reason)
    except Exception as exc:  # still down: the claim fails the row after max attempts
        log.warning("queue: could not record the failure of %s: %s", document_uuid, exc)


def run_queue_processor(
    services: Services,
    worker: str,
    batch: int,
    interval_s: float,
    stop: threading.Event,
    max_idle_cycles: int | None = None,
) -> list[str]:
    """Claim and dispatch until `stop` is set (or `max_idle_cycles` cycles in a row claim nothing).

    A full batch is followed at once by the next claim; otherwise the loop
    waits `interval_s`. A database that is briefly unreachable is logged and
    retried on the next cycle. Returns every uuid dispatched.
    """
    dispatched: list[str] = []
    idle = 0
    while not stop.is_set():
        try:
            outcome = process_queue_batch(services, worker, batch)
        except TransientError as exc:
            log.warning("queue: %s; retrying in %.1fs", redact(str(exc)), interval_s)
            outcome = QueueBatch()
        dispatched.extend(outcome.dispatched)
        if outcome.claimed:
            log.info(
                "queue: %s claimed %d, dispatched %d, closed %d, in flight %d, resumed %d, "
                "errors %d",
                worker,
                len(outcome.claimed),
                len(outcome.dispatched),
                len(outcome.closed),
                len(outcome.in_flight),
                len(outcome.resumed),
                len(outcome.errors),
            )
        idle = 0 if outcome.claimed else idle + 1
        if max_idle_cycles is not None and idle >= max_idle_cycles:
            break
        if len(outcome.claimed) < batch:
            stop.wait(interval_s)
    return dispatched
