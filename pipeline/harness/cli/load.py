"""`docpipe load`: sequential baseline vs the Celery deployment, in one run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table

from pipeline.console import (
    EXIT_FAILED,
    EXIT_OK,
    configuration_errors,
    load_settings,
    stderr,
    stdout,
)
from pipeline.harness.cli.options import (
    documents_option,
    layout_option,
    profile_option,
    seed_option,
    time_scale_option,
)
from pipeline.harness.layout import parse_layout
from pipeline.harness.perf.loadtest import (
    DEFAULT_LOCUSTFILE,
    LoadConfig,
)


@click.command()
@click.option("-u", "--users", type=click.IntRange(min=1), default=24, show_default=True)
@click.option(
    "-d",
    "--duration",
    type=click.FloatRange(min=2),
    default=30,
    show_default=True,
    help="Seconds of locust load on the Celery deployment.",
)
@click.option(
    "--baseline",
    type=click.FloatRange(min=0),
    help="Seconds of sequential baseline (at least one round of the documents) "
    "[default: the duration].",
)
@profile_option
@time_scale_option()
@seed_option
@layout_option()
@documents_option("File or folder of documents, submitted in turn by both runs.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path),
    default=Path("report"),
    show_default=True,
    help="Where the CSV, JSON, PNG and locust files go.",
)
@click.option(
    "--locustfile",
    type=click.Path(exists=True, path_type=Path),
    default=DEFAULT_LOCUSTFILE,
    show_default=True,
)
@click.option(
    "--min-ratio",
    type=float,
    help="Exit 1 when the Celery/sequential ratio is below this (CI).",
)
@click.option("--keep", is_flag=True, help="Keep the work directory (databases, worker logs).")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
def load(
    users: int,
    duration: float,
    baseline: float | None,
    profile: str,
    time_scale: float,
    seed: int,
    layout: str,
    documents: Path,
    report_dir: Path,
    locustfile: Path,
    min_ratio: float | None,
    keep: bool,
    as_json: bool,
) -> None:
    """Measure documents per hour: the sequential monolith vs Celery under locust.

    Starts a private redis-server on a free loopback port and the worker
    layout as worker processes, runs the monolith on the same documents and
    latency profile, then locust against the workers; prints both rates, the
    ratio, the bottleneck bound and the fraction of it reached, and writes
    report/ (summary.json, CSVs, load.png, locust CSV and HTML).
    """
    from pipeline.app.intake import collect_files
    from pipeline.bootstrap import latency_profile
    from pipeline.harness.perf.loadtest import run_load

    settings = load_settings(latency_profile=profile, time_scale=time_scale, latency_seed=seed)
    with configuration_errors():
        config = LoadConfig(
            settings=settings,
            profile=latency_profile(settings),
            files=collect_files([documents]),
            report_dir=report_dir,
            users=users,
            duration_s=duration,
            baseline_s=duration if baseline is None else baseline,
            layout=parse_layout(layout),
            locustfile=locustfile,
            keep_workdir=keep,
        )
        summary = run_load(config, say=lambda message: stderr.print(message, soft_wrap=True))
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        print_summary(summary, report_dir)
    failed = min_ratio is not None and summary["ratio"] < min_ratio
    sys.exit(EXIT_FAILED if failed else EXIT_OK)


def print_summary(summary: dict[str, object], report_dir: Path) -> None:
    seq = summary["sequential"]
    cel = summary["celery"]
    bound = summary["bound"]
    assert isinstance(seq, dict) and isinstance(cel, dict) and isinstance(bound, dict)
    table = Table(title="docpipe load: documents per hour")
    for column in ("run", "completed", "docs/hour", "docs/hour (simulated time)", "e2e p50 s"):
        table.add_column(column, justify="right" if column != "run" else "left")
    for name, run in (("sequential (monolith)", seq), ("celery (plan layout)", cel)):
        table.add_row(
            name,
            str(run["documents_completed"]),
            f"{run['docs_per_hour']:,.0f}",
            f"{run['simulated_docs_per_hour']:,.1f}",
            f"{run['e2e_p50_s']:.2f}",
        )
    table.add_row(
        f"bound ({bound['limited_by']})",
        "",
        f"{bound['docs_per_hour']:,.0f}",
        f"{bound['docs_per_hour'] * float(summary['profile']['time_scale']):,.1f}",  # type: ignore[index]
        "",
    )
    stdout.print(table)
    predicted = summary.get("predicted")
    if isinstance(predicted, dict):
        sim = Table(title="predicted by the virtual-time simulator (docpipe simulate)")
        for column in ("run", "measured docs/hour", "predicted docs/hour", "error"):
            sim.add_column(column, justify="right" if column != "run" else "left")
        for name, run, key in (
            ("sequential (monolith)", seq, "sequential_docs_per_hour"),
            ("celery (plan layout)", cel, "celery_docs_per_hour"),
        ):
            measured, guess = float(run["docs_per_hour"]), float(predicted[key])
            error = f"{(guess - measured) / measured:+.1%}" if measured else "-"
            sim.add_row(name, f"{measured:,.0f}", f"{guess:,.0f}", error)
        stdout.print(sim)
    price = summary.get("llm_price")
    cost = summary.get("llm_cost_usd_per_document")
    if isinstance(price, dict):
        priced = (
            f"${cost:.5f} per document at {price['model']} list prices "
            f"(${price['input_usd_per_mtok']:g} in / ${price['output_usd_per_mtok']:g} out "
            "per 1M tokens)"
            if isinstance(cost, float)
            else f"no list price for {price['model']}"
        )
        stdout.print(
            f"LLM per document (celery run): "
            f"{summary.get('llm_calls_per_document', 0):.2f} calls, "
            f"{summary.get('llm_tokens_per_document', 0):,.0f} tokens, {priced}; "
            f"packing up to {summary.get('llm_pack_tokens')} tokens per request"
        )
    stdout.print(
        f"ratio celery/sequential: [bold]{summary['ratio']:.2f}x[/]   "
        f"fraction of bound reached: [bold]{summary['fraction_of_bound']:.0%}[/]   "
        f"report: {report_dir}/"
    )


COMMANDS: list[click.Command] = [load]
