"""The private stack for broker-mode tests, without Docker.

`PrivateStack` puts together what pipeline.harness already runs for broker-mode
scenarios (a redis-server on a free loopback port, SQLite - or a throw-away
PostgreSQL database behind a TCP proxy - and `docpipe worker` subprocesses) and
adds the disruptions a test declares: kill -9 of a worker, a Redis restart, the
database cut off. The pytest plugin's `docpipe_stack` fixture builds one per test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import redis

from pipeline.bootstrap import Services, start, use_services
from pipeline.domain.models import QUEUES, Status
from pipeline.harness import localstack
from pipeline.harness.layout import WorkerSpec
from pipeline.harness.scenarios.real_workers import BrokerEnvironment, worker_layout
from pipeline.settings import Settings
from pipeline.testing.faults import FaultRule, RedisFaultInjector, installed_faults

__all__ = ["PrivateStack", "WorkerSpec"]

#: What every stack sets unless the test overrides it: short waits, no LLM rate limit.
DEFAULT_SETTINGS = {
    "DOCPIPE_OCR_POLL_INTERVAL_S": "0.2",
    "DOCPIPE_RETRY_BACKOFF_BASE_S": "0.2",
    "DOCPIPE_RETRY_BACKOFF_MAX_S": "2",
    "DOCPIPE_LLM_RATE_LIMIT_CALLS": "100000",
}


class PrivateStack:
    """redis-server + database + workers for one test; `stop()` ends every process it started.

    `settings`: DOCPIPE_* variables for this process and the workers (names with or
    without the prefix). `persistent`: Redis keeps its data across `restart_redis`
    (an fsynced append-only file), as a production Redis with AOF does.
    `postgres_admin_url`: a throw-away PostgreSQL database there, reached by the
    workers through a proxy `cut_database` can cut; without it, SQLite.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        settings: Mapping[str, object] | None = None,
        persistent: bool = False,
        postgres_admin_url: str | None = None,
    ) -> None:
        env = dict(DEFAULT_SETTINGS)
        for name, value in (settings or {}).items():
            key = name.upper() if name.upper().startswith("DOCPIPE_") else f"DOCPIPE_{name.upper()}"
            env[key] = str(value).lower() if isinstance(value, bool) else str(value)
        self.workdir = workdir
        self.environment = BrokerEnvironment(
            workdir, env, persistent=persistent, postgres_admin_url=postgres_admin_url
        )
        self._services: Services | None = None
        self._worker_count = 0

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> PrivateStack:
        """Start the database (and its proxy) and the redis-server."""
        self.environment.start_database()
        self.environment.start_redis()
        return self

    def stop(self) -> None:
        from kombu import pools

        from pipeline.runtime import celery_app

        use_services(None)
        celery_app.drop_broker_connections()
        pools.reset()
        if self._services is not None:
            self._services.close()
            self._services = None
        self.environment.stop()

    def __enter__(self) -> PrivateStack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- configuration ------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """The workers' environment (what a worker started by hand needs too)."""
        return self.environment.env

    def settings(self) -> Settings:
        return Settings(_env_file=None, **self.environment.settings_values())  # type: ignore[call-arg]

    @property
    def services(self) -> Services:
        """This process's services (the intake side), built on first use and installed."""
        if self._services is None:
            self._services = start(self.settings())
        return self._services

    @property
    def redis_server(self) -> localstack.RedisServer:
        return self.environment._redis()

    def redis(self, db: int = 1) -> redis.Redis:
        """A client of the stack's Redis: db 0 is the broker, db 1 the pipeline's state."""
        return self.environment.client(db)

    # --- workers ---------------------------------------------------------------------------
    @property
    def workers(self) -> list[subprocess.Popen[bytes]]:
        group = self.environment.workers
        return list(group.processes) if group is not None else []

    def start_workers(
        self, layout: Sequence[WorkerSpec] | None = None, *, timeout_s: float = 60.0
    ) -> list[subprocess.Popen[bytes]]:
        """Start workers (default: prefork for OCR, one threads worker for the rest) and
        wait until every queue they serve has a consumer; returns the new processes.

        Call it again to add workers (a replacement for a killed one): every worker
        gets its own node name, and `stop()` ends all of them.
        """
        from pipeline.runtime import celery_app

        layout = list(layout) if layout is not None else worker_layout(set())
        self.services  # noqa: B018 - the schema exists before workers race to create it
        group = self.environment.workers
        if group is None:
            group = self.environment.workers = localstack.WorkerGroup(self.workdir, self.env)
        started = []
        for spec in layout:
            self._worker_count += 1
            name = f"stack{self._worker_count}-{'-'.join(spec.queues)}"
            started.append(
                group.start(spec.queues, pool=spec.pool, concurrency=spec.concurrency, name=name)
            )
        served = {q for spec in layout for q in spec.queues}
        group.wait_for_consumers(celery_app.app, QUEUES, timeout_s=timeout_s, required=served)
        return started

    def kill_worker(self, worker: subprocess.Popen[bytes] | None = None) -> int:
        """kill -9 a worker's main process and its pool children (no shutdown, no acks):
        the first worker by default. Returns the main process id; the worker is no
        longer in `workers` (its log stays in `worker_logs()`)."""
        target = worker if worker is not None else self.workers[0]
        if target.poll() is not None:
            raise ValueError(f"worker {target.pid} already exited ({target.returncode})")
        victims = [*localstack.pool_children(target.pid), target.pid]
        for pid in victims:
            with suppress(ProcessLookupError):  # a pool child that exited meanwhile
                os.kill(pid, signal.SIGKILL)
        target.wait(timeout=10)
        group = self.environment.workers
        if group is not None and target in group.processes:
            # Forgotten by the group: its exit is expected, not "a worker exited early".
            group.processes.remove(target)
        return target.pid

    # --- documents ---------------------------------------------------------------------------
    def submit(self, path: Path, project: str = "docpipe-tests") -> str:
        """Store `path` as a new document and send its first stage; returns its uuid."""
        from pipeline.app.intake import submit_and_dispatch

        project_uuid = self.services.store.ensure_project(project)
        return submit_and_dispatch(self.services, path, project_uuid).document_uuid

    def wait_until_terminal(
        self, document_uuids: Sequence[str], *, timeout_s: float = 120.0
    ) -> dict[str, Status]:
        """Each document's status once all are terminal; TimeoutError (naming the worker
        logs) when some are not within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            statuses = self.services.store.statuses(list(document_uuids))
            if len(statuses) == len(document_uuids) and all(
                s.is_terminal for s in statuses.values()
            ):
                return statuses
            if time.monotonic() > deadline:
                open_ = {u: str(s) for u, s in statuses.items() if not s.is_terminal}
                raise TimeoutError(
                    f"not terminal after {timeout_s:g} s: {open_}; worker logs in {self.workdir}"
                )
            time.sleep(0.2)

    # --- disruptions -------------------------------------------------------------------------
    def restart_redis(self, down_s: float = 0.0) -> None:
        """Stop the redis-server, wait `down_s`, start it again on the same port.

        Without `persistent`, its data (queued messages, state) is gone.
        """
        server = self.redis_server
        server.stop()
        try:
            time.sleep(down_s)
        finally:
            server.start_again()

    @contextmanager
    def cut_database(self) -> Iterator[int]:
        """The workers' database connections are dropped and new ones refused inside the
        block (needs `postgres_admin_url`); yields how many connections were dropped."""
        proxy = self.environment._proxy()
        dropped = proxy.cut()
        try:
            yield dropped
        finally:
            proxy.restore()

    @contextmanager
    def faults(self, rules: Sequence[FaultRule], *, seed: int = 0) -> Iterator[RedisFaultInjector]:
        """Install fault rules every worker follows (they run with DOCPIPE_FAULT_INJECTION)."""
        with installed_faults(self.redis(1), rules, seed=seed) as injector:
            yield injector

    def worker_logs(self) -> dict[int, str]:
        """Each worker's log so far (by process id), for failure messages."""
        group = self.environment.workers
        if group is None:
            return {}
        return {pid: path.read_text(errors="replace") for pid, path in group.logs.items()}

    def describe(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir),
            "redis_port": self.redis_server.port,
            "database": self.environment.database_url.split("@")[-1],
            "workers": [p.pid for p in self.workers],
        }
