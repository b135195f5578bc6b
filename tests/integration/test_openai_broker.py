"""Real worker processes call the OpenAI SDK against the loopback fake (DOCPIPE_LLM=openai).

The fake runs in this test process; the entity worker (gevent, as in production)
reaches it over HTTP on 127.0.0.1, so a failure scripted here reaches a worker
in another process.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes.openai_http import FakeOpenAI, FakeOpenAIServer
from pipeline.harness.localstack import RedisServer
from pipeline.runtime.celery_app import app
from tests.conftest import SAMPLES
from tests.integration.broker_stack import BrokerStack, run_json

pytestmark = pytest.mark.integration

API_KEY = "sk-broker-test"


@pytest.fixture(scope="module")
def openai_fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(FakeOpenAI(api_key=API_KEY, retry_after_s=0.5)) as server:
        yield server


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer,
    openai_fake: FakeOpenAIServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BrokerStack]:
    workdir = tmp_path_factory.mktemp("openai-broker")
    redis_server.client(0).flushall()
    redis_server.client(1).flushall()
    stack = BrokerStack(
        workdir=workdir,
        redis=redis_server,
        database_url=f"sqlite:///{workdir / 'db.sqlite'}",
        overrides={
            "DOCPIPE_LLM": "openai",
            "DOCPIPE_OPENAI_API_KEY": API_KEY,
            "DOCPIPE_OPENAI_BASE_URL": openai_fake.base_url,
            "DOCPIPE_OPENAI_TIMEOUT_S": "10",
        },
    )
    try:
        stack.start_worker("ocr", pool="prefork", concurrency=1)
        stack.start_worker("text", pool="threads", concurrency=2)
        stack.start_worker("entity", pool="gevent", concurrency=10)
        stack.start_worker("graph", pool="threads", concurrency=2)
        stack.services()
        stack.wait_until_consumed(app)
        yield stack
    finally:
        stack.stop()


def mention_counts(report: dict[str, object]) -> dict[str, tuple[object, object, object]]:
    rows = report["documents"]
    assert isinstance(rows, list)
    return {Path(r["file"]).name: (r["status"], r["chunks"], r["mentions"]) for r in rows}


def test_samples_through_workers_and_the_openai_sdk_match_the_rule_based_eager_run(
    stack: BrokerStack, openai_fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    batch = tmp_path / "batch"
    shutil.copytree(SAMPLES, batch)
    openai_fake.fake.reset()
    openai_fake.fake.script(["rate_limit", "server_error"])  # met by a worker process

    broker_code, broker = run_json(stack.env, tmp_path, "--broker", str(batch), timeout=120)
    kept = {"DOCPIPE_UNDER_TEST", "DOCPIPE_ALLOW_CLOUD"}
    eager_env = {k: v for k, v in stack.env.items() if not k.startswith("DOCPIPE_") or k in kept}
    eager_code, eager = run_json(
        eager_env, tmp_path, str(batch), timeout=120
    )  # rule-based fake, in-process

    assert broker_code == eager_code == 0
    assert mention_counts(broker) == mention_counts(eager)
    chunks = sum(int(str(row[1])) for row in mention_counts(broker).values())
    assert openai_fake.fake.answered(429) == 1
    assert openai_fake.fake.answered(500) == 1
    # Packed at the default budget: one successful request per sample document.
    assert openai_fake.fake.answered(200) == len(mention_counts(broker)) < chunks
