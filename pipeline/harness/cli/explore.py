"""`docpipe explore`: random fault schedules in sim mode until the budget is spent.

Each schedule enables a random subset of the scenario schema's fault kinds
(swarm testing) over a few documents and runs in virtual time; every run is
checked against the invariants (pipeline/harness/explore/invariants.py). A
violation is shrunk to a minimal scenario file in --out that
`docpipe scenario run FILE --mode sim` replays (checked before it is kept).
Exit code 1 when a violation was found.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import click
from rich.live import Live
from rich.text import Text

from pipeline.console import EXIT_FAILED, EXIT_OK, stderr, stdout
from pipeline.display import markup_safe
from pipeline.harness.explore.explorer import ExploreResult
from pipeline.harness.explore.explorer import explore as run_exploration
from pipeline.library import SAMPLES


def _progress_text(schedules: int, fired: Counter[str], findings: int, elapsed: float) -> Text:
    ports: Counter[str] = Counter()
    for pair, count in fired.items():
        ports[pair.split(".", 1)[0]] += count
    per_port = " ".join(f"{port} {count}" for port, count in sorted(ports.items()))
    rate = schedules / elapsed * 60 if elapsed > 0 else 0.0
    style = "bold red" if findings else "green"
    return Text.assemble(
        f"schedules {schedules} ({rate:.0f}/min) | faults fired: {per_port or 'none'} | ",
        (f"findings {findings}", style),
    )


def _print_result(result: ExploreResult) -> None:
    rate = result.schedules / result.elapsed_s * 60 if result.elapsed_s else 0.0
    stdout.print(
        f"explored {result.schedules} schedules in {result.elapsed_s:.1f}s ({rate:.0f}/min), "
        f"seed {result.seed}; {len(result.fired)} of {len(result.catalogue)} (port, kind) "
        "pairs fired"
    )
    if result.infeasible:
        stdout.print(
            f"{len(result.infeasible)} schedule(s) ran nothing: their faults kept a document "
            "out of every intake attempt"
        )
    if not result.findings:
        stdout.print("[green]no invariant violated[/]")
        return
    for finding in result.findings:
        stdout.print(
            f"[bold red]violation[/] {markup_safe(finding.invariant)} (schedule "
            f"{finding.schedule_index}): {markup_safe(finding.detail)}"
        )
        if finding.shrunk_size is not None:
            stdout.print(
                f"  shrunk from {finding.original_size[0]} document(s), "
                f"{finding.original_size[1]} fault(s) to {finding.shrunk_size[0]} document(s), "
                f"{finding.shrunk_size[1]} fault(s) in {finding.shrink_runs} runs"
            )
        if finding.replay_reproduced:
            stdout.print(f"  replay: [bold]{markup_safe(finding.replay_command)}[/]")
        else:
            stdout.print(
                f"  [yellow]the shrunk file did not replay the violation[/] "
                f"({markup_safe(finding.replay_detail)}): {markup_safe(finding.scenario_file)}"
            )
        if finding.broker_agrees is not None or finding.broker_detail:
            verdict = {True: "agrees", False: "does not agree", None: "not run"}
            stdout.print(
                f"  real workers (broker mode) {verdict[finding.broker_agrees]}: "
                f"{markup_safe(finding.broker_detail)}"
            )
        if finding.also_in:
            stdout.print(f"  also violated by {len(finding.also_in)} later schedule(s)")


@click.command()
@click.option(
    "--budget",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds of exploration at most (shrinking comes after): a schedule still running "
    "then is cut off, uncounted; the count of schedules that finished is reported: "
    "--schedules repeats exactly those.",
)
@click.option(
    "--schedules",
    type=click.IntRange(min=1),
    help="Run exactly schedules 0..N-1 (exactly reproducible; the budget is ignored).",
)
@click.option(
    "--only",
    "only",
    multiple=True,
    type=click.IntRange(min=0),
    help="Run only schedule N (repeatable): a finding's schedule, alone, as it ran among "
    "the others (the budget and --schedules are ignored).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="The exploration's seed.")
@click.option(
    "--documents",
    "documents",
    multiple=True,
    type=click.Path(path_type=Path, exists=True),
    help="Files or folders to draw documents from (repeatable; default: the sample documents).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".docpipe/explore"),
    show_default=True,
    help="Where shrunk scenario files are written.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=min(2, os.cpu_count() or 1),
    show_default=True,
    help="Processes running schedules (findings do not depend on it).",
)
@click.option(
    "--shrink-runs",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="Candidate runs at most when shrinking one finding.",
)
@click.option(
    "--replay-broker",
    is_flag=True,
    help="Also run each shrunk file in broker mode (real workers, private Redis) and say "
    "whether it fails the same way.",
)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
def explore(
    budget: float,
    schedules: int | None,
    only: tuple[int, ...],
    seed: int,
    documents: tuple[Path, ...],
    out: Path,
    jobs: int,
    shrink_runs: int,
    replay_broker: bool,
    as_json: bool,
) -> None:
    """Random fault schedules in sim mode; violations shrunk to replayable scenario files."""
    sources = list(documents) or [SAMPLES]
    live: Live | None = None
    if not as_json:
        live = Live(Text("starting"), console=stderr, refresh_per_second=4, transient=False)
        live.start()

    def progress(count: int, fired: Counter[str], findings: int, elapsed: float) -> None:
        if live is not None:
            live.update(_progress_text(count, fired, findings, elapsed))

    try:
        result = run_exploration(
            seed=seed,
            documents=sources,
            out=out,
            budget_s=budget,
            schedules=schedules,
            only=list(only) or None,
            jobs=jobs,
            shrink_runs=shrink_runs,
            replay_broker=replay_broker,
            progress=progress,
        )
    finally:
        if live is not None:
            live.stop()
            if not stderr.is_terminal:
                stderr.line()  # the last progress line ends (a terminal's Live ends it itself)
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
    else:
        _print_result(result)
    raise SystemExit(EXIT_FAILED if result.findings else EXIT_OK)
