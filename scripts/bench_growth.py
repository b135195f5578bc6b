"""Growth check: does each CPU-bound stage cost at most `bound` x for 10x the input?

Run by `make bench` (not `make test`):
`.venv/bin/python scripts/bench_growth.py [--rounds N] [--stage NAME ...] [--pause-gc]`.

For every sweep of tests/benchmarks/workloads.py it prints the time at each size
and the ratio between consecutive sizes (10x apart), and exits 1 if a ratio is
above the stage's bound (12x; resolution 15x).

How it keeps a shared, loaded 2-core machine from deciding the answer:

- CPU time of this thread (`time.thread_time_ns`), not wall time: time spent
  waiting while another process runs does not count;
- the sizes of a stage are measured in turns (1x, 10x, 100x, 1x, ...), so a busy
  spell hits all of them, and each size keeps its fastest call (noise only ever
  adds time); each call is timed alone, and small sizes get more calls per round;
- a stage over its bound is measured once more (twice the rounds) before it fails;
- each round starts from a collected heap (`gc.collect()`), the collector running
  during the call. Without that, a full collection - started after a fixed number
  of allocations, walking every object the process holds - lands in one call of
  many at 1x and in most calls at 10x, whatever the stage does; `--pause-gc`
  pauses the collector during the calls altogether (the stage's own work only);
- a step whose 10x time is under `MIN_CHECKED_MS` is printed, not held to the
  bound: there, fixed costs and the allocator (glibc maps each block over 128 KB
  afresh: 246 page faults per 1 MB string here) outweigh the stage's own work.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.benchmarks.workloads import SWEEPS, Sweep  # noqa: E402

#: A round times a small size's call several times, up to this much CPU time in all...
ROUND_NS = 5_000_000
#: ... and at most this many times.
MAX_CALLS_PER_ROUND = 20
#: Steps whose larger size takes less than this per call are not held to the bound.
MIN_CHECKED_MS = 1.0


def _time_call(run: Callable[[object], object], data: object, *, pause_gc: bool) -> int:
    """CPU nanoseconds of one call, started from a collected heap.

    One call per sample, as a worker makes it (one document, then other work): calls
    repeated back to back would find a small input still in the CPU caches and make
    the small sizes look cheaper than they are.
    """
    gc.collect()
    if pause_gc:
        gc.disable()
    try:
        start = time.thread_time_ns()
        run(data)
        return time.thread_time_ns() - start
    finally:
        gc.enable()


def measure(sweep: Sweep, rounds: int, *, pause_gc: bool) -> dict[str, int]:
    """The fastest call at each size, in CPU nanoseconds."""
    inputs = {label: sweep.prepare(size) for label, size in sweep.sizes.items()}
    calls = {}
    for label, data in inputs.items():  # warm-up: imports, caches, the first allocation
        once = max(_time_call(sweep.run, data, pause_gc=pause_gc), 1)
        calls[label] = max(1, min(MAX_CALLS_PER_ROUND, ROUND_NS // once))
    best = {label: sys.maxsize for label in inputs}
    for _ in range(rounds):
        for label, data in inputs.items():
            for _ in range(calls[label]):
                best[label] = min(best[label], _time_call(sweep.run, data, pause_gc=pause_gc))
    return best


def ratios(times: dict[str, int]) -> list[float]:
    values = list(times.values())
    return [later / max(earlier, 1) for earlier, later in pairwise(values)]


def worst_checked(sweep: Sweep, times: dict[str, int]) -> float:
    """The largest ratio among the steps held to the bound (0 when none is)."""
    if not sweep.held_to_bound:
        return 0.0
    values = list(times.values())
    checked = [
        ratio
        for ratio, later in zip(ratios(times), values[1:], strict=True)
        if later / 1e6 >= MIN_CHECKED_MS
    ]
    return max(checked, default=0.0)


def describe(times: dict[str, int]) -> str:
    values = list(times.values())
    return " / ".join(
        f"{ratio:.1f}x" + ("" if later / 1e6 >= MIN_CHECKED_MS else "*")
        for ratio, later in zip(ratios(times), values[1:], strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds per size (default 7)")
    parser.add_argument("--stage", action="append", help="only this stage (repeatable)")
    parser.add_argument(
        "--pause-gc", action="store_true", help="pause the garbage collector during the calls"
    )
    args = parser.parse_args(argv)
    sweeps = [s for s in SWEEPS if not args.stage or s.name in args.stage]
    if not sweeps:
        parser.error(f"no stage named {args.stage}; known: {', '.join(s.name for s in SWEEPS)}")

    print(
        f"CPU ms per call, fastest of {args.rounds} rounds; ratio = time at 10x / time at 1x "
        f"({'collector paused' if args.pause_gc else 'collector running'}); "
        f"* = under {MIN_CHECKED_MS:g} ms at 10x, not held to the bound"
    )
    print(f"{'stage':20} {'sizes':20} {'ms at each size':30} {'ratios':16} bound")
    failed: list[str] = []
    for sweep in sweeps:
        times = measure(sweep, args.rounds, pause_gc=args.pause_gc)
        note = ""
        if worst_checked(sweep, times) > sweep.bound:
            again = measure(sweep, 2 * args.rounds, pause_gc=args.pause_gc)
            times = {label: min(times[label], again[label]) for label in times}
            note = " (measured twice)"
        over = worst_checked(sweep, times) > sweep.bound
        if over:
            failed.append(sweep.name)
        verdict = "OVER" if over else "ok" if sweep.held_to_bound else "not held (see workloads.py)"
        print(
            f"{sweep.name:20} {' / '.join(sweep.sizes):20} "
            f"{' / '.join(f'{t / 1e6:.3f}' for t in times.values()):30} "
            f"{describe(times):16} "
            f"{sweep.bound:.0f}x {verdict}{note}",
            flush=True,
        )
    if failed:
        print(f"over the bound: {', '.join(failed)}")
        return 1
    print("every stage within its bound")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
