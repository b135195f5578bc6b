"""Broker mode for scenarios: a private redis-server and real worker processes.

Everything is started for one scenario run and stopped after it: a fresh
redis-server on a free loopback port (broker in db 0, state in db 1) - or, with
`broker="rabbitmq"`, a throw-away vhost on the local RabbitMQ as the broker and
the redis-server for state only -, SQLite
and blobs in the run's directory, and `docpipe worker` subprocesses with the
scenario's settings in their environment and `DOCPIPE_FAULT_INJECTION=true`,
so the faults installed in Redis reach them (REFERENCE.md failure 14).
The processes themselves are pipeline.harness.localstack's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy.engine import make_url

from pipeline.domain.models import QUEUES
from pipeline.errors import ConfigurationError
from pipeline.harness import localstack as devstack
from pipeline.harness.layout import WorkerSpec
from pipeline.harness.scenarios.hosts import SeparateHosts
from pipeline.harness.scenarios.model import BrokerName
from pipeline.harness.scenarios.tcp_proxy import TcpProxy

#: Task limits on RabbitMQ when a scenario sets none: below the local server's default
#: consumer_timeout (30 min), which the settings check refuses otherwise.
RABBITMQ_TIME_LIMITS = {
    "DOCPIPE_TASK_SOFT_TIME_LIMIT_S": "1200",
    "DOCPIPE_TASK_TIME_LIMIT_S": "1300",
}

#: Queue each port's calls run on (a worker killed by a fault there must be prefork).
PORT_QUEUES = {"ocr": "ocr", "parser": "ocr", "llm": "entity"}


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
    #: Admin URL of a PostgreSQL server: the run gets a throw-away database there, which
    #: workers reach through `database_proxy` (scenarios that cut the database off).
    postgres_admin_url: str | None = None
    database_proxy: TcpProxy | None = None
    #: Workers deployed as separate hosts: each in a folder of its own (see hosts.py).
    hosts: SeparateHosts | None = None
    _databases: devstack.PostgresDatabases | None = None
    _database_url: str | None = None
    #: Where tasks go: the redis-server's db 0, or a throw-away vhost on the local RabbitMQ.
    broker: BrokerName = "redis"
    #: The RabbitMQ server (a URL with a user allowed to create vhosts) for `rabbitmq`.
    rabbitmq_admin_url: str = devstack.DEFAULT_RABBITMQ_URL
    _vhosts: devstack.RabbitVhosts | None = None
    _rabbitmq_url: str | None = None

    # --- the database --------------------------------------------------------------
    def start_database(self) -> None:
        """SQLite in the work folder, or a throw-away PostgreSQL database behind a proxy."""
        if self.postgres_admin_url is None:
            return
        databases = devstack.PostgresDatabases(self.postgres_admin_url)
        self._databases = databases
        databases.ping()
        self._database_url = databases.create()
        url = make_url(self._database_url)
        self.database_proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()

    def _proxy(self) -> TcpProxy:
        if self.database_proxy is None:
            raise ConfigurationError("broker mode: the database runs without a proxy")
        return self.database_proxy

    @property
    def database_url(self) -> str:
        """What this process uses: the database itself."""
        return self._database_url or f"sqlite:///{self.workdir / 'docpipe.db'}"

    @property
    def worker_database_url(self) -> str:
        """What workers use: through the proxy when there is one."""
        if self.database_proxy is None or self._database_url is None:
            return self.database_url
        proxied = make_url(self._database_url).set(
            host=self.database_proxy.host, port=self.database_proxy.port
        )
        return proxied.render_as_string(hide_password=False)

    # --- redis -------------------------------------------------------------------------
    def start_redis(self) -> None:
        try:
            self.server = devstack.start_redis(self.workdir, persistent=self.persistent)
        except ConfigurationError as exc:
            raise ConfigurationError(f"broker mode: {exc}") from exc

    def start_rabbitmq(self) -> None:
        """A throw-away vhost on the local RabbitMQ (`redis` broker: nothing to do)."""
        if self.broker != "rabbitmq":
            return
        vhosts = devstack.RabbitVhosts(self.rabbitmq_admin_url)
        try:
            vhosts.ping()
            self._rabbitmq_url = vhosts.create()
        except ConfigurationError as exc:
            raise ConfigurationError(f"broker mode on RabbitMQ: {exc}") from exc
        self._vhosts = vhosts

    @property
    def broker_url(self) -> str:
        if self.broker == "rabbitmq":
            if self._rabbitmq_url is None:
                raise ConfigurationError("broker mode: the RabbitMQ vhost was not created")
            return self._rabbitmq_url
        return self.url(0)

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
        values: dict[str, Any] = {
            "eager": False,
            "broker_url": self.broker_url,
            "redis_url": self.url(1),
            "database_url": self.worker_database_url,
            "blob_url": f"file://{self.workdir / 'blobs'}",
            "fault_injection": True,
        }
        if self.broker == "rabbitmq":
            values |= devstack.settings_values(RABBITMQ_TIME_LIMITS)
        values |= devstack.settings_values(self.settings_env)
        return devstack.worker_environment(values, home=self.workdir)

    def settings_values(self) -> dict[str, Any]:
        """This process's settings: the workers' environment, the database direct."""
        return dict(devstack.settings_values(self.env)) | {"database_url": self.database_url}

    # --- workers -----------------------------------------------------------------------
    def start_workers(self, layout: Sequence[WorkerSpec]) -> devstack.WorkerGroup:
        self.workers = devstack.WorkerGroup(self.workdir, self.env)
        for index, spec in enumerate(layout):
            name = "-".join(spec.queues)
            env, cwd = self.env, None
            if self.hosts is not None:
                host = self.hosts.host(f"worker{index}-{name}")
                env, cwd = host.environment(env), host.root
                self.hosts.check_environment(env, self.workdir)
            self.workers.start(
                spec.queues,
                pool=spec.pool,
                concurrency=spec.concurrency,
                name=f"scenario{index}-{name}",
                log=name,
                cwd=cwd,
                env=env,
            )
        return self.workers

    def queue_lengths(self) -> dict[str, int]:
        if self.broker == "rabbitmq":
            from pipeline.runtime.rabbitmq import queue_lengths

            return queue_lengths(self.broker_url, QUEUES)
        client = self.client(0)
        return {queue: int(client.llen(queue)) for queue in QUEUES}

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()
        if self.server is not None:
            self.server.stop()
        self.server = None
        if self.database_proxy is not None:
            self.database_proxy.close()
        if self._databases is not None:
            self._databases.drop_all()
            self._databases = None
        if self._vhosts is not None:
            self._vhosts.delete_all()
            self._vhosts = None
            self._rabbitmq_url = None
        if self.hosts is not None:
            self.hosts.remove()


@dataclass
class BackgroundStops:
    """Broker-mode environments stopping in threads while their caller goes on.

    A stop is mostly waiting: a prefork pool's threads notice the shutdown within
    ~2 s (billiard's supervisor and timeout threads sleep 0.8 s and 1 s between
    looks), then the redis-server, the throw-away database and vhost go. A caller
    that owns the run folders (`run_scenario(..., stop_in_background=True)`, e.g.
    a test suite) starts its next run meanwhile and calls `wait()` before it ends.
    """

    _threads: list[threading.Thread] = field(default_factory=list)
    _failures: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, name: str, stop: Callable[[], None]) -> None:
        def run() -> None:
            try:
                stop()
            except Exception as exc:  # reported by wait(), never lost
                with self._lock:
                    self._failures.append(f"{name}: {type(exc).__name__}: {exc}")

        thread = threading.Thread(target=run, name=f"stop-{name}", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def wait(self, timeout_s: float = 120.0) -> None:
        """Until every stop ended; ConfigurationError naming those that failed or hung."""
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout=timeout_s)
        hung = [t.name.removeprefix("stop-") for t in threads if t.is_alive()]
        with self._lock:
            failures, self._failures = self._failures, []
        failures += [f"{name}: still stopping after {timeout_s:g} s" for name in hung]
        if failures:
            raise ConfigurationError("broker-mode stops failed: " + "; ".join(failures))


#: The process's background stops (`run_scenario(..., stop_in_background=True)`).
background_stops = BackgroundStops()
