"""`docpipe flower` against a real worker on a private redis-server: auth holds, workers show."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.harness.localstack import RedisServer, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FLOWER_CMD = "from pipeline.cli.flower import COMMANDS; COMMANDS[0]()"
DEADLINE_S = 30.0
WORKER_ARGS = shlex.split(
    "-m celery -A pipeline.runtime.celery_app worker -Q text -E --pool threads -c 2 "
    "-n flowertest@%h "
    "--without-heartbeat --without-gossip --without-mingle --loglevel INFO"
)


@dataclass
class Running:
    port: int
    user: str
    password: str
    flower: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    logs: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
            for log in sorted(self.logs.glob("*.log"))
        )


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def base_env(tmp_path: Path, redis_server: RedisServer) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO),
        "DOCPIPE_UNDER_TEST": "1",
        "DOCPIPE_EAGER": "false",
        "DOCPIPE_BROKER_URL": redis_server.url(0),
        "DOCPIPE_REDIS_URL": redis_server.url(1),
        "DOCPIPE_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "DOCPIPE_BLOB_URL": f"file://{tmp_path / 'blobs'}",
    }


@pytest.fixture
def running(tmp_path: Path, redis_server: RedisServer) -> Iterator[Running]:
    env = base_env(tmp_path, redis_server)
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with (logs / "worker.log").open("wb") as out:
            worker = subprocess.Popen(
                [sys.executable, *WORKER_ARGS],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        processes.append(worker)

        user, password, port = "ops", secrets.token_hex(8), free_port()
        with (logs / "flower.log").open("wb") as out:
            flower = subprocess.Popen(
                [sys.executable, "-c", FLOWER_CMD, "--port", str(port)],
                env={**env, "DOCPIPE_FLOWER_BASIC_AUTH": f"{user}:{password}"},
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        processes.append(flower)
        yield Running(port, user, password, flower, worker, logs)
    finally:
        for process in reversed(processes):
            stop(process)


def wait_for_flower(running: Running) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        assert running.flower.poll() is None, "flower exited:\n" + running.output()
        try:
            status, _ = get(running.url("/healthcheck"))
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail("flower did not answer within 30 s:\n" + running.output())


def wait_for_worker(running: Running) -> dict[str, Any]:
    auth = (running.user, running.password)
    deadline = time.monotonic() + DEADLINE_S
    workers: dict[str, Any] = {}
    while time.monotonic() < deadline:
        assert running.worker.poll() is None, "worker exited:\n" + running.output()
        status, body = get(running.url("/api/workers?refresh=1"), auth)
        assert status == 200, body
        workers = json.loads(body)
        if any(name.startswith("flowertest@") for name in workers):
            return workers
        time.sleep(0.5)
    pytest.fail(f"flower never listed the worker (saw {sorted(workers)}):\n{running.output()}")


def test_flower_requires_the_configured_credentials_and_lists_the_worker(
    running: Running,
) -> None:
    wait_for_flower(running)

    assert get(running.url("/api/workers"))[0] == 401
    assert get(running.url("/api/workers"), (running.user, "0" * 16))[0] == 401
    assert get(running.url("/api/workers"), ("admin", running.password))[0] == 401
    assert get(running.url("/"))[0] == 401
    assert get(running.url("/api/workers"), (running.user, running.password))[0] == 200

    workers = wait_for_worker(running)
    [name] = [n for n in workers if n.startswith("flowertest@")]
    assert "text" in json.dumps(workers[name])  # the queue it consumes

    # The password reached Flower through its environment only: never argv, never logs.
    cmdline = Path(f"/proc/{running.flower.pid}/cmdline").read_bytes().decode()
    assert "celery" in cmdline and "flower" in cmdline  # `docpipe flower` became Flower
    assert running.password not in cmdline
    stop(running.flower)
    stop(running.worker)
    assert running.password not in running.output()
