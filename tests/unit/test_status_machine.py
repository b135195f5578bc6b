"""The status machine (pipeline/domain/status.py) that every store adapter applies.

Failures are terminal too: only an operator's reset, replay or reprocess moves a
failed document (force_status), never a stage.
"""

from __future__ import annotations

import pytest

from pipeline.domain.models import PROGRESS_ORDER, Status, progress_rank
from pipeline.domain.status import allowed_predecessors, may_advance


def test_the_happy_path_only_moves_forward() -> None:
    assert may_advance(Status.PENDING, Status.OCR_QUEUED)
    assert may_advance(Status.OCR_QUEUED, Status.TEXT_PROCESSING)  # skipping ahead is allowed
    assert not may_advance(Status.ENTITY_EXTRACTION, Status.TEXT_PROCESSING)
    assert not may_advance(Status.TEXT_PROCESSING, Status.TEXT_PROCESSING)


def test_a_failure_may_follow_any_status_that_is_not_terminal() -> None:
    for status in PROGRESS_ORDER[:-1]:
        assert may_advance(status, Status.ENTITY_FAILED)


def test_nothing_follows_a_terminal_status() -> None:
    terminal = [s for s in Status if s.is_terminal]
    assert Status.COMPLETED in terminal
    for target in Status:
        assert not set(terminal) & set(allowed_predecessors(target))


def test_progress_rank_is_the_place_on_the_happy_path_and_terminal_ranks_last() -> None:
    for index, status in enumerate(PROGRESS_ORDER[:-1]):
        assert progress_rank(status) == index
        assert progress_rank(str(status)) == index  # type: ignore[arg-type]  # a stored value
    for status in Status:
        if status.is_terminal:
            assert progress_rank(status) == len(PROGRESS_ORDER)
    with pytest.raises(ValueError, match="no place"):
        progress_rank("archived")  # type: ignore[arg-type]
