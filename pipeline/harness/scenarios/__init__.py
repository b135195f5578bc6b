"""Scenario files: documents, faults and expectations, run in eager mode or on the broker."""

from pipeline.harness.scenarios.model import Scenario, ScenarioError, load_scenario, schema_text
from pipeline.harness.scenarios.runner import Check, RunReport, parity, run_scenario

__all__ = [
    "Check",
    "RunReport",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "parity",
    "run_scenario",
    "schema_text",
]
