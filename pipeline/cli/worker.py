"""`docpipe worker`: a thin wrapper over Celery's own worker.

`celery -A pipeline.runtime.celery_app worker -Q ocr` works just as well and refuses
the same settings with the same message (`pipeline.runtime.broker.refuse_unless_workers_can_run`,
also called from the app's `celeryd_init` receiver); this adds the plan's per-queue
defaults. `docpipe wait-workers` is how `make workers` knows its workers are up.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
from rich.markup import escape

from pipeline.console import (
    EXIT_FAILED,
    exit_without_teardown,
    load_settings,
    stderr,
    usage_error,
)
from pipeline.domain.models import QUEUES
from pipeline.settings import pool_time_limit_note, redact_url, single_host_note

#: The plan's layout: OCR on processes, entity extraction on many greenlets.
DEFAULT_POOL = {"ocr": "prefork", "text": "threads", "entity": "gevent", "graph": "threads"}
DEFAULT_CONCURRENCY = {"prefork": 2, "threads": 4, "gevent": 100, "solo": 1}


def worker_argv(
    queues: list[str], pool: str, concurrency: int, hostname: str, loglevel: str
) -> list[str]:
    """Celery's own command line for a worker; `_run_worker` starts the same in-process."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "pipeline.runtime.celery_app",
        "worker",
        "--queues",
        ",".join(queues),
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--hostname",
        hostname,
        "--loglevel",
        loglevel,
        "--task-events",
        # Startup in ~1 s instead of ~3 s; neither feature is used by docpipe.
        "--without-mingle",
        "--without-gossip",
    ]


@click.command()
@click.option(
    "-Q",
    "--queues",
    default=",".join(QUEUES),
    show_default=True,
    help="Comma-separated queues to consume.",
)
@click.option(
    "-P",
    "--pool",
    type=click.Choice(["prefork", "threads", "gevent", "solo"]),
    help="Execution pool (default: the plan's pool for a single queue, else threads).",
)
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Pool size.")
@click.option("-n", "--hostname", help="Node name (default: QUEUES@%h).")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
def worker(
    queues: str, pool: str | None, concurrency: int | None, hostname: str | None, loglevel: str
) -> None:
    """Start a Celery worker for some of the pipeline's queues (ocr, text, entity, graph).

    Reads the same DOCPIPE_* settings as every other command; refuses the
    embedded default's in-process broker and Redis, which no worker can share.
    """
    from pipeline.runtime.broker import refuse_unless_workers_can_run

    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(names) - set(QUEUES))
    if not names or unknown:
        usage_error(f"unknown queue(s) {', '.join(unknown) or '(none)'}; use {', '.join(QUEUES)}")
    settings = load_settings(eager=False)
    refuse_unless_workers_can_run(settings)
    chosen_pool = pool or (DEFAULT_POOL[names[0]] if len(names) == 1 else "threads")
    for note in (pool_time_limit_note(settings, chosen_pool), single_host_note(settings)):
        if note is not None:
            click.echo(f"note: {note}", err=True)
    size = concurrency or DEFAULT_CONCURRENCY[chosen_pool]
    node = hostname or f"{'-'.join(names)}@%h"
    os.environ["DOCPIPE_EAGER"] = "false"
    sys.stdout.flush()
    if chosen_pool == "gevent":
        # gevent patches sockets and threads before anything imports them: a fresh
        # interpreter, started by Celery's own command line.
        os.execve(sys.executable, worker_argv(names, chosen_pool, size, node, loglevel), os.environ)
    exit_without_teardown(_run_worker(names, chosen_pool, size, node, loglevel))


def _run_worker(
    queues: list[str], pool: str, concurrency: int, hostname: str, loglevel: str
) -> int:
    """What `celery -A pipeline.runtime.celery_app worker` with `worker_argv`'s options runs,
    in this process: its exit code.

    A second interpreter would import the settings and Celery again, Celery's command
    line (with every installed plugin: Flower's web stack) and check the broker a second
    time: 1.1 s of CPU to a threads worker's `ready.` instead of 0.4 s (prefork 1.05 s, 0.55 s)
    here, and `make test`'s private stacks start ~100 workers.
    """
    from celery.utils.nodenames import default_nodename, host_format

    from pipeline.ports.services import close_current_services
    from pipeline.runtime.celery_app import CHECKED_BEFORE_START, app

    # The command line's own stderr handler (`main`'s basicConfig) would keep Celery from adding
    # its worker log format (timestamps, process names): it leaves a configured root alone.
    logging.getLogger().handlers.clear()
    worker = app.Worker(
        hostname=host_format(default_nodename(hostname)),
        pool_cls=pool,
        loglevel=loglevel,
        queues=queues,
        concurrency=concurrency,
        task_events=True,
        without_mingle=True,
        without_gossip=True,
        **{CHECKED_BEFORE_START: True},
    )
    worker.start()
    # The pool is stopped: this process's own services (a threads or solo pool's; prefork's
    # children hold theirs) hang up on the database and Redis instead of being dropped.
    close_current_services()
    return int(worker.exitcode or 0)


@dataclass(frozen=True)
class StartedWorker:
    """One worker `make workers` started: its queue, pid file and log in the run folder."""

    queue: str
    run_dir: Path

    @property
    def nodename(self) -> str:
        # `make workers` passes --hostname QUEUE@%h; Celery's %h is socket.gethostname().
        return f"{self.queue}@{socket.gethostname()}"

    @property
    def log(self) -> Path:
        return self.run_dir / f"{self.queue}.log"

    def pid(self) -> int | None:
        try:
            return int((self.run_dir / f"{self.queue}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def is_alive(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def last_log_line(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return next((line.strip() for line in reversed(lines) if line.strip()), "(empty log)")


def _consumed_queues(nodenames: list[str]) -> dict[str, set[str]]:
    """Node name -> queues it consumes, for the nodes that answered within a second."""
    from pipeline.runtime import celery_app

    replies = (
        celery_app.app.control.inspect(destination=nodenames, timeout=1.0).active_queues() or {}
    )
    return {node: {queue["name"] for queue in queues} for node, queues in replies.items()}


@click.command("wait-workers")
@click.argument("queues", nargs=-1, required=True)
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".docpipe/run"),
    show_default=True,
    help="Where `make workers` keeps QUEUE.pid and QUEUE.log.",
)
@click.option(
    "-t",
    "--timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to wait for every worker (a busy machine starts four in ~5-90 s).",
)
def wait_workers(queues: tuple[str, ...], run_dir: Path, timeout: float) -> None:
    """Wait until the worker of each QUEUE (started by `make workers`) consumes it.

    A worker counts as up when its node (QUEUE@host) answers on the broker and
    reports consuming QUEUE. Exits 1 when one has died or has not answered within
    --timeout, naming its log file and the log's last line.
    """
    from pipeline.runtime import celery_app

    unknown = sorted(set(queues) - set(QUEUES))
    if unknown:
        usage_error(f"unknown queue(s) {', '.join(unknown)}; use {', '.join(QUEUES)}")
    celery_app.configure(load_settings(eager=False))
    waiting = {queue: StartedWorker(queue, run_dir) for queue in queues}
    deadline = time.monotonic() + timeout
    failures: list[str] = []
    # Until each worker is up or dead (or time is up): all failures are reported at once.
    while waiting:
        for queue, started in list(waiting.items()):
            if not started.is_alive():
                failures.append(
                    f"worker {queue} is not running; log {started.log}: {started.last_log_line()}"
                )
                del waiting[queue]
        if not waiting:
            break
        answers = _consumed_queues([started.nodename for started in waiting.values()])
        for queue, started in list(waiting.items()):
            if queue in answers.get(started.nodename, set()):
                click.echo(f"worker {queue} is up ({started.nodename}, pid {started.pid()})")
                del waiting[queue]
        if waiting and time.monotonic() >= deadline:
            failures.extend(
                f"worker {queue} did not answer within {timeout:g} s; "
                f"log {started.log}: {started.last_log_line()}"
                for queue, started in waiting.items()
            )
            break
    for failure in failures:
        # A log line is not markup, and may quote a URL: escaped and redacted.
        stderr.print(f"[bold red]error:[/] {escape(redact_url(failure))}", soft_wrap=True)
    if failures:
        stderr.print("stop the others with `make stop-workers`", soft_wrap=True)
        sys.exit(EXIT_FAILED)


COMMANDS: list[click.Command] = [worker, wait_workers]
