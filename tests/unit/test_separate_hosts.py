"""Workers as separate hosts (issue 16): what counts as shared storage, and what a worker
folder must not hold. The runs themselves: tests/integration/test_no_shared_filesystem.py."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from pipeline.harness.scenarios.hosts import SeparateHosts, SharedStorageError, environment_problems
from pipeline.harness.scenarios.model import ScenarioError, load_scenario, parse_scenario
from pipeline.harness.scenarios.runner import replay_command, run_scenario
from pipeline.settings import get_settings
from tests.conftest import REPO, docpipe

CLEAN = {
    "DOCPIPE_BLOB_URL": "s3://bucket/prefix",
    "DOCPIPE_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/docpipe_test_1",
    "DOCPIPE_BROKER_URL": "redis://127.0.0.1:6380/0",
    "PATH": "/usr/bin:/bin",
}


@pytest.fixture
def hosts() -> Iterator[SeparateHosts]:
    created = SeparateHosts("unit")
    yield created
    created.remove()


def test_a_clean_environment_has_no_problem(tmp_path: Path) -> None:
    assert environment_problems(CLEAN, tmp_path / "run") == []


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("DOCPIPE_BLOB_URL", "file:///tmp/run/blobs", "file://"),
        ("DOCPIPE_DATABASE_URL", "sqlite:////tmp/docpipe.db", "sqlite:"),
        ("DOCPIPE_DATABASE_URL", "SQLite+pysqlite:///x.db", "SQLite+pysqlite:"),
    ],
)
def test_storage_of_one_host_is_named(key: str, value: str, said: str, tmp_path: Path) -> None:
    problems = environment_problems(CLEAN | {key: value}, tmp_path / "run")

    assert problems == [f"{key} names storage of one host ({said}...)"]


def test_a_path_in_the_run_folder_is_named_but_not_a_longer_name(tmp_path: Path) -> None:
    run = tmp_path / "run"
    inside = CLEAN | {"HOME": str(run), "EXTRA": f"/usr/lib:{run}/inbox"}
    beside = CLEAN | {"HOME": f"{run}-host/home"}

    assert environment_problems(inside, run) == [
        "EXTRA names a path in the run folder",
        "HOME names a path in the run folder",
    ]
    assert environment_problems(beside, run) == []


def test_check_environment_refuses_and_says_what_is_shared(
    hosts: SeparateHosts, tmp_path: Path
) -> None:
    env = hosts.host("w0").environment(CLEAN | {"DOCPIPE_BLOB_URL": "file:///srv/blobs"})

    with pytest.raises(SharedStorageError, match="share only PostgreSQL, Redis and S3"):
        hosts.check_environment(env, tmp_path)


def test_each_host_gets_its_own_folders_outside_the_run_folder(
    hosts: SeparateHosts, tmp_path: Path
) -> None:
    first, second = hosts.host("w0"), hosts.host("w1")
    env = first.environment(CLEAN | {"HOME": str(tmp_path), "OLDPWD": str(tmp_path)})

    assert first.root != second.root and first.root.is_dir() and second.tmp.is_dir()
    assert not first.root.is_relative_to(tmp_path)
    assert env["HOME"] == str(first.home) and env["TMPDIR"] == str(first.tmp)
    assert env["PWD"] == str(first.root) and "OLDPWD" not in env
    assert environment_problems(env, tmp_path) == []


def test_a_stored_document_or_a_database_in_a_worker_folder_is_found(
    hosts: SeparateHosts, tmp_path: Path
) -> None:
    stored = tmp_path / "contract.pdf"
    stored.write_bytes(b"%PDF-1.4 the stored bytes")
    empty = tmp_path / "blank.txt"
    empty.write_bytes(b"")
    host = hosts.host("w0")
    (host.tmp / "copy.bin").write_bytes(stored.read_bytes())
    with closing(sqlite3.connect(host.home / "state.db")) as db:
        db.execute("CREATE TABLE source_documents (uuid TEXT)")
    with closing(sqlite3.connect(host.home / "onnxruntime.db")) as db:  # another program's
        db.execute("CREATE TABLE telemetry (k TEXT)")
    (host.home / "notes.sqlite3").write_bytes(b"not a database at all")
    (host.tmp / "worker.pid").write_bytes(b"")  # empty like blank.txt, but carries nothing
    (host.tmp / "other.bin").write_bytes(b"%PDF-1.4 other bytes....")  # same size, other bytes

    assert hosts.leaked([stored, empty]) == [
        "w0/home/state.db (a docpipe database: source_documents)",
        "w0/tmp/copy.bin (a stored document)",
    ]


def test_nothing_found_in_clean_worker_folders(hosts: SeparateHosts, tmp_path: Path) -> None:
    stored = tmp_path / "a.txt"
    stored.write_text("stored")
    (hosts.host("w0").tmp / "celery.log").write_text("log line")

    assert hosts.leaked([stored]) == []


def test_the_deployment_key_is_part_of_the_format() -> None:
    scenario = load_scenario(REPO / "scenarios" / "no_shared_filesystem.yaml")
    base = {"name": "x", "description": "d", "documents": [{"files": ["a.txt"]}]}

    assert scenario.deployment.shared_filesystem is False
    assert parse_scenario(base, "x.yaml").deployment.shared_filesystem is True
    with pytest.raises(ScenarioError, match=r"deployment.hosts: unknown key"):
        parse_scenario(base | {"deployment": {"hosts": 2}}, "x.yaml")


def test_the_replay_command_keeps_the_deployment() -> None:
    assert replay_command(Path("s.yaml"), "broker", 3, shared_filesystem=False).endswith(
        "--mode broker --seed 3 --no-shared-fs"
    )
    assert "--no-shared-fs" not in replay_command(Path("s.yaml"), "broker", 3)


def test_separate_hosts_without_postgresql_are_skipped_with_the_setting_to_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DOCPIPE_SCENARIO_POSTGRES_URL", raising=False)
    get_settings.cache_clear()
    path = REPO / "scenarios" / "bad_inputs_fail_alone.yaml"
    try:
        report = run_scenario(
            load_scenario(path), path, "broker", workdir=tmp_path, shared_filesystem=False
        )
    finally:
        get_settings.cache_clear()

    assert report.skipped is not None and "DOCPIPE_SCENARIO_POSTGRES_URL" in report.skipped
    assert report.shared_filesystem is False and report.replay.endswith("--no-shared-fs")


def test_eager_runs_ignore_the_deployment(tmp_path: Path) -> None:
    """One process has no other host: the flag changes nothing in eager mode."""
    path = REPO / "scenarios" / "bad_inputs_fail_alone.yaml"
    report = run_scenario(
        load_scenario(path), path, "eager", workdir=tmp_path, shared_filesystem=False
    )

    assert report.passed and report.skipped is None and report.shared_filesystem is True
    assert not [c for c in report.checks if c.name.startswith("separate hosts")]


def test_the_cli_flag_reaches_the_run_and_says_what_is_missing(tmp_path: Path) -> None:
    """Without DOCPIPE_SCENARIO_POSTGRES_URL nothing runs: exit 2, naming the setting."""
    path = REPO / "scenarios" / "bad_inputs_fail_alone.yaml"

    result = docpipe(
        tmp_path, "scenario", "run", str(path), "--mode", "broker", "--no-shared-fs", "--json"
    )

    assert result.returncode == 2, result.stdout + result.stderr
    run = json.loads(result.stdout)["runs"][0]
    assert run["shared_filesystem"] is False and run["replay"].endswith("--no-shared-fs")
    assert "DOCPIPE_SCENARIO_POSTGRES_URL" in run["skipped"]
