"""`docpipe run` (process files through the six stages) and `docpipe status` (one document)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.console import (
    EXIT_FAILED,
    EXIT_OK,
    configuration_errors,
    load_settings,
    say_waiting,
    stderr,
    stdout,
    usage_error,
)
from pipeline.display import markup_safe

#: Runs with more documents than this show a progress bar on stderr.
PROGRESS_THRESHOLD = 3


@click.command()
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
@click.option(
    "--follow-symlinks",
    is_flag=True,
    help="Also follow symbolic links below the folders given that point outside them "
    "(by default they are skipped and reported).",
)
@click.option(
    "--reprocess",
    is_flag=True,
    help="Run files the project already has (same content) again, in a new processing "
    "version of their document (default: report them as already processed).",
)
def run(
    paths: tuple[Path, ...],
    as_json: bool,
    database_url: str | None,
    project_name: str | None,
    broker: bool,
    timeout: float,
    follow_symlinks: bool,
    reprocess: bool,
) -> None:
    """Process files and folders (recursively) through all six stages.

    Eager mode (the default) runs every stage in this process. With --broker
    the documents go through the intake to the workers, and the command waits
    until each one reaches a terminal status. Every document is processed and
    reported, even when others fail; the exit code is 1 if any did not complete.

    Symbolic links below a folder are followed only when they point inside the
    folders given; others are skipped and listed with their reason (see
    --follow-symlinks). A link named directly on the command line is used.

    A file whose bytes (sha256) the project already has is not a new document:
    it is reported as already processed, with its document's current status
    (a failed one keeps exit code 1), unless --reprocess runs it again.
    """
    from pipeline.app.intake import scan_paths, submit_unless_known
    from pipeline.app.report import build_report, skipped_rows
    from pipeline.bootstrap import start
    from pipeline.runtime import celery_app
    from pipeline.runtime.broker import require_broker_settings, wait_for_consumers
    from pipeline.runtime.preflight import check_services

    settings = load_settings(database_url=database_url, project_name=project_name, eager=not broker)
    with configuration_errors():
        collected = scan_paths(paths, follow_symlinks=follow_symlinks)
        files = collected.files
        if not files:
            print_skipped(skipped_rows(collected.skipped), stderr)
            usage_error("no documents found in " + ", ".join(str(p) for p in paths))
        # Reachability first: an unreachable broker is reported once, within seconds,
        # before the checks that need to talk to it.
        check_services(settings, say_waiting, broker=broker)
        if broker:
            require_broker_settings(settings)
        services = start(settings)
    app = celery_app.app
    if broker:
        idle = wait_for_consumers(app)
        if idle:
            usage_error(
                f"no worker consumes queue(s) {', '.join(idle)}: tasks sent there would stay "
                "PENDING forever; start workers with `make workers` or `docpipe worker -Q ...`"
            )

    started = time.perf_counter()
    project_uuid = services.store.ensure_project(settings.project_name)
    submissions = []
    with _progress_bar(len(files), "submitting" if broker else "processing") as set_done:
        for path in files:
            submissions.append(
                submit_unless_known(services, path, project_uuid, reprocess=reprocess)
            )
            set_done(len(submissions))
    if broker:
        waited = list(dict.fromkeys(s.document_uuid for s in submissions))
        _wait_for_workers(services, waited, timeout)
    report = build_report(
        services, submissions, time.perf_counter() - started, skipped=collected.skipped
    )

    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_report(report)
    sys.exit(EXIT_OK if report["totals"]["failed"] == 0 else EXIT_FAILED)


def _wait_for_workers(services: Any, document_uuids: list[str], timeout: float) -> None:
    from pipeline.runtime.broker import wait_for_terminal

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
    for column in ("file", "uuid", "status", "category", "chunks", "mentions", "entities", "rels"):
        table.add_column(column, justify="right" if column in _NUMERIC else "left")
    for row in report["documents"]:
        status = row["status"]
        style = "green" if status == "completed" else "red"
        shown = status + (
            " (already processed)"
            if row.get("already_processed")
            else " (reprocessed)"
            if row.get("reprocessed")
            else ""
        )
        table.add_row(
            markup_safe(Path(row["file"]).name),
            row["short_uuid"],
            f"[{style}]{markup_safe(shown)}[/]",
            markup_safe(row["category"] or "-"),
            str(row["chunks"]),
            str(row["mentions"]),
            str(row["canonical_entities"]),
            str(row["relationships"]),
        )
    stdout.print(table)
    for row in report["documents"]:
        if row["error"]:
            stdout.print(
                f"[red]{markup_safe(Path(row['file']).name)}[/]: {markup_safe(row['error'])}"
            )
        elif row.get("note"):
            stdout.print(
                f"[yellow]{markup_safe(Path(row['file']).name)}[/]: {markup_safe(row['note'])}"
            )
    print_skipped(report.get("skipped", []), stdout)
    totals = report["totals"]
    if totals.get("already_processed"):
        stdout.print(
            f"{totals['already_processed']} file(s) already processed in this project (same "
            "content): shown with their document's status; `docpipe run --reprocess` runs "
            "them again"
        )
    stdout.print(
        f"{totals['completed']}/{totals['documents']} completed, {totals['failed']} failed; "
        f"{totals['chunks']} chunks, {totals['mentions']} mentions, "
        f"{totals['canonical_entities']} canonical entities, "
        f"{totals['relationships']} relationships in {totals['elapsed_s']:.2f}s "
        f"({totals['mode']} mode)"
    )
    stdout.print(f"database: {totals['database']}")


_NUMERIC = frozenset({"chunks", "mentions", "entities", "rels"})


def print_skipped(skipped: Sequence[Mapping[str, str]], console: Console) -> None:
    """One line per path the run left out (a link out of the folders given...), with why."""
    for entry in skipped:
        console.print(
            f"[yellow]skipped[/] {markup_safe(entry['path'])}: {markup_safe(entry['reason'])}"
        )


@click.command()
@click.argument("document_uuid")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--database-url", help="Database URL.")
def status(document_uuid: str, as_json: bool, database_url: str | None) -> None:
    """Show a document's status, error, history and Redis state.

    DOCUMENT_UUID may be the short uuid of `docpipe documents` (any unique prefix).
    """
    from pipeline.app.document_ids import resolve_document_uuid
    from pipeline.app.report import skipped_pages_note
    from pipeline.bootstrap import build_services
    from pipeline.cli.documents import print_status

    settings = load_settings(database_url=database_url)
    with configuration_errors():
        services = build_services(settings)
    with services:
        document_uuid = resolve_document_uuid(services.store, document_uuid)
        document = services.store.get_document(document_uuid)
        history = services.store.history(document_uuid)
        counts = services.store.counts(document_uuid)
        payload: dict[str, Any] = {
            "document_uuid": document.uuid,
            "file": document.original_file_name,
            "status": str(document.status),
            "error": document.error_message,
            "note": skipped_pages_note(document.ocr_metadata),
            "processing_version": document.processing_version,
            "celery_task_id": document.celery_task_id,
            "created_at": document.created_at,
            "updated_at": document.updated_at,
            "counts": counts.__dict__,
            "history": [
                {
                    "stage": h.stage,
                    "status": str(h.status),
                    "error": h.error_message,
                    "at": h.created_at,
                    "version": h.processing_version,
                }
                for h in history
            ],
            "state": services.state.get(document_uuid),
        }
        if as_json:
            click.echo(json.dumps(payload, indent=2, default=str))
            return
        print_status(services, payload)


COMMANDS: list[click.Command] = [run, status]
