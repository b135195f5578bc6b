"""`docpipe monitor --once --json` and `docpipe doctor` against real workers on a private Redis.

One deliberately misconfigured stack: no worker for the graph queue, one
threads worker with a short visibility timeout, and - changed while it runs,
as an operator would - an evicting broker and a cache URL naming the
broker's database. Documents submitted there pile up in the graph queue,
which the monitor must show; the doctor must name each pitfall. A second,
correctly configured stack must come out clean (exit 0).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from pipeline.adapters.sql import create_database_engine
from pipeline.adapters.sql.migrations import upgrade
from pipeline.app.intake import claim_own, dispatch, submit_file
from pipeline.harness.localstack import free_port, start_redis, stop_process
from pipeline.runtime.celery_app import configure
from pipeline.runtime.doctor import probe_flower
from tests.conftest import REPO, SAMPLES
from tests.integration.broker_stack import BrokerStack, docpipe_json

pytestmark = pytest.mark.integration

#: Valid docpipe settings (the validator holds), yet a threads pool cannot stop a task
#: and Redis delivers it again after 120 s.
SHORT_VISIBILITY = {
    "DOCPIPE_TASK_SOFT_TIME_LIMIT_S": "100",
    "DOCPIPE_TASK_TIME_LIMIT_S": "110",
    "DOCPIPE_VISIBILITY_TIMEOUT_S": "120",
    "DOCPIPE_OCR_LOCAL_JOB_TIMEOUT_S": "30",
}
DOCUMENTS = ("affidavit_of_jane_holloway.txt", "counsel_correspondence.eml")


#: The worker's clock runs this far ahead: a `sitecustomize` on its PYTHONPATH shifts
#: time.time() before Celery is imported (heartbeats, ETAs, task start times all use it).
CLOCK_SHIFT_S = 5.0
SHIFTED_CLOCK = """
import time
_real_time = time.time
time.time = lambda: _real_time() + {shift}
"""


@pytest.fixture(scope="module")
def misconfigured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerStack]:
    workdir = tmp_path_factory.mktemp("misconfigured")
    skewed = workdir / "skewed-clock"
    skewed.mkdir()
    (skewed / "sitecustomize.py").write_text(SHIFTED_CLOCK.format(shift=CLOCK_SHIFT_S))
    with start_redis(workdir / "redis") as server:
        stack = BrokerStack(
            workdir=workdir,
            redis=server,
            database_url=f"sqlite:///{workdir / 'db.sqlite'}",
            overrides={**SHORT_VISIBILITY, "PYTHONPATH": f"{skewed}{os.pathsep}{REPO}"},
        )
        try:
            stack.start_worker("ocr,text,entity", pool="threads", concurrency=4, name="busy")
            stack.group.wait_for_consumers(
                configure(stack.settings()), ("ocr", "text", "entity"), timeout_s=60
            )
            yield stack
        finally:
            stack.stop()


@pytest.fixture(scope="module")
def piled_up(misconfigured: BrokerStack) -> BrokerStack:
    """Documents submitted through the intake, waiting in the graph queue.

    Not `docpipe run --broker`: it refuses a deployment with a queue nobody consumes.
    """
    services = misconfigured.services()
    project = services.store.ensure_project("monitor-tests")
    for name in DOCUMENTS:
        document_uuid = submit_file(services, SAMPLES / name, project).document_uuid
        claim_own(services, document_uuid, worker="test")
        dispatch(services, document_uuid)
    broker = misconfigured.redis.client(0)
    deadline = time.monotonic() + 90
    while broker.llen("graph") < len(DOCUMENTS):
        assert time.monotonic() < deadline, "documents never reached the graph queue"
        time.sleep(0.2)
    return misconfigured


def test_monitor_snapshot_shows_the_pile_in_the_queue_nobody_consumes(
    piled_up: BrokerStack,
) -> None:
    # The monitor's own LLM limit differs from the workers': the workers' is the one in force.
    env = {**piled_up.env, "DOCPIPE_LLM_RATE_LIMIT_CALLS": "7"}
    code, snapshot = docpipe_json(env, piled_up.workdir, "monitor", "--once", "--json")

    assert code == 0
    assert set(snapshot) >= {
        "queues", "documents", "workers", "dead_letters", "oldest_in_flight_s", "llm_rate_limit",
    }  # fmt: skip
    graph = snapshot["queues"]["graph"]
    assert graph["ready"] == len(DOCUMENTS)
    assert graph["consumers"] == []
    assert snapshot["queues"]["ocr"]["consumers"] == snapshot["queues"]["entity"]["consumers"]
    (worker,) = snapshot["workers"]
    assert worker["name"].startswith("busy-")
    assert worker["pool"] == "threads"
    assert worker["concurrency"] == 4
    assert sorted(worker["queues"]) == ["entity", "ocr", "text"]
    assert worker["processed"] > 0
    assert worker["last_heartbeat_s"] is not None
    documents = snapshot["documents"]
    assert documents["total"] == len(DOCUMENTS)
    assert documents["by_status"] == {"entity_resolution": len(DOCUMENTS)}
    assert documents["in_flight"] == len(DOCUMENTS)
    assert documents["completed_per_min"] == 0
    assert documents["time_to_drain_s"] is None
    assert snapshot["oldest_in_flight_s"] > 0
    assert snapshot["dead_letters"] == 0
    limit = snapshot["llm_rate_limit"]
    assert (limit["limit"], limit["source"]) == (100000, "workers")  # the stack's setting


@pytest.fixture
def open_flower(misconfigured: BrokerStack) -> Iterator[str]:
    """Flower started the way the seed plan's script does, without --basic-auth."""
    port = free_port()
    argv = [sys.executable, "-m", "celery", "-A", "pipeline.runtime.celery_app", "flower"]
    argv += [f"--port={port}", "--address=127.0.0.1", f"--conf={os.devnull}"]
    env = {k: v for k, v in misconfigured.env.items() if not k.startswith("FLOWER_")}
    with (misconfigured.workdir / "flower.log").open("ab") as log:
        flower = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while probe_flower(url, timeout_s=1) is None:
            assert flower.poll() is None, "flower exited; see flower.log"
            assert time.monotonic() < deadline, "flower did not answer within 30 s"
            time.sleep(0.3)
        yield url
    finally:
        stop_process(flower, 10)


def test_doctor_names_each_pitfall_of_the_misconfigured_stack(
    piled_up: BrokerStack, open_flower: str
) -> None:
    broker = piled_up.redis.client(0)
    broker.config_set("maxmemory-policy", "allkeys-lru")
    env = {
        **piled_up.env,
        "DOCPIPE_REDIS_URL": piled_up.redis.url(0),
        "DOCPIPE_FLOWER_URL": open_flower,
    }
    try:
        code, report = docpipe_json(env, piled_up.workdir, "doctor", "--json")
    finally:
        broker.config_set("maxmemory-policy", "noeviction")

    assert code == 1
    found = {(finding["id"], finding["subject"]) for finding in report["findings"]}
    (worker,) = report["facts"]["workers"]
    assert found == {
        ("broker-eviction", "broker"),
        ("broker-cache-same-db", "broker"),
        ("queue-without-consumer", "graph"),
        ("unenforced-pool-short-visibility", worker["name"]),
        ("clock-skew", worker["name"]),
        ("flower-without-auth", "flower"),
    }
    assert worker["visibility_timeout_s"] == 120
    assert worker["acks_late"] is True
    assert worker["prefetch_multiplier"] == 1
    assert worker["clock_offset_s"] == pytest.approx(CLOCK_SHIFT_S, abs=0.5)
    assert all(finding["fix"] for finding in report["findings"])


def test_doctor_passes_a_correctly_configured_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    workdir = tmp_path_factory.mktemp("clean")
    with start_redis(workdir / "redis") as server:
        stack = BrokerStack(
            workdir=workdir, redis=server, database_url=f"sqlite:///{workdir / 'db.sqlite'}"
        )
        engine = create_database_engine(stack.database_url)
        upgrade(engine)  # `docpipe db upgrade`: the schema at this code's version
        engine.dispose()
        try:
            stack.start_worker("ocr,text,entity,graph", pool="prefork", concurrency=1, name="all")
            stack.wait_until_consumed(configure(stack.settings()))
            env = {**stack.env, "DOCPIPE_FLOWER_URL": "http://127.0.0.1:9"}  # nothing there
            result = subprocess.run(
                [sys.executable, "-m", "pipeline", "doctor"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            stack.stop()

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no findings" in result.stdout
