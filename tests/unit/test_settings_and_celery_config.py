from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.domain.models import STAGE_ORDER
from pipeline.runtime.celery_app import TASK_NAMES, celery_config, task_routes
from pipeline.runtime.tasks import retry_countdown
from pipeline.settings import Settings, redact_url


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_visibility_timeout_exceeds_hard_limit_plus_largest_retry_countdown() -> None:
    s = settings()
    config = celery_config(s)
    visibility = config["broker_transport_options"]["visibility_timeout"]
    largest_countdown = max(retry_countdown(s, retries) for retries in range(s.max_retries + 1))
    assert (
        visibility
        > config["task_time_limit"] + s.retry_backoff_max_s
        >= (config["task_time_limit"] + largest_countdown)
    )


def test_a_visibility_timeout_too_short_for_the_time_limit_is_refused() -> None:
    with pytest.raises(ValidationError, match="visibility_timeout_s"):
        settings(visibility_timeout_s=3600, task_time_limit_s=3900, task_soft_time_limit_s=3600)


def test_celery_config_is_json_only_acks_late_prefetch_one_with_limits() -> None:
    config = celery_config(settings())
    assert config["task_serializer"] == config["result_serializer"] == "json"
    assert config["accept_content"] == ["json"]
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    # Past the hard limit the message goes back (the redelivery guard bounds it), not acked.
    assert config["task_acks_on_timeout"] is False
    assert config["worker_prefetch_multiplier"] == 1
    assert config["task_soft_time_limit"] < config["task_time_limit"]


def test_every_stage_is_routed_to_its_queue() -> None:
    routes = task_routes()
    assert [routes[TASK_NAMES[stage]]["queue"] for stage in STAGE_ORDER] == [
        "ocr", "text", "text", "entity", "entity", "graph",
    ]  # fmt: skip


def test_retry_countdown_grows_exponentially_with_jitter_and_a_cap() -> None:
    s = settings(retry_backoff_base_s=2, retry_backoff_max_s=60)
    for retries in range(10):
        countdown = retry_countdown(s, retries)
        step = min(60, 2 * 2**retries)
        assert step * 0.5 <= countdown <= step
    assert retry_countdown(s, 0, retry_after=30) >= 30
    assert retry_countdown(s, 0, retry_after=999) == 60


def test_redact_url_hides_passwords() -> None:
    assert redact_url("postgresql://app:s3cr%21t@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("sqlite:///.docpipe/docpipe.db") == "sqlite:///.docpipe/docpipe.db"
    assert "hunter2" not in str(settings(database_url="postgresql://u:hunter2@h/d").describe())


_PRELOAD_PROBE = """
import sys
from types import SimpleNamespace
from celery.concurrency.prefork import TaskPool as Prefork
from celery.concurrency.thread import TaskPool as Threads
from pipeline.runtime.celery_app import _import_parsers_before_forking

def worker(queues, pool):
    queues = SimpleNamespace(consume_from=dict.fromkeys(queues))
    return SimpleNamespace(app=SimpleNamespace(amqp=SimpleNamespace(queues=queues)), pool_cls=pool)

_import_parsers_before_forking(sender=worker(["text"], Prefork))
_import_parsers_before_forking(sender=worker(["ocr"], Threads))
print("docx" in sys.modules, "pypdf" in sys.modules)
_import_parsers_before_forking(sender=worker(["ocr"], Prefork))
print("docx" in sys.modules, "pypdf" in sys.modules)
"""


def test_a_prefork_ocr_worker_imports_the_parsers_before_forking_and_no_other() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _PRELOAD_PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.split() == ["False", "False", "True", "True"]
