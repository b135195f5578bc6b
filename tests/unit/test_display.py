"""User-supplied strings reach tables as text: no markup, no row splitting, no reordering."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

from pipeline.display import markup_safe, printable
from tests.conftest import GOOD, docpipe

RLO = "\u202e"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain.txt", "plain.txt"),
        ("two\nlines.txt", "two\\nlines.txt"),
        ("cr\rtab\t.txt", "cr\\rtab\\t.txt"),
        ("nul\x00.txt", "nul\\x00.txt"),
        ("esc\x1b[31mred.txt", "esc\\x1b[31mred.txt"),
        (f"report{RLO}txt.exe", "report\\u202etxt.exe"),
        ("iso\u2066late\u2069.txt", "iso\\u2066late\\u2069.txt"),
        ("line\u2028sep.txt", "line\\u2028sep.txt"),
        ("c1\x85.txt", "c1\\x85.txt"),
        ("ünïcödé, 日本語.txt", "ünïcödé, 日本語.txt"),
    ],
)
def test_printable_shows_control_and_bidi_characters_as_escapes(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def _rendered(cell: str) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    table = Table()
    table.add_column("file")
    table.add_row(cell)
    console.print(table)
    return console.export_text()


def test_markup_in_a_name_is_shown_verbatim_not_interpreted() -> None:
    name = "[link=http://evil]click.txt[/link] [bold red]x[/]"
    text = _rendered(markup_safe(name))
    assert name in text
    # Interpreted, the same cell loses its brackets: the test can fail.
    assert name not in _rendered(name)


def test_a_newline_name_stays_on_one_table_row() -> None:
    lines = _rendered(markup_safe("evil\n│ completed │ fake row")).splitlines()
    assert len(lines) == 5  # top border, header, separator, ONE row, bottom border


def test_run_table_shows_hostile_file_names_escaped_one_row_each(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    names = ["[link=http:evil]click.txt", "two\nlines.txt", f"report{RLO}txt.eml"]
    for name in names:
        (inbox / name).write_text(GOOD)

    table = docpipe(tmp_path, "run", "inbox")
    as_json = docpipe(tmp_path, "run", "inbox", "--json")

    rows = [line for line in table.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 3, table.stdout
    assert any("[link=http:evil]click.txt" in row for row in rows)
    assert any("two\\nlines.txt" in row for row in rows)
    assert any("report\\u202etxt.eml" in row for row in rows)
    assert RLO not in table.stdout and "\x1b]8;" not in table.stdout  # no bidi, no hyperlink
    # JSON keeps the real names (json escapes them itself).
    files = sorted(Path(r["file"]).name for r in json.loads(as_json.stdout)["documents"])
    assert files == sorted(names)
