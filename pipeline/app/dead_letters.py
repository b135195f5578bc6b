"""Dead letters: list, replay (back to the stage that gave up, history kept) and purge."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipeline.domain.models import (
    Stage,
    Status,
)
from pipeline.ports.services import Services

if TYPE_CHECKING:
    pass

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
