"""The sim-cloud profile in broker mode: the shipped S3 and Textract adapters across processes.

A moto server on loopback runs in a thread of this process with the Textract
simulator installed; real worker processes reach it through
DOCPIPE_AWS_ENDPOINT_URL with fake credentials, build their boto3 clients
after fork, and process the samples to completion.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fakes.faulty_ports import FaultyBlobStore
from fakes.textract_sim import TextractSimulator, moto_server
from pipeline.adapters.aws import build_client
from pipeline.adapters.s3_blob import S3BlobStore
from pipeline.adapters.textract import TextractOcrEngine
from pipeline.app.intake import claim_own, collect_files, dispatch, submit_file
from pipeline.bootstrap import Services
from pipeline.domain.models import Status
from pipeline.harness.localstack import RedisServer
from pipeline.harness.scenarios.cloud import FAKE_AWS_ENV
from pipeline.runtime.broker import wait_for_terminal
from pipeline.runtime.celery_app import app
from tests.conftest import SAMPLES
from tests.integration.broker_stack import BrokerStack

pytestmark = pytest.mark.integration

BUCKET = "docpipe-sim-cloud"
POLLS = 3


@pytest.fixture(scope="module")
def simulator() -> Iterator[tuple[TextractSimulator, str]]:
    sim = TextractSimulator(polls_until_done=POLLS, max_results=25)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in FAKE_AWS_ENV.items():
            patch.setenv(name, value)
        patch.delenv("AWS_PROFILE", raising=False)
        with moto_server(sim) as endpoint:
            build_client(
                "s3", region="us-east-1", endpoint_url=endpoint, max_attempts=1
            ).create_bucket(Bucket=BUCKET)
            yield sim, endpoint


@pytest.fixture(scope="module")
def stack(
    simulator: tuple[TextractSimulator, str],
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BrokerStack]:
    _, endpoint = simulator
    workdir = tmp_path_factory.mktemp("sim-cloud")
    redis_server.client(0).flushall()
    redis_server.client(1).flushall()
    overrides = {
        **FAKE_AWS_ENV,
        "DOCPIPE_OCR": "textract",
        "DOCPIPE_BLOB_URL": f"s3://{BUCKET}/sim-cloud",
        "DOCPIPE_AWS_ENDPOINT_URL": endpoint,
        # One attempt per call: a scripted throttle reaches the task layer's retry.
        "DOCPIPE_AWS_MAX_ATTEMPTS": "1",
    }
    stack = BrokerStack(
        workdir=workdir,
        redis=redis_server,
        database_url=f"sqlite:///{workdir / 'db.sqlite'}",
        overrides=overrides,
    )
    try:
        stack.start_worker("ocr", pool="prefork", concurrency=1)
        stack.start_worker("text,entity,graph", pool="threads", concurrency=4, name="rest")
        stack.services()
        stack.wait_until_consumed(app)
        yield stack
    finally:
        stack.stop()


def test_the_samples_complete_through_s3_and_textract_in_worker_processes(
    simulator: tuple[TextractSimulator, str],
    stack: BrokerStack,
    make_services: Callable[..., Services],
) -> None:
    sim, _ = simulator
    files = collect_files([SAMPLES])
    # The fake engine's chunk counts, in-process and eager, before the broker is configured.
    reference = make_services()
    project = reference.store.ensure_project("reference")
    expected: dict[str, int] = {}
    for path in files:
        uuid = submit_file(reference, path, project).document_uuid
        claim_own(reference, uuid, worker="reference")
        dispatch(reference, uuid)
        expected[path.name] = reference.store.counts(uuid).chunks

    services = stack.services()
    # The stack injects faults (workers follow them), so the S3 store sits behind them.
    assert isinstance(services.blobs, FaultyBlobStore)
    assert isinstance(services.blobs.inner, S3BlobStore)
    assert isinstance(services.ocr, TextractOcrEngine)
    sim.inject("get", "ThrottlingException")  # answered to whichever worker polls first
    project = services.store.ensure_project("sim-cloud")
    uuids = {path.name: submit_file(services, path, project).document_uuid for path in files}
    for uuid in uuids.values():
        claim_own(services, uuid, worker="test")
        dispatch(services, uuid)

    statuses = wait_for_terminal(services, list(uuids.values()), timeout_s=45)

    for name, uuid in uuids.items():
        document = services.store.get_document(uuid)
        assert statuses[uuid] is Status.COMPLETED, (
            f"{name}: {document.error_message}\n"
            f"{ {n: str(statuses[u]) for n, u in uuids.items()} }\n{stack.diagnosis()}"
        )
        assert services.store.counts(uuid).chunks == expected[name], name
    pdfs = [name for name in uuids if name.endswith(".pdf")]
    jobs = [job for job in sim.jobs.values() if job.key.startswith("sim-cloud/")]
    assert len(jobs) == len(pdfs) and all(job.status == "SUCCEEDED" for job in jobs)
    assert all(job.polls >= POLLS for job in jobs)
    assert sim.calls["get"] > len(pdfs) * POLLS  # the throttled poll was retried
    for name in pdfs:
        metadata = services.store.get_document(uuids[name]).ocr_metadata
        assert metadata["engine"] == "textract" and metadata["result_pages"] > 1, metadata


def test_workers_read_the_objects_the_intake_wrote(
    simulator: tuple[TextractSimulator, str], stack: BrokerStack, tmp_path: Path
) -> None:
    """The intake side uploads with the same S3BlobStore the workers read from."""
    services = stack.services()
    services.blobs.put("probe/object.bin", b"\x00probe")
    _, endpoint = simulator
    client = build_client("s3", region="us-east-1", endpoint_url=endpoint, max_attempts=1)
    body = client.get_object(Bucket=BUCKET, Key="sim-cloud/probe/object.bin")["Body"]
    assert body.read() == b"\x00probe"
    services.blobs.delete("probe/object.bin")
