"""The `OcrEngine` contract: Textract's asynchronous shape, whoever implements it."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from pipeline.domain.models import OcrJob
from pipeline.domain.pages import PAGE_MARKER_RE
from pipeline.errors import PermanentError, UnsupportedFileType
from pipeline.ports import BlobStore, OcrEngine, OcrRequest

#: A four-page PDF with a text layer, shipped with docpipe (pipeline/library/samples).
SAMPLE_PDF = "complaint_holloway_v_meridian.pdf"


@dataclass
class OcrSetup:
    """An engine and the blob store it reads documents from (keys as in `OcrRequest`)."""

    engine: OcrEngine
    blobs: BlobStore
    #: Polls a job may need before it finishes (then the contract gives up).
    max_polls: int = 20


def sample_pdf() -> bytes:
    from pipeline.library import SAMPLES

    return (SAMPLES / SAMPLE_PDF).read_bytes()


def request(key: str, token: str = "attempt-1", file_type: str = "pdf") -> OcrRequest:
    return OcrRequest(
        document_uuid="contract-doc",
        storage_key=key,
        file_type=file_type,
        client_request_token=token,
    )


def poll_until_done(setup: OcrSetup, job_id: str) -> OcrJob:
    for _ in range(setup.max_polls):
        job = setup.engine.poll(job_id)
        if job.state != OcrJob.IN_PROGRESS:
            return job
    raise AssertionError(f"job {job_id} still in progress after {setup.max_polls} polls")


def page_words(text: str) -> list[list[str]]:
    """Each page's words, sorted (engines may order lines differently within a page)."""
    pages = PAGE_MARKER_RE.split(text)[1:]  # [number, text, number, text, ...]
    return [sorted(re.findall(r"\S+", body)) for body in pages[1::2]]


class OcrEngineContract:
    """Subclasses provide an `ocr` fixture: an `OcrSetup` with an empty blob store."""

    def test_a_pdf_is_read_page_by_page_with_its_text_layer(self, ocr: OcrSetup) -> None:
        from pipeline.adapters.parsers import extract_pdf_pages

        data = sample_pdf()
        ocr.blobs.put("documents/complaint.pdf", data)

        job = poll_until_done(ocr, ocr.engine.start(request("documents/complaint.pdf")))

        expected = [sorted(re.findall(r"\S+", page)) for page in extract_pdf_pages(data)]
        assert (job.state, job.error) == (OcrJob.SUCCEEDED, None)
        assert job.pages == len(expected) == 4
        assert [int(n) for n in PAGE_MARKER_RE.findall(job.text)] == [1, 2, 3, 4]
        assert page_words(job.text) == expected

    def test_the_same_request_token_finds_the_same_job(self, ocr: OcrSetup) -> None:
        ocr.blobs.put("documents/a.pdf", sample_pdf())

        first = ocr.engine.start(request("documents/a.pdf", token="attempt-1"))
        again = ocr.engine.start(request("documents/a.pdf", token="attempt-1"))

        assert first == again

    def test_a_new_request_token_starts_a_new_job(self, ocr: OcrSetup) -> None:
        """A retry sends a new token, so it never gets an old failed job back (failure 11)."""
        ocr.blobs.put("documents/a.pdf", sample_pdf())

        first = ocr.engine.start(request("documents/a.pdf", token="attempt-1"))
        second = ocr.engine.start(request("documents/a.pdf", token="attempt-2"))

        assert first != second
        assert poll_until_done(ocr, second).state == OcrJob.SUCCEEDED

    @pytest.mark.parametrize("file_type", ["docx", "txt"])
    def test_only_pdfs_are_read(self, ocr: OcrSetup, file_type: str) -> None:
        ocr.blobs.put(f"documents/a.{file_type}", b"not a pdf")

        with pytest.raises(UnsupportedFileType):
            ocr.engine.start(request(f"documents/a.{file_type}", file_type=file_type))

    def test_a_missing_object_fails_the_job_permanently(self, ocr: OcrSetup) -> None:
        """Refused at start, or a job that ends FAILED: never a retry that cannot succeed."""
        try:
            job_id = ocr.engine.start(request("documents/never-uploaded.pdf"))
        except PermanentError:
            return
        job = poll_until_done(ocr, job_id)
        assert job.state == OcrJob.FAILED
        assert job.error

    def test_polling_an_unknown_job_is_permanent(self, ocr: OcrSetup) -> None:
        with pytest.raises(PermanentError):
            ocr.engine.poll("0" * 64)

    def test_a_finished_job_answers_the_same_result_when_polled_again(self, ocr: OcrSetup) -> None:
        ocr.blobs.put("documents/a.pdf", sample_pdf())
        job_id = ocr.engine.start(request("documents/a.pdf"))
        first = poll_until_done(ocr, job_id)

        again = ocr.engine.poll(job_id)

        assert (again.state, again.pages, again.text) == (first.state, first.pages, first.text)

    def test_a_document_that_is_not_a_pdf_inside_fails_the_job(self, ocr: OcrSetup) -> None:
        ocr.blobs.put("documents/broken.pdf", b"this is not a PDF at all")
        try:
            job_id = ocr.engine.start(request("documents/broken.pdf"))
        except PermanentError:
            return
        job = poll_until_done(ocr, job_id)
        assert job.state == OcrJob.FAILED
        assert job.error
