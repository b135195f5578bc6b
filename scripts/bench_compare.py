"""`make bench`: the CPU-stage benchmarks against a base commit measured on this machine.

`.venv/bin/python scripts/bench_compare.py [--base REF] [--limit 1.25] [--runs 2] -- PYTEST_ARGS...`

A baseline saved on another machine says little here: between two sessions'
machines every benchmark of the same code moved by 1.4x to 3.3x (not by one
factor a calibration could take out), so a gate on saved figures fails on a
slower machine and passes on a faster one whatever the code does. Instead the
base commit (default: the last commit that saved `tests/benchmarks/baselines`,
i.e. the code those figures describe; `--base REF` for any other, as a change's
base branch) is checked out in a temporary worktree and its benchmarks run
here, now, and this tree's, `--runs` times each in turns; each benchmark's
fastest round of all runs is compared, and one over `--limit` times the base's
is measured twice more on both sides before it fails. Without git or the base
commit (an exported tarball, a shallow clone) it falls back to the committed
figures (pytest-benchmark's `--benchmark-compare-fail`) and says so.

PYTEST_ARGS are the benchmark run's pytest arguments (test files and
`--benchmark-*` options) without a storage, save or compare option.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAVED = REPO / "tests" / "benchmarks" / "baselines"


def git(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)


def base_commit(ref: str | None) -> str | None:
    """The commit to measure as the base: `ref`, or the one that last saved the baselines;
    None when git or that commit is not available here."""
    if shutil.which("git") is None:
        return None
    if not ref:
        found = git("log", "-1", "--format=%H", "--", str(SAVED.relative_to(REPO)))
        ref = found.stdout.strip()
        if found.returncode != 0 or not ref:
            return None
    resolved = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if resolved.returncode != 0:
        return None
    return resolved.stdout.strip() or None


def pytest_run(tree: Path, args: Sequence[str]) -> int:
    """The benchmarks of `tree`, its own code first on the path (not this checkout's)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.call([sys.executable, "-m", "pytest", *args], cwd=tree, env=env)


def fastest_rounds(path: Path) -> dict[str, float]:
    """Each benchmark's fastest round (seconds) in one pytest-benchmark JSON file."""
    report = json.loads(path.read_text())
    return {bench["name"]: float(bench["stats"]["min"]) for bench in report["benchmarks"]}


def fastest_of_runs(paths: Sequence[Path]) -> dict[str, float]:
    """Per benchmark, the fastest round of all runs: a slow spell spoils one run, not all."""
    best: dict[str, float] = {}
    for path in paths:
        for name, seconds in fastest_rounds(path).items():
            best[name] = min(seconds, best.get(name, seconds))
    return best


def verdict(base: dict[str, float], now: dict[str, float], limit: float) -> list[str]:
    """A table of both sides' fastest rounds, and the benchmarks over `limit` (1.25: 25 %)."""
    rows = [f"{'benchmark':44s} {'base ms':>9s} {'now ms':>9s} {'now/base':>8s}"]
    slower = []
    for name in sorted(now):
        if name not in base:
            rows.append(f"{name:44s} {'-':>9s} {1000 * now[name]:9.3f}     (new)")
            continue
        ratio = now[name] / base[name]
        mark = "  SLOWER" if ratio > limit else ""
        rows.append(
            f"{name:44s} {1000 * base[name]:9.3f} {1000 * now[name]:9.3f} {ratio:8.2f}{mark}"
        )
        if ratio > limit:
            slower.append(name)
    print("\n".join(rows))
    return slower


#: Extra pairs of runs of the benchmarks over the limit before they fail: one run in
#: several of the same code came out 1.3-1.5x slower on a noisy shared machine.
CONFIRMING_RUNS = 2


def selecting(names: Sequence[str]) -> list[str]:
    """pytest -k for these benchmarks ("test_bench_parse_eml[1MB]": name and parameter)."""
    terms = []
    for name in names:
        function, _, parameter = name.partition("[")
        terms.append(f"({function} and {parameter.rstrip(']')})" if parameter else function)
    return ["-k", " or ".join(terms)]


def present_in(tree: Path, args: Sequence[str]) -> list[str]:
    """`args` without the test files `tree` lacks: a benchmark module added since the base
    commit runs on this tree only, and its benchmarks are shown as new."""
    return [arg for arg in args if not arg.endswith(".py") or (tree / arg).exists()]


def compare_with_commit(commit: str, limit: float, runs: int, args: Sequence[str]) -> int:
    """`runs` pairs of runs of the base and this tree, each pair in the other order than
    the last; fastest rounds compared; those over `limit` measured again before failing."""
    work = Path(tempfile.mkdtemp(prefix="docpipe-bench-"))
    base = work / "base"
    trees = {"base": base, "now": REPO}
    labels = {"base": f"the base, {commit[:12]}", "now": "this tree"}
    reports: dict[str, list[Path]] = {"base": [], "now": []}

    def measure(pairs: int, selection: Sequence[str] = ()) -> bool:
        for _ in range(pairs):
            order = ("base", "now") if len(reports["base"]) % 2 == 0 else ("now", "base")
            for side in order:
                report = work / f"{side}-{len(reports[side])}.json"
                what = f" ({selection[1]})" if selection else ""
                print(f"bench: {labels[side]}, run {len(reports[side]) + 1}{what}", flush=True)
                argv = [*present_in(trees[side], args), *selection, f"--benchmark-json={report}"]
                if pytest_run(trees[side], argv) != 0:
                    print(f"bench: the benchmarks of {labels[side]} failed")
                    return False
                reports[side].append(report)
        return True

    try:
        added = git("worktree", "add", "--detach", "--quiet", str(base), commit)
        if added.returncode != 0:
            print(f"bench: cannot check out {commit[:12]}: {added.stderr.strip()}")
            return 2
        if not measure(runs):
            return 2
        slower = verdict(fastest_of_runs(reports["base"]), fastest_of_runs(reports["now"]), limit)
        if slower:
            print(f"bench: {len(slower)} over {limit:.2f}x the base; measuring them again")
            if not measure(CONFIRMING_RUNS, selecting(slower)):
                return 2
            now = fastest_of_runs(reports["now"])
            slower = verdict(
                fastest_of_runs(reports["base"]), {name: now[name] for name in slower}, limit
            )
    finally:
        git("worktree", "remove", "--force", str(base))
        shutil.rmtree(work, ignore_errors=True)
    if slower:
        print(f"bench: {len(slower)} benchmark(s) over {limit:.2f}x the base: {', '.join(slower)}")
        return 1
    print(f"bench: none over {limit:.2f}x the base ({commit[:12]}, measured here)")
    return 0


def compare_with_saved(limit: float, args: Sequence[str]) -> int:
    print(
        "bench: no git or no base commit here: comparing with the saved figures in "
        f"{SAVED.relative_to(REPO)}, measured on another machine (a slower machine "
        "fails this, a faster one passes it, whatever the code does)"
    )
    percent = round(100 * (limit - 1))
    storage = f"--benchmark-storage=file://{SAVED}"
    compare = [storage, "--benchmark-compare", f"--benchmark-compare-fail=min:{percent}%"]
    return pytest_run(REPO, [*args, *compare])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="CPU-stage benchmarks against a base commit measured on this machine."
    )
    parser.add_argument(
        "--base", default="", help="git ref to compare with (default: the saved baseline's)"
    )
    parser.add_argument(
        "--limit", type=float, default=1.25, help="fail over this many times the base (1.25)"
    )
    parser.add_argument("--runs", type=int, default=2, help="runs of each side, in turns (2)")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="-- then pytest's")
    options = parser.parse_args(argv)
    args = [arg for arg in options.pytest_args if arg != "--"]
    commit = base_commit(options.base or None)
    if commit is None:
        if options.base:
            print(f"bench: {options.base} is not a commit here")
            return 2
        return compare_with_saved(options.limit, args)
    return compare_with_commit(commit, options.limit, max(1, options.runs), args)


if __name__ == "__main__":
    sys.exit(main())
