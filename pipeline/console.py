"""What every `docpipe` command shares: its consoles, its exit codes and how errors read.

The root group (`pipeline.cli`) and the command modules (`pipeline.cli.*`)
both import from here and never from each other, so the command line has no
import cycle. Importing this module costs click and rich only: settings,
pydantic, Redis and kombu are imported by the functions that need them, which
keeps `docpipe --help` fast.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console

from pipeline.display import markup_safe

if TYPE_CHECKING:
    from pipeline.errors import UserFacingError
    from pipeline.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# Pipes and CI logs get a wide table instead of rich's 80-column default.
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
stderr = Console(stderr=True, highlight=False)


def exit_without_teardown(code: int) -> NoReturn:
    """End the process with `code` as `sys.exit` would, minus the interpreter's teardown.

    Python's own exit clears every imported module and collects what they held: 0.13 s
    of CPU for an idle threads worker, 0.2 s for a prefork worker and its child (0.4 to
    0.6 s to start one; `make test` starts ~150), 0.35 s after `docpipe run samples/`.
    What an exit owes others still happens, in Python's order: non-daemon threads are
    joined, the atexit handlers run (logging's flush among them), stdout and stderr are
    flushed. Only for a process's last step: nothing after it runs.
    """
    main = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def usage_error(message: str, hint: str | None = None) -> NoReturn:
    """Stop the command: `message` (plain text) on stderr, exit 2 (see `DocpipeGroup`)."""
    from pipeline.errors import UserFacingError

    raise UserFacingError(message, hint=hint)


def load_settings(**overrides: Any) -> Settings:
    """Settings from env/.env with CLI overrides; bad values are usage errors (exit 2)."""
    from pipeline import settings as settings_module

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

    from pipeline.errors import ServiceUnavailable, TransientError, UserFacingError

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
    from pipeline.redaction import redact_url

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
