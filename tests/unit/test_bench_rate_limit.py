"""Benchmark of the shared LLM rate limiter: acquisitions with 100, 1,000 and 10,000
requests already in the window (the production Lua script, on fakeredis).

Run with `make bench`; normal runs execute it once, on a tenth of the larger windows.
scripts/bench_growth.py holds it to `WINDOW_BOUND`: an acquisition that read the
whole window would cost 10x for 10x the requests in it.
"""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from pipeline.adapters.redis_features import RATE_LIMIT_PREFIX, RATE_LIMIT_TOTALS_SUFFIX
from tests.benchmarks.workloads import (
    ACQUISITIONS_PER_CALL,
    LIMITED_NAME,
    SWEEPS_BY_NAME,
    WINDOW_COUNTS,
    input_size,
)


@pytest.mark.parametrize("size_id", list(WINDOW_COUNTS))
def test_bench_rate_limit_acquire(benchmark: BenchmarkFixture, size_id: str) -> None:
    sweep = SWEEPS_BY_NAME["rate_limit_acquire"]
    size = input_size(WINDOW_COUNTS, size_id, measured=not benchmark.disabled)
    data = sweep.prepare(size)
    benchmark.group = sweep.name

    benchmark(sweep.run, data)

    key = RATE_LIMIT_PREFIX + LIMITED_NAME
    in_window = int(data.client.zcard(key))
    assert in_window > size and (in_window - size) % ACQUISITIONS_PER_CALL == 0
    # The totals the next acquisition reads agree with the window: nothing to count again.
    assert (
        data.client.get(key + RATE_LIMIT_TOTALS_SUFFIX) == f"{in_window}:{100 * in_window}".encode()
    )
