"""The growth check's verdicts (scripts/bench_growth.py), on made-up timings."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from types import ModuleType

import pytest

from tests.benchmarks.workloads import SWEEPS, SWEEPS_BY_NAME, Sweep
from tests.conftest import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_growth.py"


@pytest.fixture(scope="module")
def growth() -> ModuleType:
    return load_script("bench_growth")


def _sweep(held: bool = True) -> Sweep:
    return Sweep("made_up", {"1x": 1, "10x": 10, "100x": 100}, int, str, 12.0, held)


MS = 1_000_000


def test_ratios_compare_each_size_with_the_one_before(growth: ModuleType) -> None:
    assert growth.ratios({"1x": 2 * MS, "10x": 21 * MS, "100x": 420 * MS}) == [10.5, 20.0]


def test_the_worst_step_decides(growth: ModuleType) -> None:
    times = {"1x": 2 * MS, "10x": 26 * MS, "100x": 260 * MS}

    assert growth.worst_checked(_sweep(), times) == 13.0


def test_steps_under_a_millisecond_at_10x_are_shown_but_not_held(growth: ModuleType) -> None:
    # 10 us -> 400 us is 40x, but below MIN_CHECKED_MS the allocator decides, not the stage.
    times = {"1x": 10_000, "10x": 400_000, "100x": 4 * MS}

    assert growth.worst_checked(_sweep(), times) == 10.0
    assert growth.describe(times) == "40.0x* / 10.0x"


def test_a_sweep_not_held_to_its_bound_never_fails(growth: ModuleType) -> None:
    times = {"1x": 1 * MS, "10x": 60 * MS, "100x": 6000 * MS}

    assert growth.worst_checked(_sweep(held=False), times) == 0.0


def test_every_stage_is_swept_over_sizes_ten_times_apart() -> None:
    assert {
        "parse_txt",
        "parse_eml",
        "parse_docx",
        "clean_text",
        "title_and_category",
        "chunk_text",
        "verify_entities",
        "resolve_mentions",
        "stage_relationships",
        "rate_limit_acquire",
    } == set(SWEEPS_BY_NAME)
    for sweep in SWEEPS:
        sizes = list(sweep.sizes.values())
        assert len(sizes) >= 3, sweep.name
        assert all(later == 10 * earlier for earlier, later in pairwise(sizes)), sweep.name
    assert SWEEPS_BY_NAME["resolve_mentions"].bound == 15.0
    assert SWEEPS_BY_NAME["rate_limit_acquire"].bound == 3.0
    assert {
        s.bound for s in SWEEPS if s.name not in ("resolve_mentions", "rate_limit_acquire")
    } == {12.0}


def test_the_saved_baseline_covers_every_benchmark() -> None:
    # A benchmark missing from the baseline is never compared, and nothing says so.
    baselines = sorted((SCRIPT.parents[1] / "tests" / "benchmarks" / "baselines").glob("*/*.json"))
    assert baselines
    expected = {f"test_bench_{sweep.name}[{label}]" for sweep in SWEEPS for label in sweep.sizes}
    for path in baselines:
        saved = {bench["name"] for bench in json.loads(path.read_text())["benchmarks"]}
        assert saved == expected, path.name
