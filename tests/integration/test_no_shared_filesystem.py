"""Workers as separate hosts (issue 16): a library scenario run with `--no-shared-fs`.

The workers share only PostgreSQL, Redis and S3 (moto) with the runner; the
run checks where they worked, what their environment held, that the stored
files are in the bucket and that no worker's folder holds one. The library's
own `no_shared_filesystem.yaml` runs in test_scenarios_broker.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.harness.scenarios.hosts import SeparateHosts, SharedStorageError
from pipeline.harness.scenarios.model import load_scenario
from pipeline.harness.scenarios.real_workers import BrokerEnvironment, worker_layout
from pipeline.harness.scenarios.runner import run_scenario
from tests.conftest import REPO

pytestmark = pytest.mark.integration

HOST_CHECKS = {
    "separate hosts: working folders",
    "separate hosts: environment",
    "separate hosts: stored files on S3",
    "separate hosts: nothing stored in a worker's folder",
}


@pytest.mark.usefixtures("scenario_postgres")
def test_bad_inputs_fail_alone_with_workers_as_separate_hosts(tmp_path: Path) -> None:
    path = REPO / "scenarios" / "bad_inputs_fail_alone.yaml"

    report = run_scenario(
        load_scenario(path), path, "broker", workdir=tmp_path, shared_filesystem=False
    )

    failed = [f"{c.name}: {c.expected} / {c.measured}" for c in report.checks if not c.passed]
    assert report.skipped is None, report.skipped
    assert report.passed, f"{report.error}\n" + "\n".join(failed)
    assert {c.name for c in report.checks} >= HOST_CHECKS
    stored = next(c for c in report.checks if c.name == "separate hosts: stored files on S3")
    assert stored.measured.startswith("s3://") and "5 stored file(s)" in stored.measured
    # The runner's side of the run folder: no blobs and no SQLite file were made there.
    assert not (tmp_path / "blobs").exists() and not (tmp_path / "docpipe.db").exists()


def test_a_file_url_for_a_separate_host_is_refused_before_any_worker_starts(
    tmp_path: Path,
) -> None:
    # Nothing points the blobs or the database elsewhere: file:// and SQLite, the defaults.
    environment = BrokerEnvironment(tmp_path, {}, hosts=SeparateHosts("refused"))
    try:
        environment.start_redis()
        with pytest.raises(SharedStorageError) as refused:
            environment.start_workers(worker_layout(set()))
        assert environment.workers is not None and environment.workers.processes == []
    finally:
        environment.stop()

    message = str(refused.value)
    assert "DOCPIPE_BLOB_URL names storage of one host (file://" in message
    assert "DOCPIPE_DATABASE_URL names storage of one host (sqlite:" in message
