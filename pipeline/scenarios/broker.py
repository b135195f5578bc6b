"""Broker mode for scenarios: a private redis-server and real worker processes.

Everything is started for one scenario run and stopped after it: a fresh
redis-server on a free loopback port (broker in db 0, state in db 1), SQLite
and blobs in the run's directory, and `docpipe worker` subprocesses with the
scenario's settings in their environment and `DOCPIPE_FAULT_INJECTION=true`,
so the faults installed in Redis reach them (REFERENCE.md failure 14).
The processes themselves are pipeline.devstack's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from pipeline import devstack
from pipeline.domain.models import QUEUES
from pipeline.errors import ConfigurationError

#: Queue each port's calls run on (a worker killed by a fault there must be prefork).
PORT_QUEUES = {"ocr": "ocr", "parser": "ocr", "llm": "entity"}


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
    server: devstack.RedisServer | None = None
    workers: devstack.WorkerGroup | None = None
    #: Redis with an fsynced append-only file (scenarios that restart it).
    persistent: bool = False

    # --- redis -------------------------------------------------------------------------
    def start_redis(self) -> None:
        try:
            self.server = devstack.start_redis(self.workdir, persistent=self.persistent)
        except ConfigurationError as exc:
            raise ConfigurationError(f"broker mode: {exc}") from exc

    def url(self, db: int) -> str:
        return self._redis().url(db)

    def client(self, db: int) -> redis.Redis:
        return self._redis().client(db, socket_timeout=5)

    def _redis(self) -> devstack.RedisServer:
        if self.server is None:
            raise ConfigurationError("broker mode: the redis-server was not started")
        return self.server

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
        passed_on = ("DOCPIPE_UNDER_TEST", "DOCPIPE_ALLOW_CLOUD", "PYTHONPATH")
        # The sim-cloud profile's fake AWS credentials (boto3 reads them from the env).
        aws = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
        for name in passed_on + aws:
            if name in os.environ:
                env[name] = os.environ[name]
        env.update(self.settings_env)
        return env

    def settings_values(self) -> dict[str, Any]:
        return dict(devstack.settings_values(self.env))

    # --- workers -----------------------------------------------------------------------
    def start_workers(self, layout: Sequence[WorkerSpec]) -> devstack.WorkerGroup:
        self.workers = devstack.WorkerGroup(self.workdir, self.env)
        for index, spec in enumerate(layout):
            name = "-".join(spec.queues)
            self.workers.start(
                spec.queues,
                pool=spec.pool,
                concurrency=spec.concurrency,
                name=f"scenario{index}-{name}",
                log=name,
            )
        return self.workers

    def queue_lengths(self) -> dict[str, int]:
        client = self.client(0)
        return {queue: int(client.llen(queue)) for queue in QUEUES}

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()
        if self.server is not None:
            self.server.stop()
        self.server = None
