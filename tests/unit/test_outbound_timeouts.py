"""Issue 11.1: outbound calls end by their own timeouts, below the soft time limit.

Celery enforces task time limits only in the prefork pool; on threads, gevent
and solo pools nothing else stops a hung call. Settings refuse an outbound
timeout that is not below the soft limit and say what protects the other
pools; the clients are built with those timeouts.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from pipeline.bootstrap import aws_client
from pipeline.settings import TIME_LIMIT_POOLS, Settings, pool_time_limit_note


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


SHORT_LIMITS: dict[str, Any] = {
    "task_soft_time_limit_s": 30,
    "task_time_limit_s": 40,
    "visibility_timeout_s": 700,
    # Local OCR's own limit (plus one page, 60 s) could not fit below a 30 s soft limit.
    "ocr_local": False,
}


@pytest.mark.parametrize(
    ("too_long", "named"),
    [
        ({"openai_timeout_s": 30}, "openai_timeout_s (30) must be below task_soft_time_limit_s"),
        (
            {"aws_connect_timeout_s": 10, "aws_read_timeout_s": 25},
            "aws_connect_timeout_s + aws_read_timeout_s (35) must be below",
        ),
        ({"neo4j_timeout_s": 45}, "neo4j_timeout_s (45) must be below"),
    ],
)
def test_an_outbound_timeout_not_below_the_soft_limit_is_refused_saying_why(
    too_long: dict[str, Any], named: str
) -> None:
    fitting = {"openai_timeout_s": 20, "aws_read_timeout_s": 15, "neo4j_timeout_s": 20}
    with pytest.raises(ValidationError) as refused:
        settings(**SHORT_LIMITS, **(fitting | too_long))
    message = str(refused.value)
    assert named in message
    assert "only in the prefork pool" in message and "fenced out" in message


def test_timeouts_below_the_soft_limit_pass() -> None:
    fitting = {"openai_timeout_s": 20, "aws_read_timeout_s": 15, "neo4j_timeout_s": 20}
    assert settings(**SHORT_LIMITS, **fitting).neo4j_timeout_s == 20


def test_only_prefork_enforces_time_limits_and_the_others_are_told_what_protects_them() -> None:
    defaults = settings()
    assert frozenset({"prefork"}) == TIME_LIMIT_POOLS
    assert pool_time_limit_note(defaults, "prefork") is None
    for pool in ("threads", "gevent", "solo"):
        note = pool_time_limit_note(defaults, pool)
        assert note is not None
        assert f"the {pool} pool does not enforce task time limits" in note
        assert "openai_timeout_s 60s" in note and "neo4j_timeout_s 60s" in note
        assert "fenced out" in note


def test_boto3_clients_carry_the_configured_timeouts() -> None:
    configured = settings(
        aws_endpoint_url="http://127.0.0.1:9", aws_connect_timeout_s=2.5, aws_read_timeout_s=7.0
    )
    client = aws_client(configured, "s3", "S3")
    assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (2.5, 7.0)


def test_the_broker_restore_sweep_follows_the_settings() -> None:
    from pipeline.runtime.celery_app import celery_config

    options = celery_config(settings(broker_restore_interval_s=1, broker_restore_throttle=1))[
        "broker_transport_options"
    ]
    assert (options["unacked_restore_interval"], options["unacked_restore_throttle"]) == (1, 1)
    # kombu's own defaults otherwise: an expired message is found within ~100 s.
    defaults = celery_config(settings())["broker_transport_options"]
    assert (defaults["unacked_restore_interval"], defaults["unacked_restore_throttle"]) == (10, 10)
