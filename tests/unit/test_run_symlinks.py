"""`docpipe run DIR` does not follow links out of the folders given (issue 11, item 4).

A link to `/etc/passwd` planted in an inbox was ingested and completed; in
production that copy goes to S3 and the LLM. Links below a folder are followed
only when they point inside the folders given, every other one is reported
with its reason, and `--follow-symlinks` allows them explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.app.intake import scan_paths
from tests.conftest import GOOD, docpipe


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """An inbox with one real file, links in and out, and a folder outside it."""
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    (inbox / "real.txt").write_text(GOOD)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(GOOD.replace("JANE", "SECRET"))
    (inbox / "passwd.txt").symlink_to("/etc/passwd")
    (inbox / "out.txt").symlink_to(outside / "secret.txt")
    (inbox / "outdir").symlink_to(outside, target_is_directory=True)
    (inbox / "sub" / "in.txt").symlink_to(inbox / "real.txt")
    (inbox / "loop").symlink_to(inbox, target_is_directory=True)
    (inbox / "dangling.txt").symlink_to(tmp_path / "missing.txt")
    return inbox


def test_links_out_of_the_folder_are_skipped_with_a_reason(inbox: Path) -> None:
    collected = scan_paths([inbox])

    assert [p.relative_to(inbox).as_posix() for p in collected.files] == [
        "real.txt",
        "sub/in.txt",
    ]
    reasons = {Path(s.path).name: s.reason for s in collected.skipped}
    assert set(reasons) == {"passwd.txt", "out.txt", "outdir", "dangling.txt"}
    assert "outside the folders given (/etc/passwd)" in reasons["passwd.txt"]
    assert "--follow-symlinks" in reasons["out.txt"]
    assert "folder outside" in reasons["outdir"]
    assert reasons["dangling.txt"] == "broken symbolic link"


def test_follow_symlinks_takes_links_anywhere_but_enters_each_folder_once(inbox: Path) -> None:
    collected = scan_paths([inbox], follow_symlinks=True)

    names = sorted(p.relative_to(inbox).as_posix() for p in collected.files)
    assert names == ["out.txt", "outdir/secret.txt", "passwd.txt", "real.txt", "sub/in.txt"]
    assert [Path(s.path).name for s in collected.skipped] == ["dangling.txt"]


def test_a_link_to_another_folder_given_is_inside(inbox: Path, tmp_path: Path) -> None:
    collected = scan_paths([inbox, tmp_path / "outside"])

    names = {p.name for p in collected.files}
    assert {"out.txt", "secret.txt"} <= names  # the link's target is a folder given
    assert "passwd.txt" not in names


def test_a_link_named_on_the_command_line_is_the_users_choice(inbox: Path) -> None:
    collected = scan_paths([inbox / "out.txt"])
    assert collected.files == [inbox / "out.txt"] and collected.skipped == []


def test_run_reports_the_skipped_link_and_does_not_ingest_it(inbox: Path, tmp_path: Path) -> None:
    result = docpipe(tmp_path, "run", "inbox", "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    files = sorted(Path(row["file"]).name for row in report["documents"])
    assert files == ["in.txt", "real.txt"]
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"passwd.txt", "out.txt", "outdir", "dangling.txt"}
    assert report["totals"]["skipped"] == 4

    table = docpipe(tmp_path, "run", "inbox")
    assert table.returncode == 0, table.stderr
    assert "skipped inbox/passwd.txt: symbolic link to a file outside" in table.stdout


def test_run_follow_symlinks_ingests_them(inbox: Path, tmp_path: Path) -> None:
    result = docpipe(tmp_path, "run", "inbox", "--json", "--follow-symlinks")

    report = json.loads(result.stdout)
    rows = {Path(row["file"]).name: row["status"] for row in report["documents"]}
    assert {"out.txt", "passwd.txt", "secret.txt"} <= set(rows)
    assert rows["out.txt"] == "completed"


def test_a_folder_with_only_links_out_is_a_usage_error_naming_them(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "passwd.txt").symlink_to("/etc/passwd")

    result = docpipe(tmp_path, "run", "inbox")

    assert result.returncode == 2
    assert "passwd.txt" in result.stderr and "no documents found" in result.stderr
    assert "Traceback" not in result.stderr
