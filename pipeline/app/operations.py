"""Operator use cases over `Services`: the queue processor, migration, reset, dead letters.

No click here: `pipeline.cli.ops` wraps these for the CLI, tests call them
directly. Every use case keeps the intake rule (rows first, committed, then
the message) and leans on the processing version: a reset bumps it, so a
stale in-flight task of the old version finds nothing to do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.app import stages
from pipeline.domain.models import (
    FAILURE_STATUSES,
    QUEUES,
    RESUMABLE_STATUSES,
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
    from celery import Celery

log = logging.getLogger(__name__)

_OPEN_QUEUE_STATUSES = frozenset({QueueStatus.PENDING, QueueStatus.PROCESSING})


# --- the queue processor (plan step 4, corrected) ------------------------------------


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
            _give_up(services, document_uuid, reason)
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


def _give_up(services: Services, document_uuid: str, reason: str) -> None:
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


# --- migration (plan step 7, corrected) -------------------------------------------------


def migrate(services: Services, *, dry_run: bool = False) -> list[str]:
    """Re-queue documents the old pipeline left in a resumable status; idempotent.

    `pending` documents just get an open queue row (if they have none);
    `ocr_processing` and `ocr_failed` ones are presumed abandoned (run this
    with the workers stopped): they go back to `pending` in a new processing
    version, lose their derived rows and their open queue row, and get a
    fresh one. Nothing is sent: the queue processor dispatches them. Returns
    the uuids it changed (a second run returns none).
    """
    store = services.store
    touched: list[str] = []
    for document in store.list_documents(sorted(RESUMABLE_STATUSES)):
        has_open_row = _has_open_row(services, document.uuid)
        if document.status is Status.PENDING and has_open_row:
            continue
        touched.append(document.uuid)
        if dry_run:
            continue
        if document.status is not Status.PENDING:
            stages.back_to_pending(services, document.uuid, stage="migrate")
        store.enqueue(document.uuid)
    return touched


def _has_open_row(services: Services, document_uuid: str) -> bool:
    return any(
        entry.status in _OPEN_QUEUE_STATUSES
        for entry in services.store.queue_entries(document_uuid)
    )


# --- reset (the plan's rollback script) --------------------------------------------------


def reset(
    services: Services, document_uuids: Sequence[str] | None = None, *, failed: bool = False
) -> list[str]:
    """Put documents back to `pending` in a new processing version and queue them afresh.

    Either the given documents (any status; an unknown uuid raises KeyError
    before anything changes) or, with `failed=True`, every document in a
    failure status (including `dead_lettered`). Derived rows, open queue rows
    and dead letters of those documents are removed; each gets one fresh
    pending queue row for the queue processor. Returns the uuids reset.
    """
    store = services.store
    if (document_uuids is None) == (not failed):
        raise ValueError("reset needs either document uuids or failed=True, not both")
    if failed:
        targets = [d.uuid for d in store.list_documents(sorted(FAILURE_STATUSES))]
    else:
        targets = list(dict.fromkeys(document_uuids or ()))
        for document_uuid in targets:
            store.get_document(document_uuid)  # KeyError before any change
    for document_uuid in targets:
        stages.back_to_pending(services, document_uuid, stage="reset")
        store.enqueue(document_uuid)
    return targets


# --- dead letters ------------------------------------------------------------------------


def dlq_list(services: Services) -> list[dict[str, object]]:
    """Dead letters, newest first, each with the document's current status."""
    letters = services.store.dead_letters()
    listed: list[dict[str, object]] = []
    for letter in letters:
        row = dict(letter)
        try:
            document = services.store.get_document(str(letter["document_uuid"]))
            row["file"] = document.original_file_name
            row["status"] = str(document.status)
        except KeyError:
            row["file"] = None
            row["status"] = None
        listed.append(row)
    return listed


def dlq_replay(services: Services, document_uuids: Sequence[str] | None = None) -> list[str]:
    """Send dead-lettered documents back into the stage that gave up on them.

    For each document with a dead letter (all, or the given ones) that is
    still `dead_lettered`: its status goes back to that stage's running
    status in the *same* processing version (the stage's rows before it are
    kept), the dead letter is removed, then the stage's task is sent. A
    letter whose document has moved on (reset, reprocessed) is left in place
    and not replayed; a letter of a deleted document is removed. Returns the
    uuids replayed.
    """
    store = services.store
    wanted = None if document_uuids is None else set(document_uuids)
    newest: dict[str, dict[str, object]] = {}
    for letter in store.dead_letters():  # newest first: keep the latest per document
        document_uuid = str(letter["document_uuid"])
        if wanted is None or document_uuid in wanted:
            newest.setdefault(document_uuid, letter)
    replayed: list[str] = []
    for document_uuid, letter in newest.items():
        try:
            document = store.get_document(document_uuid)
        except KeyError:
            store.remove_dead_letters([document_uuid])
            continue
        if document.status is not Status.DEAD_LETTERED:
            log.warning(
                "dlq: %s is %s, not dead_lettered; not replayed", document_uuid, document.status
            )
            continue
        stage = Stage(str(letter["stage"]))
        # The dead letter's row makes way for the replay's (so a second one can be
        # recorded); the replay row keeps what it said.
        document = store.force_status(
            document_uuid,
            stage.running_status,
            stage=f"{stage} (dlq replay)",
            bump_version=False,
            note=f"replays the dead letter of {letter['created_at']}: {letter['error']}",
            supersedes=[Status.DEAD_LETTERED],
        )
        store.remove_dead_letters([document_uuid])
        services.dispatcher.send_stage(stage, document_uuid, document.processing_version)
        replayed.append(document_uuid)
    return replayed


def dlq_purge(services: Services, document_uuids: Sequence[str] | None = None) -> int:
    """Delete dead letters (all, or the given documents'); documents keep their status."""
    return services.store.remove_dead_letters(
        None if document_uuids is None else list(document_uuids)
    )


# --- the broker ------------------------------------------------------------------------


def purge_queues(app: Celery) -> dict[str, int]:
    """Delete every waiting message of the docpipe queues; returns the count per queue.

    Not `app.control.purge()`: that only purges the queues the app declares
    (the default one), not all four. Messages a worker had already reserved
    (unacked) are not waiting and are not purged; a reset bumps the documents'
    processing version so those become no-ops when redelivered.
    """
    counts: dict[str, int] = {}
    with app.connection_for_write() as connection:
        # kombu's stubs type the channel as StdChannel, which lacks queue_purge.
        channel: Any = connection.default_channel
        for name in QUEUES:
            if connection.transport.driver_type == "amqp":
                # RabbitMQ refuses to purge a queue nobody declared yet (NOT_FOUND, and
                # the channel is closed): declare it first, with the app's arguments.
                app.amqp.queues[name](channel).declare()
            counts[name] = int(channel.queue_purge(name) or 0)
    return counts
