"""The scenario library against real worker processes (a private redis-server per run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.scenarios.model import load_scenario
from pipeline.scenarios.runner import RunReport, run_scenario
from tests.conftest import REPO

pytestmark = pytest.mark.integration

FILES = [
    p for p in sorted((REPO / "scenarios").glob("*.yaml")) if "broker" in load_scenario(p).modes
]


def _explain(report: RunReport) -> str:
    failed = [f"{c.name}: expected {c.expected}, measured {c.measured}" for c in report.checks]
    failed = [line for line, c in zip(failed, report.checks, strict=True) if not c.passed]
    logs = "\n".join(
        f"--- {log.name}\n{log.read_text()[-3000:]}"
        for log in Path(report.workdir or ".").glob("worker-*.log")
    )
    return f"{report.error or ''}\n" + "\n".join(failed) + f"\nreplay: {report.replay}\n{logs}"


#: Scenarios that expose a bug not fixed yet: they still run, and report XPASS once it is.
KNOWN_BUGS = {
    "redis_restarted_mid_run": (
        "a Redis outage can still lose a document under load (seen in a CI run: 3 of 6 "
        "documents left in text_processing/entity_extraction); cause not found yet"
    ),
}
PARAMS = [
    pytest.param(
        path,
        id=f"{path.stem}-broker",
        marks=[pytest.mark.xfail(reason=KNOWN_BUGS[path.stem], strict=False)]
        if path.stem in KNOWN_BUGS
        else [],
    )
    for path in FILES
]


@pytest.mark.parametrize("path", PARAMS)
def test_scenario_passes_against_real_workers(path: Path, tmp_path: Path) -> None:
    report = run_scenario(load_scenario(path), path, "broker", workdir=tmp_path)
    assert report.passed, _explain(report)
