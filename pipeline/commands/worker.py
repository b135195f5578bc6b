"""`docpipe worker`: a thin wrapper over Celery's own worker.

`celery -A pipeline.celery_app worker -Q ocr` works just as well; this adds
the plan's per-queue defaults and refuses settings workers cannot share.
"""

from __future__ import annotations

import os
import sys

import click

from pipeline.broker import broker_problems
from pipeline.domain.models import QUEUES

#: The plan's layout: OCR on processes, entity extraction on many greenlets.
DEFAULT_POOL = {"ocr": "prefork", "text": "threads", "entity": "gevent", "graph": "threads"}
DEFAULT_CONCURRENCY = {"prefork": 2, "threads": 4, "gevent": 100, "solo": 1}


def worker_argv(
    queues: list[str], pool: str, concurrency: int, hostname: str, loglevel: str
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "pipeline.celery_app",
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
    from pipeline.cli import _usage_error, load_settings

    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(names) - set(QUEUES))
    if not names or unknown:
        _usage_error(f"unknown queue(s) {', '.join(unknown) or '(none)'}; use {', '.join(QUEUES)}")
    settings = load_settings(eager=False)
    problems = broker_problems(settings)
    if problems:
        _usage_error("cannot start a worker: " + "; ".join(problems))
    chosen_pool = pool or (DEFAULT_POOL[names[0]] if len(names) == 1 else "threads")
    size = concurrency or DEFAULT_CONCURRENCY[chosen_pool]
    argv = worker_argv(names, chosen_pool, size, hostname or f"{'-'.join(names)}@%h", loglevel)
    env = {**os.environ, "DOCPIPE_EAGER": "false"}
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)


COMMANDS: list[click.Command] = [worker]
