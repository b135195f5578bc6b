"""The progress-aware retry budget in its callers (tasks, simulator, monolith); faults on the clock.

The large cases (600+ chunks, every mode) are the library scenarios
long_document_transient_llm_errors_completes and
llm_down_for_good_dead_lettered_within_budget; these are small and fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import fakeredis
import pytest

from fakes.faults import FaultRule, RedisFaultInjector, SharedFaultInjector, install_faults
from pipeline.app.intake import claim_own, submit_file
from pipeline.app.monolith import process_document
from pipeline.bootstrap import Services, redis_client
from pipeline.domain.models import QUEUES, Status
from pipeline.errors import TransientError
from pipeline.harness.scenarios.documents import legal_pages
from pipeline.harness.scenarios.model import Scenario
from pipeline.harness.scenarios.runner import RunReport, run_scenario
from pipeline.harness.simulation.budget import retry_budget_problems
from pipeline.harness.simulation.engine import SimConfig, SimulatedWorker, Simulator
from pipeline.harness.simulation.real import Attempt, StageExecutor, sim_settings
from pipeline.testing.clocks import EPOCH_2023, ManualClock, VirtualClock

MakeServices = Callable[..., Services]

SAMPLES = Path(__file__).resolve().parents[2] / "samples"

#: About 40 chunks: a long document in miniature (and no shared LLM rate limit in the way).
SMALL_CHUNKS = {
    "chunk_min_chars": 200,
    "chunk_max_chars": 600,
    "llm_rate_limit_calls": 100_000,
    "llm_rate_limit_tokens": 0,
    # One request per chunk: many requests, so the faults fire far more than max_retries.
    "llm_pack_tokens": 0,
}


def scenario(faults: list[dict[str, Any]], expect: dict[str, Any]) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "retry_budget",
            "description": "d",
            "seed": 3,
            "documents": [{"generate": {"type": "txt", "name": "long.txt", "pages": 14}}],
            # One retry without progress allowed: the old budget (one retry per task)
            # would dead-letter the document at its second failed chunk.
            "settings": {"max_retries": 1, **SMALL_CHUNKS},
            "faults": faults,
            "expect": expect,
        }
    )


def explain(report: RunReport) -> str:
    failed = [f"{c.name}: expected {c.expected}, measured {c.measured}" for c in report.checks]
    return "\n".join(f for f, c in zip(failed, report.checks, strict=True) if not c.passed) + (
        report.error or ""
    )


@pytest.mark.parametrize("mode", ["eager", "sim"])
def test_a_long_document_whose_attempts_progress_completes(
    mode: Literal["eager", "sim"], tmp_path: Path
) -> None:
    spec = scenario(
        [{"port": "llm", "kind": "transient", "every": 5, "fired": {"min": 5}}],
        {
            "documents": [{"match": "*", "status": "completed", "chunks": {"min": 30}}],
            "dead_letters": {"count": 0},
        },
    )

    report = run_scenario(spec, tmp_path / "retry_budget.yaml", mode, workdir=tmp_path / "w")

    assert report.passed, explain(report)
    assert report.faults[0]["fired"] >= 5  # far more failures than max_retries (1)


@pytest.mark.parametrize("mode", ["eager", "sim"])
def test_a_call_that_never_succeeds_is_dead_lettered_within_the_budget(
    mode: Literal["eager", "sim"], tmp_path: Path
) -> None:
    spec = scenario(
        [{"port": "llm", "kind": "transient", "message": "503", "fired": 2}],
        {
            "documents": [
                {
                    "match": "*",
                    "status": "dead_lettered",
                    "error_contains": "gave up after 1 retries without progress",
                }
            ],
            "calls": {"llm.extract": 2},
            "dead_letters": {"count": 1, "stages": ["entity_extraction"]},
        },
    )

    report = run_scenario(spec, tmp_path / "retry_budget.yaml", mode, workdir=tmp_path / "w")

    assert report.passed, explain(report)


def _long_document(services: Services, tmp_path: Path) -> str:
    import random

    path = tmp_path / "long.txt"
    path.write_text("\n\n".join(legal_pages(random.Random(3), 14)))
    project = services.store.ensure_project("monolith")
    document_uuid = submit_file(services, path, project).document_uuid
    claim_own(services, document_uuid, worker="monolith")
    return document_uuid


def _faulty_sequential(make_services: MakeServices, rule: FaultRule) -> Services:
    base = make_services(max_retries=1, **SMALL_CHUNKS)
    injector = RedisFaultInjector(base.redis, [rule])
    injector.arm()
    services = make_services(
        faults=injector, redis_url=base.settings.redis_url, max_retries=1, **SMALL_CHUNKS
    )
    services.clock = ManualClock(EPOCH_2023)  # the backoff is slept on the clock
    return services


def test_the_monolith_completes_a_long_document_whose_attempts_progress(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services = _faulty_sequential(make_services, FaultRule(port="llm", kind="transient", every=5))
    document_uuid = _long_document(services, tmp_path)

    status = process_document(services, document_uuid)

    assert status is Status.COMPLETED, services.store.get_document(document_uuid).error_message
    assert services.store.counts(document_uuid).chunks >= 30
    assert len(services.clock.sleeps) >= 5  # type: ignore[attr-defined]


def test_the_monolith_dead_letters_a_call_that_never_succeeds(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services = _faulty_sequential(make_services, FaultRule(port="llm", kind="transient"))
    document_uuid = _long_document(services, tmp_path)

    status = process_document(services, document_uuid)

    assert status is Status.DEAD_LETTERED
    [letter] = services.store.dead_letters()
    assert letter["stage"] == "entity_extraction"
    assert "gave up after 1 retries without progress" in str(letter["error"])


# --- item 5: a fault's time is the clock's -------------------------------------------------


def test_a_timeout_fault_waits_on_the_clock_it_was_given(make_services: MakeServices) -> None:
    services = make_services()
    clock = VirtualClock()
    rule = FaultRule(port="llm", kind="timeout", latency_s=30.0, first=1)
    injector = RedisFaultInjector(services.redis, [rule], clock=clock)
    injector.arm()

    with pytest.raises(TransientError):
        injector.before("llm", "extract", None)

    assert clock.now() == 30.0 and clock.slept == 30.0


def test_workers_follow_installed_faults_on_their_own_clock(make_services: MakeServices) -> None:
    services = make_services()
    clock = VirtualClock()
    rule = FaultRule(port="llm", kind="timeout", latency_s=5.0, window=(10.0, 20.0))
    install_faults(services.redis, RedisFaultInjector(services.redis, [rule], clock=clock))
    worker = SharedFaultInjector(redis_client(services.settings.redis_url), clock=clock)

    worker.before("llm", "extract", None)  # virtual second 0: before the window
    clock.set(12.0)
    with pytest.raises(TransientError):
        worker.before("llm", "extract", None)

    assert clock.now() == 17.0  # the window counts on the clock, and the timeout waits on it


# --- the retry-budget oracle (pipeline/harness/simulation/budget.py) on attempt logs ----------


def _attempts(*tries: tuple[int, bool, str]) -> list[Attempt]:
    """One task's attempts: (retries, progressed, result) each."""
    return [
        Attempt(0, "start_ocr", "t1", retries, progressed, result)
        for retries, progressed, result in tries
    ]


def _budget(*tries: tuple[int, bool, str], max_retries: int = 0) -> list[str]:
    settings = sim_settings(max_retries=max_retries)
    return [p.what for p in retry_budget_problems(_attempts(*tries), settings)]


def test_the_run_after_a_verdict_that_could_not_be_recorded_is_the_same_attempt() -> None:
    # Dead letter decided at once (max_retries 0), the database refused to record it: the
    # task layer's retry (`_retry_recording`) keeps the count and re-runs the stage, which
    # fails again and records the verdict (explore, seed 1, schedule 380).
    assert _budget((0, False, "unrecorded"), (1, False, "dead_letter")) == []


def test_a_success_ends_the_run_and_a_duplicate_of_its_task_after_it_is_no_retry() -> None:
    # A redelivered attempt published its retry too: two messages of one task id; one
    # succeeded, the other (and its retry) found the document carried on.
    tries = ((0, False, "unrecorded"), (1, False, "ok"), (2, False, "ok"))
    assert _budget(*tries) == []


def test_a_policy_retry_past_the_budget_is_still_found_across_an_unrecorded_verdict() -> None:
    tries = ((0, False, "unrecorded"), (1, False, "retry"), (2, False, "dead_letter"))
    assert _budget(*tries) == ["2 attempts in a row without progress (max_retries 0 allows 1)"]
    assert _budget(
        (0, False, "retry"), (1, False, "retry"), (2, False, "dead_letter"), max_retries=1
    ) == ["3 attempts in a row without progress (max_retries 1 allows 2)"]


def test_the_simulator_logs_an_attempt_whose_dead_letter_could_not_be_recorded() -> None:
    """The evidence: an attempt whose verdict the database refused is in the log, and its
    re-run reaches the verdict again; the budget holds (max_retries 0: one attempt)."""
    faults = [
        FaultRule(port="llm", operation="extract", kind="transient", first=2),
        FaultRule(port="store", operation="dead_letters", kind="connection_lost", first=1),
    ]
    injector = RedisFaultInjector(fakeredis.FakeRedis(), faults, simulated=True)
    injector.arm()
    settings = sim_settings(max_retries=0, llm_pack_tokens=0)
    executor = StageExecutor([SAMPLES / "counsel_correspondence.eml"], settings, faults=injector)
    layout = [SimulatedWorker(queue, 1, name=f"{queue}-0") for queue in QUEUES]

    Simulator(SimConfig(layout), executor).run([0])

    extraction = [(a.retries, a.result) for a in executor.attempts if a.task == "entity_extraction"]
    assert extraction == [(0, "unrecorded"), (1, "dead_letter")]
    assert executor.rows_digest()["documents"]["0"]["status"] == "dead_lettered"
    assert retry_budget_problems(executor.attempts, settings) == []


def test_deliveries_after_the_dead_letter_are_no_verdict_on_their_attempt() -> None:
    # explore, seed 1, schedule 807 (max_retries 5): attempt 1 hung past the visibility
    # timeout and was restored, and its copy hung too; the first delivery's retries ran
    # without progress and the sixth was dead-lettered. The copy's own restore and the
    # retry the copy published started after that: they found the document ended ("ok",
    # skipped). Read as the verdicts on attempts 1 and 2, they made the dead letter look
    # premature ("dead-lettered after 6 attempts, the last 4 without progress").
    stalled = [(0, False, "retry"), (0, False, "retry")]
    stalled += [(retries, False, "retry") for retries in range(1, 5)]
    after = [(0, False, "ok"), (1, False, "ok")]
    assert _budget(*stalled, (5, False, "dead_letter"), *after, max_retries=5) == []
    # Before the dead letter the attempt that published the retry judges its attempt, not a
    # copy that succeeded meanwhile: the retry's message carries the failed delivery's count
    # (schedule 778: 2 attempts in a row without progress along that path, max_retries 1).
    early = [(0, False, "retry"), (0, False, "ok"), (1, False, "dead_letter")]
    assert _budget(*early, max_retries=1) == []
    # Without a retry published from that attempt, the copy's success ends the run.
    copied = [(0, False, "retry"), (1, False, "ok"), (2, False, "dead_letter")]
    assert _budget(*copied, max_retries=1) == [
        "dead-lettered after 3 attempts, the last 1 without progress "
        "(max_retries 1 allows 2 in a row, max_task_attempts 200 in all)"
    ]


def test_a_premature_dead_letter_is_found_though_a_copys_later_attempt_ran_before_it() -> None:
    # Attempt 2's verdict was refused (unrecorded) and its retry ran as attempt 3 before a
    # redelivered copy of attempt 2 recorded the dead letter (schedule 2826's shape): 2
    # attempts without progress with max_retries 2, premature wherever it stands in the log.
    tries = ((0, False, "retry"), (1, False, "unrecorded"), (2, False, "unrecorded"))
    assert _budget(*tries, (1, False, "dead_letter"), max_retries=2) == [
        "dead-lettered after 2 attempts, the last 2 without progress "
        "(max_retries 2 allows 3 in a row, max_task_attempts 200 in all)"
    ]
