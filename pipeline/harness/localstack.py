"""A private stack on this machine: a throw-away redis-server, throw-away PostgreSQL
databases, throw-away RabbitMQ vhosts and `docpipe worker` processes.

Used by broker-mode scenarios, the load test and the integration tests. The
redis-server listens on a free loopback port (never the user's Redis on 6379)
with no persistence (unless asked for) and `noeviction`; workers are `python -m pipeline worker`
subprocesses that share one environment and log to files in the work folder.
PostgreSQL databases (`docpipe_test_<hex>`) are created on a server the
caller names with an admin URL and dropped again, or by a later run on this machine
when their creator was killed first; no other database is touched.
Every wait is bounded in time; stopping is SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import redis
from celery import Celery
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from pipeline.domain.models import QUEUES
from pipeline.errors import ConfigurationError
from pipeline.settings import redact_url

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: Seconds a redis-server gets to answer PING after it was started.
REDIS_START_TIMEOUT_S = 10.0
#: Free ports `start_redis` tries when none is given (another process may take one first).
REDIS_FREE_PORT_ATTEMPTS = 3
#: Seconds a redis-server gets to exit after SIGTERM (and again after SIGKILL).
REDIS_STOP_TIMEOUT_S = 10.0


class WorkersNotReady(ConfigurationError):
    """A queue still had no consumer when the deadline passed, or a worker exited."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM (if still running), wait up to `timeout_s`, then SIGKILL and wait as long again."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    _reap(process, timeout_s)


def _reap(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)


#: The checkout (or site-packages) that holds this `pipeline`: workers import the same code.
CODE_ROOT = Path(__file__).resolve().parents[2]


def env_value(value: Any) -> str:
    """A settings value as its DOCPIPE_* variable spells it (booleans lower case, dicts JSON)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def settings_env(values: Mapping[str, Any]) -> dict[str, str]:
    """`{"max_retries": 3}` -> `{"DOCPIPE_MAX_RETRIES": "3"}`."""
    return {f"DOCPIPE_{key.upper()}": env_value(value) for key, value in values.items()}


def worker_environment(
    values: Mapping[str, Any], *, home: Path | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The one environment of a private stack's processes: `values` as DOCPIPE_* variables.

    Built on `base` (this process's environment by default) without its own
    DOCPIPE_* and CELERY_* variables, so a user's .env or shell never leaks into a private
    stack (DOCPIPE_UNDER_TEST and DOCPIPE_ALLOW_CLOUD, which guard the tests,
    are kept). This `pipeline` goes first on PYTHONPATH, so workers run the
    same code as their parent; `home` gives them their own HOME.
    """
    kept = ("DOCPIPE_UNDER_TEST", "DOCPIPE_ALLOW_CLOUD")
    source = os.environ if base is None else base
    # CELERY_* too: a worker refuses a CELERY_BROKER_URL that disagrees with its settings.
    env = {
        k: v for k, v in source.items() if not k.startswith(("DOCPIPE_", "CELERY_")) or k in kept
    }
    env.update(settings_env(values))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CODE_ROOT), env.get("PYTHONPATH")]))
    if home is not None:
        env["HOME"] = str(home)
    return env


def settings_values(env: Mapping[str, str]) -> dict[str, str]:
    """The DOCPIPE_* variables of `env` as Settings keyword values (DOCPIPE_UNDER_TEST aside)."""
    return {
        key.removeprefix("DOCPIPE_").lower(): value
        for key, value in env.items()
        if key.startswith("DOCPIPE_") and key != "DOCPIPE_UNDER_TEST"
    }


# --- redis ---------------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    #: Started with an append-only file fsynced on every write (survives a restart).
    persistent: bool = False
    #: More redis-server options (tests: `--maxmemory-policy allkeys-lru`), kept on restart.
    extra_args: tuple[str, ...] = ()

    def url(self, db: int = 0) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    def client(self, db: int = 0, **options: Any) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, db=db, **options)

    def stop(self) -> None:
        stop_process(self.process, REDIS_STOP_TIMEOUT_S)

    def restart(self) -> None:
        """Stop and start again on the same port (and folder).

        The data is gone, unless the server is `persistent` (it reloads its append-only file).
        """
        self.stop()
        self.start_again()

    def start_again(self) -> None:
        """Start a stopped server on the same port, folder and persistence."""
        self.process = start_redis(
            self.workdir, port=self.port, persistent=self.persistent, extra_args=self.extra_args
        ).process

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_redis(
    workdir: Path,
    port: int | None = None,
    *,
    persistent: bool = False,
    extra_args: Sequence[str] = (),
) -> RedisServer:
    """A fresh redis-server on `port` (default: a free one), answering PING, or an error.

    `persistent`: an append-only file in `workdir`, fsynced on every write, so a
    stop and `start_again` lose nothing (queued and unacked messages included).
    `extra_args` come last, so they override the defaults above.
    Without `port`, a port another process took between `free_port` and the bind
    (parallel test workers do) is given up for another free one.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigurationError("redis-server is not on PATH (apt-get install redis-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    attempts = 1 if port else REDIS_FREE_PORT_ATTEMPTS
    for _ in range(attempts):
        server = _start_redis_on(binary, workdir, port or free_port(), persistent, extra_args)
        if server is not None:
            return server
    raise ConfigurationError(f"redis-server did not start on port {port or 'any free port'}")


def _start_redis_on(
    binary: str, workdir: Path, port: int, persistent: bool, extra_args: Sequence[str]
) -> RedisServer | None:
    """The started server once it answers PING itself, or None (stopped) if it did not."""
    appendonly = ["yes", "--appendfsync", "always"] if persistent else ["no"]
    argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", *appendonly]
    argv += ["--dir", str(workdir), "--maxmemory-policy", "noeviction", *extra_args]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(
        port=port,
        process=process,
        workdir=workdir,
        persistent=persistent,
        extra_args=tuple(extra_args),
    )
    client = server.client(socket_connect_timeout=1)
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                # Another redis-server on this port (one that won the race for it) answers
                # PING too; only ours has our process id.
                if client.info("server").get("process_id") == process.pid:
                    return server
                break
            except redis.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
    server.stop()
    return None


# --- workers -------------------------------------------------------------------------------


def pool_children(pid: int) -> list[int]:
    """Child processes of a worker (its prefork pool), from /proc."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children.extend(int(child) for child in text)
    return children


@dataclass
class WorkerGroup:
    """`docpipe worker` subprocesses with one environment, logging to `workdir`."""

    workdir: Path
    env: Mapping[str, str]
    loglevel: str = "INFO"
    #: Seconds each worker gets to exit after SIGTERM (and again after SIGKILL).
    stop_timeout_s: float = 15.0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[int, Path] = field(default_factory=dict)

    def start(
        self,
        queues: str | Sequence[str],
        *,
        pool: str,
        concurrency: int,
        name: str,
        log: str | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """One worker, node name `{name}-{our pid}@%h`, output in `worker-{log or name}.log`.

        `cwd` and `env` replace the group's work folder and environment for this one
        worker (a worker deployed as a host of its own).
        """
        queue_list = queues if isinstance(queues, str) else ",".join(queues)
        argv = [sys.executable, "-m", "pipeline", "worker", "--queues", queue_list]
        argv += ["--pool", pool, "--concurrency", str(concurrency)]
        argv += ["--hostname", f"{name}-{os.getpid()}@%h", "--loglevel", self.loglevel]
        path = self.workdir / f"worker-{log or name}.log"
        with path.open("ab") as output:
            process = subprocess.Popen(
                argv,
                cwd=cwd or self.workdir,
                env=dict(self.env if env is None else env),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        self.logs[process.pid] = path
        return process

    def exited(self) -> subprocess.Popen[bytes] | None:
        """The first worker that is no longer running, if any."""
        return next((p for p in self.processes if p.poll() is not None), None)

    def wait_for_consumers(
        self,
        app: Celery,
        queues: Sequence[str] = QUEUES,
        *,
        timeout_s: float,
        required: Collection[str] | None = None,
    ) -> list[str]:
        """Wait until every `required` queue (default: all `queues`) has a consumer.

        Asks about all `queues` at once and returns those still without a
        consumer in that one answer (a slow reply would make every queue look
        idle). Fails when `timeout_s` passes, or at once when a worker exits.
        """
        needed = set(queues if required is None else required)
        deadline = time.monotonic() + timeout_s
        while needed & set(idle := _queues_without_consumers(app, queues, len(self.processes))):
            if time.monotonic() > deadline:
                raise WorkersNotReady(
                    f"workers did not come up within {timeout_s:g} s; see logs in {self.workdir}"
                )
            if (worker := self.exited()) is not None:
                raise WorkersNotReady(
                    f"a worker exited early (exit code {worker.returncode}); "
                    f"see {self.logs[worker.pid]}"
                )
        return idle

    def log_tails(self, lines: int = 25) -> str:
        """The last `lines` lines of each worker's log: what a failed run's message shows."""
        parts = []
        for path in dict.fromkeys(self.logs.values()):
            text = path.read_text(errors="replace") if path.exists() else ""
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- {path.name} (last {lines} lines)\n{tail}")
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM to all, then each gets `stop_timeout_s` before SIGKILL."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            _reap(process, self.stop_timeout_s)
        self.processes.clear()

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _queues_without_consumers(app: Celery, queues: Sequence[str], workers: int) -> list[str]:
    from pipeline.runtime.broker import queues_without_consumers

    # Done as soon as each of our workers answered; until then 0.5 s between questions.
    return queues_without_consumers(app, queues, timeout=0.5, workers=workers)


# --- RabbitMQ ---------------------------------------------------------------------------

#: The local RabbitMQ this machine kind runs (guest may log in from loopback only).
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: Its management API, when the rabbitmq_management plugin is enabled.
DEFAULT_RABBITMQ_API = "http://127.0.0.1:15672"
RABBITMQCTL_TIMEOUT_S = 30.0


# --- who made a throw-away database or vhost ----------------------------------------------

#: How a throw-away database (its comment) or vhost (its description) names its creator.
OWNER_NOTE = "docpipe throw-away: host={host} boot={boot} pid={pid} start={start} created={created}"
_OWNER_PATTERN = re.compile(
    r"^docpipe throw-away: host=(?P<host>\S+) boot=(?P<boot>\S+) pid=(?P<pid>\d+) "
    r"start=(?P<start>\d+) created=(?P<created>\d+)$"
)
#: An abandoned database or vhost younger than this is left alone: its creator may run in
#: another PID namespace of this machine (a container with the same host name), where its
#: pid names some other process, or none.
ABANDONED_AFTER_S = 600.0
#: Every throw-away database and vhost is named this and a random hex (`throwaway_name`);
#: the sweeps look at no other.
THROWAWAY_PREFIX = "docpipe_test_"


def throwaway_name() -> str:
    return f"{THROWAWAY_PREFIX}{uuid.uuid4().hex[:16]}"


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot): with the pid, it names one
    process across pid reuse. None when there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])


def machine_identity() -> tuple[str, str]:
    """This machine's host name and boot id (a creator's pid means something only here)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown"
    return socket.gethostname().replace(" ", "_") or "unknown", boot


def owner_note() -> str:
    """`OWNER_NOTE` for this process, created now."""
    host, boot = machine_identity()
    pid = os.getpid()
    return OWNER_NOTE.format(
        host=host, boot=boot, pid=pid, start=process_start(pid), created=int(time.time())
    )


def creator_gone(note: str | None, *, older_than_s: float) -> bool:
    """Whether `note` (`OWNER_NOTE`) names a creator on this machine that is no longer
    running, and was written over `older_than_s` ago. False for anything else."""
    owner = _OWNER_PATTERN.match(note or "")
    return (
        owner is not None
        and (owner["host"], owner["boot"]) == machine_identity()
        and time.time() - int(owner["created"]) >= older_than_s
        and process_start(int(owner["pid"])) != int(owner["start"])
    )


def sweep_abandoned(sweep: Callable[[], list[str]], errors: type[Exception], what: str) -> None:
    """A first `create`'s sweep (`creator_gone`): best effort, a failure only logged."""
    try:
        sweep()
    except errors as exc:
        log.warning("could not look for abandoned throw-away %s: %s", what, exc)


class RabbitVhosts:
    """Creates uniquely named virtual hosts on a RabbitMQ server and deletes them again.

    A vhost is RabbitMQ's namespace: its own queues, exchanges and permissions, so a
    run never sees the user's queues and deleting it deletes everything the run
    declared. Through the management API when it answers, else `rabbitmqctl` (which
    needs the server's Erlang cookie: root or the rabbitmq user, on its machine).
    Each vhost's description names its creator (`owner_note`); the first `create` of
    an instance deletes those of this machine whose creator is gone (`creator_gone`).
    """

    def __init__(self, base_url: str = DEFAULT_RABBITMQ_URL, api_url: str = DEFAULT_RABBITMQ_API):
        parsed = urlsplit(base_url)
        self._base = parsed
        self._user = unquote(parsed.username or "guest")
        self._password = unquote(parsed.password or "guest")
        self._api = api_url.rstrip("/")
        self._created: list[str] = []
        self._swept = False
        self.via = ""

    def ping(self) -> None:
        """Raise ConfigurationError when the server cannot be reached or vhosts not made."""
        from pipeline.runtime.rabbitmq import RabbitUnavailable, connect

        try:
            connect(self.url("/"), timeout_s=3.0).release()
        except RabbitUnavailable as exc:
            raise ConfigurationError(
                f"RabbitMQ is unreachable at {redact_url(self.url('/'))}: {exc}"
            ) from None
        if self._api_answers():
            self.via = "management API"
        elif shutil.which("rabbitmqctl") is not None:
            self.via = "rabbitmqctl"
        else:
            raise ConfigurationError(
                "cannot create a RabbitMQ vhost: the management API does not answer at "
                f"{self._api} and rabbitmqctl is not on PATH"
            )

    def url(self, vhost: str) -> str:
        """The broker URL of `vhost` (`/` is the default vhost)."""
        path = "/" + quote(vhost, safe="")
        return urlunsplit((self._base.scheme, self._base.netloc, path, "", ""))

    def create(self) -> str:
        """A new, empty vhost the user may use; returns its broker URL."""
        if not self.via:
            self.ping()
        if not self._swept:
            self._swept = True
            sweep_abandoned(self.delete_abandoned, ConfigurationError, "vhosts")
        name = throwaway_name()
        note = owner_note()
        if self.via == "management API":
            self._api_call("PUT", f"/api/vhosts/{name}", {"description": note})
            permissions = {"configure": ".*", "write": ".*", "read": ".*"}
            self._api_call("PUT", f"/api/permissions/{name}/{quote(self._user)}", permissions)
        else:
            self._rabbitmqctl("add_vhost", name, "--description", note)
            self._created.append(name)
            self._rabbitmqctl("set_permissions", "-p", name, self._user, ".*", ".*", ".*")
            return self.url(name)
        self._created.append(name)
        return self.url(name)

    def delete(self, broker_url: str) -> None:
        name = unquote(urlsplit(broker_url).path.lstrip("/"))
        if name not in self._created:
            raise ValueError(f"{redact_url(broker_url)} was not created here")
        if self.via == "management API":
            self._api_call("DELETE", f"/api/vhosts/{name}", None)
        else:
            self._rabbitmqctl("delete_vhost", name)
        self._created.remove(name)

    def delete_all(self) -> None:
        for name in list(self._created):
            self.delete(self.url(name))

    def delete_abandoned(self, *, older_than_s: float = ABANDONED_AFTER_S) -> list[str]:
        """Delete the throw-away vhosts of this machine whose creator is gone (`creator_gone`)
        and that no connection uses. Returns their names."""
        if not self.via:
            self.ping()
        deleted = []
        for name, description in self._throwaway_vhosts():
            if not creator_gone(description, older_than_s=older_than_s):
                continue
            try:
                if self._in_use(name):
                    continue
                if self.via == "management API":
                    self._api_call("DELETE", f"/api/vhosts/{quote(name, safe='')}", None)
                else:
                    self._rabbitmqctl("delete_vhost", name)
            except ConfigurationError:
                continue  # gone meanwhile: another run's sweep deleted it first
            log.warning("deleted throw-away vhost %s: its creator is gone (%s)", name, description)
            deleted.append(name)
        return deleted

    def _throwaway_vhosts(self) -> list[tuple[str, str]]:
        """(name, description) of every `docpipe_test_*` vhost."""
        if self.via == "management API":
            listed = self._api_get("/api/vhosts")
            rows = [(v.get("name", ""), v.get("description") or "") for v in listed]
        else:
            lines = self._rabbitmqctl("list_vhosts", "--no-table-headers", "name", "description")
            rows = [line.partition("\t")[::2] for line in lines.splitlines()]
        return [(name, note) for name, note in rows if name.startswith(THROWAWAY_PREFIX)]

    def _in_use(self, name: str) -> bool:
        if self.via == "management API":
            return bool(self._api_get(f"/api/vhosts/{quote(name, safe='')}/connections"))
        used = self._rabbitmqctl("list_connections", "--no-table-headers", "vhost")
        return name in used.split()

    def _api_answers(self) -> bool:
        try:
            self._api_call("GET", "/api/overview", None, timeout_s=2.0)
        except (OSError, ConfigurationError):
            return False
        return True

    def _api_get(self, path: str) -> list[dict[str, Any]]:
        body = self._api_call("GET", path, None)
        return json.loads(body) if body else []

    def _api_call(self, method: str, path: str, body: object, *, timeout_s: float = 10.0) -> bytes:
        import base64
        import urllib.error
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self._api + path, data=data, method=method)
        token = base64.b64encode(f"{self._user}:{self._password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                answer: bytes = response.read()
                return answer
        except urllib.error.HTTPError as exc:
            raise ConfigurationError(f"RabbitMQ API {method} {path}: HTTP {exc.code}") from None

    def _rabbitmqctl(self, *args: str) -> str:
        binary = shutil.which("rabbitmqctl") or "rabbitmqctl"
        try:
            done = subprocess.run(
                [binary, "-q", *args],
                capture_output=True,
                text=True,
                timeout=RABBITMQCTL_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigurationError(f"rabbitmqctl {args[0]}: {exc}") from None
        if done.returncode != 0:
            reason = (done.stderr.strip() or done.stdout.strip()).splitlines()[:2]
            raise ConfigurationError(f"rabbitmqctl {args[0]} failed: {' '.join(reason)}")
        return done.stdout


class PostgresDatabases:
    """Creates uniquely named databases on one server and drops them again (WITH (FORCE)).

    Each is created with a comment naming its creator (`owner_note`); the first
    `create` of an instance drops those of this machine whose creator is gone (killed
    before it could drop them), unused and over `ABANDONED_AFTER_S` old.
    """

    def __init__(self, admin_url: str) -> None:
        url = make_url(admin_url)
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        self._url = url
        self._admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        self._created: list[str] = []
        self._swept = False

    def ping(self) -> None:
        """Raise ConfigurationError (password redacted) when the server cannot be reached."""
        try:
            with self._admin.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as exc:
            shown = redact_url(self._url.render_as_string(hide_password=False))
            raise ConfigurationError(f"PostgreSQL is unreachable at {shown}: {exc.orig}") from exc

    def create(self) -> str:
        """Create an empty database; returns its URL (psycopg 3 driver)."""
        if not self._swept:
            self._swept = True
            sweep_abandoned(self.drop_abandoned, SQLAlchemyError, "databases")
        name = throwaway_name()
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            self._created.append(name)
            conn.execute(text(f"COMMENT ON DATABASE \"{name}\" IS '{owner_note()}'"))
        return self._url.set(database=name).render_as_string(hide_password=False)

    def drop_abandoned(self, *, older_than_s: float = ABANDONED_AFTER_S) -> list[str]:
        """Drop the throw-away databases of this machine whose creator is gone: none
        connected, created over `older_than_s` ago. Returns their names."""
        query = text(
            "SELECT d.datname, shobj_description(d.oid, 'pg_database'), "
            "(SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.oid) "
            "FROM pg_database d WHERE d.datname LIKE :pattern"
        )
        pattern = THROWAWAY_PREFIX.replace("_", "\\_") + "%"
        dropped = []
        with self._admin.connect() as conn:
            for name, comment, connections in conn.execute(query, {"pattern": pattern}).all():
                if connections or not creator_gone(comment, older_than_s=older_than_s):
                    continue
                try:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
                except SQLAlchemyError:
                    continue  # someone connected meanwhile: not abandoned after all
                log.warning(
                    "dropped throw-away database %s: its creator is gone (%s)", name, comment
                )
                dropped.append(name)
        return dropped

    def drop(self, database_url: str) -> None:
        name = make_url(database_url).database
        if name is None or name not in self._created:
            raise ValueError(f"{redact_url(database_url)} was not created here")
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self._created.remove(name)

    def drop_all(self) -> None:
        for name in list(self._created):
            self.drop(self._url.set(database=name).render_as_string(hide_password=False))
        self._admin.dispose()
