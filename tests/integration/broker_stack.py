"""Real worker processes on a private Redis, for broker-mode integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from celery import Celery

from pipeline.bootstrap import Services, build_services, use_services
from pipeline.broker import queues_without_consumers
from pipeline.celery_app import configure
from pipeline.domain.models import QUEUES
from pipeline.settings import Settings
from tests.conftest import REPO
from tests.redis_server import RedisServer


@dataclass
class BrokerStack:
    """One shared configuration (env) for the test process and its workers."""

    workdir: Path
    redis: RedisServer
    database_url: str
    broker_db: int = 0
    state_db: int = 1
    overrides: Mapping[str, str] = field(default_factory=dict)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "PYTHONPATH": str(REPO),
            "DOCPIPE_UNDER_TEST": "1",
            "DOCPIPE_ALLOW_CLOUD": "false",
            "DOCPIPE_EAGER": "false",
            "DOCPIPE_BROKER_URL": self.redis.url(self.broker_db),
            "DOCPIPE_REDIS_URL": self.redis.url(self.state_db),
            "DOCPIPE_DATABASE_URL": self.database_url,
            "DOCPIPE_BLOB_URL": f"file://{self.workdir / 'blobs'}",
            "DOCPIPE_FAULT_INJECTION": "true",
            "DOCPIPE_OCR_POLL_INTERVAL_S": "0.2",
            "DOCPIPE_FAKE_OCR_POLLS_UNTIL_DONE": "4",
            # The shared LLM limit is tested on its own; here it would only slow the batch.
            "DOCPIPE_LLM_RATE_LIMIT_CALLS": "100000",
            "DOCPIPE_RETRY_BACKOFF_BASE_S": "0.2",
            "DOCPIPE_RETRY_BACKOFF_MAX_S": "2",
        }
        env.update(self.overrides)
        return env

    def settings(self) -> Settings:
        values = {
            key.removeprefix("DOCPIPE_").lower(): value
            for key, value in self.env.items()
            if key.startswith("DOCPIPE_") and key not in {"DOCPIPE_UNDER_TEST"}
        }
        return Settings(_env_file=None, **values)  # type: ignore[arg-type]

    def services(self) -> Services:
        """Services for the test process (the intake side), installed for the tasks."""
        settings = self.settings()
        services = build_services(settings)
        configure(settings)
        use_services(services)
        return services

    def start_worker(
        self, queues: str, pool: str = "threads", concurrency: int = 4, name: str | None = None
    ) -> subprocess.Popen[bytes]:
        hostname = f"{name or queues.replace(',', '-')}-{os.getpid()}@%h"
        argv = [sys.executable, "-m", "pipeline", "worker", "--queues", queues, "--pool", pool]
        argv += ["--concurrency", str(concurrency), "--hostname", hostname, "--loglevel", "INFO"]
        with (self.workdir / f"worker-{name or queues}.log").open("ab") as log:
            process = subprocess.Popen(
                argv, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.workers.append(process)
        return process

    def wait_until_consumed(self, app: Celery, queues: tuple[str, ...] = QUEUES) -> None:
        deadline = time.monotonic() + 30
        while queues_without_consumers(app, queues, timeout=0.5):
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers did not come up; see logs in {self.workdir}")
            for worker in self.workers:
                if worker.poll() is not None:
                    raise RuntimeError(f"a worker exited early; see logs in {self.workdir}")

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


def pool_children(pid: int) -> list[int]:
    """Child processes of a worker (its prefork pool)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children.extend(int(child) for child in text)
    return children
