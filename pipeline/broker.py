"""Broker mode: checks that a real deployment is wired, and waiting for documents.

REFERENCE.md failures 1 and 2: tasks PENDING forever because no worker
consumes a queue, and workers started without the configuration. Both are
refused up front with a message that says what to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from celery import Celery

from pipeline.bootstrap import Services
from pipeline.domain.models import QUEUES, Status
from pipeline.errors import ConfigurationError
from pipeline.settings import Settings, redact_url


def broker_problems(settings: Settings) -> list[str]:
    """What stops these settings from working across processes (empty when fine)."""
    problems = []
    if settings.broker_url.startswith("memory://"):
        problems.append(
            "DOCPIPE_BROKER_URL is memory:// (the embedded default); set it to a redis:// URL"
        )
    if settings.redis_url.startswith("fakeredis://"):
        problems.append(
            "DOCPIPE_REDIS_URL is fakeredis:// (in-process only); workers need a shared "
            "redis:// URL for state, cache, locks and rate limits"
        )
    if settings.blob_url.startswith("memory://"):
        problems.append("DOCPIPE_BLOB_URL is memory://; workers need file:// or s3://")
    if settings.database_url in {"sqlite://", "sqlite:///:memory:"}:
        problems.append("DOCPIPE_DATABASE_URL is an in-memory SQLite database")
    if _same_redis_database(settings.broker_url, settings.redis_url):
        problems.append(
            f"broker and cache share one Redis database ({redact_url(settings.broker_url)}); "
            "use separate databases so cache pressure can never evict queued tasks"
        )
    return problems


def _same_redis_database(broker_url: str, redis_url: str) -> bool:
    def normalise(url: str) -> str:
        url = url.rstrip("/")
        return url if url.rsplit("/", 1)[-1].isdigit() else url + "/0"

    both_redis = broker_url.startswith("redis") and redis_url.startswith("redis")
    return both_redis and normalise(broker_url) == normalise(redis_url)


def require_broker_settings(settings: Settings) -> None:
    problems = broker_problems(settings)
    if problems:
        raise ConfigurationError("broker mode is not configured: " + "; ".join(problems))


def queues_without_consumers(
    app: Celery, queues: Sequence[str] = QUEUES, timeout: float = 1.5
) -> list[str]:
    """Queues no running worker consumes (a task sent there would wait forever)."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    consumed = {queue["name"] for worker in replies.values() for queue in worker}
    return [queue for queue in queues if queue not in consumed]


def wait_for_consumers(
    app: Celery, queues: Sequence[str] = QUEUES, *, timeout_s: float = 15.0
) -> list[str]:
    """Give freshly started workers a moment; returns the queues still without a consumer."""
    deadline = time.monotonic() + timeout_s
    while True:
        idle = queues_without_consumers(app, queues)
        if not idle or time.monotonic() >= deadline:
            return idle


def wait_for_terminal(
    services: Services,
    document_uuids: Sequence[str],
    *,
    timeout_s: float,
    on_progress: Callable[[int], None] = lambda done: None,
    poll_interval_s: float = 0.25,
) -> dict[str, Status]:
    """Poll the database until every document is terminal or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    statuses: dict[str, Status] = {}
    while True:
        statuses = services.store.statuses(document_uuids)
        done = sum(1 for status in statuses.values() if status.is_terminal)
        on_progress(done)
        if done == len(document_uuids) or time.monotonic() >= deadline:
            return statuses
        time.sleep(poll_interval_s)
