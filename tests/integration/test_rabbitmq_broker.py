"""RabbitMQ as the broker, for real: a throw-away vhost on the local server, real workers.

Redis (a private redis-server) still holds state, locks and the cache. Each
module's vhost is created by the `rabbitmq_url` fixture and deleted after it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from pipeline.domain.models import QUEUES, Stage
from pipeline.errors import ServiceUnavailable
from pipeline.harness.localstack import RabbitVhosts, RedisServer
from pipeline.runtime import rabbitmq
from pipeline.runtime.broker import broker_preflight
from pipeline.runtime.celery_app import app
from pipeline.runtime.preflight import check_rabbitmq
from pipeline.runtime.rabbitmq import UNDELIVERABLE_QUEUE, task_queue_arguments
from pipeline.settings import Settings
from tests.integration.broker_stack import BrokerStack, run_json

pytestmark = pytest.mark.integration

TEXT = (
    "MEMORANDUM\n\nOn March 3, 2023 Ms. Jane R. Holloway met counsel for Meridian Capital "
    "Partners LLC in Chicago, Illinois to discuss the $45,000 payment.\n"
)
#: Below the local server's consumer_timeout (RabbitMQ's default, 30 min): refused otherwise.
LIMITS = {"DOCPIPE_TASK_SOFT_TIME_LIMIT_S": "1200", "DOCPIPE_TASK_TIME_LIMIT_S": "1300"}


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerStack]:
    workdir = tmp_path_factory.mktemp("rabbitmq")
    state_db = 5  # the session's redis-server is shared: a database of our own for state
    redis_server.client(state_db).flushdb()
    overrides = {"DOCPIPE_BROKER_URL": rabbitmq_url, **LIMITS}
    stack = BrokerStack(
        workdir=workdir,
        redis=redis_server,
        database_url=f"sqlite:///{workdir / 'db.sqlite'}",
        state_db=state_db,
        overrides=overrides,
    )
    yield stack
    stack.stop()


def _settings(stack: BrokerStack, **values: object) -> Settings:
    return stack.settings().model_copy(update=values)


def test_the_preflight_declares_quorum_queues_and_reads_the_servers_consumer_timeout(
    stack: BrokerStack,
) -> None:
    settings = stack.settings()
    assert settings.broker_kind == "amqp"
    assert broker_preflight(settings) == []
    found = rabbitmq.server_consumer_timeout(settings.broker_url)
    if found.seconds is None:
        pytest.skip(f"the server's consumer_timeout cannot be read here: {found.source}")
    assert found.seconds > settings.task_time_limit_s
    # Every task queue exists now (a passive declare of a missing one would fail), empty.
    assert rabbitmq.queue_lengths(settings.broker_url, QUEUES) == dict.fromkeys(QUEUES, 0)


def test_a_consumer_timeout_setting_above_the_servers_is_refused(stack: BrokerStack) -> None:
    settings = stack.settings()
    found = rabbitmq.server_consumer_timeout(settings.broker_url)
    if found.seconds is None:
        pytest.skip(f"the server's consumer_timeout cannot be read here: {found.source}")
    claimed = _settings(stack, broker_consumer_timeout_s=int(found.seconds) + 600)
    problems = broker_preflight(claimed)
    assert len(problems) == 1 and "DOCPIPE_BROKER_CONSUMER_TIMEOUT_S" in problems[0]


def test_an_unknown_vhost_and_a_wrong_password_are_named(stack: BrokerStack) -> None:
    url = stack.settings().broker_url
    base, _, _vhost = url.rpartition("/")
    with pytest.raises(ServiceUnavailable) as missing:
        check_rabbitmq(f"{base}/docpipe_no_such_vhost", print, timeout_s=3)
    assert "vhost" in (missing.value.hint or "")
    wrong = url.replace("guest:guest@", "guest:Not-The-Password-7@")
    with pytest.raises(ServiceUnavailable) as refused:
        check_rabbitmq(wrong, print, timeout_s=3)
    assert "password" in (refused.value.hint or "")
    assert "Not-The-Password-7" not in str(refused.value)


def test_the_delivery_limit_dead_letters_a_message_returned_too_often(
    stack: BrokerStack,
) -> None:
    """The broker's backstop: a message requeued past x-delivery-limit goes to the DLQ.

    A queue of its own with the task queues' arguments: workers of other tests may
    consume the task queues themselves.
    """
    settings = stack.settings()
    assert broker_preflight(settings) == []
    exchange = Exchange("docpipe", type="topic", durable=True)
    arguments = task_queue_arguments(settings)
    assert arguments["x-queue-type"] == "quorum"
    poison = Queue("docpipe.test.poison", exchange, "poison", queue_arguments=arguments)
    # Publisher confirms: the message is in the queue when publish returns.
    with Connection(settings.broker_url, transport_options={"confirm_publish": True}) as connection:
        producer = connection.Producer(exchange=exchange)
        producer.publish({"poison": True}, routing_key="poison", declare=[poison])
        deliveries = 0
        channel = connection.channel()
        queue = poison(channel)
        while (message := queue.get(no_ack=False)) is not None:
            deliveries += 1
            message.requeue()
            assert deliveries <= settings.max_redeliveries + 5, "never dead-lettered"
        dead = Queue(UNDELIVERABLE_QUEUE, durable=True)(channel)
        # RabbitMQ dead-letters after the last return, asynchronously: poll briefly.
        deadline = time.monotonic() + 10
        while (dead_letter := dead.get(no_ack=True)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        queue.delete()
        channel.close()
    # Delivered once, then again after each return up to the limit (max_redeliveries + 1).
    assert deliveries == settings.max_redeliveries + 2
    assert dead_letter is not None and dead_letter.payload == {"poison": True}


def test_documents_run_through_real_workers_on_rabbitmq(stack: BrokerStack, tmp_path: Path) -> None:
    stack.start_worker("ocr", pool="prefork", concurrency=1)
    stack.start_worker("text,entity,graph", pool="threads", concurrency=4, name="rest")
    stack.services()
    stack.wait_until_consumed(app)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for index in range(3):
        (inbox / f"memo-{index}.txt").write_text(f"{TEXT}\nReference {index}.\n")

    code, report = run_json(stack.env, tmp_path, "--broker", str(inbox))

    assert code == 0, report
    rows = report["documents"]
    assert isinstance(rows, list) and len(rows) == 3
    assert {row["status"] for row in rows} == {"completed"}
    assert all(int(row["mentions"]) > 0 for row in rows)
    url = stack.settings().broker_url
    assert rabbitmq.queue_lengths(url, QUEUES) == dict.fromkeys(QUEUES, 0)


def test_purge_deletes_the_waiting_messages_of_every_queue(
    stack: BrokerStack, tmp_path: Path
) -> None:
    """Messages for queues no worker consumes (the workers stopped) are counted and deleted."""
    from pipeline.runtime.tasks import send_stage

    stack.stop()
    stack.services()
    for index in range(3):
        send_stage(Stage.CHUNKING, f"no-such-document-{index}", 1)
    send_stage(Stage.RELATIONSHIPS, "no-such-document", 1)
    url = stack.settings().broker_url
    assert rabbitmq.queue_lengths(url, QUEUES) == {"ocr": 0, "text": 3, "entity": 0, "graph": 1}

    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "purge", "--yes", "--json"],
        cwd=tmp_path,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert '"total": 4' in result.stdout
    assert "guest:guest" not in result.stdout + result.stderr
    assert rabbitmq.queue_lengths(url, QUEUES) == dict.fromkeys(QUEUES, 0)


def test_a_broker_environment_on_rabbitmq_deletes_its_vhost(
    rabbitmq_vhosts: RabbitVhosts, tmp_path: Path
) -> None:
    from urllib.parse import urlsplit

    from pipeline.harness.scenarios.real_workers import BrokerEnvironment

    environment = BrokerEnvironment(
        tmp_path, {}, broker="rabbitmq", rabbitmq_admin_url=rabbitmq_vhosts.url("/")
    )
    environment.start_rabbitmq()
    environment.start_redis()
    try:
        url = environment.env["DOCPIPE_BROKER_URL"]
        vhost = urlsplit(url).path.lstrip("/")
        assert vhost.startswith("docpipe_test_")
        assert environment.queue_lengths() == dict.fromkeys(QUEUES, 0)
        rabbitmq.connect(url, timeout_s=3).release()
    finally:
        environment.stop()
    with pytest.raises(rabbitmq.RabbitUnavailable, match="vhost"):
        rabbitmq.connect(url, timeout_s=3)
