"""`docpipe` (also `python -m pipeline`): run the pipeline and operate it.

Exit codes: 0 every document completed, 1 some document failed (all are still
processed and reported), 2 usage or configuration errors.

This module is only the root group. Each subcommand lives in a
`pipeline.cli` module that is imported when the subcommand runs (or its
own --help is asked for), so `docpipe --help` imports click and rich and not
Celery, SQLAlchemy, Redis or the parsers. Output, exit codes and error
rendering are in `pipeline.console`.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import click

# Re-exported for callers that imported them from here before pipeline.console existed.
from pipeline.console import EXIT_FAILED as EXIT_FAILED
from pipeline.console import EXIT_OK as EXIT_OK
from pipeline.console import EXIT_USAGE as EXIT_USAGE
from pipeline.console import DocpipeGroup, exit_without_teardown
from pipeline.console import load_settings as load_settings
from pipeline.console import report_problem as report_problem


class LazyCommand:
    """Where a subcommand is defined ("module:attribute") and its one-line summary.

    The summary is what `docpipe --help` lists without importing the module; a
    unit test checks it against the command's own help.
    """

    def __init__(self, target: str, summary: str) -> None:
        self.target = target
        self.summary = summary

    def load(self) -> click.Command:
        module_name, _, attribute = self.target.partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command


#: Every subcommand of `docpipe`, by name.
SUBCOMMANDS: Mapping[str, LazyCommand] = {
    "db": LazyCommand("pipeline.cli.db:db", "Database schema: upgrade to the latest version."),
    "dlq": LazyCommand(
        "pipeline.cli.ops:dlq",
        "Dead letters: documents whose task gave up after its retries.",
    ),
    "doctor": LazyCommand(
        "pipeline.cli.doctor:doctor",
        "Check the live deployment the DOCPIPE_* settings point at; exit 1 listing each finding.",
    ),
    "documents": LazyCommand(
        "pipeline.cli.documents:documents",
        "List documents, oldest first: short uuid, file, status, error, last update.",
    ),
    "experiment": LazyCommand(
        "pipeline.harness.cli.experiment:experiment",
        "Small measurements on a private redis-server and worker (pipeline/harness/perf).",
    ),
    "explore": LazyCommand(
        "pipeline.harness.cli.explore:explore",
        "Random fault schedules in sim mode; violations shrunk to replayable scenario files.",
    ),
    "flower": LazyCommand(
        "pipeline.cli.flower:flower",
        "Start Flower (Celery monitoring) for the docpipe app on the DOCPIPE_BROKER_URL broker.",
    ),
    "load": LazyCommand(
        "pipeline.harness.cli.load:load",
        "Measure documents per hour: the sequential monolith vs Celery under locust.",
    ),
    "migrate": LazyCommand(
        "pipeline.cli.ops:migrate",
        "Re-queue documents left in pending, ocr_processing or ocr_failed "
        "(run with workers stopped).",
    ),
    "monitor": LazyCommand(
        "pipeline.cli.monitor:monitor",
        "A live view of the broker deployment the DOCPIPE_* settings point at.",
    ),
    "purge": LazyCommand(
        "pipeline.cli.ops:purge",
        "Delete every waiting message of the ocr, text, entity and graph queues on the broker.",
    ),
    "queue-processor": LazyCommand(
        "pipeline.cli.ops:queue_processor",
        "Dispatch queued documents: claim pending rows of document_processing_queue, send OCR.",
    ),
    "reset": LazyCommand(
        "pipeline.cli.ops:reset",
        "Put documents back to pending in a new processing version and queue them again.",
    ),
    "run": LazyCommand(
        "pipeline.cli.run:run",
        "Process files and folders (recursively) through all six stages.",
    ),
    "scenario": LazyCommand(
        "pipeline.harness.cli.scenario:scenario",
        "Scenario files (scenarios/*.yaml): documents, faults, expectations.",
    ),
    "simulate": LazyCommand(
        "pipeline.harness.cli.simulate:simulate",
        "Name the bottleneck of a worker layout and the smallest layout that reaches a target.",
    ),
    "soak": LazyCommand(
        "pipeline.harness.cli.soak:soak",
        "Soak the worker layout with a steady stream; fail when memory or keys keep growing.",
    ),
    "status": LazyCommand(
        "pipeline.cli.run:status",
        "Show a document's status, error, history and Redis state.",
    ),
    "wait-workers": LazyCommand(
        "pipeline.cli.worker:wait_workers",
        "Wait until the worker of each QUEUE (started by `make workers`) consumes it.",
    ),
    "worker": LazyCommand(
        "pipeline.cli.worker:worker",
        "Start a Celery worker for some of the pipeline's queues (ocr, text, entity, graph).",
    ),
}


class LazyDocpipeGroup(DocpipeGroup):
    """`DocpipeGroup` whose subcommands are imported on first use (click's
    "lazy loading subcommands" pattern); --help lists them from their summaries.
    """

    def __init__(self, *args: Any, lazy: Mapping[str, LazyCommand], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.add_command(self.lazy[cmd_name].load(), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            loaded = self.commands.get(name)
            # A stand-in with the summary as its help: click shortens it to the
            # terminal's width exactly as it would the real command's help.
            shown = loaded or click.Command(name, help=self.lazy[name].summary)
            if not shown.hidden:
                rows.append((name, shown))
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in rows])


@click.group(
    cls=LazyDocpipeGroup,
    lazy=SUBCOMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
@click.version_option(package_name="docpipe")
def main(verbose: int) -> None:
    """docpipe - the Celery document pipeline as a reference harness and simulator.

    Runs on the embedded default (SQLite under .docpipe/, fake OCR and LLM,
    in-process Redis features, Celery in eager mode) unless DOCPIPE_* settings
    (env vars or .env) point it elsewhere.
    """
    from pipeline.redaction import redact_log_output

    level = {0: logging.ERROR, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    redact_log_output()  # -v output shows vendor exceptions as they are: redact them too


def entrypoint(argv: Sequence[str] | None = None) -> NoReturn:
    """`docpipe` and `python -m pipeline`: the command, then the exit without teardown."""
    try:
        # Click's standalone mode ends every command with SystemExit.
        main.main(args=list(argv) if argv is not None else None, prog_name="docpipe")
    except SystemExit as done:
        code = done.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)  # what the interpreter does with sys.exit("message")
            code = 1
        exit_without_teardown(code or 0)
