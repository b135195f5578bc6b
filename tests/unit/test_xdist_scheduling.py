"""`make test`'s xdist scheduler: a shared-fixture module runs whole in one process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_FIXTURE_MODULES

#: A module-scoped fixture and tests that write which xdist process ran them.
RECORDING_MODULE = """\
import json, os
import pytest

def record(path):
    with open(path, "a") as f:
        f.write(json.dumps({{"module": __name__, "worker": os.environ["PYTEST_XDIST_WORKER"]}}))
        f.write("\\n")

@pytest.fixture(scope="module")
def expensive():
    record("starts.jsonl")

@pytest.mark.parametrize("n", range({count}))
def test_runs(expensive, n):
    record("runs.jsonl")
"""
#: The project's hook, on this tmp project's module list.
CONFTEST = """\
from tests.xdist_scheduling import ModuleGroupScheduling

def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") == "loadgroup":
        return ModuleGroupScheduling(config, log, modules={"test_shared_a.py", "test_shared_b.py"})
"""


def _records(path: Path) -> dict[str, list[str]]:
    workers: dict[str, list[str]] = defaultdict(list)
    for line in path.read_text().splitlines():
        record = json.loads(line)
        workers[record["module"]].append(record["worker"])
    return workers


def test_each_shared_module_runs_in_one_process_and_starts_its_fixtures_once(
    tmp_path: Path,
) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    for name in ("test_shared_a", "test_shared_b", "test_free"):
        (tmp_path / f"{name}.py").write_text(RECORDING_MODULE.format(count=8))

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "-n",
            "2",
            "--dist",
            "loadgroup",
        ],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    runs, starts = _records(tmp_path / "runs.jsonl"), _records(tmp_path / "starts.jsonl")
    for module in ("test_shared_a", "test_shared_b"):
        assert len(runs[module]) == 8
        assert len(set(runs[module])) == 1, runs[module]
        assert len(starts[module]) == 1, starts[module]
    assert len(runs["test_free"]) == 8


@pytest.mark.parametrize("module", sorted(SHARED_FIXTURE_MODULES))
def test_each_listed_shared_fixture_module_exists(module: str) -> None:
    """A renamed module would silently lose its grouping."""
    assert (REPO / module).is_file()
