"""`docpipe monitor --once --json` and `docpipe doctor --json` on a RabbitMQ broker, for real.

A throw-away vhost on the local RabbitMQ (the `rabbitmq_url` fixture deletes it),
one prefork worker for ocr, text and entity, none for graph: a document
submitted through the intake ends up waiting in the graph queue, which the
monitor must show (ready at the broker, no consumer) and the doctor must name.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from pipeline.adapters.sql import create_database_engine
from pipeline.adapters.sql.migrations import upgrade
from pipeline.app.intake import claim_own, dispatch, submit_file
from pipeline.harness.localstack import RabbitVhosts, RedisServer
from pipeline.runtime import rabbitmq
from pipeline.runtime.celery_app import configure
from tests.conftest import SAMPLES
from tests.integration.broker_stack import BrokerStack, docpipe_json

pytestmark = pytest.mark.integration

#: Below the local server's consumer_timeout (RabbitMQ's default, 30 min): refused otherwise.
LIMITS = {"DOCPIPE_TASK_SOFT_TIME_LIMIT_S": "1200", "DOCPIPE_TASK_TIME_LIMIT_S": "1300"}
CONSUMED = ("ocr", "text", "entity")


@pytest.fixture(scope="module")
def piled_up(
    redis_server: RedisServer, rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerStack]:
    workdir = tmp_path_factory.mktemp("rabbitmq-monitor")
    state_db = 6  # the session's redis-server is shared: a database of our own for state
    redis_server.client(state_db).flushdb()
    stack = BrokerStack(
        workdir=workdir,
        redis=redis_server,
        database_url=f"sqlite:///{workdir / 'db.sqlite'}",
        state_db=state_db,
        overrides={
            "DOCPIPE_BROKER_URL": rabbitmq_url,
            "DOCPIPE_FLOWER_URL": "http://127.0.0.1:9",  # nothing there
            **LIMITS,
        },
    )
    engine = create_database_engine(stack.database_url)
    upgrade(engine)  # `docpipe db upgrade`: no schema finding
    engine.dispose()
    try:
        stack.start_worker(",".join(CONSUMED), pool="prefork", concurrency=1, name="busy")
        stack.group.wait_for_consumers(configure(stack.settings()), CONSUMED, timeout_s=60)
        services = stack.services()
        project = services.store.ensure_project("monitor-rabbitmq")
        document_uuid = submit_file(
            services, SAMPLES / "affidavit_of_jane_holloway.txt", project
        ).document_uuid
        claim_own(services, document_uuid, worker="test")
        dispatch(services, document_uuid)
        deadline = time.monotonic() + 90
        while rabbitmq.queue_lengths(rabbitmq_url, ["graph"])["graph"] < 1:
            assert time.monotonic() < deadline, "the document never reached the graph queue"
            time.sleep(0.3)
        yield stack
    finally:
        stack.stop()


def test_monitor_snapshot_reads_the_queues_at_rabbitmq(
    piled_up: BrokerStack, rabbitmq_vhosts: RabbitVhosts
) -> None:
    url = piled_up.settings().broker_url
    listed, why = rabbitmq.rabbitmqctl_queues(url)
    # Where the fixture made its vhost with rabbitmqctl, list_queues must work too.
    assert listed is not None or rabbitmq_vhosts.via != "rabbitmqctl", why

    code, snapshot = docpipe_json(piled_up.env, piled_up.workdir, "monitor", "--once", "--json")

    assert code == 0
    assert snapshot["broker_kind"] == "amqp"
    graph = snapshot["queues"]["graph"]
    assert (graph["ready"], graph["broker_consumers"], graph["consumers"]) == (1, 0, [])
    for queue in CONSUMED:
        assert snapshot["queues"][queue]["broker_consumers"] == 1
        assert snapshot["queues"][queue]["ready"] == 0
    if listed is not None:  # rabbitmqctl on this machine: the broker's unacked counts
        # With late acks the entity task that sent the graph message may not have
        # acknowledged yet: only the queue nobody consumes is sure to hold none.
        assert all(isinstance(row["unacked"], int) for row in snapshot["queues"].values())
        assert graph["unacked"] == 0
    else:
        assert all(row["unacked"] is None for row in snapshot["queues"].values())
        assert any(why in note for note in snapshot["broker_notes"])
    assert snapshot["broker_dead_letters"] == 0
    assert snapshot["oldest_unacked_s"] is None
    (worker,) = snapshot["workers"]
    assert worker["name"].startswith("busy")
    assert sorted(worker["queues"]) == sorted(CONSUMED)
    assert worker["processed"] > 0
    assert snapshot["documents"]["by_status"] == {"entity_resolution": 1}
    assert "guest:guest" not in str(snapshot)


def test_doctor_names_the_queue_without_consumer_and_no_redis_pitfall(
    piled_up: BrokerStack, rabbitmq_vhosts: RabbitVhosts
) -> None:
    code, report = docpipe_json(piled_up.env, piled_up.workdir, "doctor", "--json")

    assert code == 1
    facts = report["facts"]
    assert facts["broker"] is None and facts["rabbitmq"] is not None
    found = {(finding["id"], finding["subject"]) for finding in report["findings"]}
    expected = {("queue-without-consumer", "graph")}
    if facts["rabbitmq"]["consumer_timeout_s"] is None:  # rabbitmqctl eval cannot run here
        expected.add(("consumer-timeout-unknown", "broker"))
    assert found == expected
    (graph,) = [f for f in report["findings"] if f["subject"] == "graph"]
    assert "RabbitMQ: 0 consumer(s), 1 ready" in graph["seen"]
    queues = {q["name"]: q for q in facts["rabbitmq"]["queues"]}
    assert queues["graph"]["consumers"] == 0 and queues["ocr"]["consumers"] == 1
    if rabbitmq_vhosts.via == "rabbitmqctl":
        assert facts["rabbitmq"]["unavailable"] is None
    if facts["rabbitmq"]["unavailable"] is None:  # rabbitmqctl list_queues answered
        assert {q["queue_type"] for q in queues.values()} == {"quorum"}
        assert queues["graph"]["arguments"]["x-delivery-limit"] == (
            piled_up.settings().max_redeliveries + 1
        )
    assert "guest:guest" not in str(report)
