"""`make workers` returns only once its workers answer on the broker; `make stop-workers` ends them.

A private redis-server and one small worker (the full layout takes the same
path, four times); run through make, as a user does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.harness.localstack import RedisServer, start_redis
from tests.conftest import REPO

VENV = Path(sys.executable).parent.parent

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed"),
]


def make(tmp_path: Path, redis: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "HOME": str(tmp_path),
        "DOCPIPE_UNDER_TEST": "1",
        "DOCPIPE_ALLOW_CLOUD": "false",
        "DOCPIPE_BROKER_URL": redis.url(0),
        "DOCPIPE_REDIS_URL": redis.url(1),
        "DOCPIPE_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}",
        "DOCPIPE_BLOB_URL": f"file://{tmp_path / 'blobs'}",
    }
    return subprocess.run(
        # The virtualenv running the tests (wherever it is); -o: never rebuild it from a test.
        ["make", "--no-print-directory", f"VENV={VENV}", "-o", f"{VENV}/.installed", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_make_workers_waits_until_the_worker_answers_and_stop_workers_ends_it(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    with start_redis(tmp_path / "redis") as redis:
        try:
            started = make(
                tmp_path,
                redis,
                f"RUN={run}",
                "WORKER_LAYOUT=text:threads:2",
                "WORKERS_TIMEOUT=240",
                "workers",
            )
            assert started.returncode == 0, started.stdout + started.stderr
            assert "worker text is up (text@" in started.stdout
            pid = int((run / "text.pid").read_text())
            assert Path(f"/proc/{pid}").exists()
            # Celery's worker log format (when and which process), not the command line's.
            log = (run / "text.log").read_text()
            assert re.search(
                r"^\[\d{4}-\d\d-\d\d [\d:,]+: INFO/MainProcess\] .* ready\.$", log, re.M
            ), log
        finally:
            stopped = make(tmp_path, redis, f"RUN={run}", "stop-workers")
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopped text (pid {pid})" in stopped.stdout
        assert not Path(f"/proc/{pid}").exists()
        assert not list(run.glob("*.pid"))
