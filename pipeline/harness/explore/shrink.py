"""Shrink a failing schedule to a minimal one that fails the same invariant.

A hand-written greedy delta-debugging pass (Zeller's ddmin with chunks of
one, which suits lists of a few documents and faults) run to a fixpoint:
drop documents, drop faults and disruptions, drop settings, then make each
fault simpler (no window, an earlier and shorter window, no document
filter, no operation, fewer firings, shorter latencies) and each
disruption earlier and shorter. Every candidate is a scenario mapping run
in sim mode; it is kept when it still violates the same invariant. The
simulator is deterministic, so a kept candidate fails again on replay.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.harness.scenarios.model import matches

Schedule = dict[str, Any]


def _document_names(schedule: Schedule) -> list[str]:
    return [Path(spec["files"][0]).name for spec in schedule["documents"]]


def _without_document(schedule: Schedule, index: int) -> Schedule:
    candidate = copy.deepcopy(schedule)
    del candidate["documents"][index]
    names = _document_names(candidate)
    kept = []
    for fault in candidate.get("faults", []):
        patterns = fault.get("documents")
        if patterns and not any(matches(name, patterns) for name in names):
            continue  # it targeted only the removed document
        kept.append(fault)
    candidate["faults"] = kept
    return candidate


def _simpler_faults(fault: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Simpler variants of one fault, the boldest first."""

    def variant(**changes: Any) -> dict[str, Any]:
        out = {k: v for k, v in fault.items() if k not in changes or changes[k] is not None}
        out.update({k: v for k, v in changes.items() if v is not None})
        return out

    if "window" in fault:
        start, end = fault["window"]
        yield {k: v for k, v in fault.items() if k != "window"}
        if start > 0:
            yield variant(window=[0.0, round(end - start, 1)])
        if end - start > 0.2:
            yield variant(window=[start, round(start + (end - start) / 2, 1)])
    if "documents" in fault:
        yield {k: v for k, v in fault.items() if k != "documents"}
    if "operation" in fault:
        yield {k: v for k, v in fault.items() if k != "operation"}
    if "retry_after_s" in fault:
        yield {k: v for k, v in fault.items() if k != "retry_after_s"}
    if fault.get("first", 1) > 1:
        yield variant(first=1)
    if "every" in fault or "probability" in fault:
        # The deterministic trigger: the first N calls instead of a rate.
        for n in (1, 2, 3):
            yield {k: v for k, v in fault.items() if k not in ("every", "probability")} | {
                "first": n
            }
    if fault.get("latency_s", 0) > 0.2 and fault["kind"] in ("latency", "timeout"):
        yield variant(latency_s=round(fault["latency_s"] / 2, 1))


def _removals(schedule: Schedule) -> Iterator[Callable[[Schedule], Schedule | None]]:
    """One-step removals, each a function of the current schedule (None: not applicable)."""

    def without_document(index: int) -> Callable[[Schedule], Schedule | None]:
        def step(current: Schedule) -> Schedule | None:
            if len(current["documents"]) <= 1 or index >= len(current["documents"]):
                return None
            return _without_document(current, index)

        return step

    def without(key: str, index: int) -> Callable[[Schedule], Schedule | None]:
        def step(current: Schedule) -> Schedule | None:
            if index >= len(current.get(key, [])):
                return None
            candidate = copy.deepcopy(current)
            del candidate[key][index]
            return candidate

        return step

    for index in reversed(range(len(schedule["documents"]))):
        yield without_document(index)
    for key in ("faults", "disruptions"):
        # A probabilistic fault's draws are seeded by what it is, not by its place in the
        # list (fakes.faults.rule_identities): removing one leaves the others' draws alone.
        for index in reversed(range(len(schedule.get(key, [])))):
            yield without(key, index)


def _setting_removals(schedule: Schedule) -> Iterator[Schedule]:
    settings = schedule.get("settings") or {}
    if settings:
        candidate = copy.deepcopy(schedule)
        del candidate["settings"]
        yield candidate
        for name in settings:
            candidate = copy.deepcopy(schedule)
            del candidate["settings"][name]
            if not candidate["settings"]:
                del candidate["settings"]
            yield candidate


def _simplifications(schedule: Schedule, key: str, index: int) -> Iterator[Schedule]:
    item = schedule[key][index]
    if key == "faults":
        variants = list(_simpler_faults(item))
    else:
        variants = [
            item | changes
            for changes in (
                {"at_s": 0.0},
                {"at_s": round(item["at_s"] / 2, 1)},
                {"down_s": round(max(item["down_s"] / 2, 0.1), 1)},
            )
            if any(item[k] != v for k, v in changes.items())
        ]
    for variant in variants:
        candidate = copy.deepcopy(schedule)
        candidate[key][index] = variant
        yield candidate


def size(schedule: Schedule) -> tuple[int, int]:
    """(documents, faults + disruptions): what the report calls a file's size."""
    faults = len(schedule.get("faults", [])) + len(schedule.get("disruptions", []))
    return len(schedule["documents"]), faults


def shrink(
    schedule: Schedule,
    still_fails: Callable[[Schedule], bool],
    *,
    max_runs: int = 200,
    valid: Callable[[Schedule], bool] = lambda _: True,
) -> tuple[Schedule, int]:
    """The smallest schedule found that still fails, and how many candidate runs it took.

    Passes over removals (documents, faults, disruptions), settings, and
    per-item simplifications, each keeping every step that still fails, repeated
    until a whole round keeps nothing (or `max_runs` candidates ran). A candidate
    that is not `valid` (settings that contradict each other once one is dropped:
    a soft time limit left above the hard one) is neither run nor kept.
    """
    current = copy.deepcopy(schedule)
    runs = 0

    def attempt(candidate: Schedule | None) -> bool:
        nonlocal current, runs
        if candidate is None or candidate == current or runs >= max_runs:
            return False
        if not valid(candidate):
            return False
        runs += 1
        if still_fails(candidate):
            current = candidate
            return True
        return False

    improved = True
    while improved and runs < max_runs:
        improved = False
        for step in list(_removals(current)):
            improved |= attempt(step(current))
        for candidate in list(_setting_removals(current)):
            if attempt(candidate):
                improved = True
                break  # the other removals were of the settings as they were
        for key in ("faults", "disruptions"):
            for index in range(len(current.get(key, []))):
                simpler = True
                while simpler and runs < max_runs:
                    simpler = False
                    for candidate in _simplifications(current, key, index):
                        if attempt(candidate):
                            improved = simpler = True
                            break  # simplify the simpler one further
    return current, runs
