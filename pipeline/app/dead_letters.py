"""Dead letters: list, replay (back to the stage that gave up, history kept) and purge."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pipeline.domain.models import Stage
from pipeline.ports.services import Services

log = logging.getLogger(__name__)


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

    For each document with a dead letter (all, or the given ones) that is still
    `dead_lettered`, one transaction (`replay_dead_letter`) moves it back to that
    stage's running status in the *same* processing version (the stage's rows
    before it are kept), removes its dead letters and gives it an open queue row;
    then the stage's task is sent. Should the send fail (or the command die before
    it), the document waits at that status like any whose message was lost, and
    `docpipe queue-processor` sends the stage again once it has shown no progress for
    DOCPIPE_QUEUE_STALE_AFTER_S. A letter whose document has moved on (reset, reprocessed)
    is left in place and not replayed; a letter of a deleted document is removed.
    Returns the uuids replayed.
    """
    store = services.store
    wanted = None if document_uuids is None else set(document_uuids)
    candidates = dict.fromkeys(
        str(letter["document_uuid"])
        for letter in store.dead_letters()
        if wanted is None or str(letter["document_uuid"]) in wanted
    )
    replayed: list[str] = []
    for document_uuid in candidates:
        replay = store.replay_dead_letter(document_uuid)
        if replay is None:
            log.warning("dlq: %s is not dead_lettered (or gone); not replayed", document_uuid)
            continue
        version = replay.document.processing_version
        services.dispatcher.send_stage(Stage(replay.stage), document_uuid, version)
        replayed.append(document_uuid)
    return replayed


def dlq_purge(services: Services, document_uuids: Sequence[str] | None = None) -> int:
    """Delete dead letters (all, or the given documents'); documents keep their status."""
    return services.store.remove_dead_letters(
        None if document_uuids is None else list(document_uuids)
    )
