"""`docpipe scenario run --keep DIR`: the run folder stays for inspection, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.harness.scenarios.runner import (
    Check,
    RunReport,
    _forget_removed_folder,
    kept_run_folder,
)
from tests.conftest import REPO, docpipe

POISON = REPO / "scenarios" / "poison_document_dead_lettered.yaml"

#: Expects the wrong status on purpose: a run that fails, with nothing else wrong.
FAILING = """\
name: wrong_expectation
description: expects a completed document to fail
documents:
  - generate: {type: txt, name: fine.txt}
expect:
  documents:
    - match: fine.txt
      status: ocr_failed
"""


def test_keep_leaves_database_and_blobs_where_docpipe_can_read_them(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    result = docpipe(tmp_path, "scenario", "run", str(POISON), "--keep", str(kept))
    assert result.returncode == 0, result.stdout + result.stderr
    folder = kept / "poison_document_dead_lettered-eager"
    assert f"run folder kept: {folder}" in result.stdout
    assert (folder / "docpipe.db").is_file() and any((folder / "blobs").rglob("*"))

    # The dead letter is there to try `dlq list` / `dlq replay` on.
    letters = docpipe(
        tmp_path, "dlq", "list", "--json", "--database-url", f"sqlite:///{folder / 'docpipe.db'}"
    )
    assert letters.returncode == 0, letters.stderr
    (letter,) = json.loads(letters.stdout)["dead_letters"]
    assert letter["file"] == "poison.txt" and letter["status"] == "dead_lettered"


def test_a_failed_run_names_no_removed_folder_and_keep_keeps_it(tmp_path: Path) -> None:
    scenario = tmp_path / "wrong_expectation.yaml"
    scenario.write_text(FAILING)
    removed = docpipe(tmp_path, "scenario", "run", str(scenario))
    assert removed.returncode == 1, removed.stderr
    assert "FAIL" in removed.stdout and "Traceback" not in removed.stderr
    assert "docpipe-scenario-" not in removed.stdout  # the temporary folder's prefix
    assert "removed after the run" not in removed.stdout
    assert "--keep DIR" in removed.stdout

    kept = docpipe(tmp_path, "scenario", "run", str(scenario), "--keep", "kept", "--json")
    assert kept.returncode == 1
    (run,) = json.loads(kept.stdout)["runs"]
    assert run["workdir"] == str(tmp_path / "kept" / "wrong_expectation-eager")
    assert (Path(run["workdir"]) / "docpipe.db").is_file()


def test_a_second_kept_run_gets_a_folder_of_its_own(tmp_path: Path) -> None:
    first = kept_run_folder(tmp_path, "s", "eager")
    assert first == tmp_path / "s-eager"
    first.mkdir()
    assert kept_run_folder(tmp_path, "s", "eager") == first  # empty: reused
    (first / "docpipe.db").write_text("")
    assert kept_run_folder(tmp_path, "s", "eager") == tmp_path / "s-eager-2"


def test_messages_about_a_removed_folder_point_to_keep_instead() -> None:
    folder = Path("/tmp/docpipe-scenario-x-broker-abc")
    report = RunReport("x", "x.yaml", "broker", 0, False, 1.0, "replay")
    report.error = f"workers did not come up (worker logs in {folder})"
    report.checks.append(Check("invariant", "c", False, "e", f"see {folder}/worker-ocr.log"))
    _forget_removed_folder(report, folder)
    assert str(folder) not in report.error and "--keep DIR" in report.error
    assert str(folder) not in report.checks[0].measured
