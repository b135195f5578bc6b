"""Real worker processes on a private Redis, for broker-mode integration tests.

The processes are pipeline.harness.localstack's; here only the tests' shared environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery

from pipeline.bootstrap import Services, start
from pipeline.domain.models import QUEUES
from pipeline.harness.localstack import (
    CODE_ROOT,
    RedisServer,
    WorkerGroup,
    settings_values,
    worker_environment,
)
from pipeline.harness.scenarios.runner import WORKERS_READY_TIMEOUT_S
from pipeline.runtime.monitor import UNACKED_KEY
from pipeline.settings import Settings


@dataclass
class BrokerStack:
    """One shared configuration (env) for the test process and its workers."""

    workdir: Path
    redis: RedisServer
    database_url: str
    broker_db: int = 0
    state_db: int = 1
    overrides: Mapping[str, str] = field(default_factory=dict)
    group: WorkerGroup = field(init=False)

    def __post_init__(self) -> None:
        self.group = WorkerGroup(self.workdir, self.env)

    @property
    def workers(self) -> list[subprocess.Popen[bytes]]:
        return self.group.processes

    @property
    def env(self) -> dict[str, str]:
        values: dict[str, object] = {
            "under_test": "1",
            "allow_cloud": False,
            "eager": False,
            "broker_url": self.redis.url(self.broker_db),
            "redis_url": self.redis.url(self.state_db),
            "database_url": self.database_url,
            "blob_url": f"file://{self.workdir / 'blobs'}",
            "fault_injection": True,
            "ocr_poll_interval_s": 0.2,
            "fake_ocr_polls_until_done": 4,
            # The shared LLM limit is tested on its own; here it would only slow the batch.
            "llm_rate_limit_calls": 100000,
            "retry_backoff_base_s": 0.2,
            "retry_backoff_max_s": 2,
        }
        env = worker_environment(values, home=self.workdir)
        env.update(self.overrides)
        return env

    def settings(self) -> Settings:
        return Settings(_env_file=None, **settings_values(self.env))  # type: ignore[arg-type]

    def services(self) -> Services:
        """Services for the test process (the intake side), installed for the tasks."""
        return start(self.settings())

    def start_worker(
        self, queues: str, pool: str = "threads", concurrency: int = 4, name: str | None = None
    ) -> subprocess.Popen[bytes]:
        hostname = name or queues.replace(",", "-")
        return self.group.start(
            queues, pool=pool, concurrency=concurrency, name=hostname, log=name or queues
        )

    def wait_until_consumed(self, app: Celery, queues: tuple[str, ...] = QUEUES) -> None:
        self.group.wait_for_consumers(app, queues, timeout_s=WORKERS_READY_TIMEOUT_S)

    def diagnosis(self) -> str:
        """Waiting and unacked messages per queue, then each worker's log tail.

        What a broker test prints when documents did not finish: whether the
        messages sat in Redis, were held by a worker, or were never sent.
        """
        client = self.redis.client(self.broker_db)
        waiting = {queue: client.llen(queue) for queue in QUEUES}
        unacked = client.hlen(UNACKED_KEY)
        return f"waiting {waiting}, unacked {unacked}\n{self.group.log_tails()}"

    def stop(self) -> None:
        self.group.stop()


def docpipe_json(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = 120
) -> tuple[int, dict[str, Any]]:
    """`docpipe ARGS` as a subprocess: its exit code and its one JSON object.

    On this checkout's code alone: a stack's PYTHONPATH may carry what only its
    workers should load (a `sitecustomize` that skews their clock).
    """
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(CODE_ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def run_json(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = 300
) -> tuple[int, dict[str, Any]]:
    """`docpipe run ARGS --json` as a subprocess: its exit code and its one JSON object."""
    return docpipe_json(env, cwd, "run", *args, "--json", timeout=timeout)
