"""The fake Textract: asynchronous shape, idempotent tokens, state shared through Redis."""

from __future__ import annotations

from pathlib import Path

import fakeredis
import pytest
import redis

from pipeline.adapters.embedded_ocr import JOB_KEY, JOB_TTL_SECONDS, EmbeddedOcrEngine
from pipeline.adapters.memory_blob import InMemoryBlobStore
from pipeline.domain.models import OcrJob
from pipeline.domain.pages import PAGE_MARKER_RE
from pipeline.errors import (
    MalformedResponse,
    PermanentError,
    TransientError,
    UnsupportedFileType,
)
from pipeline.ports import FaultEffect, OcrRequest
from pipeline.testing.clocks import EPOCH_2023, ManualClock, SteppingClock
from pipeline.testing.faults import ScriptedFaults

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
COMPLAINT = (SAMPLES / "complaint_holloway_v_meridian.pdf").read_bytes()


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def client(server: fakeredis.FakeServer) -> redis.Redis:
    return fakeredis.FakeRedis(server=server)


@pytest.fixture
def blobs() -> InMemoryBlobStore:
    store = InMemoryBlobStore()
    store.put("docs/complaint.pdf", COMPLAINT)
    return store


def request(token: str = "token-1", key: str = "docs/complaint.pdf") -> OcrRequest:
    return OcrRequest(
        document_uuid="doc-1", storage_key=key, file_type="pdf", client_request_token=token
    )


def test_job_is_in_progress_until_its_poll_then_succeeds_with_text_and_pages(
    blobs: InMemoryBlobStore, client: redis.Redis
) -> None:
    engine = EmbeddedOcrEngine(blobs, client, polls_until_done=3)
    job_id = engine.start(request())
    states = [engine.poll(job_id).state for _ in range(2)]
    done = engine.poll(job_id)
    assert states == [OcrJob.IN_PROGRESS, OcrJob.IN_PROGRESS]
    assert done.state == OcrJob.SUCCEEDED
    assert done.job_id == job_id
    assert done.pages == 4
    assert [int(n) for n in PAGE_MARKER_RE.findall(done.text)] == [1, 2, 3, 4]
    assert "Case No. 2:23-cv-01234-ABC" in done.text
    assert done.error is None
    assert done.metadata == {"engine": "fake-textract", "polls": 3}


def test_first_poll_answers_with_the_default_of_one_poll(
    blobs: InMemoryBlobStore, client: redis.Redis
) -> None:
    engine = EmbeddedOcrEngine(blobs, client)
    assert engine.poll(engine.start(request())).state == OcrJob.SUCCEEDED


def test_a_finished_job_keeps_its_result(blobs: InMemoryBlobStore, client: redis.Redis) -> None:
    engine = EmbeddedOcrEngine(blobs, client, polls_until_done=2)
    job_id = engine.start(request())
    engine.poll(job_id)
    first = engine.poll(job_id)
    blobs.delete("docs/complaint.pdf")  # Textract keeps results after reading the object
    again = engine.poll(job_id)
    assert again == first


def test_same_token_gives_the_same_job_and_a_new_token_a_new_one(
    blobs: InMemoryBlobStore, client: redis.Redis
) -> None:
    engine = EmbeddedOcrEngine(blobs, client, polls_until_done=2)
    first = engine.start(request("attempt-1"))
    engine.poll(first)
    assert engine.start(request("attempt-1")) == first
    # The repeated start did not reset the job: its next poll finishes it.
    assert engine.poll(first).state == OcrJob.SUCCEEDED
    second = engine.start(request("attempt-2"))
    assert second != first
    assert engine.poll(second).state == OcrJob.IN_PROGRESS


def test_reusing_a_token_for_another_object_is_refused(
    blobs: InMemoryBlobStore, client: redis.Redis
) -> None:
    blobs.put("docs/other.pdf", COMPLAINT)
    engine = EmbeddedOcrEngine(blobs, client)
    engine.start(request("token"))
    with pytest.raises(PermanentError, match="already used"):
        engine.start(request("token", key="docs/other.pdf"))


def test_corrupt_pdf_gives_a_failed_job_with_a_reason(
    blobs: InMemoryBlobStore, client: redis.Redis
) -> None:
    blobs.put("docs/truncated.pdf", COMPLAINT[:300])
    engine = EmbeddedOcrEngine(blobs, client)
    job = engine.poll(engine.start(request(key="docs/truncated.pdf")))
    assert job.state == OcrJob.FAILED
    assert job.error is not None
    assert job.error.startswith("UNSUPPORTED_DOCUMENT: cannot read the PDF")
    assert (job.text, job.pages) == ("", 0)


def test_missing_blob_is_refused_at_start(blobs: InMemoryBlobStore, client: redis.Redis) -> None:
    engine = EmbeddedOcrEngine(blobs, client)
    with pytest.raises(PermanentError, match="invalid S3 object"):
        engine.start(request(key="docs/missing.pdf"))


def test_blob_deleted_while_the_job_runs_fails_the_job(
    blobs: InMemoryBlobStore, client: redis.Redis
) -> None:
    engine = EmbeddedOcrEngine(blobs, client)
    job_id = engine.start(request())
    blobs.delete("docs/complaint.pdf")
    job = engine.poll(job_id)
    assert job.state == OcrJob.FAILED
    assert job.error is not None and "invalid S3 object" in job.error


def test_unknown_job_id_is_a_permanent_error(blobs: InMemoryBlobStore, client: redis.Redis) -> None:
    with pytest.raises(PermanentError, match="unknown OCR job id 'nope'"):
        EmbeddedOcrEngine(blobs, client).poll("nope")


def test_only_pdfs_are_accepted(blobs: InMemoryBlobStore, client: redis.Redis) -> None:
    docx_request = OcrRequest("doc-1", "docs/complaint.pdf", "docx", "token")
    with pytest.raises(UnsupportedFileType, match="PDF documents only"):
        EmbeddedOcrEngine(blobs, client).start(docx_request)


def test_state_is_shared_between_engines_on_one_redis_server(
    blobs: InMemoryBlobStore, server: fakeredis.FakeServer
) -> None:
    # Two clients on one server stand for two worker processes.
    starter = EmbeddedOcrEngine(blobs, fakeredis.FakeRedis(server=server), polls_until_done=2)
    poller = EmbeddedOcrEngine(blobs, fakeredis.FakeRedis(server=server), polls_until_done=5)
    job_id = starter.start(request())
    assert poller.start(request()) == job_id
    assert poller.poll(job_id).state == OcrJob.IN_PROGRESS
    # The starter's polls_until_done travels with the job.
    done = starter.poll(job_id)
    assert done.state == OcrJob.SUCCEEDED
    assert poller.poll(job_id) == done


def test_job_record_is_a_hash_with_a_one_day_ttl(
    blobs: InMemoryBlobStore, client: redis.Redis
) -> None:
    job_id = EmbeddedOcrEngine(blobs, client).start(request())
    key = JOB_KEY.format(job_id=job_id)
    record = client.hgetall(key)
    assert record[b"storage_key"] == b"docs/complaint.pdf"
    assert record[b"document_uuid"] == b"doc-1"
    assert record[b"polls"] == b"0"
    assert 0 < client.ttl(key) <= JOB_TTL_SECONDS
    assert JOB_TTL_SECONDS == 86_400


def test_works_with_a_client_that_decodes_responses(
    blobs: InMemoryBlobStore, server: fakeredis.FakeServer
) -> None:
    engine = EmbeddedOcrEngine(blobs, fakeredis.FakeRedis(server=server, decode_responses=True))
    assert engine.poll(engine.start(request())).pages == 4


def test_a_job_without_processing_time_is_ready_on_the_next_instant(
    blobs: InMemoryBlobStore, client: redis.Redis
) -> None:
    # Started at x.0006 s and polled 0.1 ms later: a start time rounded to the
    # millisecond (x.001) made the job look unfinished (the flaky first poll).
    engine = EmbeddedOcrEngine(
        blobs, client, clock=SteppingClock(1_700_000_000.0006, 1_700_000_000.0007)
    )
    job = engine.poll(engine.start(request()))
    assert (job.state, job.pages) == (OcrJob.SUCCEEDED, 4)


def test_faults_and_latency_are_applied_through_the_clock(
    blobs: InMemoryBlobStore, client: redis.Redis
) -> None:
    clock = ManualClock(EPOCH_2023)
    faults = ScriptedFaults(FaultEffect(latency_s=2.0))
    engine = EmbeddedOcrEngine(blobs, client, clock=clock, latency_seconds=0.5, faults=faults)
    job_id = engine.start(request())
    engine.poll(job_id)
    assert faults.calls == [("ocr", "start", "doc-1"), ("ocr", "poll", "doc-1")]
    assert clock.sleeps == [2.5, 2.5]


def test_an_injected_fault_is_raised_before_the_operation(
    blobs: InMemoryBlobStore, client: redis.Redis
) -> None:
    faults = ScriptedFaults()
    faults.errors[("ocr", "poll")] = TransientError("throttled")
    engine = EmbeddedOcrEngine(blobs, client, polls_until_done=2, faults=faults)
    job_id = engine.start(request())
    with pytest.raises(TransientError, match="throttled"):
        engine.poll(job_id)
    # The failed call did not count as a poll.
    assert engine.poll(job_id).state == OcrJob.IN_PROGRESS
    assert engine.poll(job_id).state == OcrJob.SUCCEEDED


def test_injected_bad_answers_affect_one_poll_only(
    blobs: InMemoryBlobStore, client: redis.Redis
) -> None:
    faults = ScriptedFaults()
    engine = EmbeddedOcrEngine(blobs, client, faults=faults)
    job_id = engine.start(request())
    faults.responses[("ocr", "poll")] = "malformed"
    with pytest.raises(MalformedResponse, match="without a job status"):
        engine.poll(job_id)
    faults.responses[("ocr", "poll")] = "empty"
    empty = engine.poll(job_id)
    assert (empty.state, empty.text, empty.pages) == (OcrJob.SUCCEEDED, "", 0)
    real = engine.poll(job_id)
    assert (real.state, real.pages) == (OcrJob.SUCCEEDED, 4)


def test_without_a_clock_nothing_sleeps(blobs: InMemoryBlobStore, client: redis.Redis) -> None:
    engine = EmbeddedOcrEngine(blobs, client, latency_seconds=30.0)
    assert engine.poll(engine.start(request())).state == OcrJob.SUCCEEDED


@pytest.mark.parametrize("polls", [0, -1])
def test_polls_until_done_must_be_positive(
    blobs: InMemoryBlobStore, client: redis.Redis, polls: int
) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EmbeddedOcrEngine(blobs, client, polls_until_done=polls)
