"""Broker mode for real: worker processes on a private redis-server, SQLite shared on disk."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes.faults import FaultRule, RedisFaultInjector, clear_faults, install_faults
from pipeline.app.intake import claim_own, dispatch, submit_file
from pipeline.bootstrap import Services
from pipeline.domain.models import Status
from pipeline.harness.localstack import RedisServer, pool_children
from pipeline.runtime.broker import wait_for_terminal
from pipeline.runtime.celery_app import app
from tests.conftest import SAMPLES
from tests.integration.broker_stack import BrokerStack, run_json

pytestmark = pytest.mark.integration

TEXT = (
    "MEMORANDUM\n\nOn March 3, 2023 Ms. Jane R. Holloway met counsel for Meridian Capital "
    "Partners LLC in Chicago, Illinois to discuss the $45,000 payment under 15 U.S.C. § 78j(b).\n"
)


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerStack]:
    """All four queues served by real worker processes, as `make workers` starts them."""
    workdir = tmp_path_factory.mktemp("broker")
    redis_server.client(0).flushall()
    stack = BrokerStack(
        workdir=workdir, redis=redis_server, database_url=f"sqlite:///{workdir / 'db.sqlite'}"
    )
    try:
        stack.start_worker("ocr", pool="prefork", concurrency=1)
        stack.start_worker("text", pool="threads", concurrency=4)
        stack.start_worker("entity", pool="gevent", concurrency=20)
        stack.start_worker("graph", pool="threads", concurrency=2)
        services = stack.services()
        stack.wait_until_consumed(app)
        yield stack
        clear_faults(services.redis)
    finally:
        stack.stop()


@pytest.fixture
def services(stack: BrokerStack) -> Iterator[Services]:
    services = stack.services()
    clear_faults(services.redis)
    yield services
    clear_faults(services.redis)


def mixed_batch(folder: Path) -> Path:
    folder.mkdir()
    for sample in SAMPLES.iterdir():
        shutil.copy(sample, folder / sample.name)
    (folder / "memo.txt").write_text(TEXT)
    pdf = next(SAMPLES.glob("*.pdf")).read_bytes()
    (folder / "truncated.pdf").write_bytes(pdf[:400])
    return folder


def outcome(report: dict[str, object]) -> dict[str, tuple[object, ...]]:
    rows = report["documents"]
    assert isinstance(rows, list)
    fields = ("status", "category", "chunks", "mentions", "canonical_entities", "relationships")
    return {Path(r["file"]).name: tuple(r[f] for f in fields) for r in rows}


def test_mixed_batch_through_real_workers_matches_eager_mode(
    stack: BrokerStack, tmp_path: Path
) -> None:
    batch = mixed_batch(tmp_path / "batch")

    broker_code, broker_report = run_json(stack.env, tmp_path, "--broker", str(batch))
    kept = {"DOCPIPE_UNDER_TEST", "DOCPIPE_ALLOW_CLOUD"}
    eager_env = {k: v for k, v in stack.env.items() if not k.startswith("DOCPIPE_") or k in kept}
    eager_code, eager_report = run_json(eager_env, tmp_path, str(batch))

    assert broker_code == eager_code == 1  # the truncated PDF fails alone
    broker, eager = outcome(broker_report), outcome(eager_report)
    assert broker == eager
    assert broker["truncated.pdf"][0] == "ocr_failed"
    completed = [name for name, row in broker.items() if row[0] == "completed"]
    assert len(completed) == len(broker) - 1
    totals = broker_report["totals"]
    assert isinstance(totals, dict) and totals["mode"] == "broker"


def test_running_the_same_file_again_on_the_broker_adds_no_document(
    stack: BrokerStack, tmp_path: Path
) -> None:
    """Reported as already processed without a message sent; --reprocess: same document, v2."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "memo.txt").write_text(f"{TEXT}\nReference {tmp_path.name}.\n")  # unique bytes
    first_code, first = run_json(stack.env, tmp_path, "--broker", str(inbox))
    again_code, again = run_json(stack.env, tmp_path, "--broker", str(inbox))
    redo_code, redo = run_json(stack.env, tmp_path, "--broker", "--reprocess", str(inbox))

    assert first_code == again_code == redo_code == 0
    rows = [report["documents"][0] for report in (first, again, redo)]  # type: ignore[index]
    assert len({row["document_uuid"] for row in rows}) == 1
    assert [(row["already_processed"], row["reprocessed"]) for row in rows] == [
        (False, False),
        (True, False),
        (False, True),
    ]
    document = stack.services().store.get_document(rows[0]["document_uuid"])
    assert (document.status, document.processing_version) == (Status.COMPLETED, 2)


def _submit(services: Services, path: Path) -> str:
    project = services.store.ensure_project("broker-tests")
    return submit_file(services, path, project).document_uuid


def _send(services: Services, uuid: str) -> None:
    claim_own(services, uuid, worker="test")
    dispatch(services, uuid)


def test_ocr_polling_does_not_hold_the_only_ocr_slot(
    stack: BrokerStack, services: Services, tmp_path: Path
) -> None:
    """Three PDFs whose jobs each need several polls overlap on one prefork OCR process."""
    pdf = next(SAMPLES.glob("*.pdf"))
    uuids = []
    for i in range(3):
        copy = tmp_path / f"doc{i}.pdf"
        shutil.copy(pdf, copy)
        uuids.append(_submit(services, copy))
    for uuid in uuids:
        _send(services, uuid)
    statuses = wait_for_terminal(services, uuids, timeout_s=60)
    assert set(statuses.values()) == {Status.COMPLETED}, (statuses, stack.diagnosis())
    jobs = [services.store.ocr_jobs(uuid)[0] for uuid in uuids]  # type: ignore[attr-defined]
    started = sorted(job["created_at"] for job in jobs)
    finished = sorted(job["updated_at"] for job in jobs)
    # With a blocking poll the second job could only start after the first finished.
    assert started[-1] < finished[0], jobs


def test_kill_9_of_a_worker_mid_task_loses_no_document(
    stack: BrokerStack, services: Services, tmp_path: Path
) -> None:
    """SIGKILL the pool process running OCR: the task is requeued and the document completes."""
    path = tmp_path / "slow.txt"
    path.write_text(TEXT)
    uuid = _submit(services, path)
    rule = FaultRule(port="parser", operation="extract", kind="latency", latency_s=4.0, first=1)
    injector = RedisFaultInjector(services.redis, [rule], namespace="t:kill")
    install_faults(services.redis, injector)
    ocr_worker = stack.workers[0]
    _send(services, uuid)

    deadline = time.monotonic() + 20
    while injector.fired() != [1]:
        assert time.monotonic() < deadline, "the slow OCR call never started"
        time.sleep(0.05)
    (child,) = pool_children(ocr_worker.pid)
    os.kill(child, signal.SIGKILL)

    statuses = wait_for_terminal(services, [uuid], timeout_s=60)
    document = services.store.get_document(uuid)
    assert statuses[uuid] is Status.COMPLETED, (document.error_message, stack.diagnosis())
    assert injector.calls() == [2]  # delivered again after the kill
    assert ocr_worker.poll() is None  # the worker survived and replaced its pool process
    assert services.store.counts(uuid).chunks >= 1


def test_a_document_that_always_kills_its_worker_is_dead_lettered(
    stack: BrokerStack, services: Services, tmp_path: Path
) -> None:
    poison_path = tmp_path / "poison.txt"
    poison_path.write_text(TEXT)
    healthy_path = tmp_path / "healthy.txt"
    healthy_path.write_text(TEXT)
    poison = _submit(services, poison_path)
    healthy = _submit(services, healthy_path)
    rule = FaultRule(port="parser", operation="extract", kind="kill_worker", documents=(poison,))
    injector = RedisFaultInjector(services.redis, [rule], namespace="t:poison")
    install_faults(services.redis, injector)
    _send(services, poison)
    _send(services, healthy)

    statuses = wait_for_terminal(services, [poison, healthy], timeout_s=90)
    assert all(status.is_terminal for status in statuses.values()), stack.diagnosis()

    assert statuses[healthy] is Status.COMPLETED
    assert statuses[poison] is Status.DEAD_LETTERED
    document = services.store.get_document(poison)
    assert "worker lost" in (document.error_message or "")
    assert injector.fired()[0] == services.settings.max_redeliveries
    assert [letter["document_uuid"] for letter in services.store.dead_letters()] == [poison]
