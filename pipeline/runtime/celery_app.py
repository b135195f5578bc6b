"""The Celery application: `celery -A pipeline.runtime.celery_app worker -Q ocr` works.

Configuration is the seed's, corrected: JSON only, late acks with reject on
worker loss, prefetch 1, soft and hard limits, and a Redis visibility timeout
longer than the hard limit plus the largest retry countdown (failure 15). On a
RabbitMQ broker (amqp://) the task queues are declared here instead: quorum
queues with a delivery limit on one topic exchange (`rabbitmq_config`).
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Mapping
from typing import Any

from celery import Celery
from celery.app.defaults import DEFAULTS
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_init,
    worker_init,
    worker_process_init,
)
from celery.worker.control import inspect_command

from pipeline.domain.models import STAGE_ORDER, Stage
from pipeline.redaction import redact_log_output, redact_url
from pipeline.runtime import redis_transport as broker_transport
from pipeline.runtime.rabbitmq import TASK_EXCHANGE, task_queues
from pipeline.settings import Settings, get_settings

#: Task names, one per stage (plus the OCR poll); the stage order lives in models.
TASK_NAMES: dict[Stage, str] = {
    Stage.OCR: "pipeline.start_ocr",
    Stage.DOCUMENT_NODE: "pipeline.create_document_node",
    Stage.CHUNKING: "pipeline.chunk_document",
    Stage.ENTITY_EXTRACTION: "pipeline.extract_entities",
    Stage.ENTITY_RESOLUTION: "pipeline.resolve_entities",
    Stage.RELATIONSHIPS: "pipeline.stage_relationships",
}
POLL_OCR_TASK = "pipeline.poll_ocr"


def task_routes() -> dict[str, dict[str, str]]:
    routes = {TASK_NAMES[stage]: {"queue": stage.queue} for stage in STAGE_ORDER}
    routes[POLL_OCR_TASK] = {"queue": Stage.OCR.queue}
    return routes


#: How a publisher reconnects to a broker that went away (a restarting Redis): every
#: 0.5-1 s for up to 40 s. kombu otherwise gives up after broker_connection_timeout
#: (4 s), whatever the publish retry policy says, and the message is not sent.
BROKER_RECONNECT = {
    "connect_retries_timeout": 40,
    "interval_start": 0.5,
    "interval_step": 0.5,
    "interval_max": 1.0,
}


def celery_config(settings: Settings) -> dict[str, Any]:
    config = {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_ignore_result": settings.result_backend is None,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "worker_prefetch_multiplier": 1,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A task past its hard time limit goes back to the queue like one whose worker died:
        # acked, its document would sit at *_processing with no reason and no retry left.
        # The redelivery guard (max_redeliveries) then dead-letters one that always hangs.
        "task_acks_on_timeout": False,
        "task_track_started": True,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        "task_always_eager": settings.eager,
        # Failures are recorded on the document row; eager runs must not raise.
        "task_eager_propagates": False,
        "task_routes": task_routes(),
        "task_default_queue": "text",
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            # How soon after the visibility timeout kombu restores an unacked message:
            # it sweeps every interval, scanning Redis on every throttle-th sweep.
            "unacked_restore_interval": settings.broker_restore_interval_s,
            "unacked_restore_throttle": settings.broker_restore_throttle,
            "max_connections": settings.broker_max_connections,
            **BROKER_RECONNECT,
        },
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }
    if settings.broker_kind == "amqp":
        config.update(rabbitmq_config(settings))
    return config


def broker_countdown(settings: Settings, seconds: float) -> float:
    """A countdown the broker can take: whole seconds, at least one, on quorum queues.

    Celery's native delayed delivery routes a countdown by its whole seconds
    (kombu's calculate_routing_key) and raises on 0 < countdown < 1, so a
    sub-second retry would fail to publish; elsewhere the countdown is kept.
    """
    if settings.broker_kind != "amqp" or settings.broker_queue_type != "quorum" or seconds <= 0:
        return seconds
    return float(max(1, math.ceil(seconds)))


def rabbitmq_config(settings: Settings) -> dict[str, Any]:
    """What an amqp:// broker adds: declared queues, and none of Redis' transport options.

    Celery (5.5+) sees the quorum queues (worker_detect_quorum_queues, on by default)
    and then uses per-consumer QoS - quorum queues refuse global QoS - and parks
    countdowns (retries, OCR polls) in its native delayed-delivery queues.
    """
    return {
        "task_queues": task_queues(settings),
        "task_default_exchange": TASK_EXCHANGE,
        "task_default_exchange_type": "topic",
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": settings.broker_queue_type,
        # Redis' options (visibility timeout, restore sweep, pool size) mean nothing here.
        # Publisher confirms: a publish returns once RabbitMQ has taken the message.
        "broker_transport_options": {"confirm_publish": True, **BROKER_RECONNECT},
    }


def configure(settings: Settings) -> Celery:
    """Apply settings to the app (the CLI calls this with its own settings).

    Pooled broker connections are dropped first: they would keep talking to
    the previous broker after the URL changed.
    """
    drop_broker_connections()
    config = celery_config(settings)
    # What an earlier configuration set and this one does not goes back to Celery's
    # default: RabbitMQ's declared queues and topic exchange, kept for a Redis
    # broker, routed every message to an exchange no Redis worker binds (dropped).
    left_over = {key: DEFAULTS.get(key) for key in _CONFIGURED - config.keys()}
    app.conf.update({**left_over, **config})
    _CONFIGURED.clear()
    _CONFIGURED.update(config)
    forget_declared_queues()
    return app


#: The Celery settings the last `configure` applied.
_CONFIGURED: set[str] = set()


def forget_declared_queues() -> None:
    """Drop Celery's cached queue declarations: the next use reads task_queues again.

    Celery builds `app.amqp.queues` (and the router and default queue on it) once;
    a process that configures the app again - another scenario with another
    max_redeliveries - would otherwise declare the old RabbitMQ arguments, which
    RabbitMQ refuses (PRECONDITION_FAILED, inequivalent arg).
    """
    amqp = app.__dict__.get("amqp")
    if amqp is None:
        return
    for cached in ("queues", "default_queue", "router", "default_exchange"):
        amqp.__dict__.pop(cached, None)
    amqp._rtable = None


def drop_broker_connections() -> None:
    """Forget docpipe's app's pooled broker connections: the next use may have another
    broker URL (`pipeline.runtime.broker.drop_pooled_connections`)."""
    from pipeline.runtime.broker import drop_pooled_connections

    drop_pooled_connections(app)


broker_transport.install()
# The worker loads the task modules and the composition root (which tells
# pipeline.ports.services how a worker child builds its services).
app = Celery("docpipe", include=["pipeline.runtime.tasks", "pipeline.bootstrap"])
# Read lazily, when the configuration is first used (a worker starting, a task
# sent): importing this module must work whatever the settings, or even
# `docpipe --help` would fail on a bad DOCPIPE_* value.
app.add_defaults(lambda: celery_config(get_settings()))


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_worker_logs(logger: logging.Logger, **_: Any) -> None:
    """Worker log lines (tracebacks included) never show a password or key."""
    redact_log_output(logger)


#: A worker option `docpipe worker` passes when it has just run the check in this process.
CHECKED_BEFORE_START = "docpipe_checked_before_start"


@celeryd_init.connect
def _check_worker_configuration(options: Mapping[str, Any] | None = None, **_: Any) -> None:
    """A worker never runs eagerly, and refuses settings that cannot be shared (failure 2).

    Plain `celery -A pipeline.runtime.celery_app worker` refuses exactly as `docpipe
    worker` does: same check, same message, exit 2. Celery logs and swallows
    any Exception a receiver raises (celery/utils/dispatch/signal.py), so the
    refusal is a SystemExit, which it does not catch.
    """
    from pipeline.console import EXIT_USAGE, load_settings, report_problem
    from pipeline.errors import UserFacingError
    from pipeline.runtime.broker import refuse_unless_workers_can_run

    try:
        if not (options or {}).get(CHECKED_BEFORE_START):
            refuse_unless_workers_can_run(load_settings(eager=False))
    except UserFacingError as problem:
        report_problem(problem, as_json=False)
        raise SystemExit(EXIT_USAGE) from None
    app.conf.task_always_eager = False


#: The remote inspect command `docpipe monitor` and `docpipe doctor` ask workers with.
DOCPIPE_SETTINGS_COMMAND = "docpipe_settings"


@inspect_command(name=DOCPIPE_SETTINGS_COMMAND)
def _docpipe_settings(state: Any, **_: Any) -> dict[str, Any]:
    """The docpipe settings this worker runs with that the monitor and doctor compare.

    Celery's own `conf` reply holds Celery's settings only; the LLM window and
    the state/cache Redis are docpipe's. URLs are redacted, secrets left out.
    """
    settings = get_settings()
    return {
        "broker_url": redact_url(settings.broker_url),
        "redis_url": redact_url(settings.redis_url),
        "llm_rate_limit_calls": settings.llm_rate_limit_calls,
        "llm_rate_limit_window_s": settings.llm_rate_limit_window_s,
        "visibility_timeout_s": settings.visibility_timeout_s,
        "task_time_limit_s": settings.task_time_limit_s,
        "retry_backoff_max_s": settings.retry_backoff_max_s,
    }


@worker_process_init.connect
def _build_services_after_fork(**_: Any) -> None:
    # Clients must not cross a fork: every worker child builds its own.
    from pipeline.ports.services import use_services

    use_services(None)


#: The parsers' libraries the OCR stage uses (pypdf; python-docx, which brings lxml):
#: about 30 MB, imported lazily so that the CLI starts fast.
PARSER_LIBRARIES = ("pypdf", "docx")


@worker_init.connect
def _import_parsers_before_forking(sender: Any, **_: Any) -> None:
    """A prefork worker of the OCR queue imports the parsers before its pool forks.

    Otherwise each pool child imports them on its first PDF or DOCX: a step of
    13-17 MB in that child's RSS, minutes into a run for a child that gets its
    first DOCX late (`docpipe soak` saw it as 3.3 MB/min of growth). Imported
    in the parent, the children share those pages from the start.
    """
    consumed = set(sender.app.amqp.queues.consume_from or ())
    if Stage.OCR.queue in consumed and "prefork" in str(sender.pool_cls):
        for name in PARSER_LIBRARIES:
            importlib.import_module(name)
