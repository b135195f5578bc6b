"""The pytest plugin (entry point `docpipe`): scenario files as test items, read failures,
and a plugin that costs nothing to projects that do not use it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PASSING = """\
name: plugin_passes
description: One text document completes.
modes: [eager, broker]
documents:
  - generate: {type: txt, name: fine.txt}
expect:
  documents:
    - match: fine.txt
      status: completed
"""
#: The parser refuses the document, but the scenario expects it to complete.
FAILING = """\
name: plugin_fails
description: A wrong expectation.
modes: [eager]
documents:
  - generate: {type: txt, name: refused.txt}
faults:
  - {port: parser, operation: extract, kind: permanent, message: "password protected"}
expect:
  documents:
    - match: refused.txt
      status: completed
"""
INVALID = """\
name: plugin_invalid
description: An unknown key.
documents:
  - generate: {type: txt}
expectations: {}
"""


def pytest_in(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in `project`, as a downstream project runs it (the plugin comes from the
    installed docpipe's entry point, not from this repository's conftest)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", *args],
        cwd=project,
        env={"PATH": "/usr/bin:/bin", "HOME": str(project), "DOCPIPE_UNDER_TEST": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "plugin_passes.yaml").write_text(PASSING)
    (tmp_path / "scenarios" / "plugin_fails.yaml").write_text(FAILING)
    (tmp_path / "notes.yaml").write_text("not: a scenario\n")  # outside scenarios/: ignored
    return tmp_path


def test_scenario_files_are_items_one_per_declared_mode_broker_ones_marked_integration(
    project: Path,
) -> None:
    everything = pytest_in(project, "--collect-only", "-q")
    without_integration = pytest_in(project, "--collect-only", "-q", "-m", "not integration")

    assert everything.returncode == 0, everything.stdout + everything.stderr
    assert sorted(line for line in everything.stdout.splitlines() if "::" in line) == [
        "scenarios/plugin_fails.yaml::eager",
        "scenarios/plugin_passes.yaml::broker",
        "scenarios/plugin_passes.yaml::eager",
    ]
    assert "scenarios/plugin_passes.yaml::broker" not in without_integration.stdout
    assert "scenarios/plugin_passes.yaml::eager" in without_integration.stdout


def test_a_failing_scenario_reports_each_check_and_the_replay_command(project: Path) -> None:
    result = pytest_in(project, "-m", "not integration", "scenarios/")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 1 passed" in result.stdout
    assert "scenario plugin_fails FAILED in eager mode" in result.stdout
    assert "FAIL expectation documents[0] 'refused.txt' status" in result.stdout
    assert "expected completed; measured refused.txt=ocr_failed" in result.stdout
    assert "replay: docpipe scenario run" in result.stdout
    assert "Traceback" not in result.stdout


def test_an_invalid_scenario_is_a_collection_error_naming_the_key(project: Path) -> None:
    (project / "scenarios" / "plugin_invalid.yaml").write_text(INVALID)

    result = pytest_in(project, "--collect-only", "-q")

    assert result.returncode == 2, result.stdout + result.stderr
    assert "plugin_invalid.yaml" in result.stdout
    assert "expectations" in result.stdout


def test_the_mode_option_selects_items(project: Path) -> None:
    result = pytest_in(project, "--collect-only", "-q", "--docpipe-mode", "broker")

    assert [line for line in result.stdout.splitlines() if "::" in line] == [
        "scenarios/plugin_passes.yaml::broker"
    ]


def test_loading_the_plugin_imports_no_harness_or_client_library() -> None:
    probe = (
        "import sys\n"
        "import pipeline.testing.plugin\n"
        "heavy = ('pipeline.harness', 'pipeline.bootstrap', 'redis', 'celery', 'sqlalchemy',\n"
        "         'pydantic', 'moto', 'boto3', 'fakeredis', 'yaml')\n"
        "print(','.join(name for name in heavy if name in sys.modules))\n"
    )

    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()

    assert loaded == ""


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    from importlib.metadata import entry_points

    (plugin,) = [e for e in entry_points(group="pytest11") if e.name == "docpipe"]

    assert plugin.value == "pipeline.testing.plugin"
