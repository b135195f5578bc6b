"""TextractOcrEngine against moto in-process with the Textract simulator installed.

The simulator answers the S3 object's real PDF text as shuffled, paginated
LINE blocks with low-confidence noise, so these tests check what the adapter
makes of Textract's shapes, not what a mock was told to return.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from fakes.faults import FaultRule, RedisFaultInjector
from fakes.textract_sim import NOISE_TEXTS, TextractSimulator
from pipeline.adapters.aws import build_client
from pipeline.adapters.parsers import extract_pdf_pages
from pipeline.adapters.s3_blob import S3BlobStore
from pipeline.adapters.textract import TextractOcrEngine, client_request_token
from pipeline.app.intake import collect_files, submit_and_dispatch
from pipeline.app.report import build_report
from pipeline.bootstrap import Services, build_services
from pipeline.domain.models import OcrJob
from pipeline.domain.pages import PAGE_MARKER_RE, join_pages
from pipeline.errors import (
    ConfigurationError,
    MalformedResponse,
    PermanentError,
    TransientError,
    UnsupportedFileType,
)
from pipeline.ports import OcrRequest
from tests.conftest import SAMPLES, embedded_settings

BUCKET = "docpipe-test"
PDFS = sorted(SAMPLES.glob("*.pdf"))


@pytest.fixture
def sim(aws_env: None) -> Iterator[TextractSimulator]:
    with mock_aws(), TextractSimulator(polls_until_done=1, max_results=5) as simulator:
        build_client("s3", region="us-east-1", endpoint_url=None, max_attempts=1).create_bucket(
            Bucket=BUCKET
        )
        yield simulator


def client(service: str, attempts: int = 1) -> Any:
    return build_client(service, region="us-east-1", endpoint_url=None, max_attempts=attempts)


@pytest.fixture
def blobs(sim: TextractSimulator) -> S3BlobStore:
    return S3BlobStore(client("s3"), BUCKET, prefix="docs")


@pytest.fixture
def engine(sim: TextractSimulator) -> TextractOcrEngine:
    return TextractOcrEngine(client("textract"), BUCKET, prefix="docs")


def upload(blobs: S3BlobStore, pdf: Path, key: str | None = None) -> str:
    key = key or f"documents/{pdf.stem}/original.pdf"
    blobs.put(key, pdf.read_bytes())
    return key


def request(key: str, token: str = "attempt-1", document: str = "doc-1") -> OcrRequest:
    return OcrRequest(
        document_uuid=document, storage_key=key, file_type="pdf", client_request_token=token
    )


def poll_until_done(engine: TextractOcrEngine, job_id: str, limit: int = 20) -> OcrJob:
    for _ in range(limit):
        job = engine.poll(job_id)
        if job.state != OcrJob.IN_PROGRESS:
            return job
    raise AssertionError(f"job {job_id} still in progress after {limit} polls")


# --- the text ------------------------------------------------------------------------------


@pytest.mark.parametrize("pdf", PDFS, ids=lambda p: p.name)
def test_the_pdf_text_comes_back_through_paginated_results(
    blobs: S3BlobStore, engine: TextractOcrEngine, pdf: Path
) -> None:
    job = poll_until_done(engine, engine.start(request(upload(blobs, pdf))))

    pages = extract_pdf_pages(pdf.read_bytes())
    assert job.state == OcrJob.SUCCEEDED
    assert job.pages == len(pages)
    expected = join_pages(
        ["\n".join(line.strip() for line in p.splitlines() if line.strip()) for p in pages]
    )
    assert job.text == expected  # ordered by page, then top, then left, despite the shuffle
    assert [int(n) for n in PAGE_MARKER_RE.findall(job.text)] == list(range(1, len(pages) + 1))
    assert job.metadata["result_pages"] > 1  # NextToken was followed
    assert job.metadata["low_confidence_lines_dropped"] == len(pages)
    assert not any(noise in job.text.splitlines() for noise in NOISE_TEXTS)


def test_lowering_the_confidence_floor_keeps_the_noise(
    blobs: S3BlobStore, sim: TextractSimulator
) -> None:
    engine = TextractOcrEngine(client("textract"), BUCKET, prefix="docs", min_confidence=10)
    job = poll_until_done(engine, engine.start(request(upload(blobs, PDFS[0]))))
    assert job.metadata["low_confidence_lines_dropped"] == 0
    assert any(noise in job.text.splitlines() for noise in NOISE_TEXTS)


def test_a_job_stays_in_progress_for_n_polls(
    blobs: S3BlobStore, engine: TextractOcrEngine, sim: TextractSimulator
) -> None:
    sim.polls_until_done = 4
    job_id = engine.start(request(upload(blobs, PDFS[0])))

    states = [engine.poll(job_id).state for _ in range(5)]

    assert states == [OcrJob.IN_PROGRESS] * 3 + [OcrJob.SUCCEEDED] * 2


def test_a_new_token_per_attempt_gives_a_new_job_and_a_repeated_token_the_same(
    blobs: S3BlobStore, engine: TextractOcrEngine, sim: TextractSimulator
) -> None:
    key = upload(blobs, PDFS[0])
    first = engine.start(request(key, token="attempt-1"))
    again = engine.start(request(key, token="attempt-1"))
    retry = engine.start(request(key, token="attempt-2"))

    assert first == again != retry
    assert sorted(job.token for job in sim.jobs.values()) == ["attempt-1", "attempt-2"]


def test_a_failed_job_does_not_come_back_for_the_retry_token(
    blobs: S3BlobStore, engine: TextractOcrEngine, sim: TextractSimulator
) -> None:
    """Failure 11: a retry with a fixed token got the old failed job back."""
    key = upload(blobs, PDFS[0])
    sim.fail_documents["original.pdf"] = "INTERNAL_ERROR: simulated"
    failed = poll_until_done(engine, engine.start(request(key, token="attempt-1")))
    sim.fail_documents.clear()
    retried = poll_until_done(engine, engine.start(request(key, token="attempt-2")))

    assert (failed.state, failed.error) == (OcrJob.FAILED, "INTERNAL_ERROR: simulated")
    assert retried.state == OcrJob.SUCCEEDED


def test_tokens_are_sanitised_to_textracts_alphabet() -> None:
    assert client_request_token("0f1c-2d3e_ok") == "0f1c-2d3e_ok"
    odd = client_request_token("doc/1:attempt 2" + "x" * 80)
    assert len(odd) == 64 and odd.isalnum()
    assert odd != client_request_token("doc/1:attempt 3" + "x" * 80)


# --- failures ------------------------------------------------------------------------------


def test_an_unreadable_pdf_ends_as_a_failed_job_with_the_status_message(
    blobs: S3BlobStore, engine: TextractOcrEngine
) -> None:
    blobs.put("broken.pdf", PDFS[0].read_bytes()[:400])
    job = poll_until_done(engine, engine.start(request("broken.pdf")))
    assert job.state == OcrJob.FAILED
    assert job.error is not None and job.error.startswith("UNSUPPORTED_DOCUMENT")


def test_a_missing_object_is_refused_at_start(engine: TextractOcrEngine) -> None:
    with pytest.raises(PermanentError, match="InvalidS3ObjectException"):
        engine.start(request("documents/never-uploaded.pdf"))


def test_only_pdfs_are_sent(engine: TextractOcrEngine) -> None:
    with pytest.raises(UnsupportedFileType):
        engine.start(OcrRequest("d", "k.docx", "docx", "t"))


def test_an_unknown_job_id_is_permanent(engine: TextractOcrEngine) -> None:
    with pytest.raises(PermanentError, match="InvalidJobIdException"):
        engine.poll("0" * 64)


TRANSIENT = [
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "InternalServerError",
]
PERMANENT = [
    "UnsupportedDocumentException",
    "DocumentTooLargeException",
    "InvalidS3ObjectException",
    "BadDocumentException",
    "InvalidParameterException",
]


@pytest.mark.parametrize("operation", ["start", "get"])
@pytest.mark.parametrize(
    ("code", "expected"),
    [(c, TransientError) for c in TRANSIENT] + [(c, PermanentError) for c in PERMANENT],
)
def test_textract_errors_are_mapped(
    blobs: S3BlobStore,
    engine: TextractOcrEngine,
    sim: TextractSimulator,
    operation: str,
    code: str,
    expected: type[Exception],
) -> None:
    key = upload(blobs, PDFS[0])
    job_id = engine.start(request(key)) if operation == "get" else ""
    sim.inject(operation, code)

    with pytest.raises(expected, match=code):
        if operation == "start":
            engine.start(request(key, token="other"))
        else:
            engine.poll(job_id)
    assert poll_until_done(engine, engine.start(request(key))).state == OcrJob.SUCCEEDED


def test_a_single_throttle_is_absorbed_by_botos_retries(
    blobs: S3BlobStore, sim: TextractSimulator
) -> None:
    engine = TextractOcrEngine(client("textract", attempts=2), BUCKET, prefix="docs")
    sim.inject("start", "ThrottlingException")
    job_id = engine.start(request(upload(blobs, PDFS[0])))
    assert sim.calls["start"] == 2
    assert poll_until_done(engine, job_id).state == OcrJob.SUCCEEDED


def test_fault_injector_rules_for_port_textract(
    blobs: S3BlobStore, engine: TextractOcrEngine, sim: TextractSimulator, services: Services
) -> None:
    rules = [
        FaultRule(port="textract", operation="start", kind="throttle", first=1),
        FaultRule(port="textract", operation="get", kind="malformed", first=1),
        FaultRule(port="textract", operation="get", kind="permanent", documents=("doomed",)),
    ]
    injector = RedisFaultInjector(services.redis, rules, namespace="t:textract")
    injector.arm()
    sim.faults = injector
    key = upload(blobs, PDFS[0])

    with pytest.raises(TransientError, match="ThrottlingException"):
        engine.start(request(key))
    job_id = engine.start(request(key))
    with pytest.raises(MalformedResponse):
        engine.poll(job_id)
    assert poll_until_done(engine, job_id).state == OcrJob.SUCCEEDED
    doomed = poll_until_done(engine, engine.start(request(key, "t-2", document="doomed")))
    assert doomed.state == OcrJob.FAILED and "injected" in (doomed.error or "")
    assert injector.fired() == [1, 1, 1]


# --- the composition root and the whole pipeline ------------------------------------------

MakeServices = Callable[..., Services]


def test_cloud_adapters_are_refused_under_tests_without_opt_in(tmp_path: Path) -> None:
    for overrides in ({"ocr": "textract"}, {"blob_url": "s3://bucket/docs"}):
        settings = embedded_settings(tmp_path, **{"blob_url": "s3://bucket/docs", **overrides})
        with pytest.raises(ConfigurationError, match="disabled under tests"):
            build_services(settings)


def test_a_loopback_endpoint_is_allowed_under_tests_and_textract_needs_s3(
    tmp_path: Path, aws_env: None
) -> None:
    local = {"aws_endpoint_url": "http://127.0.0.1:9", "ocr": "textract"}
    services = build_services(embedded_settings(tmp_path, blob_url="s3://b/p", **local))
    assert isinstance(services.blobs, S3BlobStore) and services.blobs.prefix == "p/"
    assert isinstance(services.ocr, TextractOcrEngine) and services.ocr.bucket == "b"
    with pytest.raises(ConfigurationError, match="s3://"):
        build_services(embedded_settings(tmp_path, **local))
    with pytest.raises(ConfigurationError, match="bucket"):
        build_services(embedded_settings(tmp_path, blob_url="s3:///p", **local))


def outcome(services: Services, files: list[Path]) -> dict[str, tuple[object, ...]]:
    project_uuid = services.store.ensure_project("textract")
    submissions = [submit_and_dispatch(services, path, project_uuid) for path in files]
    report = build_report(services, submissions, elapsed_s=1.0)
    fields = ("status", "chunks", "error")
    return {Path(r["file"]).name: tuple(r[f] for f in fields) for r in report["documents"]}


def test_the_samples_through_textract_and_s3_match_the_fake_engine(
    make_services: MakeServices, sim: TextractSimulator
) -> None:
    files = collect_files([SAMPLES])
    fake = outcome(make_services(), files)
    sim.polls_until_done = 3
    cloud = make_services(
        allow_cloud=True,  # this test opts in; moto intercepts every call in-process
        blob_url=f"s3://{BUCKET}/pipeline",
        ocr="textract",
        aws_max_attempts=1,
    )

    assert outcome(cloud, files) == fake
    assert all(row[0] == "completed" for row in fake.values())
    pdf_jobs = [job for job in sim.jobs.values() if job.key.startswith("pipeline/documents/")]
    assert len(pdf_jobs) == len(PDFS) and all(job.polls == 3 for job in pdf_jobs)


def test_a_pdf_over_the_page_limit_fails_before_any_job_starts(
    make_services: MakeServices, sim: TextractSimulator
) -> None:
    services = make_services(
        allow_cloud=True,
        blob_url=f"s3://{BUCKET}/pipeline",
        ocr="textract",
        aws_max_attempts=1,
        max_pdf_pages=1,
    )
    row = outcome(services, [PDFS[0]])[PDFS[0].name]
    assert row[0] == "ocr_failed" and "pages; the limit is 1 pages" in str(row[2])
    assert sim.calls["start"] == 0
