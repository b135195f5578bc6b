"""The pytest plugin's `docpipe_stack` fixture: real workers, kill -9, Redis restart,
database cut - what a downstream project gets without Docker."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from pipeline.domain.models import Status
from pipeline.testing.faults import FaultRule
from pipeline.testing.stack import PrivateStack, WorkerSpec
from tests.conftest import GOOD
from tests.integration.conftest import postgres_admin_url

pytestmark = pytest.mark.integration


@pytest.fixture
def document(tmp_path: Path) -> Path:
    path = tmp_path / "affidavit.txt"
    path.write_text(GOOD)
    return path


def test_workers_process_a_document_and_a_killed_worker_dies_at_once(
    docpipe_stack: PrivateStack, document: Path
) -> None:
    docpipe_stack.start_workers()
    uuid = docpipe_stack.submit(document)

    assert docpipe_stack.wait_until_terminal([uuid]) == {uuid: Status.COMPLETED}

    worker = docpipe_stack.workers[0]
    docpipe_stack.kill_worker(worker)
    assert worker.returncode == -signal.SIGKILL
    assert worker not in docpipe_stack.workers


def test_workers_started_again_after_a_kill_take_over_under_their_own_names(
    docpipe_stack: PrivateStack, document: Path
) -> None:
    first = docpipe_stack.start_workers()
    docpipe_stack.kill_worker(first[-1])

    replacements = docpipe_stack.start_workers()  # no duplicate node name, no early-exit error
    uuid = docpipe_stack.submit(document)

    assert docpipe_stack.wait_until_terminal([uuid]) == {uuid: Status.COMPLETED}
    assert len(docpipe_stack.workers) == len(first) - 1 + len(replacements)


def test_faults_declared_in_the_test_reach_the_worker_processes(
    docpipe_stack: PrivateStack, document: Path
) -> None:
    docpipe_stack.start_workers([WorkerSpec(("ocr", "text", "entity", "graph"), "threads", 2)])
    rule = FaultRule(port="parser", kind="permanent", message="refused by the test")

    with docpipe_stack.faults([rule]) as injector:
        uuid = docpipe_stack.submit(document)
        statuses = docpipe_stack.wait_until_terminal([uuid])

    assert statuses == {uuid: Status.OCR_FAILED}
    assert "refused by the test" in (
        docpipe_stack.services.store.get_document(uuid).error_message or ""
    )
    assert injector.fired() == [1]


def test_a_redis_restart_loses_the_data_of_a_non_persistent_redis(
    docpipe_stack: PrivateStack,
) -> None:
    docpipe_stack.redis(1).set("before-restart", "1")

    docpipe_stack.restart_redis()

    assert docpipe_stack.redis(1).get("before-restart") is None


@pytest.mark.docpipe_stack(persistent=True)
def test_a_persistent_redis_keeps_its_data_across_a_restart(docpipe_stack: PrivateStack) -> None:
    docpipe_stack.redis(1).set("before-restart", "1")

    docpipe_stack.restart_redis(down_s=0.2)

    assert docpipe_stack.redis(1).get("before-restart") == b"1"


@pytest.fixture
def postgres_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DOCPIPE_SCENARIO_POSTGRES_URL", postgres_admin_url())
    yield


@pytest.mark.docpipe_stack(postgres=True)
def test_cutting_the_database_drops_worker_connections_until_the_block_ends(
    postgres_env: None, docpipe_stack: PrivateStack
) -> None:
    url = make_url(docpipe_stack.env["DOCPIPE_DATABASE_URL"])
    dsn = f"host={url.host} port={url.port} user={url.username} dbname={url.database}"
    held = psycopg.connect(dsn, connect_timeout=5)

    with docpipe_stack.cut_database() as dropped:
        assert dropped == 1
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, connect_timeout=2)

    with psycopg.connect(dsn, connect_timeout=5) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)
