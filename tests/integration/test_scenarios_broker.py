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


@pytest.mark.parametrize("path", FILES, ids=[f"{p.stem}-broker" for p in FILES])
def test_scenario_passes_against_real_workers(path: Path, tmp_path: Path) -> None:
    report = run_scenario(load_scenario(path), path, "broker", workdir=tmp_path)
    assert report.passed, _explain(report)
