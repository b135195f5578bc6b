"""The scenario library against real worker processes (a private redis-server per run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.harness.localstack import RabbitVhosts
from pipeline.harness.scenarios.model import load_scenario
from pipeline.harness.scenarios.runner import RunReport, needs_postgres, run_scenario
from tests.helpers import BROKER_SCENARIO_FILES, RABBITMQ_SCENARIO_FILES

pytestmark = pytest.mark.integration

FILES = BROKER_SCENARIO_FILES
RABBITMQ_FILES = RABBITMQ_SCENARIO_FILES


def _explain(report: RunReport) -> str:
    failed = [f"{c.name}: expected {c.expected}, measured {c.measured}" for c in report.checks]
    failed = [line for line, c in zip(failed, report.checks, strict=True) if not c.passed]
    logs = "\n".join(
        f"--- {log.name}\n{log.read_text()[-3000:]}"
        for log in Path(report.workdir or ".").glob("worker-*.log")
    )
    return f"{report.error or ''}\n" + "\n".join(failed) + f"\nreplay: {report.replay}\n{logs}"


@pytest.mark.parametrize("path", FILES, ids=[f"{p.stem}-broker" for p in FILES])
def test_scenario_passes_against_real_workers(
    path: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    scenario = load_scenario(path)
    # Workers as separate hosts share no SQLite file: they need PostgreSQL too.
    if needs_postgres(scenario) or not scenario.deployment.shared_filesystem:
        request.getfixturevalue("scenario_postgres")
    # The next test starts while this stack stops (tests/integration/conftest.py waits).
    report = run_scenario(scenario, path, "broker", workdir=tmp_path, stop_in_background=True)
    assert report.skipped is None, report.skipped
    assert report.passed, _explain(report)


@pytest.mark.parametrize("path", RABBITMQ_FILES, ids=[f"{p.stem}-rabbitmq" for p in RABBITMQ_FILES])
def test_scenario_passes_against_real_workers_on_rabbitmq(
    path: Path, tmp_path: Path, rabbitmq_vhosts: RabbitVhosts
) -> None:
    """`rabbitmq_vhosts` skips when RabbitMQ is absent; the run makes and deletes its vhost."""
    report = run_scenario(
        load_scenario(path),
        path,
        "broker",
        workdir=tmp_path,
        broker="rabbitmq",
        stop_in_background=True,
    )
    assert report.skipped is None, report.skipped
    assert report.passed, _explain(report)
