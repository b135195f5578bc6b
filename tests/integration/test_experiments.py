"""`docpipe experiment` at a tiny size, on a private redis-server and real workers."""

from __future__ import annotations

import pytest

from pipeline.harness.perf.experiments import run_overhead, run_pools

pytestmark = pytest.mark.integration


def test_pools_experiment_runs_both_pools() -> None:
    # As many slots as tasks: a gevent worker's synchronous loop fetches the next prefetch
    # window only after its 2 s drain_events poll, so 20 tasks on 5 slots took 8 s.
    result = run_pools(tasks=20, concurrency=20, wait_ms=5, rounds=1)
    assert set(result["pools"]) == {"threads", "gevent"}
    for row in result["pools"].values():
        assert row["tasks"] == 20
        assert row["tasks_per_s"] > 0
        assert row["worker_cpu_ms_per_task"] >= 0
    assert result["verdict"]


def test_overhead_experiment_completes_every_harness_chain() -> None:
    result = run_overhead(chains=5, sequential=2, concurrency=2, rounds=1)
    assert result["plain"]["ms_per_hop_p50"] > 0
    assert result["harness"]["ms_per_hop_p50"] > 0
    assert result["paired_ratio"]["unloaded_pairs"] == 2
    assert result["paired_ratio"]["unloaded_ms_per_hop"] > 0
    # Task events are on (the plan's Flower): task-sent at least, per hop, on both sides.
    assert result["plain"]["event_publishes_per_hop"] >= 1
    assert result["harness"]["event_publishes_per_hop"] >= 1
    # Every document the harness chains touched reached `completed`, with its history.
    assert result["documents"]["by_status"].get("completed") == 2 + 5 + 2 * 2
    assert result["documents"]["history_rows_per_completed_document"] >= 6
