"""The document status machine: which status may follow which.

On the happy path a document only moves forward (PROGRESS_ORDER); a failure
status may follow any status that is not terminal; nothing follows a terminal
status except an operator's reset, replay or reprocess (`force_status`).
"""

from __future__ import annotations

from functools import cache

from pipeline.domain.models import PROGRESS_ORDER, TERMINAL_STATUSES, Status, progress_rank


@cache  # a handful of statuses, asked on every status transition
def allowed_predecessors(status: Status) -> tuple[Status, ...]:
    """Current statuses a document may advance from to reach `status`."""
    if status.is_failure:
        return tuple(s for s in Status if s not in TERMINAL_STATUSES)
    rank = progress_rank(status)
    return tuple(
        s for s in PROGRESS_ORDER if s not in TERMINAL_STATUSES and progress_rank(s) < rank
    )


def may_advance(current: Status, target: Status) -> bool:
    """Whether `advance_status` moves a document at `current` to `target`."""
    return current in allowed_predecessors(target)
