"""`docpipe scenario run|validate|schema`: scenario files as experiments and bug reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from pipeline.console import EXIT_FAILED, EXIT_OK, EXIT_USAGE, stdout
from pipeline.display import markup_safe
from pipeline.errors import UserFacingError
from pipeline.harness.scenarios.model import (
    ALL_MODES,
    BROKERS,
    BrokerName,
    Mode,
    Scenario,
    ScenarioError,
    load_scenario,
)
from pipeline.harness.scenarios.runner import RunReport, parity, run_many


def _load_all(files: tuple[Path, ...]) -> list[tuple[Scenario, Path]]:
    loaded, problems = [], []
    for path in files:
        try:
            loaded.append((load_scenario(path), path))
        except ScenarioError as exc:
            problems.append(str(exc))
    if problems:
        # One line per problem: each names the file, the key path and what was expected.
        raise UserFacingError(
            "invalid scenario file(s):\n" + "\n".join(problems),
            hint="docpipe scenario schema prints the JSON Schema the files must follow",
        )
    return loaded


def _outcome(report: RunReport) -> str:
    if report.skipped:
        return "skipped"
    return "pass" if report.passed else "FAIL"


def print_run(report: RunReport) -> None:
    style = {"pass": "green", "FAIL": "bold red", "skipped": "yellow"}[_outcome(report)]
    stdout.print(
        f"[{style}]{_outcome(report)}[/] {report.scenario} ({report.label}, seed {report.seed}) "
        f"in {report.elapsed_s:.2f}s"
    )
    if report.skipped:
        stdout.print(f"  skipped: {markup_safe(report.skipped)}")
        return
    if report.error:
        stdout.print(f"  [red]error:[/] {markup_safe(report.error)}")
    if report.checks:
        table = Table(show_edge=False, pad_edge=False)
        for column in ("", "check", "expected", "measured"):
            table.add_column(column, overflow="fold")
        for check in report.checks:
            mark = "[green]ok[/]" if check.passed else "[red]FAIL[/]"
            name = markup_safe(check.name)
            name = name if check.kind == "expectation" else f"[dim]{name}[/]"
            table.add_row(mark, name, markup_safe(check.expected), markup_safe(check.measured))
        stdout.print(table)
    for name, stage in report.resumed.items():
        stdout.print(f"  resumed: {markup_safe(name)} had no progress; {stage} was sent again")
    if not report.passed:
        stdout.print(f"  replay: [bold]{markup_safe(report.replay)}[/]")
    if report.workdir:
        stdout.print(
            f"  run folder kept: {markup_safe(report.workdir)} "
            "(docpipe.db, blobs/, worker logs in broker mode)"
        )
    elif not report.passed:
        stdout.print("  add --keep DIR to keep the run folder (database, blobs, worker logs)")


def print_summary(reports: list[RunReport]) -> None:
    table = Table(title="scenarios", title_justify="left")
    for column in ("scenario", "mode", "outcome", "checks", "time"):
        table.add_column(column, justify="right" if column in {"checks", "time"} else "left")
    for report in reports:
        passed = sum(c.passed for c in report.checks)
        outcome = _outcome(report)
        style = {"pass": "green", "FAIL": "red", "skipped": "yellow"}[outcome]
        table.add_row(
            report.scenario,
            report.label,
            f"[{style}]{outcome}[/]",
            f"{passed}/{len(report.checks)}",
            f"{report.elapsed_s:.2f}s",
        )
    stdout.print(table)


def mode_counts(reports: list[RunReport]) -> list[str]:
    """One line per mode, in the order run: runs passed of runs made, and runs skipped."""
    lines = []
    for mode in dict.fromkeys(report.label for report in reports):
        of_mode = [report for report in reports if report.label == mode]
        skipped = sum(1 for report in of_mode if report.skipped)
        ran = len(of_mode) - skipped
        passed = sum(1 for report in of_mode if report.passed and not report.skipped)
        line = f"{mode}: {passed}/{ran} runs passed"
        lines.append(line + (f", {skipped} skipped" if skipped else ""))
    return lines


def nothing_ran(reports: list[RunReport]) -> str | None:
    """The error when every selected run was skipped: a run that checked nothing must not pass."""
    if not reports or any(not report.skipped for report in reports):
        return None
    reasons = sorted(
        {f"{report.scenario} ({report.label}): {report.skipped}" for report in reports}
    )
    return f"no scenario ran: all {len(reports)} selected run(s) were skipped\n" + "\n".join(
        reasons
    )


def _parity_reports(reports: list[RunReport]) -> dict[str, list[str]]:
    by_scenario: dict[str, dict[str, RunReport]] = {}
    for report in reports:
        # Against eager: the Redis broker run (broker_matrix compares the brokers).
        if report.broker in (None, "redis"):
            by_scenario.setdefault(report.file, {})[report.mode] = report
    result = {}
    for runs in by_scenario.values():
        ran = {mode: report for mode, report in runs.items() if not report.skipped}
        for other in ("broker", "sim"):
            if "eager" in ran and other in ran:
                eager = ran["eager"]
                label = eager.scenario if other == "broker" else f"{eager.scenario} (sim)"
                result[label] = parity(eager, ran[other])
        if "eager" not in ran and "sim" in ran and "broker" in ran:
            # A broker-only scenario the simulator runs (kill_worker): sim against broker.
            result[f"{ran['sim'].scenario} (sim vs broker)"] = parity(ran["sim"], ran["broker"])
    return result


def broker_matrix(reports: list[RunReport]) -> list[dict[str, Any]]:
    """Scenario x broker: each broker's outcome, and where the brokers' runs differ.

    One row per scenario file with broker-mode runs; `differences` lists the
    documents and checks whose outcome differs (runner.parity), or why one of
    the brokers did not run it.
    """
    by_file: dict[str, dict[str, RunReport]] = {}
    for report in reports:
        if report.mode == "broker" and report.broker is not None:
            by_file.setdefault(report.file, {})[report.broker] = report
    rows = []
    for runs in by_file.values():
        first = next(iter(runs.values()))
        row: dict[str, Any] = {"scenario": first.scenario, "file": first.file}
        for broker, report in runs.items():
            row[broker] = _outcome(report)
        differences: list[str] = []
        skipped = {broker: r.skipped for broker, r in runs.items() if r.skipped}
        ran = [r for r in runs.values() if not r.skipped]
        if skipped and ran:
            differences += [f"not run on {broker}: {why}" for broker, why in skipped.items()]
        elif len(ran) == 2:
            first_run, second_run = ran
            if first_run.passed != second_run.passed:
                differences.append(
                    f"{first_run.broker} {_outcome(first_run)}, {second_run.broker} "
                    f"{_outcome(second_run)}"
                )
            differences += [
                f"{second_run.broker}: {failed.name}: {failed.measured}"
                for failed in second_run.checks
                if not failed.passed
            ] + [
                f"{first_run.broker}: {failed.name}: {failed.measured}"
                for failed in first_run.checks
                if not failed.passed
            ]
            differences += parity(first_run, second_run)
            for run in ran:
                if run.error:
                    differences.append(f"{run.broker}: error: {run.error}")
        row["differences"] = list(dict.fromkeys(differences))
        rows.append(row)
    return rows


def _print_matrix(rows: list[dict[str, Any]], brokers: list[str]) -> None:
    if not rows:
        return
    table = Table(title="scenario x broker", title_justify="left")
    table.add_column("scenario")
    for broker in brokers:
        table.add_column(broker)
    table.add_column("parity", overflow="fold")
    style = {"pass": "green", "FAIL": "bold red", "skipped": "yellow"}
    for row in rows:
        outcomes = [f"[{style[row[b]]}]{row[b]}[/]" if b in row else "-" for b in brokers]
        ran = [row[b] for b in brokers if row.get(b) not in (None, "skipped")]
        if len(ran) < len(brokers):
            verdict = "; ".join(markup_safe(d) for d in row["differences"]) or "not run on all"
        elif row["differences"]:
            verdict = "[red]differs:[/] " + "; ".join(markup_safe(d) for d in row["differences"])
        else:
            verdict = "[green]same outcome[/]"
        table.add_row(row["scenario"], *outcomes, verdict)
    stdout.print(table)


def _brokers(value: str) -> list[BrokerName]:
    chosen = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BROKERS]
    if not chosen or unknown:
        raise click.BadParameter(
            f"{value!r}: use one or more of {', '.join(BROKERS)}, comma-separated"
        )
    return [name for name in BROKERS if name in chosen]


@click.group()
def scenario() -> None:
    """Scenario files (scenarios/*.yaml): documents, faults, expectations."""


@scenario.command("run")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option(
    "--mode",
    type=click.Choice(["eager", "broker", "sim", "both", "all"]),
    default="eager",
    show_default=True,
    help="eager: in this process; broker: a private redis-server and real workers; sim: the "
    "eager services under the virtual-time scheduler; both: eager and broker, plus a parity "
    "report; all: eager, sim and broker, plus parity reports against eager.",
)
@click.option(
    "--broker",
    "broker_names",
    default="redis",
    show_default=True,
    help="Broker mode's broker(s): redis, rabbitmq (a throw-away vhost on the local RabbitMQ; "
    "Redis still holds state), or redis,rabbitmq for both, with a scenario x broker table "
    "of outcomes and differences.",
)
@click.option("--seed", type=int, help="Override each scenario's seed.")
@click.option(
    "--keep",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep each run's folder (database, blobs, worker logs) as DIR/<scenario>-<mode> "
    "for inspection, e.g. `docpipe status --database-url sqlite:///DIR/.../docpipe.db`.",
)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
def run_command(
    files: tuple[Path, ...],
    mode: str,
    broker_names: str,
    seed: int | None,
    keep: Path | None,
    as_json: bool,
) -> None:
    """Run scenario files; exit 0 iff every expectation and invariant holds.

    A scenario that does not declare the mode (`modes:`) is reported as skipped;
    when every selected run was skipped, nothing was checked: exit 2 with the
    reasons. A summary line per mode counts the runs passed and skipped.
    Without --keep each run works in a temporary folder, removed afterwards.
    """
    brokers = _brokers(broker_names)
    loaded = _load_all(files)
    modes: list[Mode]
    if mode == "both":
        modes = list(ALL_MODES)
    elif mode == "all":
        modes = ["eager", "sim", "broker"]
    else:
        modes = [mode]  # type: ignore[list-item]
    reports = run_many(
        loaded,
        modes,
        seed=seed,
        on_report=(lambda report: None) if as_json else print_run,
        keep=keep.resolve() if keep is not None else None,
        brokers=brokers,
    )
    parities = _parity_reports(reports) if mode in ("both", "all") else {}
    matrix = broker_matrix(reports) if len(brokers) > 1 else []
    no_run = nothing_ran(reports)
    passed = no_run is None and all(r.passed for r in reports)
    if as_json:
        payload: dict[str, Any] = {
            "passed": passed,
            "counts": mode_counts(reports),
            "runs": [r.as_dict() for r in reports],
        }
        if no_run is not None:
            payload["error"] = no_run
        if mode in ("both", "all"):
            payload["parity"] = parities
        if matrix:
            payload["broker_matrix"] = matrix
        click.echo(json.dumps(payload, indent=2, default=str))
    else:
        if len(reports) > 1:
            print_summary(reports)
        for line in mode_counts(reports):
            stdout.print(line)
        _print_parity(parities)
        _print_matrix(matrix, list(brokers))
    if no_run is not None:
        # Exit 2 (usage/configuration): the wrong --mode for these files, or a
        # missing setting such as DOCPIPE_SCENARIO_POSTGRES_URL; CI must not pass on it.
        first, *reasons = no_run.splitlines()
        click.echo(f"error: {first}", err=True)
        for reason in reasons:
            click.echo(f"  {reason}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(EXIT_OK if passed else EXIT_FAILED)


def _print_parity(parities: dict[str, list[str]]) -> None:
    if not parities:
        return
    stdout.print("[bold]parity (eager vs broker; other pairs where marked)[/]")
    for name, differences in parities.items():
        if differences:
            stdout.print(f"  [red]{name}: {len(differences)} difference(s)[/]")
            for difference in differences:
                stdout.print(f"    {markup_safe(difference)}")
        else:
            stdout.print(f"  [green]{name}: same outcome[/]")


@scenario.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
def validate_command(files: tuple[Path, ...]) -> None:
    """Check scenario files against the format without running them."""
    for loaded, path in _load_all(files):
        stdout.print(f"{markup_safe(path)}: ok ({loaded.name}, modes {', '.join(loaded.modes)})")


@scenario.command("schema")
def schema_command() -> None:
    """Print the JSON Schema of scenario files (scenarios/schema.json)."""
    from pipeline.harness.scenarios.model import schema_text

    click.echo(schema_text(), nl=False)


COMMANDS = [scenario]
