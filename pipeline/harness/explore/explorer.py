"""`docpipe explore`: random fault schedules in sim mode, invariants, shrunk findings.

Determinism and the time budget: schedule i of seed s is a function of (s, i)
alone (generate.schedule_rng) and its sim run is deterministic, so what a run
finds is a function of the seed and of how many schedules it ran. `--schedules
N` runs exactly schedules 0..N-1 (exact reproducibility); `--budget SECONDS`
is a cap on exploration time: it runs schedules 0, 1, 2... until the time is
up (a schedule still running then is cut off and not counted), and reports how
many it ran (`schedules`), which `--schedules` repeats;
`--only I` runs schedule I alone (as it ran among the others: a finding's index).
Schedules run on `jobs` processes but are judged in index order, and only the
first schedule that violates an invariant is shrunk (the others are counted),
so the findings do not depend on which process finished first. Shrinking
comes after exploration, bounded by `shrink_runs` candidate runs per finding.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import time
import traceback
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.harness.explore.catalogue import Catalogue, declared_modes, sim_catalogue
from pipeline.harness.explore.generate import generate_schedule
from pipeline.harness.explore.invariants import (
    CRASH,
    EXACTLY_ONCE,
    INFEASIBLE,
    SCENARIO_ERROR,
    Violation,
    fails_the_same_way,
    reference_rows,
    violations,
)
from pipeline.harness.explore.shrink import Schedule, shrink, size
from pipeline.harness.scenarios.model import ScenarioError, load_scenario, parse_scenario
from pipeline.harness.scenarios.runner import RunReport, run_scenario
from pipeline.settings import settings_over_environment


@dataclass(frozen=True)
class ScheduleResult:
    """What one schedule's run showed (small: it crosses process boundaries)."""

    index: int
    violations: tuple[Violation, ...]
    #: "port.kind" of every declared fault that fired, with how often.
    fired: tuple[tuple[str, int], ...]


@dataclass
class Finding:
    invariant: str
    detail: str
    schedule_index: int
    original_size: tuple[int, int]
    scenario_file: str | None = None
    shrunk_size: tuple[int, int] | None = None
    shrink_runs: int = 0
    #: The written file fails `docpipe scenario run FILE --mode sim` the same way.
    replay_reproduced: bool | None = None
    replay_detail: str = ""
    replay_command: str = ""
    #: --replay-broker: whether real workers fail the file too (None: not run or skipped).
    broker_agrees: bool | None = None
    broker_detail: str = ""
    #: Later schedules that violated the same invariant (not shrunk).
    also_in: list[int] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario_file": self.scenario_file,
            "invariant": self.invariant,
            "detail": self.detail,
            "schedule": self.schedule_index,
            "original_size": {"documents": self.original_size[0], "faults": self.original_size[1]},
            "shrunk_size": (
                {"documents": self.shrunk_size[0], "faults": self.shrunk_size[1]}
                if self.shrunk_size
                else None
            ),
            "shrink_runs": self.shrink_runs,
            "replay_reproduced": self.replay_reproduced,
            "replay": self.replay_command,
            "broker_agrees": self.broker_agrees,
            "broker_detail": self.broker_detail,
            "also_in_schedules": self.also_in,
        }


@dataclass
class ExploreResult:
    seed: int
    elapsed_s: float
    schedules: int
    fired: Counter[str]
    findings: list[Finding]
    catalogue: list[str]
    #: Schedules whose faults kept a document out of every intake attempt: nothing to judge.
    infeasible: list[int] = field(default_factory=list)

    def ports_fired(self) -> list[str]:
        return sorted(self.fired)

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "elapsed_s": round(self.elapsed_s, 2),
            "schedules": self.schedules,
            "ports_fired": self.ports_fired(),
            "fired_counts": dict(sorted(self.fired.items())),
            "catalogue": self.catalogue,
            "infeasible_schedules": self.infeasible,
            "violations": [finding.as_json() for finding in self.findings],
        }


#: Settings that change when and how often things are tried, never what a completed document's
#: rows are: the fault-free reference run ignores them (one reference serves them all).
TIMING_SETTINGS = frozenset(
    {
        "max_retries",
        "max_redeliveries",
        "max_task_attempts",
        "visibility_timeout_s",
        "task_soft_time_limit_s",
        "task_time_limit_s",
        "retry_backoff_base_s",
        "retry_backoff_max_s",
        "openai_timeout_s",
        "aws_connect_timeout_s",
        "aws_read_timeout_s",
        "neo4j_timeout_s",
        "broker_restore_interval_s",
        "broker_restore_throttle",
        "lock_ttl_s",
    }
)


class Workspace:
    """Documents as paths relative to one base folder, and the reference rows per settings."""

    def __init__(self, documents: Sequence[Path]) -> None:
        resolved: list[Path] = []
        seen: set[str] = set()
        for path in documents:
            found = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
            for file in found:
                # File names identify documents in scenarios (fault filters, expectations).
                if file.name not in seen and not file.name.startswith("."):
                    seen.add(file.name)
                    resolved.append(file.resolve())
        if not resolved:
            raise ValueError("no documents to explore with")
        self.base = Path(os.path.commonpath([p.parent for p in resolved]))
        self.documents = [str(p.relative_to(self.base)) for p in resolved]
        self._references: dict[str, dict[str, dict[str, int]]] = {}

    def run(self, schedule: Schedule) -> RunReport:
        scenario = parse_scenario(schedule, schedule["name"])
        # The base folder is where relative document paths are resolved from.
        return run_scenario(scenario, self.base / f"{schedule['name']}.yaml", "sim", in_memory=True)

    def reference(self, settings: dict[str, Any]) -> dict[str, dict[str, int]]:
        """Rows of a fault-free sim run of every document under these settings (cached)."""
        settings = {k: v for k, v in settings.items() if k not in TIMING_SETTINGS}
        key = repr(sorted(settings.items()))
        if key not in self._references:
            schedule: Schedule = {
                "name": "explore-reference",
                "description": "fault-free reference run",
                "documents": [{"files": [path]} for path in self.documents],
                "settings": settings,
            }
            self._references[key] = reference_rows(self.run(schedule))
        return self._references[key]

    def judge(self, schedule: Schedule) -> tuple[list[Violation], Counter[str]]:
        found, fired, _ = self.judge_faults(schedule)
        return found, fired

    def judge_faults(self, schedule: Schedule) -> tuple[list[Violation], Counter[str], list[int]]:
        """The violations, fired counts per "port.kind", and how often each fault fired."""
        fired: Counter[str] = Counter()
        try:
            report = self.run(schedule)
        except ScenarioError as exc:
            return [Violation(SCENARIO_ERROR, str(exc))], fired, []
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a crash of stage or harness code is a finding too
            # (BaseException: a simulated kill, WorkerKilled, that escaped the simulator)
            return [_crash(exc)], fired, []
        per_fault = [int(row["fired"]) for row in report.faults]
        for fault, count in zip(schedule.get("faults", []), per_fault, strict=False):
            if count:
                fired[f"{fault['port']}.{fault['kind']}"] += count
        for disruption in schedule.get("disruptions", []):
            fired[f"process.{disruption['kind']}"] += 1
        reference = self.reference(schedule.get("settings") or {})
        found = violations(report, reference)
        never_ended = (report.sim or {}).get("never_ended")
        if never_ended is not None and self._faults_never_let_up(schedule, never_ended):
            detail = (
                f"{report.error} - the faults never let up: the messages in flight did not "
                "multiply, and every invariant holds once the faults stop halfway"
            )
            return [Violation(INFEASIBLE, detail)], fired, per_fault
        return found, fired, per_fault

    def _faults_never_let_up(self, schedule: Schedule, never_ended: dict[str, Any]) -> bool:
        """Whether a run that never ended was kept going by faults that never stop, not a livelock.

        A fault without a window that fails in step with a retry loop (every 2nd store
        call, and each cycle makes two) fails it forever: nothing can finish, and nothing
        is wrong. A livelock multiplies messages (22,879 of one task, scenario
        `sim_copies_of_a_hung_task_end_when_their_dead_letter_is_refused`); so only a run
        whose messages in flight did not grow qualifies - at most one per document, or no
        more at the end than the most in the first half (a delivery killed before its ack
        after publishing its retry leaves both; scenario
        `sim_killed_at_the_ack_after_publishing_its_retry`), or no more than two of one
        task and `FEW_PER_DOCUMENT` a document (a copy killed at every ack holding its
        queue while a message of another document arrives late: seed 77, schedule
        1266) - and only if, with every fault cut off halfway to where it stopped, it
        ends and every invariant holds.
        """
        in_flight = int(never_ended["in_flight"])
        documents = int(never_ended["documents"])
        halfway = int(never_ended.get("in_flight_halfway", 0))
        few = (
            int(never_ended.get("most_of_one_task", in_flight)) <= 2
            and in_flight <= FEW_PER_DOCUMENT * documents
        )
        if in_flight > documents and in_flight > halfway and not few:
            return False
        cut_at = float(never_ended["virtual_seconds"]) / 2
        faults = []
        for fault in schedule.get("faults", []):
            start, end = fault.get("window") or (0.0, cut_at)
            if start >= cut_at:
                continue
            faults.append({**fault, "window": [start, min(float(end), cut_at)]})
        calmed: Schedule = {**schedule, "faults": faults}
        try:
            rerun = self.run(calmed)
        except ScenarioError:
            return False
        return not violations(rerun, self.reference(schedule.get("settings") or {}))


#: Messages in flight per document that a loop the faults keep going may hold: the looping
#: copy, its retry or next OCR poll, and one more (`Workspace._faults_never_let_up`).
FEW_PER_DOCUMENT = 3


def _crash(exc: BaseException) -> Violation:
    where = traceback.extract_tb(exc.__traceback__)[-1]
    at = f"{Path(where.filename).name}:{where.lineno}"
    return Violation(CRASH, f"{type(exc).__name__}: {exc} (at {at})")


# --- running schedules, possibly on several processes ---------------------------------

_worker_state: dict[str, Any] = {}


def _init_worker(workspace: Workspace, seed: int, catalogue: Catalogue) -> None:
    _worker_state.update(workspace=workspace, seed=seed, catalogue=catalogue)


def _run_index(index: int) -> ScheduleResult:
    workspace: Workspace = _worker_state["workspace"]
    schedule = generate_schedule(
        _worker_state["seed"], index, workspace.documents, _worker_state["catalogue"]
    )
    found, fired = workspace.judge(schedule)
    return ScheduleResult(index, tuple(found), tuple(sorted(fired.items())))


def _results(
    workspace: Workspace,
    seed: int,
    catalogue: Catalogue,
    jobs: int,
    limit: int | None,
    only: Sequence[int] | None = None,
    deadline: float | None = None,
) -> Generator[ScheduleResult, None, None]:
    """Schedule results in index order, forever (or `limit`, or just `only`); the caller
    stops consuming.

    With a `deadline` (time.monotonic()) the results end when it passes, even while a
    schedule is still running: the schedules run in pool processes (one at least), so
    the unfinished ones are cut off, uncounted, when the pool is left.
    """
    indices: Iterator[int]
    if only is not None:
        indices = iter(sorted(set(only)))
        limit = len(set(only))
    else:
        indices = iter(range(limit)) if limit is not None else _count()
    if deadline is None and (jobs <= 1 or limit == 1):
        _init_worker(workspace, seed, catalogue)
        for index in indices:
            yield _run_index(index)
        return
    # The fault-free references the first schedules need, made before the fork: once,
    # not once per worker (each is a run of every document; they are deterministic).
    warm = sorted(set(only)) if only is not None else range(limit or WARM_REFERENCES)
    for index in list(warm)[:WARM_REFERENCES]:
        schedule = generate_schedule(seed, index, workspace.documents, catalogue)
        workspace.reference(schedule.get("settings") or {})
    context = multiprocessing.get_context("fork")
    with context.Pool(
        max(jobs, 1), initializer=_init_worker, initargs=(workspace, seed, catalogue)
    ) as pool:
        # Ordered: findings are judged in index order whatever process ran them.
        results = pool.imap(_run_index, indices, chunksize=1)
        while True:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                yield results.next(timeout)
            except StopIteration:
                return
            except multiprocessing.TimeoutError:
                return  # the budget is spent while a schedule still runs
        # Leaving the block terminates the workers still running schedules past the budget.


#: Schedules whose reference runs are made before forking the workers.
WARM_REFERENCES = 8


def _count() -> Iterator[int]:
    index = 0
    while True:
        yield index
        index += 1


# --- the whole exploration --------------------------------------------------------------

Progress = Callable[[int, Counter[str], int, float], None]


def explore(
    *,
    seed: int,
    documents: Sequence[Path],
    out: Path,
    budget_s: float | None = 60.0,
    schedules: int | None = None,
    only: Sequence[int] | None = None,
    jobs: int = 1,
    shrink_runs: int = 200,
    replay_broker: bool = False,
    progress: Progress | None = None,
    catalogue: Catalogue | None = None,
) -> ExploreResult:
    catalogue = catalogue or sim_catalogue()
    workspace = Workspace(documents)
    started = time.monotonic()
    fired: Counter[str] = Counter()
    findings: dict[str, Finding] = {}
    infeasible: list[int] = []
    schedules_run = 0
    bounded = schedules is not None or only is not None
    deadline = None if bounded or budget_s is None else started + budget_s
    generator = _results(workspace, seed, catalogue, jobs, schedules, only, deadline)
    try:
        for result in generator:
            schedules_run += 1
            fired.update(dict(result.fired))
            for violation in result.violations:
                if violation.invariant == INFEASIBLE:
                    infeasible.append(result.index)
                    continue
                if violation.invariant in findings:
                    findings[violation.invariant].also_in.append(result.index)
                    continue
                schedule = generate_schedule(seed, result.index, workspace.documents, catalogue)
                findings[violation.invariant] = Finding(
                    violation.invariant, violation.detail, result.index, size(schedule)
                )
            elapsed = time.monotonic() - started
            if progress is not None:
                progress(schedules_run, fired, len(findings), elapsed)
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        generator.close()
    explored_s = time.monotonic() - started
    for finding in findings.values():
        schedule = generate_schedule(seed, finding.schedule_index, workspace.documents, catalogue)
        _shrink_and_write(workspace, finding, schedule, seed, out, shrink_runs, replay_broker)
    return ExploreResult(
        seed=seed,
        elapsed_s=explored_s,
        schedules=schedules_run,
        fired=fired,
        findings=list(findings.values()),
        catalogue=catalogue.pairs(),
        infeasible=infeasible,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def shrink_finding(
    workspace: Workspace, schedule: Schedule, violation: Violation, max_runs: int
) -> tuple[Schedule, int]:
    """The smallest schedule found that still violates the invariant, and the runs it took."""

    def still_fails(candidate: Schedule) -> bool:
        found, _ = workspace.judge(candidate)
        # The same way: a candidate whose settings the runner refused is a "scenario error"
        # too, but not the run that never ended (schedule 84 of seed 1).
        return fails_the_same_way(found, violation)

    return shrink(schedule, still_fails, max_runs=max_runs, valid=settings_valid)


def settings_valid(schedule: Schedule) -> bool:
    """Whether the schedule's settings hold together (the runner refuses them otherwise)."""
    try:
        settings_over_environment(dict(schedule.get("settings") or {}))
    except ValueError:  # pydantic's ValidationError is one
        return False
    return True


def _shrink_and_write(
    workspace: Workspace,
    finding: Finding,
    schedule: Schedule,
    seed: int,
    out: Path,
    shrink_runs: int,
    replay_broker: bool,
) -> None:
    invariant = finding.invariant
    shrunk, runs = shrink_finding(
        workspace, schedule, Violation(invariant, finding.detail), shrink_runs
    )
    finding.shrink_runs = runs
    finding.shrunk_size = size(shrunk)
    found, _, per_fault = workspace.judge_faults(shrunk)
    for fault, count in zip(shrunk.get("faults", []), per_fault, strict=False):
        if count:
            del fault["fired"]  # the default, at least once: the replay checks it fires
    detail = next((v.detail for v in found if v.invariant == invariant), finding.detail)
    name = f"explore_{seed}_{finding.schedule_index}_{_slug(invariant)}"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.yaml"
    document = _scenario_file(workspace, shrunk, name, invariant, detail, seed, finding, out)
    path.write_text(document, encoding="utf-8")
    finding.scenario_file = str(path)
    finding.replay_command = f"docpipe scenario run {path} --mode sim"
    violation = Violation(invariant, detail)
    finding.replay_reproduced, finding.replay_detail = _replays(path, violation, "sim")
    if not finding.replay_reproduced:
        # Kept for inspection, under a name that says it did not replay.
        unconfirmed = path.with_name(f"{name}.unconfirmed.yaml")
        path.replace(unconfirmed)
        finding.scenario_file = str(unconfirmed)
        finding.replay_command = f"docpipe scenario run {unconfirmed} --mode sim"
    elif replay_broker:
        scenario = load_scenario(path)
        if "broker" in scenario.modes:
            finding.broker_agrees, finding.broker_detail = _replays(path, violation, "broker")
        else:
            finding.broker_detail = "the file does not declare broker mode"


def _scenario_file(
    workspace: Workspace,
    schedule: Schedule,
    name: str,
    invariant: str,
    detail: str,
    seed: int,
    finding: Finding,
    out: Path,
) -> str:
    data = dict(schedule)
    data["name"] = name
    # What the shrunk faults allow (a file without sim-only faults replays on real workers).
    data["modes"] = declared_modes(data.get("faults", []), data.get("disruptions", []))
    data["description"] = (
        f"Found by `docpipe explore --seed {seed}` (schedule {finding.schedule_index}, shrunk "
        f"from {finding.original_size[0]} document(s) and {finding.original_size[1]} fault(s) "
        f"in {finding.shrink_runs} runs). Violates the invariant '{invariant}': {detail}"
    )
    data["reference"] = "docpipe explore (pipeline/harness/explore)"
    data["documents"] = [
        {"files": [os.path.relpath(workspace.base / spec["files"][0], out.resolve())]}
        for spec in schedule["documents"]
    ]
    if invariant == EXACTLY_ONCE:
        # The fault-free run's rows, as expectations: the replay fails on them.
        reference = workspace.reference(schedule.get("settings") or {})
        data["expect"] = {
            "documents": [
                {"match": name, "status": "completed"} | reference[name]
                for name in (Path(spec["files"][0]).name for spec in schedule["documents"])
                # The documents that completed with other rows than the fault-free run's.
                if name in reference and f"{name}:" in detail
            ]
        }
    ordered = {
        key: data[key]
        for key in (
            "name",
            "description",
            "reference",
            "seed",
            "modes",
            "documents",
            "settings",
            "faults",
            "disruptions",
            "expect",
        )
        if key in data
    }
    return yaml.safe_dump(ordered, sort_keys=False, width=100)


def _replays(path: Path, violation: Violation, mode: str) -> tuple[bool, str]:
    """Run the written file as anyone would; True when it fails the same way."""
    invariant = violation.invariant
    try:
        scenario = load_scenario(path)
        report = run_scenario(scenario, path, mode)  # type: ignore[arg-type]
    except (KeyboardInterrupt, SystemExit):
        raise
    except ScenarioError as exc:
        refused = Violation(SCENARIO_ERROR, str(exc))
        return fails_the_same_way([refused], violation), str(exc)
    except BaseException as exc:
        return fails_the_same_way([_crash(exc)], violation), f"{type(exc).__name__}: {exc}"
    if report.skipped:
        return False, f"skipped: {report.skipped}"
    if invariant == SCENARIO_ERROR:  # the runner's error, not a check
        error = Violation(SCENARIO_ERROR, report.error or "")
        return report.error is not None and fails_the_same_way([error], violation), (
            report.error or "passed"
        )
    failed = [c for c in report.checks if not c.passed]
    if invariant == EXACTLY_ONCE:
        hit = [c for c in failed if c.kind == "expectation"]
    else:
        hit = [c for c in failed if c.name == invariant]
    shown = "; ".join(f"{c.name}: {c.measured}" for c in (hit or failed)[:3])
    return bool(hit), shown or ("passed" if report.passed else str(report.error))
