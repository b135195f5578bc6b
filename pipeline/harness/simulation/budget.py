"""The retry budget as an invariant: judged on what the stages reported, not on the policy.

pipeline.app.policy decides; this module checks its decisions afterwards
against the attempts the simulator saw (`real.Attempt`): which made durable
progress is the stage code's own report. The budget (issue 11.2): a chain of
attempts of one task (retries and redeliveries keep the task id) is
dead-lettered only after `max_retries + 1` attempts in a row without
progress, or at the ceiling of `max_task_attempts`; and it never runs more
attempts than that. A redelivery (a killed worker's message, or one restored
after the visibility timeout) is the same attempt delivered again, not a
retry: `max_redeliveries` bounds those. So is the run that follows a verdict
the database refused to record (result "unrecorded": the task layer's
`_retry_recording`): the retry keeps the message's count, re-runs the
idempotent stage and reaches the verdict again (or finds the document carried
on by a duplicate); `max_task_attempts` bounds those. An attempt that
succeeded ends a run without progress: a later attempt of the same task id is
a duplicate message (a redelivered attempt that published its retry too), not
a retry of a failure. A delivery that starts after the chain's dead letter
(a copy a visibility-timeout restore made of an attempt still hanging, and
the retry that copy publishes) finds the document ended: it is no verdict on
its attempt, whose deliveries before the dead letter judge it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline.harness.simulation.real import Attempt
from pipeline.settings import Settings


@dataclass(frozen=True)
class BudgetProblem:
    doc: int
    task: str
    what: str

    def describe(self, names: Mapping[int, str]) -> str:
        return f"{names.get(self.doc, f'document {self.doc}')} {self.task}: {self.what}"


def retry_budget_problems(attempts: Sequence[Attempt], settings: Settings) -> list[BudgetProblem]:
    chains: dict[str, list[Attempt]] = {}
    for attempt in attempts:
        chains.setdefault(attempt.task_id, []).append(attempt)
    problems: list[BudgetProblem] = []
    for chain in chains.values():
        first = chain[0]
        # Deliveries of one attempt (same retry number): the original and its redeliveries
        # (a killed worker, a visibility-timeout restore); the policy counts attempts.
        deliveries: dict[int, list[Attempt]] = {}
        for attempt in chain:
            deliveries.setdefault(attempt.retries, []).append(attempt)
        for retries, same in deliveries.items():
            if len(same) > settings.max_redeliveries + 1:
                problems.append(
                    BudgetProblem(
                        first.doc,
                        first.task,
                        f"attempt {retries + 1} delivered {len(same)} times "
                        f"(max_redeliveries {settings.max_redeliveries})",
                    )
                )
        # One entry per attempt: the delivery whose outcome the policy judged (`_verdict`, of
        # those not lost with their worker, up to the dead letter); its message carried the count of
        # attempts without progress, so a killed delivery's progress is not that attempt's.
        # Deliveries after the dead letter (the log is in order of start) found the document
        # ended: a hung delivery's restored copy and its retry, whose "ok" (skipped) would
        # otherwise stand for an attempt that ran without progress before the dead letter
        # (explore, seed 1, schedule 807).
        ended = next((i for i, a in enumerate(chain) if a.result == "dead_letter"), len(chain))
        judged_by_retries: dict[int, list[Attempt]] = {}
        for attempt in chain[: ended + 1]:
            if attempt.result != "killed":
                judged_by_retries.setdefault(attempt.retries, []).append(attempt)
        tries = [_verdict(same) for same in judged_by_retries.values()]
        if not tries:
            continue
        # The ceiling counts every attempt run, after the dead letter too.
        attempted = len({a.retries for a in chain if a.result != "killed"})
        if attempted > settings.max_task_attempts:
            problems.append(
                BudgetProblem(
                    first.doc,
                    first.task,
                    f"{attempted} attempts (max_task_attempts {settings.max_task_attempts})",
                )
            )
        longest = run = 0
        # Attempts up to the dead letter, and the run without progress it ended: judged where
        # it stands, since a copy's later attempts may have run before it (schedule 2826).
        dead_letter: tuple[int, int] | None = None
        for count, (progressed, result) in enumerate(tries, 1):
            if result == "unrecorded":
                continue  # the same attempt again: the next run judges it
            run = 0 if progressed or result == "ok" else run + 1
            longest = max(longest, run)
            if result == "dead_letter":
                dead_letter = (count, run)
        if longest > settings.max_retries + 1:
            problems.append(
                BudgetProblem(
                    first.doc,
                    first.task,
                    f"{longest} attempts in a row without progress "
                    f"(max_retries {settings.max_retries} allows {settings.max_retries + 1})",
                )
            )
        if dead_letter is None:
            continue
        count, run = dead_letter
        if run <= settings.max_retries and count < settings.max_task_attempts:
            problems.append(
                BudgetProblem(
                    first.doc,
                    first.task,
                    f"dead-lettered after {count} attempts, the last {run} without "
                    f"progress (max_retries {settings.max_retries} allows "
                    f"{settings.max_retries + 1} in a row, max_task_attempts "
                    f"{settings.max_task_attempts} in all)",
                )
            )
    return problems


#: Results of a delivery that published its attempt's successor (a retry, or the same attempt
#: again when its verdict could not be recorded): that message carried its count.
_PUBLISHED_NEXT = ("retry", "unrecorded")


def _verdict(same: Sequence[Attempt]) -> tuple[bool, str]:
    """(progressed, result) of the delivery that judged one attempt for the chain.

    Its dead letter, if one of its deliveries recorded it. Else the delivery that
    published the next attempt, when one did: the next attempt's message carries
    that delivery's count of attempts without progress. A restored copy of the same
    attempt that succeeded meanwhile carried the document on along another path,
    which the count cannot know of (explore --seed 1, schedule 778: the copy started
    the OCR job, the failed delivery's retry failed again and was dead-lettered after
    2 attempts without progress, as max_retries 1 allows). Else the last delivery.

    Progress counts if any delivery of the attempt that the policy judged (a retry, a
    verdict not recorded, a dead letter) made it: the task layer shares the progress of
    failing deliveries between the chains of one task id (`with_siblings_progress`), so
    two copies of one attempt that each published a retry do not count apart (explore
    --seed 2026128, schedule 316).
    """
    dead_letters = [a for a in same if a.result == "dead_letter"]
    published = [a for a in same if a.result in _PUBLISHED_NEXT]
    judged = (dead_letters or published or list(same))[-1]
    shared = any(a.progressed for a in (*dead_letters, *published))
    return judged.progressed or shared, judged.result
