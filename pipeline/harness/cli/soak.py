"""`docpipe soak`: a steady stream for a while on a private stack; does anything grow?"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.console import EXIT_FAILED, EXIT_OK, load_settings, stderr, stdout
from pipeline.harness.cli.options import (
    documents_option,
    layout_option,
    profile_option,
    seed_option,
    time_scale_option,
)
from pipeline.harness.layout import parse_layout
from pipeline.harness.perf.soak import SoakBounds, SoakConfig, json_ready

_DEFAULT_BOUNDS = SoakBounds()


@click.command()
@click.option(
    "-d",
    "--duration",
    type=click.FloatRange(min=5),
    default=600,
    show_default=True,
    help="Seconds of steady submission and sampling.",
)
@click.option(
    "--warmup",
    type=click.FloatRange(min=0),
    help="Seconds left out of the slope fits [default: a fifth of the duration, at most 120].",
)
@click.option(
    "--sample-every",
    type=click.FloatRange(min=0.5),
    default=5,
    show_default=True,
    help="Seconds between samples.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Documents submitted per minute [default: 30% of the layout's bottleneck bound].",
)
@profile_option
@time_scale_option()
@seed_option
@layout_option()
@documents_option("File or folder of documents, submitted in turn with the generated variants.")
@click.option(
    "--variants",
    type=click.IntRange(min=0, max=1000),
    default=20,
    show_default=True,
    help="Generated documents (pdf, docx, eml, txt; 1-3 pages) added to --documents.",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path),
    default=Path("report/soak"),
    show_default=True,
    help="Where soak.json, soak_samples.csv, soak_checks.csv and soak.png go.",
)
@click.option(
    "--production-docs-per-day",
    type=click.FloatRange(min=0),
    default=10_000,
    show_default=True,
    help="Volume at which the steady-state Redis keys and memory are projected.",
)
@click.option(
    "--postgres",
    "postgres_admin_url",
    metavar="ADMIN_URL",
    help="Use a throw-away database on this PostgreSQL server instead of SQLite.",
)
@click.option(
    "--max-redis-kb-per-min",
    type=float,
    default=_DEFAULT_BOUNDS.redis_unexplained_kb_per_min,
    show_default=True,
    help="Bound on the growth of Redis memory the key families do not explain.",
)
@click.option(
    "--max-rss-mb-per-min",
    type=float,
    default=_DEFAULT_BOUNDS.worker_rss_mb_per_min,
    show_default=True,
    help="Bound on the RSS growth of each worker (with its pool children).",
)
@click.option("--keep", is_flag=True, help="Keep the work directory (database, worker logs).")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
def soak(
    duration: float,
    warmup: float | None,
    sample_every: float,
    rate: float | None,
    profile: str,
    time_scale: float,
    seed: int,
    layout: str,
    documents: Path,
    variants: int,
    report_dir: Path,
    production_docs_per_day: float,
    postgres_admin_url: str | None,
    max_redis_kb_per_min: float,
    max_rss_mb_per_min: float,
    keep: bool,
    as_json: bool,
) -> None:
    """Soak the worker layout with a steady stream; fail when memory or keys keep growing.

    Starts a private redis-server and the worker layout (as `docpipe load`
    does), submits documents at a steady rate below capacity and samples Redis
    memory, keys by family and their TTLs, kombu's unacked messages, every
    worker's RSS and open files and the database. After the warm-up a slope
    per minute is fitted to each series and checked against its bound; a key
    without a TTL (other than the queues and kombu's bookkeeping) fails the
    run. Projects the steady-state keys at --production-docs-per-day. Exit 1
    when a bound is exceeded.
    """
    from pipeline.app.intake import collect_files
    from pipeline.bootstrap import latency_profile
    from pipeline.harness.perf.soak import run_soak

    settings = load_settings(latency_profile=profile, time_scale=time_scale, latency_seed=seed)
    config = SoakConfig(
        settings=settings,
        profile=latency_profile(settings),
        files=collect_files([documents]),
        report_dir=report_dir,
        duration_s=duration,
        warmup_s=min(120.0, duration / 5) if warmup is None else warmup,
        sample_every_s=sample_every,
        rate_per_min=rate,
        variants=variants,
        seed=seed,
        layout=parse_layout(layout),
        bounds=SoakBounds(
            redis_unexplained_kb_per_min=max_redis_kb_per_min,
            worker_rss_mb_per_min=max_rss_mb_per_min,
        ),
        production_docs_per_day=production_docs_per_day,
        postgres_admin_url=postgres_admin_url,
        keep_workdir=keep,
    )
    with Progress(
        TextColumn("soak"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[line]}"),
        console=stderr,
        transient=False,
    ) as progress:
        task = progress.add_task("soak", total=duration, line="starting the stack")

        def on_sample(sample: dict[str, float], total: float) -> None:
            progress.update(task, completed=min(sample["t_s"], total), line=progress_line(sample))

        summary = run_soak(
            config, say=lambda message: progress.console.print(message), on_sample=on_sample
        )
    if as_json:
        click.echo(json.dumps(json_ready(summary), indent=2, default=str, allow_nan=False))
    else:
        print_summary(summary, report_dir)
    sys.exit(EXIT_OK if summary["passed"] else EXIT_FAILED)


def progress_line(sample: dict[str, float]) -> str:
    rss = sum(v for k, v in sample.items() if k.startswith("rss_mb:"))
    value = {k: f"{v:.0f}" for k, v in sample.items()}
    return (
        f"docs {value['documents_completed']}/{value['documents_submitted']} "
        f"in flight {value['documents_in_flight']} | "
        f"redis {sample['redis_used_memory_kb'] / 1024:.1f} MB {value['redis_keys']} keys, "
        f"no TTL {value['unexpected_keys_without_ttl']} | "
        f"unacked {value['unacked']} | workers {rss:.0f} MB"
    )


def print_summary(summary: dict[str, Any], report_dir: Path) -> None:
    documents = summary["documents"]
    stdout.print(
        f"documents: {documents['submitted']:.0f} submitted, "
        f"{documents['completed']:.0f} completed, {documents['failed']:.0f} failed "
        f"at {summary['rate_per_min']:.1f}/min "
        f"(completed {documents['completed_per_min']:.1f}/min after the warm-up)"
    )
    table = Table(title="slopes after the warm-up (per minute)")
    for column in ("check", "measured", "bound", "unit", ""):
        table.add_column(column, justify="left" if column == "check" else "right")
    for check in summary["checks"]:
        table.add_row(
            check["name"],
            f"{check['measured']:.3g}",
            f"{check['bound']:g}",
            check["unit"],
            "[green]ok[/]" if check["passed"] else "[red]FAIL[/]",
        )
    stdout.print(table)
    projection = summary["projection"]
    keys = Table(title=f"Redis keys at {projection['docs_per_day']:,.0f} documents/day (projected)")
    for column in ("family", "keys now", "per doc", "TTL s", "B/key", "steady keys", "MB", "basis"):
        keys.add_column(column, justify="left" if column in ("family", "basis") else "right")
    for name, family in projection["families"].items():
        now = summary["redis"]["families"][name]
        keys.add_row(
            name.replace("\x06\x16", "/"),
            f"{now['keys_end']:.0f}",
            f"{family['keys_per_document']:.2f}",
            "-" if family["ttl_s"] is None else f"{family['ttl_s']:,.0f}",
            f"{family['bytes_per_key']:.0f}",
            f"{family['keys']:,.0f}",
            f"{family['megabytes']:.1f}",
            family["basis"],
        )
    stdout.print(keys)
    verdict = "[green]PASSED[/]" if summary["passed"] else "[red]FAILED[/]"
    stdout.print(
        f"{verdict}  projected {projection['total_keys']:,.0f} keys, "
        f"{projection['total_mb']:.1f} MB   report: {report_dir}/"
    )
    for failure in summary["failures"]:
        stdout.print(f"  [red]{failure}[/]")


COMMANDS: list[click.Command] = [soak]
