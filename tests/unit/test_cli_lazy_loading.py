"""`docpipe` loads a subcommand's module only when that subcommand is used.

`docpipe --help` lists every command from the table in `pipeline.cli`, so it
never imports Celery, SQLAlchemy, Redis or the parsers; these tests check what
is imported (sys.modules in a fresh interpreter), not how long it takes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from pipeline.cli import SUBCOMMANDS, main

#: Packages only a subcommand's work needs, never the command line's start.
HEAVY = (
    "celery",
    "kombu",
    "sqlalchemy",
    "redis",
    "fakeredis",
    "pypdf",
    "docx",
    "moto",
    "boto3",
    "locust",
    "matplotlib",
    "pydantic_settings",
)


def _imported_after(code: str) -> set[str]:
    """Top-level names in sys.modules after `code` ran in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)), file=sys.stderr)"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stderr.strip().splitlines()[-1])
    return set(modules)


def test_importing_the_cli_imports_no_heavy_dependency_and_no_command() -> None:
    modules = _imported_after("import pipeline.cli")

    assert "pipeline.cli" in modules
    assert {name.split(".")[0] for name in modules} & set(HEAVY) == set()
    assert sorted(m for m in modules if m.startswith("pipeline.cli.")) == []


def test_docpipe_help_lists_every_command_without_importing_one() -> None:
    code = (
        "from pipeline.cli import main\n"
        "try:\n"
        "    main.main(['--help'], prog_name='docpipe')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code"
    )
    modules = _imported_after(code)

    assert {name.split(".")[0] for name in modules} & set(HEAVY) == set()
    assert sorted(m for m in modules if m.startswith("pipeline.cli.")) == []


def test_a_command_is_imported_when_it_is_used() -> None:
    modules = _imported_after(
        "from pipeline.cli import main\n"
        "try:\n"
        "    main.main(['db', '--help'], prog_name='docpipe')\n"
        "except SystemExit:\n"
        "    pass"
    )

    assert "pipeline.cli.db" in modules
    assert "pipeline.cli.worker" not in modules


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_summary_in_the_table_is_the_commands_own_short_help(name: str) -> None:
    command = SUBCOMMANDS[name].load()
    stand_in = click.Command(name, help=SUBCOMMANDS[name].summary)

    assert command.name == name
    # The widths --help uses on narrow and wide terminals, and the untruncated text.
    for limit in (20, 45, 57, 200):
        assert stand_in.get_short_help_str(limit) == command.get_short_help_str(limit)


def test_help_shows_the_summaries_and_an_unknown_command_is_a_usage_error() -> None:
    runner = CliRunner()

    listed = runner.invoke(main, ["--help"], terminal_width=200)
    unknown = runner.invoke(main, ["no-such-command"])

    assert listed.exit_code == 0
    for name, entry in SUBCOMMANDS.items():
        assert f"{name}  " in listed.output
        assert entry.summary in listed.output
    assert unknown.exit_code == 2
    assert "No such command 'no-such-command'" in unknown.output
