"""Scenario files: the format, the library (every scenario in eager mode) and the runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.harness.scenarios import model
from pipeline.harness.scenarios.model import (
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
    schema_text,
)
from pipeline.harness.scenarios.runner import RunReport, run_scenario
from tests.conftest import REPO
from tests.helpers import BROKER_SCENARIO_FILES, RABBITMQ_SCENARIO_FILES

SCENARIOS = REPO / "scenarios"
FILES = sorted(SCENARIOS.glob("*.yaml"))
#: The library's eager runs happen here; broker runs in tests/integration/test_scenarios_broker.py.
EAGER_FILES = [path for path in FILES if "eager" in load_scenario(path).modes]
#: Scenarios of simulator-only faults (process crashes, a Redis restart): run here in sim mode.
SIM_FILES = [path for path in FILES if load_scenario(path).modes == ["sim"]]


def _explain(report: RunReport) -> str:
    failed = [f"{c.name}: expected {c.expected}, measured {c.measured}" for c in report.checks]
    failed = [line for line, c in zip(failed, report.checks, strict=True) if not c.passed]
    return f"{report.error or ''}\n" + "\n".join(failed) + f"\nreplay: {report.replay}"


@pytest.mark.parametrize("path", EAGER_FILES, ids=[p.stem for p in EAGER_FILES])
def test_scenario_passes_in_eager_mode(path: Path, tmp_path: Path) -> None:
    report = run_scenario(load_scenario(path), path, "eager", workdir=tmp_path)
    assert report.skipped is None, report.skipped
    assert report.passed, _explain(report)
    assert report.checks, "a scenario that checks nothing proves nothing"


@pytest.mark.parametrize("path", SIM_FILES, ids=[p.stem for p in SIM_FILES])
def test_simulator_only_scenario_passes_in_sim_mode(path: Path, tmp_path: Path) -> None:
    report = run_scenario(load_scenario(path), path, "sim", workdir=tmp_path)
    assert report.skipped is None, report.skipped
    assert report.passed, _explain(report)
    assert report.checks, "a scenario that checks nothing proves nothing"


def test_ci_runs_every_library_scenario_in_at_least_one_mode() -> None:
    """No scenario is left out silently: each runs here (eager) or in integration (broker)."""
    run_in_ci = set(EAGER_FILES) | set(BROKER_SCENARIO_FILES) | set(SIM_FILES)
    run_in_ci |= set(RABBITMQ_SCENARIO_FILES)
    assert [path.name for path in FILES if path not in run_in_ci] == []
    # Broker runs that cut the database off get DOCPIPE_SCENARIO_POSTGRES_URL from the
    # integration fixture, and that test asserts no broker run was skipped.
    assert len(FILES) >= 15


def test_the_library_has_at_least_15_scenarios_named_after_their_files() -> None:
    assert len(FILES) >= 15
    for path in FILES:
        scenario = load_scenario(path)
        assert scenario.name == path.stem
        assert scenario.reference, f"{path.name}: say which real failure it reproduces"


def test_committed_schema_equals_the_models_schema() -> None:
    committed = (SCENARIOS / "schema.json").read_text()
    assert committed == schema_text(), (
        "scenarios/schema.json is stale: run `docpipe scenario schema > scenarios/schema.json`"
    )


def minimal(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "t",
        "description": "d",
        "documents": [{"generate": {"type": "txt", "name": "a.txt"}}],
    }
    data.update(extra)
    return data


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (minimal(faults=[{"port": "llm", "kind": "transient", "bogus": 1}]),
         ["f.yaml: faults[0].bogus: unknown key", "expected one of:", "probability"]),
        (minimal(faults=[{"port": "llm", "kind": "explode"}]),
         ["faults[0].kind", "'transient'", "'explode'"]),
        (minimal(settings={"max_retrys": 2}), ["settings.max_retrys: unknown key", "max_retries"]),
        (minimal(settings={"database_url": "sqlite://"}), ["settings.database_url: unknown key"]),
        (minimal(faults=[{"port": "parser", "kind": "kill_worker"}]),
         ["kill_worker", "modes: [broker]"]),
        (minimal(disruptions=[{"kind": "restart_redis", "at_s": 1, "down_s": 2}]),
         ["disruptions[0]: restart_redis", "modes: [broker]"]),
        (minimal(modes=["broker"], disruptions=[{"kind": "restart_redis", "at_s": 1}]),
         ["disruptions[0].down_s: required key is missing"]),
        (minimal(modes=["broker"], disruptions=[{"kind": "reboot", "at_s": 1}]),
         ["disruptions[0].kind", "'restart_redis'"]),
        (minimal(modes=["broker"], disruptions=[{"kind": "restart_redis", "at_s": 1,
                                                  "down_s": 2, "bogus": 1}]),
         ["disruptions[0].bogus: unknown key", "down_s"]),
        (minimal(faults=[{"port": "llm", "kind": "permanent", "documents": ["a.txt"]}]),
         ["faults[0]", "'documents' needs a port that knows the document"]),
        (minimal(faults=[{"port": "ocr", "operation": "analyze", "kind": "permanent"}]),
         ["faults[0]", "operations start, poll"]),
        (minimal(expect={"totals": {"chunks": {"min": 3, "max": 1}}}),
         ["expect.totals.chunks", "min (3) is above max (1)"]),
        (minimal(expect={"calls": {"llm.chat": 1}}), ["expect", "unknown 'llm.chat'"]),
        ({"name": "t", "description": "d"}, ["documents: required key is missing"]),
        (minimal(documents=[{"files": ["x"], "generate": {"type": "txt"}}]),
         ["documents[0]", "exactly one of 'files' or 'generate'"]),
    ],
)  # fmt: skip
def test_a_bad_scenario_names_file_key_path_and_expectation(
    data: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(ScenarioError) as raised:
        parse_scenario(data, "f.yaml")
    message = str(raised.value)
    assert message.startswith("f.yaml: ")
    for fragment in fragments:
        assert fragment in message, message


def test_the_fast_loader_reads_every_scenario_file_as_yaml_safe_load_does() -> None:
    libyaml = getattr(yaml, "__with_libyaml__", False)  # PyYAML's wheels have it
    assert model._FAST_SAFE_LOADER is (yaml.CSafeLoader if libyaml else yaml.SafeLoader)
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        assert yaml.load(text, Loader=model._FAST_SAFE_LOADER) == yaml.safe_load(text), path


def test_invalid_yaml_names_the_file_and_quotes_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: one\nmodes: [eager\ndocuments: []\n")
    with pytest.raises(ScenarioError, match=r"broken\.yaml: not valid YAML") as raised:
        load_scenario(path)
    # Where libyaml parses, the message is still the pure-Python parser's, which quotes it.
    assert "line 3, column 10:\n    documents: []\n             ^" in str(raised.value)


def _run(data: dict[str, Any], tmp_path: Path, seed: int | None = None) -> RunReport:
    scenario = Scenario.model_validate(data)
    return run_scenario(scenario, tmp_path / "t.yaml", "eager", seed=seed, workdir=tmp_path / "w")


def _failed(report: RunReport) -> dict[str, str]:
    return {c.name: c.measured for c in report.checks if not c.passed}


def test_a_fault_that_never_fires_fails_the_run(tmp_path: Path) -> None:
    # Text files never reach Textract: the fault cannot fire, so the scenario proves nothing.
    report = _run(minimal(faults=[{"port": "ocr", "kind": "transient"}]), tmp_path)
    assert not report.passed
    assert _failed(report) == {"fault coverage": "faults[0] transient on ocr: fired 0"}
    assert report.replay == f"docpipe scenario run {tmp_path / 't.yaml'} --mode eager --seed 0"


def test_failing_expectations_report_the_measured_value(tmp_path: Path) -> None:
    data = minimal(
        expect={
            "documents": [{"match": "a.txt", "status": "dead_lettered"}, {"match": "nope*"}],
            "totals": {"chunks": {"min": 500}},
            "calls": {"parser.extract": 2},
        }
    )
    failed = _failed(_run(data, tmp_path))
    assert failed == {
        "documents[0] 'a.txt' status": "a.txt=completed",
        "documents[1] 'nope*'": "none",
        "totals chunks": "1",
        "calls parser.extract": "1",
    }


def test_same_seed_same_outcome_and_another_seed_another_schedule(tmp_path: Path) -> None:
    data = minimal(
        documents=[{"generate": {"type": "txt", "name": "d-{i}.txt", "count": 6, "pages": 2}}],
        settings={"max_retries": 1},
        faults=[{"port": "llm", "kind": "transient", "probability": 0.3}],
    )

    def outcome(seed: int, run: str) -> tuple[object, ...]:
        report = _run(data, tmp_path / run, seed=seed)
        documents = [(d.name, d.status, d.chunks, d.mentions) for d in report.documents]
        return tuple(documents), tuple(map(str, report.faults)), tuple(report.calls.items())

    first = outcome(1, "a")
    assert outcome(1, "b") == first
    assert outcome(2, "c") != first


def test_settings_overrides_reach_the_run(tmp_path: Path) -> None:
    data = minimal(
        settings={"max_file_bytes": 10},
        expect={"documents": [{"match": "a.txt", "status": "ocr_failed"}]},
    )
    report = _run(data, tmp_path)
    assert report.passed, _explain(report)


def test_cli_runs_files_and_exits_0_only_when_every_expectation_holds(tmp_path: Path) -> None:
    good = SCENARIOS / "permanent_error_not_retried.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps(minimal(name="bad", expect={"totals": {"completed": 7}})))
    command = [sys.executable, "-m", "pipeline", "scenario", "run"]

    ok = subprocess.run([*command, str(good), "--json"], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    payload = json.loads(ok.stdout)
    assert payload["passed"] is True and payload["runs"][0]["mode"] == "eager"

    failing = subprocess.run([*command, str(bad)], capture_output=True, text=True, cwd=REPO)
    assert failing.returncode == 1
    assert "totals completed" in failing.stdout
    assert f"replay: docpipe scenario run {bad} --mode eager --seed 0" in failing.stdout

    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("name: x\n")
    usage = subprocess.run([*command, str(invalid)], capture_output=True, text=True, cwd=REPO)
    assert usage.returncode == 2
    assert "invalid.yaml: description: required key is missing" in usage.stderr


def test_cli_summary_counts_skipped_runs_apart_from_passed_ones() -> None:
    files = [
        SCENARIOS / "permanent_error_not_retried.yaml",
        SCENARIOS / "queue_without_consumer.yaml",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "scenario", "run", *map(str, files)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "eager: 1/1 runs passed, 1 skipped" in result.stdout


def test_cli_fails_a_run_in_which_every_selected_run_was_skipped(tmp_path: Path) -> None:
    broker_only = [
        str(SCENARIOS / "queue_without_consumer.yaml"),
        str(SCENARIOS / "worker_killed_during_ocr.yaml"),
    ]
    command = [sys.executable, "-m", "pipeline", "scenario", "run", *broker_only]
    result = subprocess.run([*command, "--mode", "eager"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "eager: 0/0 runs passed, 2 skipped" in result.stdout
    assert "error: no scenario ran: all 2 selected run(s) were skipped" in result.stderr
    assert "queue_without_consumer (eager): declares modes: [broker]" in result.stderr
    assert "Traceback" not in result.stderr

    as_json = subprocess.run(
        [*command, "--mode", "eager", "--json"], capture_output=True, text=True, cwd=REPO
    )
    assert as_json.returncode == 2, as_json.stderr
    payload = json.loads(as_json.stdout)
    assert payload["passed"] is False
    assert payload["counts"] == ["eager: 0/0 runs passed, 2 skipped"]
    assert payload["error"].startswith("no scenario ran")


def test_cli_fails_a_database_cut_scenario_skipped_for_want_of_postgres(tmp_path: Path) -> None:
    env = {
        key: value for key, value in os.environ.items() if key != "DOCPIPE_SCENARIO_POSTGRES_URL"
    }
    scenario = str(SCENARIOS / "database_unreachable_mid_run.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "scenario", "run", scenario, "--mode", "broker"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "broker: 0/0 runs passed, 1 skipped" in result.stdout
    assert "set DOCPIPE_SCENARIO_POSTGRES_URL" in result.stderr


def test_parity_pairs_sim_with_broker_when_eager_did_not_run() -> None:
    from pipeline.harness.cli.scenario import _parity_reports
    from pipeline.harness.scenarios.model import Scenario

    # A real run's documents, labelled as the sim run of a broker-only scenario.
    sim = run_scenario(Scenario.model_validate(minimal(name="killed")), None, "eager")
    sim.mode = "sim"
    common = {"scenario": "killed", "file": sim.file, "seed": 0, "passed": True}
    eager = RunReport(mode="eager", elapsed_s=0, replay="", skipped="broker only", **common)
    broker = RunReport(mode="broker", elapsed_s=0, replay="", **common)  # no documents

    parities = _parity_reports([eager, sim, broker])

    assert list(parities) == ["killed (sim vs broker)"]
    differences = parities["killed (sim vs broker)"]
    assert differences and all("only in sim" in line for line in differences)


def test_sim_mode_skips_a_scenario_for_rabbitmq_only(tmp_path: Path) -> None:
    """The simulator models Celery on Redis: a RabbitMQ-only case is skipped, not failed."""
    path = REPO / "scenarios" / "consumer_timeout_shorter_than_time_limit.yaml"
    report = run_scenario(load_scenario(path), path, "sim", workdir=tmp_path)
    assert report.passed and report.skipped is not None
    assert "not for Redis" in report.skipped


def test_a_sim_run_that_never_ends_fails_with_a_reason_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past SIM_MAX_EVENTS a run is a failure (explore reports it), not a hang."""
    from pipeline.harness.scenarios import runner

    monkeypatch.setattr(runner, "SIM_MAX_EVENTS", 10)  # the library's largest run takes ~1,000
    path = REPO / "scenarios" / "mixed_batch_random_transient_faults.yaml"
    report = run_scenario(load_scenario(path), path, "sim", workdir=tmp_path)
    assert not report.passed
    assert report.error is not None and "never ended" in report.error
