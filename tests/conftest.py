"""Shared fixtures. Tests never read the user's .env and never build cloud adapters."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

os.environ["DOCPIPE_UNDER_TEST"] = "1"
os.environ["DOCPIPE_ALLOW_CLOUD"] = "false"

import pytest

from pipeline.bootstrap import Services, start, use_services
from pipeline.harness.localstack import RedisServer, start_redis
from pipeline.ports import FaultInjector
from pipeline.settings import Settings

if TYPE_CHECKING:
    from xdist.remote import Producer
    from xdist.scheduler import Scheduling

    from pipeline.adapters.embedded_ocr import EmbeddedOcrEngine

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"


def load_script(name: str) -> ModuleType:
    """`scripts/<name>.py` as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: A small document every stage can process (a person, an organisation, a date, money).
GOOD = (
    "AFFIDAVIT OF JANE HOLLOWAY\n\nI, Jane R. Holloway, of Chicago, Illinois, swear that on "
    "March 3, 2023 Meridian Capital Partners LLC paid $45,000.\n"
)


#: Modules whose module-scoped fixtures cost seconds: worker processes on a private Redis
#: (integration), local OCR of a scan (unit).
SHARED_FIXTURE_MODULES = frozenset(
    {
        "tests/integration/test_broker_runs.py",
        "tests/integration/test_monitor_doctor.py",
        "tests/integration/test_monitor_doctor_rabbitmq.py",
        "tests/integration/test_openai_broker.py",
        "tests/integration/test_rabbitmq_broker.py",
        "tests/integration/test_sim_cloud_broker.py",
        "tests/unit/test_local_ocr.py",
    }
)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> Scheduling | None:
    """`--dist loadgroup` (`make test`): each module above runs whole in one process.

    Its module-scoped fixtures then start once, in the one process that runs all of its
    tests one after the other, instead of once in every process that gets one of them.
    Every other test goes to whichever process is free. Other --dist modes are xdist's own;
    without -n there is no scheduler.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from tests.xdist_scheduling import ModuleGroupScheduling

    return ModuleGroupScheduling(config, log, modules=SHARED_FIXTURE_MODULES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist the load check goes out first, then the integration tests.

    The load check (`make test` selects it: ~45 s, mostly waiting on its workers'
    simulated latencies) then runs in one process next to everything else instead of
    after it. The integration tests (worker processes, redis-servers: 20-70 s each) go
    out before the unit tests, so no process is left running a long one alone at the end
    while the others are done. Only their place in the queue changes: within each kind
    the order is still pytest-randomly's shuffle of the seed (this hook runs after it, a
    stable sort), and without -n the whole order is the seed's.
    """
    if hasattr(config, "workerinput"):
        items.sort(key=_handed_out_first)


def _handed_out_first(item: pytest.Item) -> tuple[bool, bool]:
    return item.get_closest_marker("load") is None, item.get_closest_marker("integration") is None


def start_fake_ocr_job(data: bytes, scans: object | None) -> tuple[EmbeddedOcrEngine, str]:
    """The embedded default's OCR engine with `data` stored as one PDF, and its started job."""
    import fakeredis

    from pipeline.adapters.embedded_ocr import EmbeddedOcrEngine
    from pipeline.adapters.memory_blob import InMemoryBlobStore
    from pipeline.ports import OcrRequest

    blobs = InMemoryBlobStore()
    blobs.put("docs/scan.pdf", data)
    engine = EmbeddedOcrEngine(blobs, fakeredis.FakeRedis(), scans=scans)  # type: ignore[arg-type]
    request = OcrRequest(
        document_uuid="doc-1",
        storage_key="docs/scan.pdf",
        file_type="pdf",
        client_request_token="token-1",
    )
    return engine, engine.start(request)


def docpipe(
    cwd: Path, *args: str, env: dict[str, str] | None = None, real_process: bool = False
) -> subprocess.CompletedProcess[str]:
    """`docpipe ARGS` in `cwd`, in a clean environment plus `env`, as a user runs it.

    In this process by default (click's CliRunner: the command, its exit code and its
    stdout and stderr apart, without ~1 s of interpreter start per call): the working
    folder and the whole environment are the subprocess's for the call, the settings are
    read afresh, the services the command started are closed afterwards, and an
    exception the command did not turn into an exit code fails the test (a subprocess
    would have printed its traceback). `real_process=True` runs `python -m pipeline` as a
    subprocess, for what only a process shows: its imports, logging set-up, signal
    handlers, PYTHONPATH, what a fresh interpreter remembers (redaction's known secrets).
    One in-process call at a time: it sets this process's working folder and environment.
    """
    base = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "HOME": str(cwd),
        "DOCPIPE_UNDER_TEST": "1",
    }
    environment = {**base, **(env or {})}
    if real_process:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", *args],
            cwd=cwd,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
    return _docpipe_in_process(cwd, list(args), environment)


def _docpipe_in_process(
    cwd: Path, args: list[str], environment: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    from click.testing import CliRunner

    from pipeline import bootstrap, redaction
    from pipeline.cli import main
    from pipeline.ports import services as current
    from pipeline.runtime import celery_app
    from pipeline.settings import get_settings

    # Exactly the subprocess's environment: every other variable unset for the call.
    isolated: dict[str, str | None] = {k: None for k in os.environ if k not in environment}
    isolated.update(environment)
    previous = Path.cwd()
    # What a fresh interpreter starts without: the root logger's handlers (the command's
    # logging.basicConfig then writes to its stderr, as in a process of its own, at the
    # level -v asks for), the secrets earlier commands made redaction remember, and the
    # in-process fakeredis servers (the embedded default's Redis state dies with a process).
    root = logging.getLogger()
    handlers, level, known = root.handlers[:], root.level, redaction._known
    fake_servers = dict(bootstrap._fake_redis_servers)
    root.handlers, redaction._known = [], ()
    bootstrap._fake_redis_servers.clear()
    get_settings.cache_clear()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(main, args, env=isolated, prog_name="docpipe")
    finally:
        os.chdir(previous)
        root.handlers = handlers
        root.setLevel(level)
        redaction._known = known
        bootstrap._fake_redis_servers.clear()
        bootstrap._fake_redis_servers.update(fake_servers)
        get_settings.cache_clear()
        started = current._current
        current.use_services(None)
        if started is not None:
            started.close()
        celery_app.drop_broker_connections()
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(
        ["docpipe", *args], result.exit_code, result.stdout, result.stderr
    )


def embedded_settings(tmp_path: Path, **overrides: object) -> Settings:
    """The embedded default, isolated in tmp_path (own SQLite file, blobs, fakeredis)."""
    values: dict[str, object] = {
        "database_url": f"sqlite:///{tmp_path / 'docpipe.db'}",
        "blob_url": f"file://{tmp_path / 'blobs'}",
        "redis_url": f"fakeredis://{uuid.uuid4().hex}",
        "eager": True,
        "ocr_poll_interval_s": 0,
        "retry_backoff_base_s": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def make_services(tmp_path: Path) -> Iterator[object]:
    """Factory: build embedded services with overrides and install them for the tasks."""
    built: list[Services] = []

    def factory(faults: FaultInjector | None = None, **overrides: object) -> Services:
        services = start(embedded_settings(tmp_path, **overrides), faults=faults)
        built.append(services)
        return services

    yield factory
    use_services(None)
    for services in built:
        services.close()


@pytest.fixture
def services(make_services: object) -> Services:
    return make_services()  # type: ignore[operator, no-any-return]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server on a free port for the whole session."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials only: nothing here may reach AWS."""
    from pipeline.harness.scenarios.cloud import FAKE_AWS_ENV

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)
