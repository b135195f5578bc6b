"""`docpipe` (also `python -m pipeline`): run the pipeline and operate it.

Exit codes: 0 every document completed, 1 some document failed (all are still
processed and reported), 2 usage or configuration errors.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline import settings as settings_module
from pipeline.display import markup_safe
from pipeline.errors import ServiceUnavailable, TransientError, UserFacingError
from pipeline.redaction import redact_log_output
from pipeline.settings import Settings, redact_url

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: Runs with more documents than this show a progress bar on stderr.
PROGRESS_THRESHOLD = 3

# Pipes and CI logs get a wide table instead of rich's 80-column default.
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
stderr = Console(stderr=True, highlight=False)


def _usage_error(message: str, hint: str | None = None) -> NoReturn:
    """Stop the command: `message` (plain text) on stderr, exit 2 (see `DocpipeGroup`)."""
    raise UserFacingError(message, hint=hint)


def load_settings(**overrides: Any) -> Settings:
    """Settings from env/.env with CLI overrides; bad values are usage errors (exit 2)."""
    return settings_module.load_settings(**overrides)


@contextmanager
def configuration_errors() -> Iterator[None]:
    """Kept for the commands that use it: `DocpipeGroup` renders these errors anyway."""
    yield


def as_user_facing(exc: Exception) -> UserFacingError | None:
    """The short message for an error that is the user's to fix, or None (a bug: traceback).

    A `TransientError` that reaches the command line is a service the command
    itself needed (documents' own failures are recorded on their rows), as are
    Redis and kombu connection errors.
    """
    import redis
    from kombu.exceptions import OperationalError as BrokerUnavailable

    if isinstance(exc, UserFacingError):
        return exc
    reason = _first_line(str(exc)) or type(exc).__name__
    if isinstance(exc, TransientError) and reason.startswith("database unavailable"):
        return ServiceUnavailable(
            reason,
            hint="check that the database server is running and that --database-url / "
            "DOCPIPE_DATABASE_URL points at it",
        )
    if isinstance(exc, TransientError):
        return ServiceUnavailable(
            reason, hint="a service this command needs did not answer; check the DOCPIPE_* URLs"
        )
    if isinstance(exc, BrokerUnavailable | redis.ConnectionError | redis.TimeoutError):
        return ServiceUnavailable(
            f"cannot reach Redis or the broker: {reason}",
            hint="check that redis-server is running and that DOCPIPE_BROKER_URL / "
            "DOCPIPE_REDIS_URL point at it",
        )
    return None


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else ""


def report_problem(problem: UserFacingError, *, as_json: bool) -> None:
    """A few lines on stderr (and the one JSON object on stdout with --json)."""
    message = redact_url(str(problem))
    hint = redact_url(problem.hint) if problem.hint else None
    if as_json:
        click.echo(json.dumps({"error": message, "hint": hint}))
    # soft_wrap: one line per line of the message, however narrow the terminal.
    first, *rest = message.splitlines() or [""]
    stderr.print(f"[bold red]error:[/] {markup_safe(first)}", soft_wrap=True)
    for line in rest:
        stderr.print(f"  {markup_safe(line)}", soft_wrap=True)
    if hint:
        stderr.print(f"[bold]hint:[/] {markup_safe(hint)}", soft_wrap=True)


def say_waiting(message: str) -> None:
    """A status line on stderr while a command waits for a service."""
    stderr.print(f"[dim]{markup_safe(message)}[/]", soft_wrap=True)


class DocpipeGroup(click.Group):
    """The command group that renders every `UserFacingError` in one place.

    Usage, configuration and connection errors exit 2 with a few lines that
    say what to fix - the traceback only with `docpipe -v`. With `--json`,
    stdout still holds exactly one JSON object (with an `error` field).
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_ARGV_KEY] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            # click prints its own usage message and exits 2; --json still gets its object.
            if self._wants_json(ctx):
                click.echo(json.dumps({"error": exc.format_message(), "hint": "see --help"}))
            raise
        except Exception as exc:
            problem = as_user_facing(exc)
            if problem is None:
                raise
            if ctx.params.get("verbose"):
                stderr.print_exception()
            report_problem(problem, as_json=self._wants_json(ctx))
            ctx.exit(EXIT_USAGE)

    @staticmethod
    def _wants_json(ctx: click.Context) -> bool:
        argv = ctx.meta.get(_ARGV_KEY, [])
        return "--json" in (argv[: argv.index("--")] if "--" in argv else argv)


_ARGV_KEY = "docpipe.argv"


@click.group(cls=DocpipeGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    redact_log_output()  # -v output shows vendor exceptions as they are: redact them too


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
    from pipeline import celery_app
    from pipeline.bootstrap import build_services, use_services
    from pipeline.broker import require_broker_settings, wait_for_consumers
    from pipeline.intake import scan_paths, submit_unless_known
    from pipeline.preflight import check_services
    from pipeline.report import build_report, skipped_rows

    settings = load_settings(database_url=database_url, project_name=project_name, eager=not broker)
    with configuration_errors():
        collected = scan_paths(paths, follow_symlinks=follow_symlinks)
        files = collected.files
        if not files:
            print_skipped(skipped_rows(collected.skipped), stderr)
            _usage_error("no documents found in " + ", ".join(str(p) for p in paths))
        # Reachability first: an unreachable broker is reported once, within seconds,
        # before the checks that need to talk to it.
        check_services(settings, say_waiting, broker=broker)
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


@main.command()
@click.argument("document_uuid")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--database-url", help="Database URL.")
def status(document_uuid: str, as_json: bool, database_url: str | None) -> None:
    """Show a document's status, error, history and Redis state.

    DOCUMENT_UUID may be the short uuid of `docpipe documents` (any unique prefix).
    """
    from pipeline.bootstrap import build_services
    from pipeline.commands.documents import print_status
    from pipeline.document_ids import resolve_document_uuid

    settings = load_settings(database_url=database_url)
    with configuration_errors():
        services = build_services(settings)
    document_uuid = resolve_document_uuid(services.store, document_uuid)
    document = services.store.get_document(document_uuid)
    history = services.store.history(document_uuid)
    counts = services.store.counts(document_uuid)
    payload: dict[str, Any] = {
        "document_uuid": document.uuid,
        "file": document.original_file_name,
        "status": str(document.status),
        "error": document.error_message,
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


def _register_commands() -> None:
    from pipeline.commands import (
        db,
        documents,
        experiment,
        flower,
        load,
        ops,
        scenario,
        simulate,
        worker,
    )

    for module in (worker, flower, ops, scenario, load, db, experiment, simulate, documents):
        for command in module.COMMANDS:
            main.add_command(command)


_register_commands()


def entrypoint(argv: Sequence[str] | None = None) -> None:
    main.main(args=list(argv) if argv is not None else None, prog_name="docpipe")
