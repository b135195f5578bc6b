"""Helpers more than one test module uses (test modules never import each other)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pipeline.app.intake import submit_and_dispatch
from pipeline.app.report import build_report
from pipeline.bootstrap import Services
from pipeline.domain.models import QUEUES
from pipeline.harness.scenarios.model import load_scenario
from tests.conftest import REPO

# --- the command line's error output ---------------------------------------------------------

#: A one-line affidavit every stage can process.
SHORT_AFFIDAVIT = (
    "AFFIDAVIT OF JANE HOLLOWAY\n\nI, Jane R. Holloway, of Chicago, Illinois, swear.\n"
)
#: "A few lines at most": error, continuation lines, hint (and the wait line).
MAX_ERROR_LINES = 5


def assert_short_usage_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= MAX_ERROR_LINES, result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


def assert_json_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    payload = json.loads(result.stdout)  # exactly one object, nothing else on stdout
    assert set(payload) == {"error", "hint"}
    for text in expected:
        assert text in payload["error"], payload


# --- running documents in process ---------------------------------------------------------------

#: A chunk-sized settlement with people, organisations, places, money, a law and a case.
GOOD_TEXT = (
    "SETTLEMENT AGREEMENT\n\nThis Settlement Agreement is entered into on March 3, 2023 between "
    "Jane R. Holloway and Meridian Capital Partners LLC of Chicago, Illinois. Meridian shall pay "
    "$1,250,000.00 to Ms. Holloway within thirty days, as required under 15 U.S.C. § 78j(b).\n\n"
    "Section 2. Release. Ms. Holloway releases all claims asserted in Case No. 2:23-cv-01234-ABC "
    "before the United States District Court for the Northern District of Illinois.\n"
)


def run_files(services: Services, files: list[Path]) -> dict[str, dict[str, object]]:
    """Submit and dispatch `files` (eager services run them through); report rows by file name."""
    project_uuid = services.store.ensure_project("test-project")
    submissions = [submit_and_dispatch(services, path, project_uuid) for path in files]
    report = build_report(services, submissions, elapsed_s=1.0)
    return {Path(row["file"]).name: row for row in report["documents"]}


# --- the scenario library -------------------------------------------------------------------------

SCENARIO_FILES = sorted((REPO / "scenarios").glob("*.yaml"))
#: Run in eager mode by tests/unit/test_scenarios.py.
EAGER_SCENARIO_FILES = [p for p in SCENARIO_FILES if "eager" in load_scenario(p).modes]
#: Run in broker mode on Redis by tests/integration/test_scenarios_broker.py.
BROKER_SCENARIO_FILES = [
    p
    for p in SCENARIO_FILES
    if "broker" in load_scenario(p).modes and "redis" in load_scenario(p).broker.brokers
]
#: Run in broker mode on RabbitMQ (a throw-away vhost) by the same module: the scenarios
#: whose broker semantics differ most - a worker killed (redelivery on connection loss,
#: delivery limit), duplicates, retries with countdowns (delay queues), the
#: consumer_timeout refusal. The whole library runs on both brokers with
#: `docpipe scenario run scenarios/*.yaml --mode broker --broker redis,rabbitmq`.
RABBITMQ_SCENARIO_FILES = [
    REPO / "scenarios" / f"{name}.yaml"
    for name in (
        "poison_kills_worker_dead_lettered",
        "worker_killed_during_ocr",
        "duplicate_delivery_exactly_once",
        "llm_outage_window",
        "consumer_timeout_shorter_than_time_limit",
        "hang_past_the_hard_time_limit_dead_lettered",
    )
]


#: How often the memory worker's poll and timer look up while it runs (seconds).
MEMORY_WORKER_TICK_S = 0.05


@contextmanager
def memory_worker(app: Any, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Iterator[Any]:
    """Celery's in-thread test worker (`start_worker`) on the memory transport, stopping at once.

    Celery's synchronous loop waits out its 2 s `drain_events` poll, and its timer thread
    its interval, before the worker thread ends: ~4.9 s per test. Here the poll gives up
    as soon as the worker is told to stop, and the timer looks up every tick. The memory
    transport, which polls once a second by default (a second per hop), polls every tick.
    """
    from celery.contrib.testing.worker import start_worker
    from celery.worker import state
    from kombu.transport import memory

    drain = memory.Transport.drain_events

    def drain_until_stopped(self: Any, connection: Any, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return drain(self, connection, timeout=MEMORY_WORKER_TICK_S)
            except TimeoutError:
                if state.should_terminate is not None or state.should_stop is not None:
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    monkeypatch.setattr(memory.Transport, "drain_events", drain_until_stopped)
    # Every pipeline queue on two threads, as the tests that use it run the whole chain.
    options = {
        "pool": "threads",
        "concurrency": 2,
        "perform_ping_check": False,
        "queues": list(QUEUES),
        **options,
    }
    with start_worker(app, timer_precision=MEMORY_WORKER_TICK_S, **options) as worker:
        yield worker
