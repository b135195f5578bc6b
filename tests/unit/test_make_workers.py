"""`make workers` fails, naming the log and its last line, when a worker died or never answers.

Subprocesses as a user runs them; no broker is needed: refused settings kill
the workers at once, and on the embedded default's in-process broker nothing
can answer a ping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

VENV = Path(sys.executable).parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def clean_env(tmp_path: Path) -> dict[str, str]:
    """The embedded default: every worker refuses it."""
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "HOME": str(tmp_path),
        "DOCPIPE_UNDER_TEST": "1",
        "DOCPIPE_ALLOW_CLOUD": "false",
    }


def make(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # The virtualenv running the tests (wherever it is); -o: never rebuild it from a test.
        ["make", "--no-print-directory", f"VENV={VENV}", "-o", f"{VENV}/.installed", *args],
        cwd=REPO,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_make_workers_fails_when_every_worker_dies_at_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = make(tmp_path, f"RUN={run}", "WORKER_LAYOUT=ocr:solo:1 text:threads:2", "workers")
    assert result.returncode != 0, result.stdout + result.stderr
    assert "is up" not in result.stdout
    for queue in ("ocr", "text"):
        line = next(
            line for line in result.stderr.splitlines() if line.startswith(f"error: worker {queue}")
        )
        # The log named, and its last line: the worker's own refusal.
        assert f"log {run / queue}.log: error: cannot start a worker: " in line
        assert "DOCPIPE_BROKER_URL is memory://" in line
    assert "Traceback" not in result.stderr
    # stop-workers still cleans up after a failed start.
    stopped = make(tmp_path, f"RUN={run}", "stop-workers")
    assert stopped.returncode == 0, stopped.stderr
    assert not list(run.glob("*.pid"))


@pytest.fixture
def silent_process() -> Iterator[int]:
    """A live process that is no worker: it never answers on the broker."""
    process = subprocess.Popen(["sleep", "300"])
    yield process.pid
    process.kill()
    process.wait()


def test_wait_workers_names_a_worker_that_never_answers(
    tmp_path: Path, silent_process: int
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "graph.pid").write_text(f"{silent_process}\n")
    (run / "graph.log").write_text("celery banner\n[queues] .> graph\n\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "wait-workers",
            "--run-dir",
            str(run),
            "-t",
            "1",
            "graph",
        ],
        cwd=tmp_path,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert (
        f"error: worker graph did not answer within 1 s; log {run / 'graph.log'}: [queues] .> graph"
    ) in result.stderr
    assert os.path.exists(f"/proc/{silent_process}")  # waiting never kills anything
