"""The broker's Redis must not evict: checked before a worker or a broker run starts.

Private redis-servers on free ports: one with `--maxmemory-policy allkeys-lru`
(the old system's setting that let cache pressure evict queued tasks), one
whose CONFIG command is disabled (as on some managed Redis services).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.harness.localstack import RedisServer, start_redis
from pipeline.runtime.broker import broker_server_problems
from tests.conftest import REPO, SAMPLES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def evicting_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(
        tmp_path_factory.mktemp("lru"), extra_args=("--maxmemory-policy", "allkeys-lru")
    )
    yield server
    server.stop()


def deployment_env(tmp_path: Path, server: RedisServer) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "HOME": str(tmp_path),
        "DOCPIPE_UNDER_TEST": "1",
        "DOCPIPE_ALLOW_CLOUD": "false",
        "DOCPIPE_BROKER_URL": server.url(0),
        "DOCPIPE_REDIS_URL": server.url(1),
        "DOCPIPE_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}",
        "DOCPIPE_BLOB_URL": f"file://{tmp_path / 'blobs'}",
    }


def run(tmp_path: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        # A worker that failed to refuse would run until killed: the timeout fails the test.
        timeout=90,
    )


def eviction_refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    assert "maxmemory-policy allkeys-lru" in lines[0]
    assert "noeviction" in lines[0]
    return lines[0]


def test_workers_refuse_a_broker_redis_that_evicts(
    tmp_path: Path, evicting_redis: RedisServer
) -> None:
    env = deployment_env(tmp_path, evicting_redis)
    by_docpipe = eviction_refusal(run(tmp_path, env, "pipeline", "worker", "-Q", "ocr"))
    by_celery = eviction_refusal(
        run(tmp_path, env, "celery", "-A", "pipeline.runtime.celery_app", "worker", "-Q", "ocr")
    )
    assert by_celery == by_docpipe
    assert by_docpipe.startswith("error: cannot start a worker: ")


def test_a_broker_run_refuses_a_broker_redis_that_evicts(
    tmp_path: Path, evicting_redis: RedisServer
) -> None:
    env = deployment_env(tmp_path, evicting_redis)
    sample = str(SAMPLES / "affidavit_of_jane_holloway.txt")
    eviction_refusal(run(tmp_path, env, "pipeline", "run", "--broker", sample))
    # Refused before the intake: no document was queued.
    assert evicting_redis.client(0).dbsize() == 0


def test_a_noeviction_broker_passes_silently(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert broker_server_problems(redis_server.url(0)) == []
    assert capsys.readouterr().err == ""


def test_a_broker_that_hides_its_policy_gets_a_loud_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with start_redis(tmp_path, extra_args=("--rename-command", "CONFIG", "")) as server:
        assert broker_server_problems(server.url(0)) == []
    warning = capsys.readouterr().err
    assert warning.startswith("warning: cannot check maxmemory-policy")
    assert "evicts queued tasks" in warning
