"""`docpipe experiment pools|overhead`: rerunnable measurements of the broker-mode harness."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
from rich.table import Table

from pipeline.console import configuration_errors, stderr, stdout

#: Pools `experiment overhead` can time. Not gevent: its worker fetches the next message
#: only after a 2 s poll once its prefetch window is done (README, "Not done yet").
OVERHEAD_POOLS = ("threads", "prefork", "solo")


@click.group()
def experiment() -> None:
    """Small measurements on a private redis-server and worker (pipeline/harness/perf)."""


@experiment.command()
@click.option("--tasks", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("-c", "--concurrency", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option(
    "--wait-ms",
    type=click.FloatRange(0, 10_000),
    default=50.0,
    show_default=True,
    help="Simulated I/O wait of each task.",
)
@click.option("--rounds", type=click.IntRange(1, 20), default=2, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the work folder (worker logs).")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
def pools(
    tasks: int, concurrency: int, wait_ms: float, rounds: int, keep: bool, as_json: bool
) -> None:
    """Thread pool vs gevent pool at the same concurrency on I/O-wait tasks."""
    from pipeline.harness.perf.experiments import run_pools

    result = _run(
        run_pools,
        as_json,
        tasks=tasks,
        concurrency=concurrency,
        wait_ms=wait_ms,
        rounds=rounds,
        keep=keep,
    )
    if result is None:
        return
    print_table(
        f"pools: {tasks} x {wait_ms:g} ms waits, concurrency {concurrency} "
        f"(ideal {result['ideal_tasks_per_s']:,.0f}/s), best of {rounds}",
        [result["pools"][pool] for pool in result["pools"]],
        [
            "pool",
            "tasks_per_s",
            "fraction_of_ideal",
            "worker_cpu_ms_per_task",
            "redis_cpu_ms_per_task",
            "redis_commands_per_task",
        ],
    )

    stdout.print(f"verdict: {result['verdict']}")


@experiment.command()
@click.option("--chains", type=click.IntRange(1, 100_000), default=200, show_default=True)
@click.option(
    "--sequential",
    type=click.IntRange(1, 10_000),
    default=150,
    show_default=True,
    help="Chains run one at a time, plain and harness alternating, for the unloaded "
    "latency (the headline ms per hop; with 30 its ratio moved by +-0.05 run to run here).",
)
@click.option("-c", "--concurrency", type=click.IntRange(1, 200), default=4, show_default=True)
@click.option(
    "--rounds",
    type=click.IntRange(1, 20),
    default=3,
    show_default=True,
    help="Loaded rounds, plain and harness alternating.",
)
@click.option(
    "--pool",
    type=click.Choice(OVERHEAD_POOLS),
    default="threads",
    show_default=True,
    help="The worker's pool: threads (the plan's text and graph queues), prefork (its OCR "
    "queue) or solo.",
)
@click.option("--keep", is_flag=True, help="Keep the work folder (worker logs, database).")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
def overhead(
    chains: int,
    sequential: int,
    concurrency: int,
    rounds: int,
    pool: str,
    keep: bool,
    as_json: bool,
) -> None:
    """A no-op six-task chain: plain Celery tasks vs docpipe's task layer (ms per hop)."""
    from pipeline.harness.perf.experiments import run_overhead

    result = _run(
        run_overhead,
        as_json,
        chains=chains,
        sequential=sequential,
        concurrency=concurrency,
        rounds=rounds,
        pool=pool,
        keep=keep,
    )
    if result is None:
        return
    rows = [{"chain": name, **result[name]} for name in ("plain", "harness", "difference", "ratio")]
    print_table(
        f"overhead: six-hop no-op chains on one worker ({result['worker']})",
        rows,
        ["chain", *result["plain"]],
    )
    paired = result["paired_ratio"]
    stdout.print(
        f"harness / plain, median of {paired['rounds']} back-to-back rounds: "
        f"worker CPU per hop {paired['worker_cpu_per_hop']:.2f}x, "
        f"loaded wall per hop {paired['loaded_ms_per_hop']:.2f}x; "
        f"of {paired['unloaded_pairs']} back-to-back unloaded chains: "
        f"{paired['unloaded_ms_per_hop']:.2f}x"
    )


def _run(
    experiment: Callable[..., dict[str, Any]], as_json: bool, **options: Any
) -> dict[str, Any] | None:
    """Run an experiment with its progress on stderr; with --json print it and return None."""
    with configuration_errors():
        result = experiment(**options, say=lambda message: stderr.print(message))
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return None
    return result


def print_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(
            column.replace("_", " "), justify="left" if column in ("pool", "chain") else "right"
        )
    for row in rows:
        table.add_row(*(format_cell(row.get(column)) for column in columns))
    stdout.print(table)


def format_cell(value: object) -> str:
    """Numbers with thousands separators and at most three decimals; text as is."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


COMMANDS: list[click.Command] = [experiment]
