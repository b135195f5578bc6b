"""Broker mode for scenarios: a private redis-server and real worker processes.

Everything is started for one scenario run and stopped after it: a fresh
redis-server on a free loopback port (broker in db 0, state in db 1), SQLite
and blobs in the run's directory, and `docpipe worker` subprocesses with the
scenario's settings in their environment and `DOCPIPE_FAULT_INJECTION=true`,
so the faults installed in Redis reach them (REFERENCE.md failure 14).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from pipeline.domain.models import QUEUES
from pipeline.errors import ConfigurationError

#: Queue each port's calls run on (a worker killed by a fault there must be prefork).
PORT_QUEUES = {"ocr": "ocr", "parser": "ocr", "llm": "entity"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class WorkerSpec:
    queues: tuple[str, ...]
    pool: str
    concurrency: int


def worker_layout(prefork_queues: set[str], omit: Sequence[str] = ()) -> list[WorkerSpec]:
    """OCR (and any queue a kill fault hits) on prefork; the rest on one threads worker."""
    served = [q for q in QUEUES if q not in omit]
    prefork = tuple(q for q in served if q == "ocr" or q in prefork_queues)
    threads = tuple(q for q in served if q not in prefork)
    layout = []
    if prefork:
        layout.append(WorkerSpec(prefork, "prefork", max(1, len(prefork))))
    if threads:
        layout.append(WorkerSpec(threads, "threads", 4))
    return layout


@dataclass
class BrokerEnvironment:
    workdir: Path
    settings_env: Mapping[str, str]
    port: int = 0
    redis_process: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # --- redis -------------------------------------------------------------------------
    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigurationError(
                "broker mode needs redis-server on PATH (apt-get install redis-server)"
            )
        self.port = self.port or free_port()
        self.redis_process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir),
             "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client(0).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise ConfigurationError(f"redis-server did not start on port {self.port}")

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=5)

    # --- configuration shared by this process and the workers -----------------------
    @property
    def env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "DOCPIPE_EAGER": "false",
            "DOCPIPE_BROKER_URL": self.url(0),
            "DOCPIPE_REDIS_URL": self.url(1),
            "DOCPIPE_DATABASE_URL": f"sqlite:///{self.workdir / 'docpipe.db'}",
            "DOCPIPE_BLOB_URL": f"file://{self.workdir / 'blobs'}",
            "DOCPIPE_FAULT_INJECTION": "true",
        }
        for name in ("DOCPIPE_UNDER_TEST", "DOCPIPE_ALLOW_CLOUD", "PYTHONPATH"):
            if name in os.environ:
                env[name] = os.environ[name]
        env.update(self.settings_env)
        return env

    def settings_values(self) -> dict[str, Any]:
        return {
            key.removeprefix("DOCPIPE_").lower(): value
            for key, value in self.env.items()
            if key.startswith("DOCPIPE_") and key != "DOCPIPE_UNDER_TEST"
        }

    # --- workers -----------------------------------------------------------------------
    def start_workers(self, layout: Sequence[WorkerSpec]) -> None:
        for index, spec in enumerate(layout):
            name = "-".join(spec.queues)
            argv = [sys.executable, "-m", "pipeline", "worker", "--queues", ",".join(spec.queues)]
            argv += ["--pool", spec.pool, "--concurrency", str(spec.concurrency)]
            argv += ["--hostname", f"scenario{index}-{name}-{os.getpid()}@%h", "-l", "INFO"]
            with (self.workdir / f"worker-{name}.log").open("ab") as log:
                self.workers.append(
                    subprocess.Popen(
                        argv, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT
                    )
                )

    def worker_died(self) -> bool:
        return any(worker.poll() is not None for worker in self.workers)

    def queue_lengths(self) -> dict[str, int]:
        client = self.client(0)
        return {queue: int(client.llen(queue)) for queue in QUEUES}

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        self.workers.clear()
        if self.redis_process is not None and self.redis_process.poll() is None:
            self.redis_process.terminate()
            try:
                self.redis_process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.redis_process.kill()
                self.redis_process.wait()
        self.redis_process = None
