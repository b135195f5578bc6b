"""The simulator's queue processor gives up on a document it cannot dispatch, as the real one."""

from __future__ import annotations

from pipeline.harness.scenarios.model import parse_scenario
from pipeline.harness.scenarios.runner import run_scenario
from pipeline.library import SAMPLES


def test_a_document_whose_dispatch_always_fails_is_failed_not_resubmitted_forever() -> None:
    scenario = parse_scenario(
        {
            "name": "dispatch-always-fails",
            "description": "every dispatch of the document fails",
            "documents": [{"files": ["counsel_correspondence.eml"]}],
            "faults": [{"port": "dispatcher", "operation": "send_stage", "kind": "transient"}],
            "settings": {"queue_max_attempts": 3},
        },
        "test",
    )
    report = run_scenario(scenario, SAMPLES / "dispatch-always-fails.yaml", "sim", in_memory=True)
    (outcome,) = report.documents
    assert outcome.status == "ocr_failed"
    assert "could not dispatch" in (outcome.error or "")
    # The first dispatch and two queue-processor attempts, 15 virtual minutes apart.
    assert report.sim["counts"]["submit_failed"] == 2
    assert report.faults[0]["fired"] == 3
    failed = {check.name for check in report.checks if not check.passed}
    assert "no lost document" not in failed and "every failure has a reason" not in failed
