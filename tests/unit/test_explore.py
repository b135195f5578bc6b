"""docpipe explore: schedules from the catalogue, the shrinker, and a short exploration.

The exploration tests run a fixed number of schedules (`schedules=`), never a
time budget: what they find depends on the seed and that count only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.app.policy import Decision
from pipeline.harness.explore.catalogue import Catalogue, sim_catalogue
from pipeline.harness.explore.explorer import Workspace, explore
from pipeline.harness.explore.generate import SHORT_VISIBILITY, generate_schedule
from pipeline.harness.explore.invariants import INFEASIBLE, violations
from pipeline.harness.explore.shrink import shrink, size
from pipeline.harness.scenarios import runner
from pipeline.harness.scenarios.model import (
    FAULT_CATALOGUE,
    fault_modes,
    load_scenario,
    parse_scenario,
)
from pipeline.harness.scenarios.runner import run_scenario
from pipeline.harness.simulation import real
from pipeline.library import SAMPLES

DOCUMENTS = [p.name for p in sorted(SAMPLES.iterdir())]


def service_faults() -> Catalogue:
    """The external services' faults (ocr, parser, llm): the catalogue these tests explore.

    The whole catalogue (every port, process faults) is `make explore`'s; here a
    fixed, short exploration whose outcome depends on the seed and count only.
    """
    faults = tuple(o for o in sim_catalogue().faults if o.port in {"ocr", "parser", "llm"})
    return Catalogue(faults=faults, disruptions=())


def test_the_catalogue_is_the_schema_s_faults_that_sim_mode_injects() -> None:
    catalogue = sim_catalogue()
    pairs = {(option.port, option.kind) for option in catalogue.faults}
    expected = {
        (port, kind)
        for port, operations in FAULT_CATALOGUE.items()
        for supported in operations.values()
        for kind in supported
        if "sim" in fault_modes(port, None, kind)
    }
    assert pairs == expected
    assert ("llm", "transient") in pairs and ("parser", "kill_worker") in pairs
    for option in catalogue.faults:
        for operation in option.operations:
            assert "sim" in fault_modes(option.port, operation, option.kind)


def test_a_schedule_is_a_function_of_seed_and_index_and_a_valid_scenario() -> None:
    catalogue = sim_catalogue()
    first = [generate_schedule(5, i, DOCUMENTS, catalogue) for i in range(30)]
    again = [generate_schedule(5, i, DOCUMENTS, catalogue) for i in range(30)]
    other_seed = [generate_schedule(6, i, DOCUMENTS, catalogue) for i in range(30)]
    assert first == again
    assert first != other_seed
    for schedule in first:
        parse_scenario(schedule, schedule["name"])  # raises on anything the schema refuses
    kinds = {fault["kind"] for schedule in first for fault in schedule["faults"]}
    assert len(kinds) >= 5  # swarm: different schedules enable different kinds


def test_shrinking_keeps_only_what_the_failure_needs() -> None:
    schedule: dict[str, Any] = {
        "name": "s",
        "description": "d",
        "documents": [{"files": [name]} for name in DOCUMENTS[:3]],
        "settings": {"max_retries": 2},
        "faults": [
            {"port": "llm", "kind": "transient", "probability": 0.3, "fired": {"min": 0}},
            {
                "port": "parser",
                "kind": "timeout",
                "every": 3,
                "window": [4.0, 12.0],
                "latency_s": 8.0,
                "documents": [DOCUMENTS[1]],
                "fired": {"min": 0},
            },
        ],
    }

    def fails(candidate: dict[str, Any]) -> bool:
        # The failure needs a parser timeout of at least 1 s and document 1.
        names = [spec["files"][0] for spec in candidate["documents"]]
        return DOCUMENTS[1] in names and any(
            f["port"] == "parser" and f["kind"] == "timeout" and f["latency_s"] >= 1
            for f in candidate["faults"]
        )

    shrunk, runs = shrink(schedule, fails)
    assert fails(shrunk) and runs > 0
    assert size(shrunk) == (1, 1)
    (fault,) = shrunk["faults"]
    assert "window" not in fault and "documents" not in fault and "every" not in fault
    assert fault["first"] == 1
    assert 1 <= fault["latency_s"] < 2
    assert "settings" not in shrunk


def test_a_short_exploration_of_main_finds_nothing(tmp_path: Path) -> None:
    result = explore(
        seed=2026,
        documents=[SAMPLES],
        out=tmp_path,
        schedules=16,
        jobs=1,
        catalogue=service_faults(),
    )
    assert result.schedules == 16
    assert result.fired, "no fault fired: the schedules explored nothing"
    assert [(f.invariant, f.detail) for f in result.findings] == []
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_budget_cuts_off_a_schedule_still_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: int
) -> None:
    """Schedule 1 never ends in time; the budget ends the exploration anyway, counting
    only the schedules that finished before it (its pool process is terminated):
    with two processes, schedule 2 finishes behind it and does not count."""
    import pipeline.harness.explore.explorer as explorer

    parent = os.getpid()

    def schedule_1_hangs(seed: int, index: int, *args: Any) -> Any:
        # Those after 2 wait too: the other process would run them for the whole
        # budget (~15 s of CPU next to the rest of `make test`) for nothing counted.
        if (index == 1 or index > 2) and os.getpid() != parent:  # in a pool process
            time.sleep(600)
        return generate_schedule(seed, index, *args)

    monkeypatch.setattr(explorer, "generate_schedule", schedule_1_hangs)
    started = time.monotonic()
    result = explore(
        seed=2026,
        documents=[SAMPLES],
        out=tmp_path,
        # The fault-free references, made first, count too: 5 s was too little for them
        # and schedule 0 next to the rest of `make test` on a slow day.
        budget_s=15.0,
        jobs=jobs,
        catalogue=service_faults(),
    )
    assert time.monotonic() - started < 120  # not the 600 s of schedule 1
    assert result.schedules == 1
    assert result.findings == []


def test_a_planted_defect_is_found_shrunk_and_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plant a progress-unaware budget: dead-letter on the first transient error."""

    def dead_letter_at_once(stage: Any, exc: BaseException, **_: Any) -> Decision:
        return Decision("dead_letter", f"{stage}: {exc} (planted: no retry)", stalled=1)

    monkeypatch.setattr(real, "decide", dead_letter_at_once)
    result = explore(
        seed=2026,
        documents=[SAMPLES],
        out=tmp_path,
        schedules=16,
        jobs=1,
        shrink_runs=60,
        catalogue=service_faults(),
    )
    budget = [f for f in result.findings if f.invariant == "retry budget"]
    assert budget, [f.invariant for f in result.findings]
    finding = budget[0]
    assert finding.replay_reproduced, finding.replay_detail
    assert finding.shrunk_size is not None
    documents, faults = finding.shrunk_size
    assert documents == 1 and faults == 1
    assert finding.scenario_file is not None
    path = Path(finding.scenario_file)
    assert path.parent == tmp_path and path.suffix == ".yaml"
    # Anyone's replay: the file as `docpipe scenario run FILE --mode sim` runs it.
    report = run_scenario(load_scenario(path), path, "sim")
    assert [c.name for c in report.checks if not c.passed] == ["retry budget"]
    monkeypatch.undo()
    fixed = run_scenario(load_scenario(path), path, "sim")
    assert fixed.passed, [c for c in fixed.checks if not c.passed]


def test_a_simulated_kill_escaping_the_simulator_is_a_crash_finding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """WorkerKilled is a BaseException: escaping the simulator it must become a finding."""
    from fakes.faults import WorkerKilled
    from pipeline.harness.explore.explorer import Workspace
    from pipeline.harness.explore.invariants import CRASH

    def killed(self: Workspace, schedule: dict[str, Any]) -> Any:
        raise WorkerKilled("injected kill_worker_after on locks.release")

    monkeypatch.setattr(Workspace, "run", killed)
    workspace = Workspace([SAMPLES])
    found, fired = workspace.judge(generate_schedule(1, 0, workspace.documents, sim_catalogue()))
    assert [v.invariant for v in found] == [CRASH]
    assert "locks.release" in found[0].detail
    assert not fired


def test_the_simulator_publishes_retries_through_the_task_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 14's power case (2): a task layer that lets Celery drop a retry it could not
    publish (Reject without requeue) loses the document, and the simulator shows it."""
    from celery.exceptions import Reject

    from pipeline.library import SCENARIOS

    path = SCENARIOS / "sim_retry_not_published_is_requeued.yaml"
    assert run_scenario(load_scenario(path), path, "sim").passed

    def drops_unpublished_retries(task: Any, countdown: float, exc: Exception, **_: Any) -> Any:
        try:
            task.retry(kwargs=dict(task.request.kwargs), exc=exc, countdown=countdown)
        except Reject:
            raise  # as Celery raises it: requeue=False, the message is dropped
        raise AssertionError("unreachable")  # pragma: no cover

    monkeypatch.setattr(real, "retry_task", drops_unpublished_retries)
    report = run_scenario(load_scenario(path), path, "sim")
    failed = {c.name for c in report.checks if not c.passed}
    assert "no lost document" in failed


def test_a_schedule_whose_faults_keep_every_document_out_of_the_intake_is_no_finding() -> None:
    """A store call that kills the process every time: no intake attempt gets the document in.
    The run judged nothing; explore counts the schedule apart (seed 1, schedule 18 of the
    10-minute run reported it as a 'scenario error', a store kill at p=0.58)."""
    schedule = {
        "name": "intake_never_succeeds",
        "description": "d",
        "seed": 1,
        "modes": ["broker"],
        "documents": [{"files": [str(SAMPLES / "counsel_correspondence.eml")]}],
        "faults": [{"port": "store", "kind": "kill_worker", "probability": 1.0}],
    }
    scenario = parse_scenario(schedule, "intake_never_succeeds")

    report = run_scenario(scenario, None, "sim", in_memory=True)

    assert report.intake_failed and "the intake of counsel_correspondence.eml failed" in (
        report.error or ""
    )
    assert [v.invariant for v in violations(report, {})] == [INFEASIBLE]


def test_only_runs_the_schedules_it_names_as_they_ran_among_the_others(tmp_path: Path) -> None:
    from collections import Counter

    from pipeline.harness.explore.explorer import Workspace

    catalogue = service_faults()
    result = explore(
        seed=2026, documents=[SAMPLES], out=tmp_path, only=[5, 3], jobs=1, catalogue=catalogue
    )
    assert result.schedules == 2
    workspace = Workspace([SAMPLES])
    expected: Counter[str] = Counter()
    for index in (3, 5):
        expected += workspace.judge(generate_schedule(2026, index, workspace.documents, catalogue))[
            1
        ]
    assert result.fired == expected and expected


NEVER_ENDED = (
    "the simulated run never ended: 100,000 events by virtual time 5 s (next: finish) "
    "and still running"
)


def test_a_shrunk_schedule_fails_the_same_way_with_valid_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docpipe explore --seed 1, schedule 84: the shrinker took a candidate that failed on
    its settings ("task_soft_time_limit_s must be below task_time_limit_s") for the
    "scenario error" of a run that never ended, and wrote a file that ran nothing."""
    from collections import Counter

    from pipeline.harness.explore.explorer import Workspace, shrink_finding
    from pipeline.harness.explore.invariants import SCENARIO_ERROR, Violation
    from pipeline.settings import settings_over_environment

    def judge(self: Workspace, schedule: dict[str, Any]) -> Any:
        # As the runner: invalid settings are a scenario error before anything runs; the
        # stand-in defect needs the short visibility timeout and the latency fault.
        settings = schedule.get("settings") or {}
        try:
            settings_over_environment(settings)
        except ValueError as exc:
            return [Violation(SCENARIO_ERROR, f"x.yaml: settings: {exc}")], Counter()
        if settings.get("visibility_timeout_s") == 5 and schedule["faults"]:
            return [Violation(SCENARIO_ERROR, NEVER_ENDED)], Counter()
        return [], Counter()

    monkeypatch.setattr(Workspace, "judge", judge)
    schedule: dict[str, Any] = {
        "name": "s",
        "description": "d",
        "documents": [{"files": [name]} for name in DOCUMENTS[:2]],
        "settings": {"max_retries": 1, **SHORT_VISIBILITY},
        "faults": [
            {"port": "store", "kind": "latency", "every": 2, "latency_s": 3.0, "fired": {"min": 0}}
        ],
    }
    workspace = Workspace([SAMPLES])
    shrunk, runs = shrink_finding(workspace, schedule, Violation(SCENARIO_ERROR, NEVER_ENDED), 200)
    assert runs > 0
    settings = shrunk["settings"]
    settings_over_environment(settings)  # valid: soft below hard, the visibility past both
    assert settings["visibility_timeout_s"] == 5 and "max_retries" not in settings
    found, _ = workspace.judge(shrunk)
    assert found == [Violation(SCENARIO_ERROR, NEVER_ENDED)]


def test_a_violation_is_the_same_failure_only_with_the_same_kind() -> None:
    from pipeline.harness.explore.invariants import (
        CRASH,
        SCENARIO_ERROR,
        Violation,
        fails_the_same_way,
    )

    never_ended = Violation(SCENARIO_ERROR, NEVER_ENDED)
    later = NEVER_ENDED.replace("5 s", "6,668 s").replace("finish", "resubmit")
    refused = "/w/explore-1-84.yaml: settings: settings: task_soft_time_limit_s must be below"
    assert fails_the_same_way([Violation(SCENARIO_ERROR, later)], never_ended)
    assert not fails_the_same_way([Violation(SCENARIO_ERROR, refused)], never_ended)
    assert not fails_the_same_way([Violation("nothing lost", NEVER_ENDED)], never_ended)
    crash = Violation(CRASH, "KeyError: 'x' (at engine.py:412)")
    assert fails_the_same_way([Violation(CRASH, "KeyError: 'y' (at engine.py:412)")], crash)
    assert not fails_the_same_way([Violation(CRASH, "KeyError: 'x' (at real.py:9)")], crash)
    # The other invariants measure the run: a smaller schedule measures other documents.
    lost = Violation("nothing lost", "a.pdf: queued")
    assert fails_the_same_way([Violation("nothing lost", "b.txt: pending")], lost)


#: Events a never-ending run gets here: the judgement is the same as at the runner's
#: cap (these one-document runs, when they end, end well within it), at a tenth of the CPU.
NEVER_ENDING_AFTER_EVENTS = 2_000


def test_a_run_that_faults_keep_going_forever_is_infeasible_not_a_finding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Schedule 137 of seed 1, shrunk: every 2nd `documents` store call drops its connection,
    without a window. The queue processor's cycle makes two, so it never records the failed
    dispatch and retries every 900 s forever: nothing can finish, nothing is wrong (the
    document waits, `pending`, with its queue row). With the fault cut off, it completes."""
    monkeypatch.setattr(runner, "SIM_MAX_EVENTS", NEVER_ENDING_AFTER_EVENTS)
    schedule = {
        "name": "lockstep_fault",
        "description": "d",
        "seed": 56408,
        "documents": [{"files": ["affidavit_of_jane_holloway.txt"]}],
        "faults": [
            {"port": "store", "operation": "documents", "kind": "connection_lost", "every": 2}
        ],
    }

    found, _ = Workspace([SAMPLES / "affidavit_of_jane_holloway.txt"]).judge(schedule)

    assert [v.invariant for v in found] == [INFEASIBLE]
    assert "the faults never let up" in found[0].detail


def test_a_retry_and_its_requeued_copy_killed_at_every_ack_are_infeasible_not_a_finding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Schedule 422 of seed 77, shrunk: every 2nd worker call kills it, so every delivery
    dies at its ack; the first published a retry before it died. Two messages of one
    document go round for ever, not more: the faults never let up, nothing multiplies."""
    monkeypatch.setattr(runner, "SIM_MAX_EVENTS", NEVER_ENDING_AFTER_EVENTS)
    schedule = {
        "name": "killed_at_every_ack",
        "description": "d",
        "seed": 25998,
        "modes": ["sim"],
        "documents": [{"files": ["complaint_holloway_v_meridian.pdf"]}],
        "faults": [
            {"port": "worker", "kind": "kill_worker", "every": 2, "fired": {"min": 0}},
            {"port": "ocr", "kind": "throttle", "first": 1, "fired": {"min": 0}},
        ],
    }

    found, _ = Workspace([SAMPLES / "complaint_holloway_v_meridian.pdf"]).judge(schedule)

    assert [v.invariant for v in found] == [INFEASIBLE]
    assert "the faults never let up" in found[0].detail


def test_a_copy_killed_at_every_ack_while_another_document_arrives_late_is_infeasible() -> None:
    """Schedule 1266 of seed 77, shrunk: every 2nd worker call kills it, so the PDF's OCR start
    dies at every ack and its copy holds the OCR queue; the text file's intake, killed at its
    first state write, comes back at 900 s, after the first half of the run. Three messages
    in flight at the end against two in the first half, but one per task: no livelock."""
    schedule = {
        "name": "late_document_behind_a_looping_copy",
        "description": "d",
        "seed": 595,
        "modes": ["sim"],
        "documents": [
            {"files": ["affidavit_of_jane_holloway.txt"]},
            {"files": ["complaint_holloway_v_meridian.pdf"]},
        ],
        "settings": SHORT_VISIBILITY,
        "faults": [
            {"port": "state", "kind": "kill_worker", "first": 1, "fired": {"min": 0}},
            {"port": "worker", "kind": "kill_worker", "every": 2, "fired": {"min": 0}},
        ],
    }
    files = [
        SAMPLES / "affidavit_of_jane_holloway.txt",
        SAMPLES / "complaint_holloway_v_meridian.pdf",
    ]

    found, _ = Workspace(files).judge(schedule)

    assert [v.invariant for v in found] == [INFEASIBLE], found
    assert "the faults never let up" in found[0].detail


def test_a_livelock_stays_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    """The livelock of copies whose dead letter was refused (its fixes planted away: the
    retry's mark and the finished attempt's): messages multiply, so the never-ending run is
    a finding, not infeasible."""
    monkeypatch.setattr(real, "retry_published", lambda *_: False)
    monkeypatch.setattr(real.StageExecutor, "attempt_finished", lambda *_: None)
    monkeypatch.setattr(runner, "SIM_MAX_EVENTS", NEVER_ENDING_AFTER_EVENTS)
    path = Path(__file__).resolve().parents[2] / "scenarios"
    scenario = yaml.safe_load(
        (path / "sim_copies_of_a_hung_task_end_when_their_dead_letter_is_refused.yaml").read_text()
    )
    scenario.pop("expect")
    scenario["documents"] = [{"files": ["affidavit_of_jane_holloway.txt"]}]

    found, _ = Workspace([SAMPLES / "affidavit_of_jane_holloway.txt"]).judge(scenario)

    assert [v.invariant for v in found] == ["scenario error"]
    assert "the simulated run never ended" in found[0].detail
