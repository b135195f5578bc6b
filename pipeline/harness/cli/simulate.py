"""`docpipe simulate`: capacity planning on the virtual-time model of the deployment."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from pipeline.console import EXIT_FAILED, EXIT_OK, configuration_errors, load_settings, stdout
from pipeline.errors import UserFacingError
from pipeline.extras import HARNESS_MODULES, require_extra
from pipeline.harness.cli.options import (
    documents_option,
    layout_option,
    profile_option,
    seed_option,
    time_scale_option,
)


@click.command()
@layout_option("Worker layout: queue:pool:N items (one worker per queue).")
@click.option(
    "--target-docs-per-hour",
    "target",
    type=click.FloatRange(min=0, min_open=True),
    help="Find the smallest layout (greedy, bounded) that sustains this rate.",
)
@profile_option
@time_scale_option(1.0, "1: the old system's seconds; 0.1: what `docpipe load` runs.")
@seed_option
@documents_option(
    "File or folder of documents whose shapes (type, chunks) the model cycles through."
)
@click.option(
    "--docs",
    type=click.IntRange(min=10, max=1_000_000),
    default=600,
    show_default=True,
    help="Documents per simulated capacity measurement.",
)
@click.option(
    "--llm-rate-limit",
    help="CALLS/WINDOW_S for the shared LLM limit [default: the settings' 50/60].",
)
@click.option(
    "--bench",
    type=click.IntRange(min=1, max=1_000_000),
    help="Also simulate this many documents on the layout (open loop) and time it.",
)
@click.option("--plot", type=click.Path(path_type=Path), help="PNG: throughput vs workers.")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
def simulate(
    layout: str,
    target: float | None,
    profile: str,
    time_scale: float,
    seed: int,
    documents: Path,
    docs: int,
    llm_rate_limit: str | None,
    bench: int | None,
    plot: Path | None,
    as_json: bool,
) -> None:
    """Name the bottleneck of a worker layout and the smallest layout that reaches a target.

    Deterministic: the same options give a byte-identical report (except
    --bench's wall-clock timing). Throughput is in documents per hour of the
    (scaled) simulated time.
    """
    from pipeline.app.intake import collect_files
    from pipeline.bootstrap import latency_profile
    from pipeline.harness.simulation.predict import (
        Layout,
        document_shapes,
        load_policy,
        measure_capacity,
        plan_capacity,
        plot_sweep,
        sweep,
    )

    if plot is not None:
        # matplotlib is in the harness extra; say so before minutes of simulation.
        require_extra("harness", HARNESS_MODULES["plot"], "simulate --plot")
        _prepare_plot_folder(plot)  # first: minutes of simulation are never thrown away
    settings = load_settings(latency_profile=profile, time_scale=time_scale, latency_seed=seed)
    try:
        start = Layout.parse(layout)
    except ValueError as exc:
        raise UserFacingError(str(exc)) from None
    with configuration_errors():
        latency = latency_profile(settings)
        shapes = document_shapes(collect_files([documents]), pack_tokens=settings.llm_pack_tokens)
    policy = load_policy(settings, time_scale)
    if llm_rate_limit is not None:
        try:
            calls, window = llm_rate_limit.split("/")
            policy = replace(
                policy,
                llm_rate_limit_calls=int(calls),
                llm_rate_limit_window_s=float(window) * time_scale,
            )
        except ValueError:
            raise UserFacingError("--llm-rate-limit takes CALLS/WINDOW_S, e.g. 500/60") from None
    report: dict[str, Any] = {"layout": start.spec(), "profile": latency.describe()}
    report["documents"] = [
        {
            "name": s.name,
            "ocr": s.ocr,
            "chunks": len(s.chunk_keys),
            "llm_requests": len(s.llm_requests),
        }
        for s in shapes
    ]
    if target is not None:
        report["plan"] = plan_capacity(
            shapes, latency, policy, start, target, documents=docs, seed=seed
        )
        # The header's capacity is the first row's: one figure for one layout.
        estimate = report["plan"]["steps"][0]["capacity_estimate"]
    else:
        # A light load: throughput over the top utilisation estimates the capacity.
        probe = measure_capacity(
            shapes,
            latency,
            policy,
            start,
            offered_per_hour=60 / time_scale,
            documents=100,
            seed=seed,
        )
        estimate = probe.estimate_per_hour
    capacity = measure_capacity(
        shapes, latency, policy, start, offered_per_hour=0.9 * estimate, documents=docs, seed=seed
    )
    report["capacity"] = {
        "estimate_docs_per_hour": estimate,
        "bottleneck": capacity.bottleneck,
        "at_90_percent": {
            "offered_docs_per_hour": capacity.offered_per_hour,
            "docs_per_hour": capacity.docs_per_hour,
            "sustained": capacity.sustained,
            "utilisation": capacity.utilisation,
        },
    }
    if bench is not None:
        report["bench"] = _bench(shapes, latency, policy, start, bench, 0.9 * estimate, seed)
    if plot is not None:
        curves = sweep(shapes, latency, policy, start, offered_per_hour=0.5 * estimate, seed=seed)
        plot_sweep(plot, curves, target or 0.0)
        report["plot"] = {"file": str(plot), "curves": curves}
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print(report)
    plan = report.get("plan")
    sys.exit(EXIT_FAILED if plan is not None and not plan["reached"] else EXIT_OK)


def _prepare_plot_folder(plot: Path) -> None:
    """Create the plot's folders before minutes of simulation, not after them (exit 2 if not)."""
    if plot.is_dir():
        raise UserFacingError(f"--plot {plot} is a folder; give a file name such as {plot}/sim.png")
    blocking = next((p for p in plot.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise UserFacingError(f"--plot {plot}: {blocking} is a file, not a folder")
    try:
        plot.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserFacingError(
            f"cannot create the folder for --plot {plot}: {exc.strerror}"
        ) from None


def _bench(
    shapes: Any,
    latency: Any,
    policy: Any,
    layout: Any,
    documents: int,
    per_hour: float,
    seed: int,
) -> dict[str, Any]:
    """`documents` arriving steadily at `per_hour`: wall time against virtual time."""
    from pipeline.harness.simulation.engine import SimConfig, Simulator
    from pipeline.harness.simulation.model import ModelExecutor
    from pipeline.harness.simulation.predict import docs_per_hour

    gap = 3600.0 / per_hour
    executor = ModelExecutor(shapes, latency, policy, seed=seed)
    simulator = Simulator(SimConfig(layout.workers(), trace=False), executor)
    began = time.perf_counter()
    result = simulator.run(range(documents), submit_at={d: d * gap for d in range(documents)})
    wall = time.perf_counter() - began
    outcomes: dict[str, int] = {}
    for record in result.documents.values():
        outcomes[record.outcome] = outcomes.get(record.outcome, 0) + 1
    return {
        "documents": documents,
        "offered_docs_per_hour": per_hour,
        "events": result.events,
        "virtual_seconds": result.end_time,
        "wall_seconds": wall,
        "speed_up": result.end_time / wall if wall > 0 else None,
        "outcomes": outcomes,
        "docs_per_hour": docs_per_hour(result),
    }


def _print(report: dict[str, Any]) -> None:
    c = report["capacity"]
    at90 = c["at_90_percent"]
    stdout.print(
        f"layout {report['layout']}: capacity ~{c['estimate_docs_per_hour']:,.0f} docs/hour, "
        f"bottleneck [bold]{c['bottleneck']}[/] (at 90 %: {at90['docs_per_hour']:,.0f} "
        f"docs/hour, {'sustained' if at90['sustained'] else 'NOT sustained'})"
    )
    if "plan" in report:
        plan = report["plan"]
        table = Table(
            title=f"greedy search for {plan['target_docs_per_hour']:,.0f} docs/hour "
            f"(offered {plan['offered_docs_per_hour']:,.0f})"
        )
        for column in ("layout", "docs/hour", "capacity", "dead-lettered", "bottleneck", "target"):
            table.add_column(column)
        for step in plan["steps"]:
            table.add_row(
                step["layout"],
                f"{step['docs_per_hour']:,.0f}",
                f"~{step['capacity_estimate']:,.0f}",
                str(step["dead_lettered"]),
                step["bottleneck"],
                "reached" if step["reaches_target"] else "-",
            )
        stdout.print(table)
        if plan["reached"]:
            stdout.print(f"smallest layout reaching the target: [bold]{plan['layout']}[/]")
        else:
            stdout.print(f"[red]target not reached:[/] {plan['reason']}")
    if "bench" in report:
        b = report["bench"]
        stdout.print(
            f"bench: {b['documents']:,} documents, {b['virtual_seconds'] / 3600:,.1f} h virtual "
            f"in {b['wall_seconds']:.2f} s wall (x{b['speed_up']:,.0f} real time); "
            f"outcomes {b['outcomes']}"
        )
    if "plot" in report:
        stdout.print(f"plot: {report['plot']['file']}")


COMMANDS: list[click.Command] = [simulate]
