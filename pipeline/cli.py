"""`docpipe` (also `python -m pipeline`): run the pipeline and operate it.

Exit codes: 0 every document completed, 1 some document failed (all are still
processed and reported), 2 usage or configuration errors.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.errors import ConfigurationError
from pipeline.settings import Settings, redact_url

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: Runs with more documents than this show a progress bar on stderr.
PROGRESS_THRESHOLD = 3

# Pipes and CI logs get a wide table instead of rich's 80-column default.
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
stderr = Console(stderr=True, highlight=False)


def _usage_error(message: str) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {message}")
    sys.exit(EXIT_USAGE)


def load_settings(**overrides: Any) -> Settings:
    """Settings from env/.env with CLI overrides; bad values are usage errors (exit 2)."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        _usage_error(f"invalid settings: {redact_url(problems)}")


@contextmanager
def configuration_errors() -> Iterator[None]:
    try:
        yield
    except ConfigurationError as exc:
        _usage_error(redact_url(str(exc)))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
@click.version_option(package_name="docpipe")
def main(verbose: int) -> None:
    """docpipe - the Celery document pipeline as a reference harness and simulator.

    Runs on the embedded default (SQLite under .docpipe/, fake OCR and LLM,
    in-process Redis features, Celery in eager mode) unless DOCPIPE_* settings
    (env vars or .env) point it elsewhere.
    """
    level = {0: logging.ERROR, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
@click.option("--database-url", help="Database URL (default: sqlite:///.docpipe/docpipe.db).")
@click.option("--project", "project_name", help="Project the documents belong to.")
@click.option(
    "--broker",
    is_flag=True,
    help="Submit to the real broker (DOCPIPE_BROKER_URL) and wait for the workers "
    "(start them with `make workers` or `docpipe worker`).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=3600,
    show_default=True,
    help="Broker mode: give up waiting after this many seconds (stuck documents fail the run).",
)
def run(
    paths: tuple[Path, ...],
    as_json: bool,
    database_url: str | None,
    project_name: str | None,
    broker: bool,
    timeout: float,
) -> None:
    """Process files and folders (recursively) through all six stages.

    Eager mode (the default) runs every stage in this process. With --broker
    the documents go through the intake to the workers, and the command waits
    until each one reaches a terminal status. Every document is processed and
    reported, even when others fail; the exit code is 1 if any did not complete.
    """
    from pipeline import celery_app
    from pipeline.bootstrap import build_services, use_services
    from pipeline.broker import require_broker_settings, wait_for_consumers
    from pipeline.intake import collect_files, submit_and_dispatch
    from pipeline.report import build_report

    settings = load_settings(database_url=database_url, project_name=project_name, eager=not broker)
    with configuration_errors():
        files = collect_files(paths)
        if not files:
            _usage_error("no documents found in " + ", ".join(str(p) for p in paths))
        if broker:
            require_broker_settings(settings)
        services = build_services(settings)
    app = celery_app.configure(settings)
    use_services(services)
    if broker:
        idle = wait_for_consumers(app)
        if idle:
            _usage_error(
                f"no worker consumes queue(s) {', '.join(idle)}: tasks sent there would stay "
                "PENDING forever; start workers with `make workers` or `docpipe worker -Q ...`"
            )

    started = time.perf_counter()
    project_uuid = services.store.ensure_project(settings.project_name)
    submissions = []
    with _progress_bar(len(files), "submitting" if broker else "processing") as set_done:
        for path in files:
            submissions.append(submit_and_dispatch(services, path, project_uuid))
            set_done(len(submissions))
    if broker:
        _wait_for_workers(services, [s.document_uuid for s in submissions], timeout)
    report = build_report(services, submissions, time.perf_counter() - started)

    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_report(report)
    sys.exit(EXIT_OK if report["totals"]["failed"] == 0 else EXIT_FAILED)


def _wait_for_workers(services: Any, document_uuids: list[str], timeout: float) -> None:
    from pipeline.broker import wait_for_terminal

    total = len(document_uuids)
    with _progress_bar(total, "completing") as set_done:
        wait_for_terminal(services, document_uuids, timeout_s=timeout, on_progress=set_done)


@contextmanager
def _progress_bar(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A bar set to an absolute count (documents that reached a terminal status)."""
    if total <= PROGRESS_THRESHOLD:
        yield lambda done: None
        return
    with Progress(*_columns(label), console=stderr, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda done: progress.update(task, completed=done)


def _columns(label: str) -> tuple[Any, ...]:
    return (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def print_report(report: dict[str, Any]) -> None:
    table = Table(title="documents", title_justify="left")
    for column in ("file", "status", "category", "chunks", "mentions", "entities", "rels"):
        table.add_column(column, justify="right" if column in _NUMERIC else "left")
    for row in report["documents"]:
        status = row["status"]
        style = "green" if status == "completed" else "red"
        table.add_row(
            Path(row["file"]).name,
            f"[{style}]{status}[/]",
            row["category"] or "-",
            str(row["chunks"]),
            str(row["mentions"]),
            str(row["canonical_entities"]),
            str(row["relationships"]),
        )
    stdout.print(table)
    for row in report["documents"]:
        if row["error"]:
            stdout.print(f"[red]{Path(row['file']).name}[/]: {row['error']}")
    totals = report["totals"]
    stdout.print(
        f"{totals['completed']}/{totals['documents']} completed, {totals['failed']} failed; "
        f"{totals['chunks']} chunks, {totals['mentions']} mentions, "
        f"{totals['canonical_entities']} canonical entities, "
        f"{totals['relationships']} relationships in {totals['elapsed_s']:.2f}s "
        f"({totals['mode']} mode)"
    )
    stdout.print(f"database: {totals['database']}")


_NUMERIC = frozenset({"chunks", "mentions", "entities", "rels"})


@main.command()
@click.argument("document_uuid")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--database-url", help="Database URL.")
def status(document_uuid: str, as_json: bool, database_url: str | None) -> None:
    """Show a document's status, error, history and Redis state."""
    from pipeline.bootstrap import build_services

    settings = load_settings(database_url=database_url)
    with configuration_errors():
        services = build_services(settings)
    try:
        document = services.store.get_document(document_uuid)
    except KeyError:
        _usage_error(f"no document {document_uuid} in {settings.describe()['database_url']}")
    history = services.store.history(document_uuid)
    counts = services.store.counts(document_uuid)
    payload: dict[str, Any] = {
        "document_uuid": document.uuid,
        "file": document.original_file_name,
        "status": str(document.status),
        "error": document.error_message,
        "processing_version": document.processing_version,
        "celery_task_id": document.celery_task_id,
        "counts": counts.__dict__,
        "history": [
            {
                "stage": h.stage,
                "status": str(h.status),
                "error": h.error_message,
                "at": h.created_at,
            }
            for h in history
        ],
        "state": services.state.get(document_uuid),
    }
    if as_json:
        click.echo(json.dumps(payload, indent=2, default=str))
        return
    stdout.print(f"{document.original_file_name}  [bold]{document.status}[/]  {document.uuid}")
    if document.error_message:
        stdout.print(f"error: {document.error_message}")
    for entry in payload["history"]:
        stdout.print(f"  {entry['stage']:<22} {entry['status']}")


def _register_commands() -> None:
    from pipeline.commands import db, experiment, flower, load, ops, scenario, simulate, worker

    for module in (worker, flower, ops, scenario, load, db, experiment, simulate):
        for command in module.COMMANDS:
            main.add_command(command)


_register_commands()


def entrypoint(argv: Sequence[str] | None = None) -> None:
    main.main(args=list(argv) if argv is not None else None, prog_name="docpipe")
