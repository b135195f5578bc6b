"""`docpipe run` as a user runs it, in a fresh working directory.

The exit codes, the JSON on stdout and what goes to stderr are checked in a real
`python -m pipeline` process (`real_process=True`); the rest runs in this process.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import GOOD, SAMPLES, docpipe


def test_run_json_prints_exactly_one_object_and_exit_1_when_a_document_fails(
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "nested").mkdir(parents=True)
    (inbox / "nested" / "good.txt").write_text(GOOD)
    (inbox / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj <<")

    result = docpipe(tmp_path, "run", "inbox", "--json", real_process=True)

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"documents", "totals", "skipped"}
    assert report["skipped"] == []
    rows = {Path(r["file"]).name: r for r in report["documents"]}
    assert set(rows) == {"good.txt", "broken.pdf"}
    for row in rows.values():
        assert set(row) == {
            "file", "document_uuid", "short_uuid", "already_processed", "reprocessed",
            "status", "error", "category",
            "chunks", "mentions", "canonical_entities", "relationships",
            "skipped_scanned_pages", "note",
        }  # fmt: skip
    assert rows["good.txt"]["status"] == "completed"
    assert rows["good.txt"]["skipped_scanned_pages"] == 0 and rows["good.txt"]["note"] is None
    assert rows["broken.pdf"]["status"] == "ocr_failed"
    assert rows["broken.pdf"]["error"]
    assert report["totals"]["documents"] == 2 and report["totals"]["failed"] == 1
    assert (tmp_path / ".docpipe" / "docpipe.db").exists()


def test_run_exits_0_when_all_complete_and_names_the_database(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(GOOD)
    result = docpipe(tmp_path, "run", "a.txt")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1/1 completed" in result.stdout
    assert "sqlite:///.docpipe/docpipe.db" in result.stdout


def test_run_with_database_url_uses_that_database(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(GOOD)
    db = tmp_path / "elsewhere" / "x.db"
    result = docpipe(tmp_path, "run", "a.txt", "--json", "--database-url", f"sqlite:///{db}")
    assert result.returncode == 0, result.stderr
    assert db.exists()
    assert not (tmp_path / ".docpipe" / "docpipe.db").exists()


def test_usage_and_configuration_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    missing = docpipe(tmp_path, "run", "does-not-exist.pdf", real_process=True)
    assert missing.returncode == 2
    assert "no such file or directory" in missing.stderr
    bad_url = docpipe(tmp_path, "run", ".", "--database-url", "mysql+nothing://u:secret@h/d")
    assert bad_url.returncode == 2
    assert "secret" not in bad_url.stderr + bad_url.stdout
    no_args = docpipe(tmp_path, "run", real_process=True)
    assert no_args.returncode == 2
    for result in (missing, bad_url, no_args):
        assert "Traceback" not in result.stderr


def test_progress_bar_goes_to_stderr_for_longer_runs(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"doc{i}.txt").write_text(GOOD)
    result = docpipe(tmp_path, "run", ".", "--json", real_process=True)
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)


def test_samples_run_via_cli(tmp_path: Path) -> None:
    result = docpipe(tmp_path, "run", str(SAMPLES), "--json")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    totals = json.loads(result.stdout)["totals"]
    assert totals["completed"] == totals["documents"] >= 5
