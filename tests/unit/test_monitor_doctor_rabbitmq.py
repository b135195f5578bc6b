"""`docpipe monitor` and `docpipe doctor` on a RabbitMQ broker: the pure parts.

What RabbitMQ reports is turned into the monitor's figures (unknown ones stay
None, with the reason) and into the doctor's findings. The real broker is
read in tests/integration/test_monitor_doctor_rabbitmq.py.
"""

from __future__ import annotations

import dataclasses
import json

from pipeline.runtime.doctor import (
    ERROR,
    WARNING,
    Facts,
    RabbitFacts,
    RabbitQueueFacts,
    WorkerFacts,
    diagnose,
)
from pipeline.runtime.monitor import WorkerReplies, build_snapshot, rabbit_broker_state
from pipeline.runtime.rabbitmq import (
    UNDELIVERABLE_QUEUE,
    QueueReading,
    RabbitReading,
    merge_readings,
    parse_list_queues,
    vhost_of,
)

QUEUES = ("ocr", "text", "entity", "graph")
NOW = 1_700_000_000.0
QUORUM = {
    "x-queue-type": "quorum",
    "x-delivery-limit": 4,
    "x-dead-letter-exchange": "docpipe.undeliverable",
}


# --- reading RabbitMQ ---------------------------------------------------------------------


def test_the_vhost_is_the_urls_path_unquoted_and_slash_when_absent() -> None:
    assert vhost_of("amqp://guest:guest@127.0.0.1:5672/docpipe_test_1") == "docpipe_test_1"
    assert vhost_of("amqp://guest:guest@127.0.0.1:5672/%2Fstaging") == "/staging"
    assert vhost_of("amqp://guest:guest@127.0.0.1:5672/") == "/"
    assert vhost_of("amqp://127.0.0.1:5672") == "/"


def test_rabbitmqctl_arguments_as_table_entries_object_or_pairs_become_a_dict() -> None:
    # RabbitMQ 3.10.8's own output for a quorum queue (`--formatter json --quiet`).
    listed = (
        '[\n{"name":"q1","type":"quorum","arguments":[["x-queue-type","longstr","quorum"],'
        '["x-delivery-limit","signedint",4]],"consumers":0,"messages_ready":0,'
        '"messages_unacknowledged":0}\n]\n'
    )
    assert parse_list_queues(listed)["q1"]["arguments"] == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 4,
    }
    output = json.dumps(
        [
            {"name": "ocr", "type": "quorum", "arguments": QUORUM, "consumers": 1,
             "messages_ready": 0, "messages_unacknowledged": 2},
            {"name": "graph", "type": "classic", "arguments": [["x-max-length", 10]],
             "consumers": 0, "messages_ready": 3, "messages_unacknowledged": 0},
            {"name": "text", "type": "classic", "arguments": []},
        ]
    )  # fmt: skip

    rows = parse_list_queues(output)

    assert rows["ocr"]["arguments"] == QUORUM
    assert rows["graph"]["arguments"] == {"x-max-length": 10}
    assert rows["text"]["arguments"] == {}


def test_rabbitmqctl_columns_complete_the_passive_declares_counts() -> None:
    passive = {
        "ocr": QueueReading(exists=True, ready=5, consumers=1),
        "graph": QueueReading(exists=False),
    }
    listed = {
        "ocr": {"type": "quorum", "arguments": QUORUM, "messages_unacknowledged": 2},
        "graph": {"type": "quorum", "arguments": QUORUM, "messages_unacknowledged": 9},
    }

    merged = merge_readings(passive, listed)

    assert merged["ocr"] == QueueReading(
        exists=True, ready=5, consumers=1, unacked=2, queue_type="quorum", arguments=QUORUM
    )
    # Gone since rabbitmqctl listed it: the passive declare's answer stands.
    assert merged["graph"] == QueueReading(exists=False)
    assert merge_readings(passive, None)["ocr"].unacked is None


# --- the monitor --------------------------------------------------------------------------


def _reading(unavailable: str | None = None, dead: int = 3) -> RabbitReading:
    unacked = None if unavailable else 1
    queues = {
        name: QueueReading(exists=True, ready=index, consumers=1 if name != "graph" else 0,
                           unacked=unacked)
        for index, name in enumerate(QUEUES)
    }  # fmt: skip
    queues["graph"] = QueueReading(exists=False)
    queues[UNDELIVERABLE_QUEUE] = QueueReading(exists=True, ready=dead, consumers=0)
    return RabbitReading(queues, "AMQP passive declare", unavailable=unavailable)


def test_without_rabbitmqctl_unacked_counts_are_null_and_the_reason_is_shown() -> None:
    why = "unacked counts and queue types unknown: rabbitmqctl is not on PATH"

    state = rabbit_broker_state(_reading(unavailable=why), QUEUES, NOW)
    data = build_snapshot(state, WorkerReplies(), {}, {}, {}, NOW, QUEUES).as_dict()

    assert data["broker_kind"] == "amqp"
    assert data["queues"]["text"]["ready"] == 1
    assert data["queues"]["text"]["unacked"] is None
    assert data["queues"]["text"]["broker_consumers"] == 1
    assert data["queues"]["graph"]["ready"] == 0
    assert data["oldest_unacked_s"] is None
    assert data["broker_dead_letters"] == 3
    assert why in data["broker_notes"]
    assert any("not declared on the broker yet: graph" in n for n in data["broker_notes"])


def test_with_rabbitmqctl_unacked_counts_are_the_brokers() -> None:
    state = rabbit_broker_state(_reading(), QUEUES, NOW)

    assert state.unacked == {"ocr": 1, "text": 1, "entity": 1, "graph": None}
    assert not any("unknown" in note for note in state.notes)


# --- the doctor ---------------------------------------------------------------------------


def _worker(queues: tuple[str, ...]) -> WorkerFacts:
    return WorkerFacts(
        name="all@host",
        pool="prefork",
        concurrency=1,
        queues=queues,
        prefetch_multiplier=1,
        prefetch_count=1,
        acks_late=True,
        reject_on_worker_lost=True,
        acks_on_timeout=False,
        visibility_timeout_s=None,  # not a RabbitMQ setting: workers do not report one
        task_time_limit_s=1300.0,
        longest_active_s=None,
        clock_offset_s=0.01,
    )


def _queue(name: str, **changes: object) -> RabbitQueueFacts:
    queue = RabbitQueueFacts(
        name=name, exists=True, ready=0, consumers=1, queue_type="quorum", arguments=QUORUM
    )
    return dataclasses.replace(queue, **changes)  # type: ignore[arg-type]


def _rabbit(**changes: object) -> RabbitFacts:
    rabbit = RabbitFacts(
        url="amqp://guest:***@127.0.0.1:5672/v",
        queues=tuple(_queue(name) for name in QUEUES),
        dead_letters=0,
        consumer_timeout_s=1800.0,
        consumer_timeout_source="rabbitmqctl eval",
        longest_unacked_s=1300.0,
        longest_unacked_what="task_time_limit_s",
        configured_consumer_timeout_s=1800.0,
        configured_queue_type="quorum",
    )
    return dataclasses.replace(rabbit, **changes)  # type: ignore[arg-type]


def _facts(rabbit: RabbitFacts, queues: tuple[str, ...] = QUEUES) -> Facts:
    return Facts(
        broker=None,
        cache=None,
        queues=QUEUES,
        workers=(_worker(queues),),
        schema_version=3,
        latest_schema_version=3,
        rabbitmq=rabbit,
        clock_reference="this machine's clock",
    )


def _found(facts: Facts) -> set[tuple[str, str, str | None]]:
    return {(f.id, f.severity, f.subject) for f in diagnose(facts)}


def test_a_correct_rabbitmq_deployment_has_no_finding() -> None:
    assert diagnose(_facts(_rabbit())) == []


def test_the_redis_checks_do_not_run_on_rabbitmq() -> None:
    """No broker Redis facts: no eviction, same-db or visibility finding (the worker
    reports no visibility timeout on amqp) even on a threads pool."""
    facts = _facts(_rabbit())
    threads = dataclasses.replace(facts.workers[0], pool="threads")
    assert diagnose(dataclasses.replace(facts, workers=(threads,))) == []


def test_a_task_past_its_limit_on_rabbitmq_is_redelivered_at_the_consumer_timeout() -> None:
    facts = _facts(_rabbit())
    # A worker that still reports a short visibility timeout: irrelevant on amqp.
    hung = dataclasses.replace(
        facts.workers[0], pool="threads", longest_active_s=1400.0, visibility_timeout_s=60.0
    )

    (finding,) = diagnose(dataclasses.replace(facts, workers=(hung,)))

    assert finding.id == "task-past-time-limit"
    assert "at consumer_timeout (1800 s) RabbitMQ delivers it again" in finding.seen


def test_a_consumer_timeout_not_above_the_task_time_limit_is_an_error() -> None:
    assert _found(_facts(_rabbit(consumer_timeout_s=900.0))) == {
        ("consumer-timeout-short", ERROR, "broker")
    }
    assert _found(_facts(_rabbit(consumer_timeout_s=1300.0))) == {
        ("consumer-timeout-short", ERROR, "broker")
    }


def test_a_worker_running_a_longer_time_limit_than_this_process_is_checked() -> None:
    facts = _facts(_rabbit())
    longer = dataclasses.replace(facts.workers[0], task_time_limit_s=2400.0)

    (finding,) = diagnose(dataclasses.replace(facts, workers=(longer,)))

    assert finding.id == "consumer-timeout-short"
    assert "all@host's task_time_limit (2400 s)" in finding.seen


def test_an_unreadable_consumer_timeout_or_an_overstated_setting_is_a_warning() -> None:
    unknown = _rabbit(consumer_timeout_s=None, consumer_timeout_source="rabbitmqctl is not on PATH")
    (finding,) = diagnose(_facts(unknown))
    assert (finding.id, finding.severity) == ("consumer-timeout-unknown", WARNING)
    assert "rabbitmqctl is not on PATH" in finding.seen
    overstated = _rabbit(consumer_timeout_s=1500.0, configured_consumer_timeout_s=1800.0)
    assert _found(_facts(overstated)) == {("consumer-timeout-setting", WARNING, "broker")}


def test_classic_queues_and_missing_delivery_limits_are_named() -> None:
    no_limit = {"x-queue-type": "quorum"}
    queues = (
        _queue("ocr", queue_type="classic", arguments={}),
        _queue("text", arguments=no_limit),
        _queue("entity", arguments={**QUORUM, "x-dead-letter-exchange": None}),
        _queue("graph"),
    )

    found = _found(_facts(_rabbit(queues=queues)))

    assert found == {
        ("queue-not-quorum", ERROR, "ocr"),
        ("queue-without-delivery-limit", WARNING, "text"),
        ("queue-without-delivery-limit", WARNING, "entity"),
    }
    # Chosen in the settings, a classic queue is a warning, not a mismatch.
    classic = _rabbit(queues=queues[:1] + queues[3:], configured_queue_type="classic")
    assert _found(_facts(classic)) == {("queue-not-quorum", WARNING, "ocr")}


def test_unknown_queue_types_raise_no_finding() -> None:
    queues = tuple(_queue(name, queue_type=None, arguments=None) for name in QUEUES)
    assert diagnose(_facts(_rabbit(queues=queues, unavailable="rabbitmqctl is not on PATH"))) == []


def test_a_queue_without_consumer_is_named_from_the_workers_or_the_brokers_count() -> None:
    queues = tuple(_queue(name, consumers=0 if name == "text" else 1) for name in QUEUES)
    queues = (*queues[:3], _queue("graph", consumers=0, ready=7))

    findings = diagnose(_facts(_rabbit(queues=queues), queues=("ocr", "text", "entity")))

    by_subject = {f.subject: f for f in findings}
    assert set(by_subject) == {"graph", "text"}
    assert {f.id for f in findings} == {"queue-without-consumer"}
    assert "no running worker consumes queue 'graph'" in by_subject["graph"].seen
    assert "0 consumer(s), 7 ready" in by_subject["graph"].seen
    # The worker lists `text`, RabbitMQ counts no consumer on it (channel gone).
    assert "RabbitMQ counts no consumer" in by_subject["text"].seen


def test_messages_dead_lettered_at_the_broker_are_reported() -> None:
    (finding,) = diagnose(_facts(_rabbit(dead_letters=2)))
    assert (finding.id, finding.severity, finding.subject) == (
        "broker-dead-letters",
        WARNING,
        "docpipe.undeliverable",
    )
    assert finding.seen.startswith("2 message(s)")


def test_clock_skew_on_rabbitmq_names_the_clock_it_was_compared_with() -> None:
    facts = _facts(_rabbit())
    skewed = dataclasses.replace(facts.workers[0], clock_offset_s=4.0)
    (finding,) = diagnose(dataclasses.replace(facts, workers=(skewed,)))
    assert finding.id == "clock-skew"
    assert finding.seen.endswith("ahead of this machine's clock")
