"""Operator use cases: migration of the old system's documents (plan step 7, corrected)
and reset (the plan's rollback script).

Both lean on the processing version: a reset bumps it, so a stale in-flight
task of the old version finds nothing to do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipeline.domain.models import (
    FAILURE_STATUSES,
    RESUMABLE_STATUSES,
    QueueStatus,
    Status,
)
from pipeline.ports.services import Services

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

_OPEN_QUEUE_STATUSES = frozenset({QueueStatus.PENDING, QueueStatus.PROCESSING})


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
        if document.status is Status.PENDING:
            store.enqueue(document.uuid)
        else:
            store.requeue_new_version(document.uuid, stage="migrate")
    return touched


def _has_open_row(services: Services, document_uuid: str) -> bool:
    return any(
        entry.status in _OPEN_QUEUE_STATUSES
        for entry in services.store.queue_entries(document_uuid)
    )


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
        store.requeue_new_version(document_uuid, stage="reset")
    return targets
