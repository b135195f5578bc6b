"""The virtual-time simulator: determinism and the Redis pitfalls, asserted on the trace."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from fakes.faults import FaultRule, RedisFaultInjector
from pipeline.adapters.latency import LatencyProfile, build_profile
from pipeline.harness.simulation.engine import (
    PROCESS_REPLACEMENT_S,
    Crash,
    Message,
    Outcome,
    Send,
    SimConfig,
    SimResult,
    SimulatedWorker,
    SimulationDidNotEnd,
    Simulator,
)
from pipeline.harness.simulation.model import DocumentShape, ModelExecutor, Policy
from pipeline.harness.simulation.predict import Layout
from pipeline.harness.simulation.real import StageExecutor, sim_settings

FIXED = build_profile(
    "none",
    overrides={
        "ocr_job": "fixed:10",
        "document_db": "fixed:1",
        "llm_call": "fixed:1",
        "graph_write": "fixed:1",
    },
)
TXT = DocumentShape("a.txt", ocr=False, chunk_keys=("c1", "c2"))
PDF = DocumentShape("b.pdf", ocr=True, chunk_keys=("c3",))


def layout(text: int = 1, prefetch: int = 1, ocr: int = 1) -> list[SimulatedWorker]:
    return [
        *(SimulatedWorker("ocr", 1, name=f"ocr-{i}") for i in range(ocr)),
        *(SimulatedWorker("text", 1, prefetch, name=f"text-{i}") for i in range(text)),
        SimulatedWorker("entity", 4, name="entity-0"),
        SimulatedWorker("graph", 1, name="graph-0"),
    ]


def simulate(
    shapes: Sequence[DocumentShape],
    workers: Sequence[SimulatedWorker],
    *,
    docs: int = 1,
    policy: Policy | None = None,
    profile: LatencyProfile = FIXED,
    **config: Any,
) -> SimResult:
    executor = ModelExecutor(shapes, profile, policy or Policy(), seed=7)
    return Simulator(SimConfig(workers, **config), executor).run(range(docs))


def events(result: SimResult, name: str, task_id: str | None = None) -> list[tuple[Any, ...]]:
    return [e for e in result.trace if e[1] == name and (task_id is None or e[2] == task_id)]


def task_id_of(result: SimResult, task: str, doc: int = 0) -> str:
    (publish,) = [e for e in events(result, "publish") if e[3] == task and e[4] == doc][:1]
    return str(publish[2])


def test_same_inputs_and_seed_give_a_byte_identical_trace() -> None:
    shapes = [TXT, PDF]
    profile = build_profile("reference", seed=3)
    policy = Policy(transient_rate=0.1)
    runs = [
        simulate(shapes, layout(text=2), docs=40, policy=policy, profile=profile).trace_text()
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    other = simulate(
        shapes, layout(text=2), docs=40, policy=policy, profile=build_profile("reference", seed=4)
    )
    assert other.trace_text() != runs[0]


def test_a_task_outliving_the_visibility_timeout_is_delivered_twice() -> None:
    policy = Policy(extra_s=(("document_node", 150.0),))
    result = simulate([TXT], layout(text=2), policy=policy, visibility_timeout_s=100.0)
    node = task_id_of(result, "document_node")
    rows = [e[:2] + e[3:] for e in result.trace if e[2:3] == (node,) and e[1] != "publish"]
    assert rows == [
        (0.0, "deliver", 2, "text-0"),
        (0.0, "start", 2, "text-0", 1),
        # Still running at the visibility timeout: restored and delivered to the idle worker.
        (100.0, "restore", 2, "text-0"),
        (100.0, "deliver", 3, "text-1"),
        (100.0, "start", 3, "text-1", 2),
        # The first run's ack finds nothing: the message is no longer unacked under its tag.
        (151.0, "finish", 2, "text-0", "ok", False),
        # The second run outlives the timeout too: a third delivery, then the guard.
        (200.0, "restore", 3, "text-1"),
        (200.0, "deliver", 8, "text-0"),
        (200.0, "start", 8, "text-0", 3),
        (251.0, "finish", 3, "text-1", "ok", False),
        (300.0, "restore", 8, "text-0"),
        (300.0, "deliver", 10, "text-1"),
        (300.0, "start", 10, "text-1", 4),
        (300.0, "finish", 10, "text-1", "dead_lettered", True),
        (350.0, "finish", 8, "text-0", "skipped", False),
    ]
    assert result.executions[(0, "document_node")] == 4
    assert result.documents[0].outcome == "completed"


def test_a_task_within_the_visibility_timeout_is_delivered_once() -> None:
    policy = Policy(extra_s=(("document_node", 50.0),))
    result = simulate([TXT], layout(text=2), policy=policy, visibility_timeout_s=100.0)
    assert "restore" not in result.counts
    assert result.executions[(0, "document_node")] == 1


def test_a_worker_crash_redelivers_its_task_after_the_visibility_timeout() -> None:
    policy = Policy(extra_s=(("document_node", 30.0),))
    crash = Crash("text-0", at=10.0, restart_after=5.0)
    result = simulate(
        [TXT], layout(text=1), policy=policy, visibility_timeout_s=100.0, crashes=[crash]
    )
    node = task_id_of(result, "document_node")
    assert events(result, "crash")[0][:3] == (10.0, "crash", "text-0")
    # Nothing comes back at the restart (15 s): only the visibility timeout restores it.
    assert [e[0] for e in events(result, "restore", node)] == [100.0]
    assert [(e[0], e[5]) for e in events(result, "start", node)] == [(0.0, 1), (100.0, 2)]
    assert [(e[0], e[5]) for e in events(result, "finish", node)] == [(131.0, "ok")]
    assert result.documents[0].outcome == "completed"


class KillsUntil:
    """An executor whose one task kills its process at once (no virtual time) until `until`."""

    def __init__(self, until: float) -> None:
        self.until = until

    def submit(self, doc: int, now: float) -> list[Send]:
        return [Send(task="document_node", queue="text", doc=doc)]

    def run(self, message: Message, start: float, delivery: int) -> Outcome:
        if start < self.until:
            return Outcome(0.0, "worker_lost", detail="killed")
        return Outcome(1.0, "completed")


def test_a_killed_process_is_replaced_in_virtual_time_so_a_kill_window_closes() -> None:
    # docpipe explore, schedule 84 of seed 1: a fault killed every delivery within a window
    # of virtual time; the kill and the requeue took none, so the redeliveries looped at one
    # instant and the window never closed (100,000 events at 5 s).
    config = SimConfig(layout(text=1), max_events=2_000)
    result = Simulator(config, KillsUntil(until=1.0)).run([0])
    assert result.documents[0].outcome == "completed"
    starts = [e[0] for e in events(result, "start")]
    # One slot: each redelivery waits for the process that replaces the killed one.
    assert starts == [round(PROCESS_REPLACEMENT_S * n, 6) for n in range(len(starts))]
    assert starts[-1] >= 1.0 > starts[-2]
    assert result.counts["worker_lost"] == len(starts) - 1


def test_a_run_that_never_ends_says_what_was_in_flight() -> None:
    # A retry loop under a fault that never stops (one message) reads apart from a
    # livelock (messages multiplying).
    config = SimConfig(layout(text=1), max_events=50)
    with pytest.raises(SimulationDidNotEnd) as ended:
        Simulator(config, KillsUntil(until=1e9)).run([0])
    assert "1 unacknowledged" in str(ended.value) and "0 of 1 document(s) ended" in str(ended.value)


def test_every_slot_of_a_worker_waits_for_its_own_replacement() -> None:
    workers = [SimulatedWorker("text", 4, name="text-0")]
    result = Simulator(SimConfig(workers, max_events=2_000), KillsUntil(until=0.5)).run([0])
    starts = [e[0] for e in events(result, "start")]
    # Four slots die at 0 s, then each is back a replacement later, and so on.
    per_instant = Counter(starts)
    assert per_instant[0.0] == 4 and per_instant[PROCESS_REPLACEMENT_S] == 4
    assert result.documents[0].outcome == "completed"


def test_a_countdown_longer_than_the_visibility_timeout_is_delivered_again_early() -> None:
    policy = Policy(fail_first=("document_node",), retry_backoff_base_s=300.0)
    result = simulate([TXT], layout(text=2), policy=policy, visibility_timeout_s=100.0)
    node = task_id_of(result, "document_node")
    retry = [e for e in events(result, "publish", node) if e[5] == 1]
    assert len(retry) == 1
    eta = retry[0][6]
    assert eta > 150.0  # backoff 300 s * jitter 0.5-1.0
    retried = events(result, "deliver", node)[1:]
    early = [e for e in retried if e[0] < eta]
    # Reserved at once and held for its ETA; restored at the visibility timeout, delivered again.
    assert [e[0] for e in early] == [0.0, 100.0]
    assert events(result, "restore", node)[0][0] == 100.0
    early_tags = {e[3] for e in early}
    runs = [e for e in events(result, "start", node) if e[3] in early_tags]
    assert len(runs) == 2 and all(e[0] >= eta for e in runs)
    assert result.executions[(0, "document_node")] >= 3


def test_short_tasks_starve_behind_a_long_one_under_prefetch() -> None:
    policy = Policy(extra_s=(("document_node:0", 1000.0),))

    def node_starts(prefetch: int) -> dict[int, tuple[float, str]]:
        result = simulate([TXT], layout(text=2, prefetch=prefetch), docs=4, policy=policy)
        starts = {}
        for doc in range(4):
            node = task_id_of(result, "document_node", doc)
            first = events(result, "start", node)[0]
            starts[doc] = (first[0], first[4])
        return starts

    starved = node_starts(prefetch=4)
    assert starved[0] == (0.0, "text-0")
    # Doc 2 was reserved by the busy worker and waits for the long task though text-1 is free.
    assert starved[2] == (1001.0, "text-0")
    fair = node_starts(prefetch=1)
    assert max(start for start, _ in (fair[1], fair[2], fair[3])) < 10.0
    assert all(worker == "text-1" for _, worker in (fair[1], fair[2], fair[3]))


def test_the_shared_rate_limit_bounds_llm_calls_per_window() -> None:
    shape = DocumentShape("many.txt", ocr=False, chunk_keys=tuple(f"k{i}" for i in range(10)))
    policy = Policy(
        llm_rate_limit_calls=5, llm_rate_limit_window_s=60.0, llm_rate_limit_max_wait_s=1e4
    )
    result = simulate([shape], layout(text=1), docs=3, policy=policy)
    assert all(r.outcome == "completed" for r in result.documents.values())
    # 30 calls at 5 per 60 s need at least 5 windows.
    assert result.end_time >= 5 * 60.0


# --- the real stage code under the scheduler ---------------------------------------------

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def real_run(
    visibility_timeout_s: float,
    *,
    crashes: Sequence[Crash] = (),
    docs: int = 3,
    faults: Sequence[FaultRule] = (),
    document_db: str = "fixed:20",
) -> tuple[SimResult, dict[str, Any]]:
    files = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".txt", ".eml", ".pdf"))
    settings = sim_settings(
        latency_profile="reference", latency_overrides={"document_db": document_db}
    )
    injector = None
    if faults:
        injector = RedisFaultInjector(fakeredis.FakeRedis(), faults, simulated=True)
        injector.arm()
    executor = StageExecutor(files, settings, seed=1, faults=injector)
    config = SimConfig(layout(text=4), visibility_timeout_s=visibility_timeout_s, crashes=crashes)
    result = Simulator(config, executor).run(range(docs))
    return result, executor.rows_digest()


def test_a_delivery_that_stalls_past_the_visibility_timeout_is_fenced_out() -> None:
    """The first LLM call stalls 60 s; its redelivery completes the document meanwhile.

    The stalled delivery's writes are committed when it ends (t > 60 s), after the
    document completed: the fence refuses them and the rows stay those of one run.
    """
    _, rows = real_run(4800.0, document_db="fixed:1")
    stall = FaultRule(port="llm", kind="latency", operation="extract", first=1, latency_s=60.0)
    stalled, stalled_rows = real_run(12.0, document_db="fixed:1", faults=[stall])
    late = [e for e in events(stalled, "finish") if e[5] == "skipped" and e[0] >= 60.0]
    assert late, "the stalled delivery should end after its redelivery, and be skipped"
    (task_id,) = {e[2] for e in late}
    assert len(events(stalled, "start", task_id)) == 2  # delivered again while it ran
    assert stalled_rows == rows


def test_every_delivery_outliving_the_visibility_timeout_ends_dead_lettered_not_corrupted() -> None:
    """A 20 s document node under a 12 s visibility timeout, in every delivery.

    Each redelivery claims the document and fences the one before it out, so a
    delivery overtaken before it ends never commits (the latest claim wins; what
    keeps a real one below the timeout is the outbound calls' own timeouts). The
    redelivery guard ends such a livelock: dead-lettered, never half-written.
    """
    baseline, rows = real_run(4800.0)
    assert "restore" not in baseline.counts
    assert {d["status"] for d in rows["documents"].values()} == {"completed"}
    assert all(d["chunks"] > 0 and d["mentions"] > 0 for d in rows["documents"].values())

    doubled, doubled_rows = real_run(12.0)
    for doc in range(3):
        node = task_id_of(doubled, "document_node", doc)
        # The 20 s document node outlives the 12 s timeout: a second delivery runs beside it.
        assert [e[0] for e in events(doubled, "restore", node)][:1] == [
            events(doubled, "deliver", node)[0][0] + 12.0
        ]
        assert len(events(doubled, "start", node)) >= 2
    for doc, outcome in doubled_rows["documents"].items():
        # Completed only with exactly the rows of one clean run; otherwise given up on.
        assert outcome == rows["documents"][doc] or outcome["status"] == "dead_lettered"
    assert "dead_lettered" in {d["status"] for d in doubled_rows["documents"].values()}


def test_real_stages_recover_from_a_worker_crash_after_the_visibility_timeout() -> None:
    crash = Crash("text-0", at=3.0, restart_after=1.0)
    result, rows = real_run(60.0, crashes=[crash])
    restores = events(result, "restore")
    assert restores and all(e[0] >= 60.0 for e in restores)
    _, baseline = real_run(4800.0)
    assert rows == baseline


def test_real_runs_are_byte_identical_for_the_same_seed() -> None:
    first, rows = real_run(12.0)
    second, again = real_run(12.0)
    assert first.trace_text() == second.trace_text()
    assert rows == again


# --- prediction, capacity planning and the command -------------------------------------


def test_prediction_for_the_load_test_is_rate_limited_and_deterministic() -> None:
    from pipeline.harness.layout import PLAN_LAYOUT, parse_layout
    from pipeline.harness.simulation.predict import document_shapes, predict_load
    from pipeline.settings import Settings

    # Packing off: one LLM call per chunk, as before packing.
    shapes = document_shapes(sorted(SAMPLES.iterdir()), pack_tokens=0)
    profile = build_profile("reference", time_scale=0.1)
    settings = Settings(_env_file=None, llm_pack_tokens=0)  # type: ignore[call-arg]
    layout = parse_layout(PLAN_LAYOUT)
    first = predict_load(shapes, profile, settings, layout, documents=400)
    again = predict_load(shapes, profile, settings, layout, documents=400)
    assert first["celery_docs_per_hour"] == again["celery_docs_per_hour"]
    # 50 LLM calls per 6 s shared by 5 chunks a document: at most 6,000 documents per hour.
    assert 5000 < first["celery_docs_per_hour"] <= 6000 * 1.02
    assert 700 < first["sequential_docs_per_hour"] < 1100


def test_packing_lifts_the_predicted_rate_past_the_request_limit_to_the_text_queue() -> None:
    from pipeline.harness.layout import PLAN_LAYOUT, parse_layout
    from pipeline.harness.simulation.predict import document_shapes, predict_load
    from pipeline.settings import Settings

    shapes = document_shapes(sorted(SAMPLES.iterdir()), pack_tokens=8000)
    # The samples' documents fit one request each at this budget.
    assert [len(s.llm_requests) for s in shapes] == [1] * len(shapes)
    assert all(s.llm_requests[0].tokens > 0 for s in shapes)
    profile = build_profile("reference", time_scale=0.1)
    settings = Settings(_env_file=None, llm_pack_tokens=8000)  # type: ignore[call-arg]
    prediction = predict_load(shapes, profile, settings, parse_layout(PLAN_LAYOUT))
    # One call a document: the request limit allows 30,000 documents per hour, the text
    # queue (4 threads, 1.5 s a document) 9,600; the tokens per window more than both.
    assert 6000 * 1.1 < prediction["celery_docs_per_hour"] <= 9600 * 1.02


def test_the_token_limit_binds_when_it_is_the_tighter_one() -> None:
    from pipeline.harness.simulation.predict import document_shapes, measure_capacity

    shapes = document_shapes(sorted(SAMPLES.iterdir()), pack_tokens=8000)
    tokens = sum(r.tokens for s in shapes for r in s.llm_requests) / len(shapes)
    profile = build_profile("reference", time_scale=0.1)
    # Room for 50 requests but only ~5 documents' tokens per 6 s window.
    policy = Policy(
        llm_rate_limit_calls=50,
        llm_rate_limit_tokens=round(5 * tokens),
        llm_rate_limit_window_s=6.0,
        llm_rate_limit_max_wait_s=1e4,
    )
    capacity = measure_capacity(
        shapes,
        profile,
        policy,
        Layout.parse("ocr:prefork:2 text:threads:40 entity:gevent:100 graph:threads:40"),
        offered_per_hour=10_000,
        documents=120,
    )
    assert capacity.bottleneck == "llm token limit"
    # 5 documents' tokens per 6 s: 3,000 documents per hour at most.
    assert capacity.docs_per_hour <= 3000 * 1.05


def test_simulate_names_the_bottleneck_and_the_smallest_layout(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from pipeline.harness.cli.simulate import simulate

    argv = ["--target-docs-per-hour", "1200", "--llm-rate-limit", "500/60", "--docs", "200"]
    # A fresh clone has no report/: the folders are created, the simulation kept.
    plot = tmp_path / "report" / "nested" / "sweep.png"
    argv += ["--json", "--plot", str(plot)]
    result = CliRunner().invoke(simulate, argv)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    plan = report["plan"]
    assert plan["bottleneck"] == "queue text"
    assert plan["reached"] and plan["layout"].startswith("ocr:prefork:2 text:threads:")
    assert int(plan["layout"].split()[1].removeprefix("text:threads:")) > 4
    # The named layout sustains the target in the report's own figures ...
    (named,) = [step for step in plan["steps"] if step["layout"] == plan["layout"]]
    assert named["docs_per_hour"] >= 1200 and named["sustained"]
    assert named["reaches_target"]
    text_workers = [
        int(step["layout"].split()[1].removeprefix("text:threads:"))
        for step in plan["steps"]
        if step["reaches_target"]
    ]
    assert min(text_workers) == int(plan["layout"].split()[1].removeprefix("text:threads:"))
    # ... and the header's capacity is the first row's.
    first = plan["steps"][0]
    assert report["capacity"]["estimate_docs_per_hour"] == first["capacity_estimate"]
    assert plot.stat().st_size > 0
    again = CliRunner().invoke(simulate, argv)
    assert again.output == result.output


def test_simulate_refuses_a_plot_path_that_is_a_folder_before_simulating(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "a-file").write_text("")
    for plot, message in [
        (tmp_path, "is a folder"),
        (tmp_path / "a-file" / "sub" / "sim.png", "a-file is a file, not a folder"),
    ]:
        argv = [sys.executable, "-m", "pipeline", "simulate", "--docs", "10", "--plot", str(plot)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


def test_scenarios_run_in_sim_mode_with_the_same_outcome_as_eager() -> None:
    from pipeline.harness.scenarios.model import load_scenario
    from pipeline.harness.scenarios.runner import parity, run_scenario

    path = (
        Path(__file__).resolve().parents[2] / "scenarios" / "llm_429_storm_shared_rate_limit.yaml"
    )
    scenario = load_scenario(path)
    sim = run_scenario(scenario, path, "sim")
    assert sim.passed, [c for c in sim.checks if not c.passed] or sim.error
    assert sim.sim["counts"]["deliver"] > 0
    assert parity(run_scenario(scenario, path, "eager"), sim) == []


def test_sim_mode_runs_worker_kills_and_skips_what_needs_real_processes() -> None:
    from pipeline.harness.scenarios.model import load_scenario
    from pipeline.harness.scenarios.runner import run_scenario

    folder = Path(__file__).resolve().parents[2] / "scenarios"
    for name, lost in (("worker_killed_during_ocr", 1), ("poison_kills_worker_dead_lettered", 2)):
        path = folder / f"{name}.yaml"
        report = run_scenario(load_scenario(path), path, "sim")
        assert report.skipped is None, report.skipped
        assert report.passed, [c for c in report.checks if not c.passed] or report.error
        # The killed task was lost and its message requeued, as reject-on-worker-lost does.
        assert report.sim["counts"]["worker_lost"] == lost
    for name in ("redis_restarted_mid_run", "queue_without_consumer"):
        path = folder / f"{name}.yaml"
        report = run_scenario(load_scenario(path), path, "sim")
        assert report.skipped and report.passed
