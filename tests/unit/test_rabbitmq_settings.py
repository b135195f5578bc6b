"""RabbitMQ brokers (amqp://): settings rules, Celery configuration, scenario matrix."""

from __future__ import annotations

import pytest
from kombu import transport
from pydantic import ValidationError

from pipeline.domain.models import QUEUES
from pipeline.harness.cli.scenario import broker_matrix
from pipeline.harness.scenarios.model import load_scenario
from pipeline.harness.scenarios.runner import Check, RunReport, broker_skip_reason
from pipeline.runtime.broker import broker_problems
from pipeline.runtime.celery_app import app, broker_countdown, celery_config, configure
from pipeline.runtime.rabbitmq import UNDELIVERABLE_EXCHANGE, task_queue_arguments
from pipeline.settings import Settings, pool_time_limit_note
from tests.conftest import REPO

AMQP = "amqp://guest:guest@127.0.0.1:5672/docpipe"
#: Time limits that fit RabbitMQ's default consumer_timeout (30 min).
FITS = {"task_soft_time_limit_s": 1200, "task_time_limit_s": 1300}


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_the_default_time_limits_are_refused_on_rabbitmq_for_its_consumer_timeout() -> None:
    with pytest.raises(ValidationError, match=r"broker_consumer_timeout_s \(1800\) must exceed"):
        settings(broker_url=AMQP)
    # Raised on the server and declared, the same limits are accepted.
    assert settings(broker_url=AMQP, broker_consumer_timeout_s=5400).task_time_limit_s == 3900


def test_the_visibility_timeout_rule_is_redis_only() -> None:
    short = {"visibility_timeout_s": 60, **FITS}
    assert settings(broker_url=AMQP, **short).visibility_timeout_s == 60
    with pytest.raises(ValidationError, match="visibility_timeout_s"):
        settings(broker_url="redis://127.0.0.1:6379/0", **short)


def test_classic_queues_count_the_countdown_a_worker_holds_unacked() -> None:
    limits = {"task_soft_time_limit_s": 1600, "task_time_limit_s": 1700, "retry_backoff_max_s": 600}
    assert settings(broker_url=AMQP, **limits).broker_queue_type == "quorum"
    with pytest.raises(ValidationError, match="largest countdown"):
        settings(broker_url=AMQP, broker_queue_type="classic", **limits)


def test_amqp_config_declares_quorum_queues_with_a_delivery_limit_on_a_topic_exchange() -> None:
    s = settings(broker_url=AMQP, max_redeliveries=4, **FITS)
    config = celery_config(s)
    queues = {queue.name: queue for queue in config["task_queues"]}
    assert tuple(queues) == QUEUES
    for name, queue in queues.items():
        assert queue.exchange.type == "topic"  # native delayed delivery refuses direct ones
        assert queue.routing_key == name
        assert queue.queue_arguments == {
            "x-queue-type": "quorum",
            "x-delivery-limit": 5,  # one above max_redeliveries: docpipe's guard goes first
            "x-dead-letter-exchange": UNDELIVERABLE_EXCHANGE,
        }
    assert config["worker_detect_quorum_queues"] is True
    assert "visibility_timeout" not in config["broker_transport_options"]
    assert config["broker_transport_options"]["confirm_publish"] is True


def test_classic_amqp_queues_and_redis_keep_their_own_configuration() -> None:
    classic = settings(broker_url=AMQP, broker_queue_type="classic", retry_backoff_max_s=60, **FITS)
    assert task_queue_arguments(classic) == {}
    redis_config = celery_config(settings(broker_url="redis://127.0.0.1:6379/0"))
    assert "task_queues" not in redis_config
    assert redis_config["broker_transport_options"]["visibility_timeout"] == 4800


def test_a_process_configured_for_rabbitmq_then_redis_routes_as_redis_workers_do() -> None:
    """RabbitMQ's declared queues and topic exchange must not outlive their configuration.

    A process that ran a RabbitMQ scenario and then configured the app for Redis
    (the test processes, the scenario runner) published to the `docpipe` topic
    exchange, which Redis workers never bind: their queues use Celery's default
    direct exchanges, and the messages were dropped.
    """
    # Port 1: nothing listens there; nothing is sent, and no real Redis is touched.
    redis = settings(broker_url="redis://127.0.0.1:1/0", redis_url="redis://127.0.0.1:1/1")
    configure(redis)
    fresh = {key: app.conf[key] for key in celery_config(settings(broker_url=AMQP, **FITS))}

    configure(settings(broker_url=AMQP, **FITS))
    configure(redis)

    assert {key: app.conf[key] for key in fresh} == fresh
    assert app.conf.task_queues is None
    assert app.amqp.queues["ocr"].exchange.name == "ocr"


def test_countdowns_are_whole_seconds_on_quorum_queues_only() -> None:
    quorum = settings(broker_url=AMQP, **FITS)
    assert [broker_countdown(quorum, s) for s in (0.2, 1.0, 2.3, 0)] == [1.0, 1.0, 3.0, 0]
    redis = settings(broker_url="redis://127.0.0.1:6379/0")
    assert broker_countdown(redis, 0.2) == 0.2


def test_the_redis_transport_patch_leaves_amqp_alone() -> None:
    import pipeline.runtime.celery_app  # noqa: F401  (installs the patch)

    assert transport.TRANSPORT_ALIASES["redis"].startswith("pipeline.runtime.redis_transport")
    assert not transport.TRANSPORT_ALIASES["amqp"].startswith("pipeline")


def test_broker_problems_accept_amqp_and_refuse_other_brokers() -> None:
    shared = {
        "redis_url": "redis://127.0.0.1:6379/1",
        "blob_url": "file:///tmp/blobs",
        "database_url": "sqlite:////tmp/docpipe.db",
        **FITS,
    }
    assert broker_problems(settings(broker_url=AMQP, **shared), environ={}) == []
    problems = broker_problems(settings(broker_url="sqs://", **shared), environ={})
    assert len(problems) == 1 and "neither Redis nor RabbitMQ" in problems[0]


def test_the_unprotected_pool_note_names_the_brokers_own_redelivery_rule() -> None:
    note = pool_time_limit_note(settings(broker_url=AMQP, **FITS), "threads")
    assert note is not None and "consumer_timeout (1800s)" in note
    redis_note = pool_time_limit_note(settings(broker_url="redis://h:6379/0"), "threads")
    assert redis_note is not None and "visibility timeout (4800s)" in redis_note


def test_redis_specific_scenarios_are_skipped_on_rabbitmq_with_their_reason() -> None:
    restart = load_scenario(REPO / "scenarios" / "redis_restarted_mid_run.yaml")
    reason = broker_skip_reason(restart, "rabbitmq")
    assert reason is not None and reason.startswith("redis-specific: it restarts the Redis")
    assert broker_skip_reason(restart, "redis") is None
    rabbit_only = load_scenario(
        REPO / "scenarios" / "consumer_timeout_shorter_than_time_limit.yaml"
    )
    assert broker_skip_reason(rabbit_only, "redis") is not None


def _report(
    broker: str, *, passed: bool, status: str = "completed", skipped: str | None = None
) -> RunReport:
    from pipeline.harness.scenarios.runner import DocumentOutcome

    report = RunReport("s", "s.yaml", "broker", 0, passed, 1.0, "replay", broker=broker)
    report.skipped = skipped
    report.checks = [
        Check("invariant", "no lost document", passed, "all", "all" if passed else "1 lost")
    ]
    report.documents = [DocumentOutcome("a.txt", "u", status, None, 1, 2, 2, 0, 1)]
    return report


def test_the_broker_matrix_names_what_differs_between_the_brokers() -> None:
    same = broker_matrix([_report("redis", passed=True), _report("rabbitmq", passed=True)])
    assert same == [
        {"scenario": "s", "file": "s.yaml", "redis": "pass", "rabbitmq": "pass", "differences": []}
    ]
    differs = broker_matrix(
        [_report("redis", passed=True), _report("rabbitmq", passed=False, status="ocr_failed")]
    )
    assert differs[0]["rabbitmq"] == "FAIL"
    text = "; ".join(differs[0]["differences"])
    assert "redis pass, rabbitmq FAIL" in text
    assert "a.txt status: broker completed, broker-rabbitmq ocr_failed" in text
    assert "rabbitmq: no lost document: 1 lost" in text
    skipped = broker_matrix(
        [_report("redis", passed=True), _report("rabbitmq", passed=True, skipped="redis-specific")]
    )
    assert skipped[0]["differences"] == ["not run on rabbitmq: redis-specific"]
