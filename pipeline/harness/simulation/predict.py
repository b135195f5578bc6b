"""Predictions: the load test's two runs, and capacity planning, on the fast path.

Times here are the load run's wall seconds: the profile is already scaled by
its time scale, and so are the settings `docpipe load` scales
(pipeline.adapters.latency.scaled_settings), so a prediction reads like a measurement.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.adapters.latency import LatencyProfile, scaled_settings, steady_rate
from pipeline.domain.packing import plan_packs
from pipeline.errors import ConfigurationError
from pipeline.harness.layout import PLAN_LAYOUT, WorkerSpec, concurrency_per_queue, parse_layout
from pipeline.harness.simulation.engine import SimConfig, SimResult, SimulatedWorker, Simulator
from pipeline.harness.simulation.model import DocumentShape, LlmRequest, ModelExecutor, Policy
from pipeline.settings import Settings

#: Broker round trip and worker bookkeeping per task, wall seconds (FEASIBILITY.md: ~4.7 ms/hop).
HOP_OVERHEAD_S = 0.005
QUEUE_ORDER = ("ocr", "text", "entity", "graph")
#: A layout "sustains" a rate only with this much of its busiest resource in use, at most.
MAX_UTILISATION = 0.95
#: The capacity search offers this much more than the target, so that a layout that
#: keeps up shows a measured rate at or over the target despite the arrivals' noise.
TARGET_OFFER_HEADROOM = 0.05


def document_shapes(
    files: Sequence[Path], *, measure_cpu: bool = False, pack_tokens: int | None = None
) -> list[DocumentShape]:
    """Each file run once through the real stages (eager, no latency): its shape.

    With `measure_cpu` the wall time of that run (the stage code's own CPU
    and database time) is kept on the shape; it varies from run to run. Its
    LLM requests are packed as the stage packs them, with `pack_tokens`
    (default: the settings' `llm_pack_tokens`).
    """
    from pipeline.app.intake import claim_own, submit_file
    from pipeline.app.monolith import process_document
    from pipeline.bootstrap import build_services

    token = hashlib.blake2b(str(time.monotonic_ns()).encode(), digest_size=6).hexdigest()
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url="sqlite://",
        blob_url="memory://",
        redis_url=f"fakeredis://shapes-{token}",
        eager=True,
        ocr_poll_interval_s=0.0,
        fault_injection=False,
        project_name="shapes",
    )
    budget = settings.llm_pack_tokens if pack_tokens is None else pack_tokens
    with build_services(settings) as services:
        project = services.store.ensure_project("shapes")
        shapes = []
        for path in files:
            submission = submit_file(services, path, project)
            claim_own(services, submission.document_uuid, worker="shapes")
            began = time.perf_counter()
            process_document(services, submission.document_uuid)
            cpu = time.perf_counter() - began
            document = services.store.get_document(submission.document_uuid)
            chunks = services.store.get_chunks(submission.document_uuid)
            keys = tuple(hashlib.sha256(c.text.encode()).hexdigest() for c in chunks)
            texts = [c.text for c in chunks]
            extractor = services.extractor
            requests = tuple(
                LlmRequest(tuple(pack), extractor.request_tokens([texts[i] for i in pack]))
                for pack in plan_packs(texts, budget, extractor.request_tokens)
            )
            shapes.append(
                DocumentShape(
                    name=path.name,
                    ocr=document.ocr_metadata.get("method") == "ocr",
                    chunk_keys=keys,
                    cpu_s=cpu if measure_cpu else 0.0,
                    requests=requests,
                )
            )
        return shapes


def load_policy(settings: Settings, time_scale: float) -> Policy:
    """The task-layer settings as `docpipe load` gives them to its workers."""
    scaled = scaled_settings(settings, time_scale)
    return Policy(
        ocr_poll_interval_s=scaled["ocr_poll_interval_s"],
        ocr_max_polls=settings.ocr_max_polls,
        llm_rate_limit_calls=settings.llm_rate_limit_calls,
        llm_rate_limit_tokens=settings.llm_rate_limit_tokens,
        llm_rate_limit_window_s=scaled["llm_rate_limit_window_s"],
        llm_rate_limit_max_wait_s=settings.llm_rate_limit_max_wait_s,
        max_retries=settings.max_retries,
        retry_backoff_base_s=scaled["retry_backoff_base_s"],
        retry_backoff_max_s=settings.retry_backoff_max_s,
        max_redeliveries=settings.max_redeliveries,
    )


def engine_layout(
    layout: Sequence[WorkerSpec], prefetch_multiplier: int = 1
) -> list[SimulatedWorker]:
    return [
        SimulatedWorker(w.queue, w.concurrency, prefetch_multiplier, name=f"{w.queue}-{i}")
        for i, w in enumerate(layout)
    ]


def docs_per_hour(result: SimResult) -> float:
    """The load test's steady rate: (n - 1) / (last - first completion)."""
    return steady_rate(result.completed_times()) * 3600


def middle_half_per_hour(completions: Sequence[float]) -> float:
    """Completions per hour between the first and the last quarter of them.

    Under a steady offered load the first documents find the system empty and
    finish fastest, the last ones do not: (n - 1) / (last - first) reads a few
    per cent under a rate the layout does keep up with. The middle half has
    neither the fill nor the drain.
    """
    times = sorted(completions)
    if len(times) < 8:
        return steady_rate(times) * 3600
    quarter = len(times) // 4
    return steady_rate(times[quarter : len(times) - quarter]) * 3600


def simulate_sequential(
    shapes: Sequence[DocumentShape],
    profile: LatencyProfile,
    policy: Policy,
    documents: int,
    seed: int,
) -> SimResult:
    """The monolith: one document at a time, no broker hops (a closed loop of one user)."""
    workers = [SimulatedWorker(q, 1, name=f"{q}-seq") for q in QUEUE_ORDER]
    config = SimConfig(workers, users=1, trace=False)
    executor = ModelExecutor(shapes, profile, policy, seed=seed)
    return Simulator(config, executor).run(range(documents))


def simulate_layout(
    shapes: Sequence[DocumentShape],
    profile: LatencyProfile,
    policy: Policy,
    workers: Sequence[SimulatedWorker],
    documents: int,
    *,
    seed: int = 0,
    users: int | None = None,
    user_delay_s: float = 0.0,
    hop_overhead_s: float = HOP_OVERHEAD_S,
    visibility_timeout_s: float = 4800.0,
    trace: bool = False,
) -> SimResult:
    config = SimConfig(
        workers,
        users=users,
        user_delay_s=user_delay_s,
        hop_overhead_s=hop_overhead_s,
        visibility_timeout_s=visibility_timeout_s,
        trace=trace,
    )
    executor = ModelExecutor(shapes, profile, policy, seed=seed)
    return Simulator(config, executor).run(range(documents))


def predict_load(
    shapes: Sequence[DocumentShape],
    profile: LatencyProfile,
    settings: Settings,
    layout: Sequence[WorkerSpec],
    *,
    users: int = 24,
    poll_s: float = 0.1,
    documents: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Docs/hour `docpipe load` should measure: the monolith and the Celery layout under locust."""
    policy = load_policy(settings, profile.time_scale)
    began = time.perf_counter()
    rounds = max(1, math.ceil(100 / len(shapes)))
    sequential = simulate_sequential(shapes, profile, policy, rounds * len(shapes), seed)
    celery = simulate_layout(
        shapes,
        profile,
        policy,
        engine_layout(layout),
        documents,
        seed=seed,
        users=users,
        # Locust notices a finished document at its next database poll.
        user_delay_s=poll_s / 2,
    )
    seq_rate = docs_per_hour(sequential)
    celery_rate = docs_per_hour(celery)
    return {
        "sequential_docs_per_hour": seq_rate,
        "celery_docs_per_hour": celery_rate,
        "ratio": celery_rate / seq_rate if seq_rate else None,
        "time_scale": profile.time_scale,
        "simulated_documents": len(sequential.documents) + len(celery.documents),
        "virtual_seconds": sequential.end_time + celery.end_time,
        "wall_seconds": time.perf_counter() - began,
        "users": users,
        "hop_overhead_s": HOP_OVERHEAD_S,
        "cpu_s_per_document": sum(s.cpu_s for s in shapes) / len(shapes),
    }


# --- capacity planning ----------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Capacity planning's view of a worker layout: task slots (and the pool) per queue."""

    concurrency: dict[str, int]
    pools: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Layout:
        """The one layout syntax (pipeline.harness.layout), one worker per queue."""
        try:
            workers = parse_layout(spec)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        shared = [w.item for w in workers if len(w.queues) > 1]
        if shared:
            raise ValueError(f"capacity planning models one queue per worker; got {shared}")
        return cls(concurrency_per_queue(workers), {w.queue: w.pool for w in workers})

    def spec(self) -> str:
        return " ".join(f"{q}:{self.pool(q)}:{self.concurrency[q]}" for q in QUEUE_ORDER)

    def pool(self, queue: str) -> str:
        return self.pools.get(queue) or _PLAN_POOLS[queue]

    def workers(self) -> list[SimulatedWorker]:
        return [SimulatedWorker(q, self.concurrency[q], name=f"{q}-0") for q in QUEUE_ORDER]

    def with_concurrency(self, queue: str, slots: int) -> Layout:
        return Layout({**self.concurrency, queue: slots}, self.pools)

    def with_more(self, queue: str, extra: int) -> Layout:
        return self.with_concurrency(queue, self.concurrency[queue] + extra)


_PLAN_POOLS = {w.queue: w.pool for w in parse_layout(PLAN_LAYOUT)}


@dataclass(frozen=True)
class Capacity:
    """One layout under a steady offered load: what completes and what limits it."""

    layout: Layout
    offered_per_hour: float
    docs_per_hour: float
    dead_lettered: int
    bottleneck: str
    utilisation: dict[str, float]
    #: Median time in the system of the first and of the last quarter of the documents.
    early_latency_s: float = 0.0
    late_latency_s: float = 0.0

    @property
    def sustained(self) -> bool:
        """The layout keeps up: nothing dead-lettered, no backlog, 5 % headroom.

        Under overload every document waits longer than the one before, so the
        last quarter's median time in the system grows well past the first's;
        at a utilisation near 1 the backlog grows without bound in the long run.
        """
        return (
            self.dead_lettered == 0
            and self.late_latency_s <= 1.5 * self.early_latency_s
            and max(self.utilisation.values()) < MAX_UTILISATION
        )

    @property
    def estimate_per_hour(self) -> float:
        """Operational-law capacity: throughput / utilisation of the busiest resource."""
        busiest = max(self.utilisation.values())
        return self.docs_per_hour / busiest if busiest > 0 else math.inf


def measure_capacity(
    shapes: Sequence[DocumentShape],
    profile: LatencyProfile,
    policy: Policy,
    layout: Layout,
    *,
    offered_per_hour: float,
    documents: int = 400,
    seed: int = 0,
) -> Capacity:
    """Offer documents at a steady rate and see what the layout does with them.

    Utilisation is per queue (busy slot-seconds over slots x time, a task
    waiting for the rate limit holds its slot) and, for the LLM rate limit,
    calls made over calls allowed. The bottleneck is the most utilised.
    """
    gap = 3600.0 / offered_per_hour
    arrivals = {doc: doc * gap for doc in range(documents)}
    executor = ModelExecutor(shapes, profile, policy, seed=seed)
    config = SimConfig(layout.workers(), hop_overhead_s=0.0, trace=False)
    result = Simulator(config, executor).run(range(documents), submit_at=arrivals)
    span = result.end_time or 1.0
    used = {q: result.busy_s.get(q, 0.0) / (layout.concurrency[q] * span) for q in QUEUE_ORDER}
    allowed = policy.llm_rate_limit_calls / policy.llm_rate_limit_window_s * span
    used["llm rate limit"] = executor.llm_calls / allowed if allowed else 0.0
    if policy.llm_rate_limit_tokens > 0:
        tokens_allowed = policy.llm_rate_limit_tokens / policy.llm_rate_limit_window_s * span
        used["llm token limit"] = executor.llm_tokens / tokens_allowed
    busiest = max(used, key=lambda name: used[name])
    dead = sum(1 for r in result.documents.values() if r.outcome != "completed")
    latency = [
        r.ended_at - r.submitted_at
        for _, r in sorted(result.documents.items())
        if r.ended_at is not None
    ]
    quarter = max(1, len(latency) // 4)
    return Capacity(
        layout,
        offered_per_hour,
        middle_half_per_hour(result.completed_times()),
        dead,
        busiest if busiest.startswith("llm ") else f"queue {busiest}",
        used,
        statistics.median(latency[:quarter]) if latency else math.inf,
        statistics.median(latency[-quarter:]) if latency else math.inf,
    )


def reaches_target(capacity: Capacity, target_per_hour: float) -> bool:
    """Sustained, and the measured rate - the figure shown to the user - is the target or more."""
    return capacity.sustained and capacity.docs_per_hour >= target_per_hour


def plan_capacity(
    shapes: Sequence[DocumentShape],
    profile: LatencyProfile,
    policy: Policy,
    start: Layout,
    target_per_hour: float,
    *,
    max_steps: int = 30,
    max_workers: int = 5000,
    documents: int = 400,
    seed: int = 0,
) -> dict[str, Any]:
    """Greedy: add workers to the bottleneck queue until the target is sustained (bounded).

    A layout reaches the target only in the figures the report prints: it keeps
    up (`Capacity.sustained`) AND its measured docs/hour is at least the target.
    """
    steps: list[Capacity] = []
    layout = start
    reached: Capacity | None = None
    reason = ""
    offered = target_per_hour * (1 + TARGET_OFFER_HEADROOM)

    def measure(candidate: Layout) -> Capacity:
        capacity = measure_capacity(
            shapes,
            profile,
            policy,
            candidate,
            offered_per_hour=offered,
            documents=documents,
            seed=seed,
        )
        steps.append(capacity)
        return capacity

    grown: tuple[str, int] | None = None  # the queue grown last, and its size before
    for _ in range(max_steps):
        capacity = measure(layout)
        if reaches_target(capacity, target_per_hour):
            reached = capacity
            if grown is not None:
                reached = _shrink(measure, capacity, *grown, target_per_hour)
            break
        if capacity.bottleneck.startswith("llm "):
            reason = f"the shared {capacity.bottleneck} caps throughput; more workers cannot help"
            break
        queue = capacity.bottleneck.removeprefix("queue ")
        current = layout.concurrency[queue]
        # Grow by the bottleneck's overload (utilisation is capped near 1 when saturated).
        wanted = math.ceil(current * target_per_hour / max(capacity.estimate_per_hour, 1e-9))
        extra = max(1, min(wanted - current, current))
        if sum(layout.concurrency.values()) + extra > max_workers:
            reason = f"more than {max_workers} workers would be needed"
            break
        grown = (queue, current)
        layout = layout.with_more(queue, extra)
    else:
        reason = f"not reached within {max_steps} steps"
    first = steps[0]
    return {
        "target_docs_per_hour": target_per_hour,
        "offered_docs_per_hour": offered,
        "start_layout": start.spec(),
        "start_docs_per_hour": first.docs_per_hour,
        "start_capacity_estimate": first.estimate_per_hour,
        "bottleneck": first.bottleneck,
        "utilisation": first.utilisation,
        "reached": reached is not None,
        "layout": reached.layout.spec() if reached is not None else None,
        "reason": reason,
        "steps": [
            {
                "layout": c.layout.spec(),
                "docs_per_hour": c.docs_per_hour,
                "dead_lettered": c.dead_lettered,
                "latency_first_quarter_s": c.early_latency_s,
                "latency_last_quarter_s": c.late_latency_s,
                "bottleneck": c.bottleneck,
                "capacity_estimate": c.estimate_per_hour,
                "sustained": c.sustained,
                "reaches_target": reaches_target(c, target_per_hour),
            }
            for c in steps
        ],
    }


def _shrink(
    measure: Callable[[Layout], Capacity],
    reached: Capacity,
    queue: str,
    below: int,
    target_per_hour: float,
) -> Capacity:
    """Bisect the last grown queue between its old size (short) and the size that reached.

    The greedy step can overshoot; the smallest size that reaches the target in
    its own measurement is the one the report names (each probe is a row).
    """
    low, high = below + 1, reached.layout.concurrency[queue] - 1
    best = reached
    while low <= high:
        middle = (low + high) // 2
        candidate = reached.layout.with_concurrency(queue, middle)
        capacity = measure(candidate)
        if reaches_target(capacity, target_per_hour):
            best, high = capacity, middle - 1
        else:
            low = middle + 1
    return best


def sweep(
    shapes: Sequence[DocumentShape],
    profile: LatencyProfile,
    policy: Policy,
    base: Layout,
    *,
    offered_per_hour: float,
    factors: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    documents: int = 300,
    seed: int = 0,
) -> dict[str, list[tuple[int, float]]]:
    """Estimated capacity as one queue's workers vary and the others stay as in `base`."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for queue in QUEUE_ORDER:
        points: list[tuple[int, float]] = []
        for n in sorted({max(1, round(base.concurrency[queue] * f)) for f in factors}):
            layout = base.with_concurrency(queue, n)
            capacity = measure_capacity(
                shapes,
                profile,
                policy,
                layout,
                offered_per_hour=offered_per_hour,
                documents=documents,
                seed=seed,
            )
            points.append((n, min(capacity.estimate_per_hour, 1e9)))
        curves[queue] = points
    return curves


def plot_sweep(path: Path, curves: dict[str, list[tuple[int, float]]], target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for queue, points in curves.items():
        ax.plot([n for n, _ in points], [r for _, r in points], marker="o", label=queue)
    ax.axhline(target, color="grey", linestyle="--", label="target")
    ax.set_xscale("log")
    ax.set(
        title="Simulated capacity vs workers on one queue (others fixed)",
        xlabel="workers (concurrency) on the queue",
        ylabel="documents per hour (throughput / top utilisation)",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
