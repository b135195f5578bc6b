"""Pure parts of pipeline/harness/perf/experiments.py and the table cell format."""

from __future__ import annotations

import math
import os

import pytest

from pipeline.harness.cli.experiment import format_cell
from pipeline.harness.perf.experiments import (
    Batch,
    best_of,
    overhead_summary,
    paired_chain_ratio,
    paired_ratios,
    parse_context_switches,
    parse_proc_stat,
    pools_verdict,
)

TICKS = os.sysconf("SC_CLK_TCK")


def test_proc_stat_sums_user_system_and_reaped_children_time() -> None:
    # pid (comm with ") spaces") state ppid ... utime=14 stime=15 cutime=16 cstime=17 ...
    fields = ["S", "1"] + ["0"] * 9 + [str(3 * TICKS), str(TICKS), "0", str(TICKS), "20"]
    text = "42 (celery ) worker) " + " ".join(fields)
    assert parse_proc_stat(text) == pytest.approx(5.0)


def test_proc_status_context_switches_are_voluntary_plus_involuntary() -> None:
    text = "Name:\tcelery\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n"
    assert parse_context_switches(text) == 127
    assert parse_context_switches("Name:\tgone\n") == 0


def test_overhead_summary_splits_worker_cpu_into_consumer_and_pool() -> None:
    plain = Batch(
        "plain", 10, 6, 0.6, 0.12, 0.0, 600, 0.06, context_switches=1200, redis_publishes=120
    )
    harness = Batch(
        "h", 10, 6, 1.2, 0.24, 0.0, 1800, 0.09, context_switches=3000, redis_publishes=180
    )
    summary = overhead_summary([0.012], [0.024], plain, harness)
    assert summary["plain"]["event_publishes_per_hop"] == 2.0
    assert summary["ratio"]["event_publishes_per_hop"] == 1.5
    assert summary["plain"]["consumer_cpu_ms_per_hop"] == 1.0
    assert summary["plain"]["pool_cpu_ms_per_hop"] == 1.0
    assert summary["harness"]["pool_cpu_ms_per_hop"] == 2.5
    assert summary["harness"]["context_switches_per_hop"] == 50.0
    assert summary["difference"]["pool_cpu_ms_per_hop"] == 1.5


def test_batch_row_gives_rates_and_costs_per_task() -> None:
    batch = Batch(
        "threads",
        units=100,
        hops=6,
        elapsed_s=2.0,
        worker_cpu_s=1.2,
        redis_cpu_s=0.06,
        redis_commands=3000,
    )
    row = batch.row()
    assert row["tasks"] == 600
    assert row["units_per_s"] == 50.0
    assert row["tasks_per_s"] == 300.0
    assert row["worker_cpu_ms_per_task"] == 2.0
    assert row["redis_cpu_ms_per_task"] == 0.1
    assert row["redis_commands_per_task"] == 5.0


def test_best_of_picks_the_fastest_batch_per_unit() -> None:
    slow = Batch("a", 10, 1, 2.0, 0.0, 0.0, 0)
    fast = Batch("b", 20, 1, 2.0, 0.0, 0.0, 0)
    assert best_of([slow, fast]) is fast
    with pytest.raises(ValueError):
        best_of([])


def test_overhead_summary_reports_per_hop_figures_and_their_difference() -> None:
    plain = Batch("plain", 10, 6, 0.6, 0.12, 0.0, 600)
    harness = Batch("harness", 10, 6, 1.2, 0.36, 0.0, 1800)
    summary = overhead_summary([0.012, 0.018, 0.030], [0.060], plain, harness)
    assert summary["plain"]["ms_per_hop_p50"] == 3.0
    assert summary["harness"]["ms_per_hop_p50"] == 10.0
    assert summary["plain"]["worker_cpu_ms_per_hop"] == 2.0
    assert summary["harness"]["worker_cpu_ms_per_document"] == 36.0
    assert summary["difference"]["ms_per_hop_p50"] == 7.0
    assert summary["difference"]["redis_commands_per_hop"] == 20.0
    assert summary["ratio"]["worker_cpu_ms_per_hop"] == 3.0
    assert summary["ratio"]["ms_per_hop_p50"] == 3.33


def test_paired_ratios_are_the_median_of_back_to_back_rounds() -> None:
    # Round 2 ran on a busier machine: both sides slower, their ratio about the same.
    plain = [Batch("plain", 10, 6, 0.6, 0.12, 0.0, 0), Batch("plain", 10, 6, 1.8, 0.3, 0.0, 0)]
    harness = [Batch("h", 10, 6, 0.9, 0.18, 0.0, 0), Batch("h", 10, 6, 3.6, 0.6, 0.0, 0)]
    harness.append(Batch("h", 10, 6, 9.0, 9.0, 0.0, 0))  # no plain round to pair it with
    paired = paired_ratios(plain, harness)
    assert paired["rounds"] == 2
    assert paired["worker_cpu_per_hop"] == 1.75  # median of 1.5 and 2.0
    assert paired["loaded_ms_per_hop"] == 1.75
    assert paired_ratios([], []) == {}


def test_pools_verdict_names_the_pool_that_is_both_faster_and_cheaper() -> None:
    threads = {"tasks_per_s": 400.0, "worker_cpu_ms_per_task": 2.0}
    gevent = {"tasks_per_s": 200.0, "worker_cpu_ms_per_task": 5.0}
    assert pools_verdict({"threads": threads, "gevent": gevent}).startswith("threads:")
    mixed = {"tasks_per_s": 500.0, "worker_cpu_ms_per_task": 5.0}
    assert pools_verdict({"threads": threads, "gevent": mixed}).startswith("mixed:")
    assert "both" in pools_verdict({"threads": threads})


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        (True, "True"),
        (1234, "1,234"),
        (2.5, "2.5"),
        (3.0, "3"),
        (12345.6, "12,346"),
        ("gevent", "gevent"),
    ],
)
def test_format_cell(value: object, text: str) -> None:
    assert format_cell(value) == text


def test_the_unloaded_pair_ratio_is_the_median_of_back_to_back_chains() -> None:
    # A slow moment doubles one pair; the ratio of medians would move, this does not.
    plain = [1.0, 1.0, 2.0, 1.0, 1.0]
    harness = [1.5, 1.4, 3.0, 1.6, 1.5]
    assert paired_chain_ratio(plain, harness) == 1.5
    assert math.isnan(paired_chain_ratio([], []))


def test_the_overhead_command_times_the_pool_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from pipeline.harness.cli.experiment import experiment
    from pipeline.harness.perf import experiments

    seen: dict[str, object] = {}

    def fake_overhead(**options: object) -> dict[str, object]:
        seen.update(options)
        return {"pool": options["pool"]}

    monkeypatch.setattr(experiments, "run_overhead", fake_overhead)
    runner = CliRunner()
    result = runner.invoke(experiment, ["overhead", "--pool", "prefork", "--json"])
    assert result.exit_code == 0, result.output
    assert seen["pool"] == "prefork" and '"pool": "prefork"' in result.output
    refused = runner.invoke(experiment, ["overhead", "--pool", "gevent"])
    assert refused.exit_code == 2 and "gevent" in refused.output
