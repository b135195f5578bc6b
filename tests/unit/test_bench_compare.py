"""`make bench`'s comparison with a base commit (scripts/bench_compare.py), on made-up timings.

No benchmark and no git runs here: the script's pytest and git calls are replaced by
ones that write pytest-benchmark reports with the timings each test gives.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import load_script

MS = 0.001


@pytest.fixture
def bench() -> ModuleType:
    return load_script("bench_compare")


def _report(path: Path, timings: dict[str, float]) -> None:
    benchmarks = [{"name": name, "stats": {"min": seconds}} for name, seconds in timings.items()]
    path.write_text(json.dumps({"benchmarks": benchmarks}))


def _fake_runs(
    bench: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    timings: Callable[[str, int, Sequence[str]], dict[str, float]],
) -> list[tuple[str, list[str]]]:
    """pytest runs that report `timings(side, run of that side, -k selection)`."""
    calls: list[tuple[str, list[str]]] = []

    def pytest_run(tree: Path, args: Sequence[str]) -> int:
        side = "now" if tree == bench.REPO else "base"
        selection = list(args[args.index("-k") : args.index("-k") + 2]) if "-k" in args else []
        run = sum(1 for called, _ in calls if called == side)
        calls.append((side, selection))
        (report,) = [arg.split("=", 1)[1] for arg in args if arg.startswith("--benchmark-json=")]
        _report(Path(report), timings(side, run, selection))
        return 0

    def git(*args: str, cwd: Path = bench.REPO) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(["git", *args], 0, "", "")

    monkeypatch.setattr(bench, "pytest_run", pytest_run)
    monkeypatch.setattr(bench, "git", git)
    return calls


def test_each_benchmark_keeps_its_fastest_round_of_all_runs(
    bench: ModuleType, tmp_path: Path
) -> None:
    _report(tmp_path / "a.json", {"x": 3 * MS, "y": 1 * MS})
    _report(tmp_path / "b.json", {"x": 2 * MS, "y": 4 * MS})
    assert bench.fastest_of_runs([tmp_path / "a.json", tmp_path / "b.json"]) == {
        "x": 2 * MS,
        "y": 1 * MS,
    }


def test_only_benchmarks_over_the_limit_are_slower(bench: ModuleType) -> None:
    base = {"a": 1 * MS, "b": 1 * MS}
    now = {"a": 1.25 * MS, "b": 1.26 * MS, "new": 9 * MS}
    assert bench.verdict(base, now, 1.25) == ["b"]


def test_a_selection_names_each_benchmark_with_its_parameter(bench: ModuleType) -> None:
    assert bench.selecting(["test_bench_parse_eml[1MB]", "test_plain"]) == [
        "-k",
        "(test_bench_parse_eml and 1MB) or test_plain",
    ]


def test_a_benchmark_module_the_base_lacks_runs_on_this_tree_only(
    bench: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_bench_old.py").write_text("")
    args = ["-q", "tests/test_bench_old.py", "tests/test_bench_new.py", "-p", "no:randomly"]
    assert bench.present_in(tmp_path, args) == [
        "-q",
        "tests/test_bench_old.py",
        "-p",
        "no:randomly",
    ]


def test_runs_alternate_which_side_goes_first(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_runs(bench, monkeypatch, lambda side, run, selection: {"a": 1 * MS})
    assert bench.compare_with_commit("c0ffee" * 7, 1.25, 3, []) == 0
    assert [side for side, _ in calls] == ["base", "now", "now", "base", "base", "now"]


def test_a_slow_run_measured_again_as_fast_as_the_base_passes(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def timings(side: str, run: int, selection: Sequence[str]) -> dict[str, float]:
        # This tree's first two runs hit a slow spell on "a"; measured again, it is not slower.
        slow = side == "now" and run < 2
        return {"a": (1.5 if slow else 1.0) * MS, "b": 1 * MS}

    calls = _fake_runs(bench, monkeypatch, timings)
    assert bench.compare_with_commit("c0ffee" * 7, 1.25, 2, []) == 0
    again = [selection for _, selection in calls if selection]
    assert again == [["-k", "a"]] * 2 * bench.CONFIRMING_RUNS


def test_a_benchmark_slower_in_every_run_fails(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def timings(side: str, run: int, selection: Sequence[str]) -> dict[str, float]:
        return {"a": (1.4 if side == "now" else 1.0) * MS, "b": 1 * MS}

    _fake_runs(bench, monkeypatch, timings)
    assert bench.compare_with_commit("c0ffee" * 7, 1.25, 2, []) == 1
    assert "1 benchmark(s) over 1.25x the base: a" in capsys.readouterr().out
