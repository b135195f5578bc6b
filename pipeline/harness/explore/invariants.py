"""What every explored run must satisfy, judged on a scenario run's report.

Most invariants are the scenario runner's own, checked on every scenario run
(nothing lost, duplicated or stuck; referential integrity; every failure has
a reason; the retry budget in sim mode), so a shrunk file replays them with
`docpipe scenario run`. Exactly-once effects need a reference: a completed
document's derived rows must equal those of a fault-free run of the same
file (StageExecutor.rows_digest's counts); a shrunk file carries that
reference as per-document expectations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.harness.scenarios.runner import RunReport

#: The runner invariant that is the fixed scenarios' business, not explore's (generated
#: faults are declared `fired: {min: 0}`, so it holds anyway).
NOT_EXPLORED = frozenset({"fault coverage"})
EXACTLY_ONCE = "exactly-once effects"
CRASH = "run crashed"
SCENARIO_ERROR = "scenario error"
#: Not an invariant: a schedule whose faults kept its documents out of the intake on every
#: attempt ran nothing to judge (counted apart, never a finding).
INFEASIBLE = "infeasible"

#: The row counts compared with the fault-free run.
ROWS = ("chunks", "mentions", "entities", "relationships")


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str


def failure_kind(violation: Violation) -> str:
    """What makes two violations of one invariant the same failure, for the shrinker.

    A scenario error is one of many (invalid settings, a run that never ended...):
    its kind is the message's first clause, after the file name the runner puts
    first. A crash is its exception type where it was raised. The other
    invariants' details measure the run (which documents, how many), which a
    smaller schedule changes: the invariant is the kind.
    """
    if violation.invariant == SCENARIO_ERROR:
        message = re.sub(r"^\S+\.ya?ml: ", "", violation.detail)
        return message.split(":", 1)[0]
    if violation.invariant == CRASH:
        kind = violation.detail.split(":", 1)[0]
        where = re.search(r"\(at ([^()]+)\)$", violation.detail)
        return f"{kind} at {where.group(1)}" if where else kind
    return ""


def fails_the_same_way(found: list[Violation], violation: Violation) -> bool:
    """Whether a candidate's violations include `violation`'s: same invariant, same kind."""
    kind = failure_kind(violation)
    return any(v.invariant == violation.invariant and failure_kind(v) == kind for v in found)


def reference_rows(report: RunReport) -> dict[str, dict[str, int]]:
    """Per file name, the rows of a fault-free run (the reference of exactly-once effects)."""
    return {
        outcome.name: {row: int(getattr(outcome, row)) for row in ROWS}
        for outcome in report.documents
        if outcome.status == "completed"
    }


def violations(report: RunReport, reference: dict[str, dict[str, int]]) -> list[Violation]:
    found: list[Violation] = []
    if report.intake_failed:
        return [Violation(INFEASIBLE, report.error or "")]
    if report.error:
        found.append(Violation(SCENARIO_ERROR, report.error))
    for check in report.checks:
        if check.kind == "invariant" and not check.passed and check.name not in NOT_EXPLORED:
            found.append(Violation(check.name, check.measured))
    differing = []
    for outcome in report.documents:
        expected = reference.get(outcome.name)
        if outcome.status != "completed" or expected is None:
            continue
        measured = {row: int(getattr(outcome, row)) for row in ROWS}
        if measured != expected:
            rows = ", ".join(
                f"{row} {measured[row]} (fault-free {expected[row]})"
                for row in ROWS
                if measured[row] != expected[row]
            )
            differing.append(f"{outcome.name}: {rows}")
    if differing:
        found.append(Violation(EXACTLY_ONCE, "; ".join(differing)))
    return found
