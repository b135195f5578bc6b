"""Operating the pipeline: the queue processor, migration, reset, broker purge, dead letters.

`docpipe` (pipeline.cli) loads these commands when they are used. The use cases live in
pipeline.app (queue_processor, admin, dead_letters); these commands parse options, build
the services the way `docpipe run` does, and print a table or exactly one JSON object. Exit codes:
0 done, 1 something failed (or a confirmation was declined), 2 usage or
configuration errors.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from pipeline.console import configuration_errors, load_settings, stderr, stdout, usage_error
from pipeline.display import markup_safe
from pipeline.domain.models import QUEUES

if TYPE_CHECKING:
    from pipeline.ports.services import Services
    from pipeline.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_FAILED = 0, 1


def _usage_error(message: str) -> NoReturn:
    usage_error(message)


def _fail(message: str) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {markup_safe(message)}")
    sys.exit(EXIT_FAILED)


def _echo_json(payload: object) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


def _print(message: str) -> None:
    stdout.print(message)


def _json_option(function: F) -> F:
    decorator = click.option(
        "--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout."
    )
    return decorator(function)


def _database_option(function: F) -> F:
    decorator = click.option(
        "--database-url", help="Database URL (default: DOCPIPE_DATABASE_URL or the SQLite file)."
    )
    return decorator(function)


@contextmanager
def _unavailable_is_failure() -> Iterator[None]:
    """A database or broker that cannot be reached: a readable error, exit 1."""
    from pipeline.errors import TransientError
    from pipeline.settings import redact_url

    try:
        yield
    except TransientError as exc:
        _fail(redact_url(str(exc)))


def _settings(**overrides: Any) -> Settings:
    settings: Settings = load_settings(**overrides)
    return settings


def _services(database_url: str | None, *, sends: bool = False) -> Services:
    """Build and install the services, as `docpipe run` does.

    A command that `sends` tasks refuses, in broker mode (DOCPIPE_EAGER=false),
    settings that cannot reach a worker in another process (exit 2).
    """
    from pipeline.bootstrap import start
    from pipeline.runtime.broker import require_broker_settings

    settings = _settings(database_url=database_url)
    with configuration_errors(), _unavailable_is_failure():
        if sends and not settings.eager:
            require_broker_settings(settings)
        return start(settings)


def _default_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --- queue-processor -----------------------------------------------------------------


@click.command("queue-processor")
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Queue rows claimed per cycle.",
)
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds to wait after a cycle that found less than a full batch.",
)
@click.option("--once", is_flag=True, help="Run one claim-and-dispatch cycle, then exit.")
@click.option(
    "--until-empty", is_flag=True, help="Exit after the first cycle that finds nothing to claim."
)
@click.option("--worker", help="Name recorded on claimed queue rows (default: host:pid).")
@_json_option
@_database_option
def queue_processor(
    batch: int,
    interval_s: float,
    once: bool,
    until_empty: bool,
    worker: str | None,
    as_json: bool,
    database_url: str | None,
) -> None:
    """Dispatch queued documents: claim pending rows of document_processing_queue, send OCR.

    Each claimed document is marked ocr_queued (with its task id) and committed
    before its first task is sent. Rows whose claim went stale (the processor
    died) are claimed again, at most DOCPIPE_QUEUE_MAX_ATTEMPTS times; a
    document already in a stage but without progress for
    DOCPIPE_QUEUE_STALE_AFTER_S gets that stage sent again (its message was
    lost). Any number of processors may run at once: a row is only ever
    claimed by one.
    Runs until SIGINT/SIGTERM unless --once or --until-empty is given; exit 1
    when a dispatch failed in --once mode.
    """
    from pipeline.app.queue_processor import process_queue_batch, run_queue_processor

    services = _services(database_url, sends=True)
    name = worker or _default_worker()
    if once:
        with _unavailable_is_failure():
            outcome = process_queue_batch(services, name, batch)
        if as_json:
            _echo_json({"worker": name, **outcome.as_dict()})
        else:
            _print(
                f"claimed {len(outcome.claimed)}, dispatched {len(outcome.dispatched)}, "
                f"closed {len(outcome.closed)}, in flight {len(outcome.in_flight)}, "
                f"resumed {len(outcome.resumed)}, errors {len(outcome.errors)}"
            )
            for document_uuid, stage in outcome.resumed.items():
                _print(f"{document_uuid}: no progress for too long; {stage} sent again")
            for document_uuid, reason in outcome.errors.items():
                _print(f"[red]{document_uuid}[/]: {markup_safe(reason)}")
        sys.exit(EXIT_FAILED if outcome.errors else EXIT_OK)

    stop = threading.Event()
    with _stop_on_signals(stop):
        dispatched = run_queue_processor(
            services,
            name,
            batch,
            interval_s,
            stop,
            max_idle_cycles=1 if until_empty else None,
        )
    if as_json:
        _echo_json({"worker": name, "dispatched": dispatched})
    else:
        _print(f"dispatched {len(dispatched)} documents")


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM finish the current cycle, then the loop ends (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --- migrate ---------------------------------------------------------------------------


@click.command()
@click.option("--dry-run", is_flag=True, help="Only list the documents that would be changed.")
@_json_option
@_database_option
def migrate(dry_run: bool, as_json: bool, database_url: str | None) -> None:
    """Re-queue documents left in pending, ocr_processing or ocr_failed (run with workers stopped).

    pending documents get a queue row if they have none; ocr_processing and
    ocr_failed ones are reset to pending in a new processing version (stale
    tasks of the old one become no-ops) with their derived rows cleared. The
    queue processor then dispatches them. Running it again changes nothing.
    """
    from pipeline.app.admin import migrate as migrate_documents

    services = _services(database_url)
    with _unavailable_is_failure():
        touched = migrate_documents(services, dry_run=dry_run)
    if as_json:
        _echo_json({"touched": touched, "count": len(touched), "dry_run": dry_run})
        return
    verb = "would re-queue" if dry_run else "re-queued"
    _print(f"{verb} {len(touched)} documents")
    for document_uuid in touched:
        _print(f"  {document_uuid}")
    if touched and not dry_run:
        _print("run `docpipe queue-processor` to dispatch them")


# --- reset -----------------------------------------------------------------------------


@click.command()
@click.argument("document_uuids", nargs=-1)
@click.option(
    "--failed", is_flag=True, help="Every document in a failure status (incl. dead_lettered)."
)
@_json_option
@_database_option
def reset(
    document_uuids: tuple[str, ...], failed: bool, as_json: bool, database_url: str | None
) -> None:
    """Put documents back to pending in a new processing version and queue them again.

    Give document uuids (or their short uuids: unique prefixes) or --failed.
    Their derived rows, open queue rows and dead letters are removed; each
    gets one fresh queue row, which the queue processor dispatches. Tasks
    still in flight for the old version do nothing.
    """
    from pipeline.app.admin import reset as reset_documents

    if bool(document_uuids) == failed:
        _usage_error("give document uuids or --failed (one of them)")
    from pipeline.app.document_ids import resolve_document_uuids

    services = _services(database_url)
    with _unavailable_is_failure():
        wanted = resolve_document_uuids(services.store, document_uuids)
        done = reset_documents(services, wanted or None, failed=failed)
    if as_json:
        _echo_json({"reset": done, "count": len(done)})
        return
    _print(f"reset {len(done)} documents to pending")
    for document_uuid in done:
        _print(f"  {document_uuid}")
    if done:
        _print("run `docpipe queue-processor` to dispatch them")


# --- purge (the broker) ----------------------------------------------------------------


@click.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--broker-url", help="Broker URL (default: DOCPIPE_BROKER_URL).")
@_json_option
def purge(yes: bool, broker_url: str | None, as_json: bool) -> None:
    """Delete every waiting message of the ocr, text, entity and graph queues on the broker.

    Asks for confirmation unless --yes. Documents whose messages are deleted
    keep their status: reset them (`docpipe reset --failed` or by uuid) and
    run the queue processor to process them again.
    """
    from pipeline.runtime import celery_app
    from pipeline.runtime.broker import purge_queues
    from pipeline.settings import redact_url

    settings = _settings(broker_url=broker_url)
    from pipeline.redaction import redact

    broker = redact_url(settings.broker_url)
    if not yes:
        click.confirm(
            f"Delete every waiting message in the {', '.join(QUEUES)} queues on {broker}?",
            abort=True,
            err=True,
        )
    app = celery_app.configure(settings)
    try:
        counts = purge_queues(app)
    except Exception as exc:  # kombu raises its own connection errors
        _fail(redact(f"could not purge the queues on {broker}: {exc}"))
    total = sum(counts.values())
    if as_json:
        _echo_json({"broker": broker, "purged": counts, "total": total})
        return
    for name, count in counts.items():
        _print(f"{name:<8} {count} messages deleted")
    _print(f"{total} messages deleted from {broker}")


# --- dlq -------------------------------------------------------------------------------


@click.group()
def dlq() -> None:
    """Dead letters: documents whose task gave up after its retries."""


@dlq.command("list")
@_json_option
@_database_option
def dlq_list(as_json: bool, database_url: str | None) -> None:
    """List dead letters, newest first, with each document's current status."""
    from pipeline.app.dead_letters import dlq_list as list_letters

    services = _services(database_url)
    with _unavailable_is_failure():
        letters = list_letters(services)
    if as_json:
        _echo_json({"dead_letters": letters, "count": len(letters)})
        return
    from rich.table import Table

    from pipeline.app.document_ids import short_uuid

    table = Table(title=f"dead letters ({len(letters)})", title_justify="left")
    for column in ("document", "file", "stage", "retries", "status", "at", "error"):
        table.add_column(column)
    for letter in letters:
        # File names and error texts are user-supplied (or vendor) text: never markup.
        table.add_row(
            *(
                markup_safe(value)
                for value in (
                    # Never cut by the terminal's width; `dlq replay` accepts it as it is.
                    short_uuid(str(letter["document_uuid"])),
                    letter["file"] or "-",
                    letter["stage"],
                    letter["retries"],
                    letter["status"] or "-",
                    letter["created_at"],
                    letter["error"],
                )
            )
        )
    stdout.print(table)


def _selection(
    services: Services, document_uuids: tuple[str, ...], everything: bool
) -> list[str] | None:
    """The documents named (uuids or unique prefixes, each lettered), or None for --all."""
    from pipeline.app.document_ids import resolve_document_uuids

    if everything:
        return None
    wanted = resolve_document_uuids(services.store, document_uuids)
    lettered = {str(letter["document_uuid"]) for letter in services.store.dead_letters()}
    missing = [u for u in wanted if u not in lettered]
    if missing:
        _usage_error("no dead letter for: " + ", ".join(missing))
    return wanted


@dlq.command("replay")
@click.argument("document_uuids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Replay every dead letter.")
@_json_option
@_database_option
def dlq_replay(
    document_uuids: tuple[str, ...], everything: bool, as_json: bool, database_url: str | None
) -> None:
    """Send dead-lettered documents back into the stage that gave up on them.

    Give document uuids (short uuids of `dlq list` do) or --all. Fix the cause
    first: a replayed document runs the failed stage again (same processing version, earlier stages'
    rows kept) and completes once the fault is gone. Letters of documents
    that are no longer dead_lettered (e.g. reset since) are skipped.
    """
    from pipeline.app.dead_letters import dlq_replay as replay_letters

    if bool(document_uuids) == everything:
        _usage_error("give document uuids or --all (one of them)")
    services = _services(database_url, sends=True)
    selection = _selection(services, document_uuids, everything)
    with _unavailable_is_failure():
        before = {str(letter["document_uuid"]) for letter in services.store.dead_letters()}
        replayed = replay_letters(services, selection)
    candidates = before if selection is None else set(selection)
    skipped = sorted(candidates - set(replayed))
    if as_json:
        _echo_json({"replayed": replayed, "skipped": skipped, "count": len(replayed)})
        return
    _print(f"replayed {len(replayed)} documents")
    for document_uuid in replayed:
        _print(f"  {document_uuid}")
    for document_uuid in skipped:
        _print(f"  skipped {document_uuid} (not dead_lettered any more)")


@dlq.command("purge")
@click.argument("document_uuids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Delete every dead letter.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_json_option
@_database_option
def dlq_purge(
    document_uuids: tuple[str, ...],
    everything: bool,
    yes: bool,
    as_json: bool,
    database_url: str | None,
) -> None:
    """Delete dead letters (given document uuids or --all); the documents keep their status.

    Asks for confirmation unless --yes. `docpipe reset --failed` still finds
    the documents afterwards.
    """
    from pipeline.app.dead_letters import dlq_purge as purge_letters

    if bool(document_uuids) == everything:
        _usage_error("give document uuids or --all (one of them)")
    services = _services(database_url)
    selection = _selection(services, document_uuids, everything)
    if not yes:
        what = "every dead letter" if selection is None else f"{len(selection)} dead letter(s)"
        click.confirm(f"Delete {what}?", abort=True, err=True)
    with _unavailable_is_failure():
        removed = purge_letters(services, selection)
    if as_json:
        _echo_json({"removed": removed})
        return
    _print(f"deleted {removed} dead letters")


COMMANDS: list[click.Command] = [queue_processor, migrate, reset, purge, dlq]
