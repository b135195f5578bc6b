"""The virtual-time simulator: determinism and the Redis pitfalls, asserted on the trace."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.latency import LatencyProfile, build_profile
from pipeline.simulation.engine import Crash, SimConfig, SimResult, Simulator, WorkerSpec
from pipeline.simulation.model import DocumentShape, ModelExecutor, Policy

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


def layout(text: int = 1, prefetch: int = 1, ocr: int = 1) -> list[WorkerSpec]:
    return [
        *(WorkerSpec("ocr", 1, name=f"ocr-{i}") for i in range(ocr)),
        *(WorkerSpec("text", 1, prefetch, name=f"text-{i}") for i in range(text)),
        WorkerSpec("entity", 4, name="entity-0"),
        WorkerSpec("graph", 1, name="graph-0"),
    ]


def simulate(
    shapes: Sequence[DocumentShape],
    workers: Sequence[WorkerSpec],
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
    delivered = events(result, "deliver", node)
    assert [(e[0], e[4], e[5]) for e in delivered] == [(0.0, "text-0", 1), (100.0, "text-1", 2)]
    assert [e[0] for e in events(result, "restore", node)] == [100.0]
    finished = events(result, "finish", node)
    # The first run finishes while its message is back on the queue: its ack finds nothing.
    assert [(e[0], e[4], e[6]) for e in finished] == [(151.0, "text-0", False), (251.0, "text-1", True)]
    assert result.executions[(0, "document_node")] == 2
    assert result.counts["duplicate_end"] == 1


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
    assert [(e[0], e[5]) for e in events(result, "deliver", node)] == [(0.0, 1), (100.0, 2)]
    assert [(e[0], e[5]) for e in events(result, "finish", node)] == [(131.0, "ok")]
    assert result.documents[0].outcome == "completed"


def test_a_countdown_longer_than_the_visibility_timeout_is_delivered_again_early() -> None:
    policy = Policy(fail_first=("document_node",), retry_backoff_base_s=300.0)
    result = simulate([TXT], layout(text=2), policy=policy, visibility_timeout_s=100.0)
    node = task_id_of(result, "document_node")
    retry = [e for e in events(result, "publish", node) if e[5] == 1]
    assert len(retry) == 1
    eta = retry[0][6]
    assert eta > 150.0  # backoff 300 s * jitter 0.5-1.0
    deliveries = events(result, "deliver", node)[1:]
    # Held until its ETA by one worker, restored every visibility timeout to another one.
    assert [e[0] for e in deliveries] == [0.0, 100.0, 200.0][: len(deliveries)]
    assert len(deliveries) >= 2 and all(e[0] < eta for e in deliveries)
    assert events(result, "restore", node)[0][0] == 100.0
    retried_runs = [e for e in events(result, "start", node) if e[0] == eta]
    assert len(retried_runs) == len(deliveries) >= 2


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
    policy = Policy(llm_rate_limit_calls=5, llm_rate_limit_window_s=60.0)
    result = simulate([shape], layout(text=1), docs=3, policy=policy)
    assert all(r.outcome == "completed" for r in result.documents.values())
    # 30 calls at 5 per 60 s need at least 5 windows.
    assert result.end_time >= 5 * 60.0
