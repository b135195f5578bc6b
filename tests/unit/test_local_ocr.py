"""Local OCR of image-only PDF pages (issue 17): the `[ocr]` extra behind the fake Textract.

One small scanned page (turned 2 degrees) is recognised once per module: OCR
costs seconds per page, so the other tests stub the recogniser or fail before it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from fpdf import FPDF

from pipeline.adapters import local_ocr
from pipeline.adapters.local_ocr import (
    INSTALL_HINT,
    LocalScanReader,
    OcrLine,
    local_ocr_installed,
    scan_pdf,
    space_words,
)
from pipeline.domain.models import OcrJob
from pipeline.errors import DocumentTooLarge, PermanentError
from pipeline.ports import OcrRequest
from tests.conftest import start_fake_ocr_job

pytestmark = pytest.mark.skipif(
    not local_ocr_installed(), reason=f"the [ocr] extra is not installed ({INSTALL_HINT})"
)

SCANNED_LINES = (
    "SETTLEMENT NOTICE",
    "Dennis Ray Whitcomb of Meridian Capital Holdings",
    "met Jane Holloway in Los Angeles on March 3, 2023.",
)
TEXT_LAYER_LINE = "Harbor Point Advisors LLC"


def text_pdf(pages: list[tuple[str, ...]]) -> bytes:
    """A PDF with a text layer, one page per tuple of lines (A6, large type: fast to OCR)."""
    pdf = FPDF(format=(105, 148))  # A6
    pdf.set_font("Helvetica", size=12)
    for lines in pages:
        pdf.add_page()
        for line in lines:
            pdf.multi_cell(0, 8, line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z]{4,}", text))


@pytest.fixture(scope="module")
def mixed_pdf() -> bytes:
    """Page 1 has a text layer; page 2 is a scan turned 2 degrees (pages merged by pypdf)."""
    from pypdf import PdfReader, PdfWriter

    scanned = scan_pdf(text_pdf([SCANNED_LINES]), dpi=150, rotate_degrees=[2.0])
    writer = PdfWriter()
    writer.add_page(PdfReader(_bytes_io(text_pdf([(TEXT_LAYER_LINE,)]))).pages[0])
    writer.add_page(PdfReader(_bytes_io(scanned)).pages[0])
    out = _bytes_io(b"")
    writer.write(out)
    return out.getvalue()


@pytest.fixture(scope="module")
def mixed_job(mixed_pdf: bytes) -> OcrJob:
    engine, job_id = start_fake_ocr_job(mixed_pdf, LocalScanReader(min_confidence=80.0))
    return engine.poll(job_id)


def _bytes_io(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


# --- word boundaries -------------------------------------------------------------------


def test_space_words_puts_a_space_where_characters_were_read_far_apart() -> None:
    chars = list("DennisRay")
    columns = [0, 3, 6, 9, 12, 14, 22, 25, 28]  # the 7-column gap is the word boundary

    assert space_words(chars, columns, min_gap=6) == "Dennis Ray"


def test_space_words_keeps_read_spaces_and_never_doubles_them() -> None:
    chars = list("a b")
    assert space_words(chars, [0, 5, 20], min_gap=6) == "a b"
    assert space_words(list("ab"), [0, 3], min_gap=6) == "ab"


# --- the engine: scans, mixed PDFs, rotation ------------------------------------------------


def test_a_mixed_pdf_keeps_its_text_layer_and_ocrs_the_rotated_scan(mixed_job: OcrJob) -> None:
    assert mixed_job.state == OcrJob.SUCCEEDED, mixed_job.error
    assert mixed_job.pages == 2
    assert mixed_job.metadata["ocr_pages"] == 1
    assert TEXT_LAYER_LINE in mixed_job.text  # verbatim: the text layer, not OCR
    expected = words(" ".join(SCANNED_LINES))
    found = words(mixed_job.text)
    assert len(expected & found) / len(expected) >= 0.8, (expected - found, mixed_job.text)
    # word boundaries survive recognition: the names entity extraction needs
    assert "Dennis Ray Whitcomb" in mixed_job.text or "Ray Whitcomb" in mixed_job.text
    assert "Jane Holloway" in mixed_job.text


def test_recognised_lines_are_textract_line_blocks() -> None:
    reader = LocalScanReader()
    import pypdfium2

    document = pypdfium2.PdfDocument(scan_pdf(text_pdf([SCANNED_LINES[:1]]), dpi=150))
    lines = reader.recognise_page(document[0], 1)
    document.close()

    assert lines, "nothing recognised"
    block = lines[0].as_block()
    assert block["BlockType"] == "LINE"
    assert block["Page"] == 1
    assert "SETTLEMENT" in block["Text"]
    assert 80 <= block["Confidence"] <= 100
    box = block["Geometry"]["BoundingBox"]
    assert 0 <= box["Left"] < box["Left"] + box["Width"] <= 1
    assert 0 <= box["Top"] < box["Top"] + box["Height"] <= 1
    assert len(block["Geometry"]["Polygon"]) == 4


# --- limits and confidence (the recogniser stubbed: no CPU spent) -----------------------------


class StubbedReader(LocalScanReader):
    """Answers fixed lines per page instead of rendering and recognising."""

    def __init__(self, confidences: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.confidences = confidences
        self.pages_read: list[int] = []

    def recognise_page(self, page: Any, number: int) -> list[OcrLine]:
        self.pages_read.append(number)
        return [
            OcrLine(number, f"line {i} of page {number}", c, 0.1, 0.1 * i, 0.5, 0.05)
            for i, c in enumerate(self.confidences)
        ]


def two_scanned_pages() -> bytes:
    return scan_pdf(text_pdf([("one",), ("two",)]), dpi=72)


def test_lines_below_the_minimum_confidence_are_dropped_and_counted() -> None:
    reader = StubbedReader([95.0, 40.0], min_confidence=80.0)

    result = reader.read(two_scanned_pages(), ["", ""])

    assert result.pages == ["line 0 of page 1", "line 0 of page 2"]
    assert result.low_confidence_lines_dropped == 2
    assert result.ocr_pages == [1, 2]


def test_only_pages_without_a_text_layer_are_recognised() -> None:
    reader = StubbedReader([99.0])

    result = reader.read(two_scanned_pages(), ["typed page", ""])

    assert reader.pages_read == [2]
    assert result.pages == ["typed page", "line 0 of page 2"]


def test_a_job_whose_lines_are_all_below_the_floor_fails_with_the_reason() -> None:
    engine, job_id = start_fake_ocr_job(
        two_scanned_pages(), StubbedReader([10.0], min_confidence=80.0)
    )

    job = engine.poll(job_id)

    assert job.state == OcrJob.FAILED
    assert job.error is not None
    assert "local OCR found no text at or above confidence 80" in job.error


def test_more_scanned_pages_than_the_page_limit_fail_naming_the_setting() -> None:
    reader = StubbedReader([99.0], max_pages=1)

    with pytest.raises(DocumentTooLarge, match="DOCPIPE_OCR_LOCAL_MAX_PAGES"):
        reader.read(two_scanned_pages(), ["", ""])
    assert reader.pages_read == []


def test_the_job_time_limit_stops_between_pages() -> None:
    ticks = iter([0.0, 0.0, 700.0, 700.0])
    reader = StubbedReader([99.0], job_timeout_s=600.0, monotonic=lambda: next(ticks))

    with pytest.raises(PermanentError, match=r"ocr_local_job_timeout_s=600 s \(1 of 2"):
        reader.read(two_scanned_pages(), ["", ""])
    assert reader.pages_read == [1]


# --- without the extra ------------------------------------------------------------------------


def test_without_the_extra_a_scan_fails_saying_how_to_enable_local_ocr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local_ocr, "local_ocr_installed", lambda: False)
    engine, job_id = start_fake_ocr_job(two_scanned_pages(), scans=None)

    job = engine.poll(job_id)

    assert job.state == OcrJob.FAILED
    assert job.error is not None
    assert "PDF has no text layer (2 page(s), probably scanned images)" in job.error
    assert "pip install 'docpipe[ocr]'" in job.error


def test_turned_off_by_setting_a_scan_fails_naming_the_setting() -> None:
    engine, job_id = start_fake_ocr_job(two_scanned_pages(), scans=None)

    job = engine.poll(job_id)

    assert job.state == OcrJob.FAILED
    assert "DOCPIPE_OCR_LOCAL=true" in (job.error or "")


# --- the production adapter's path: the Textract simulator on moto reads scans too ------------


def test_textract_adapter_reads_a_scan_through_the_simulator(aws_env: None) -> None:
    from moto import mock_aws

    from fakes.textract_sim import TextractSimulator
    from pipeline.adapters.aws import build_client
    from pipeline.adapters.textract import TextractOcrEngine

    scanned = scan_pdf(text_pdf([SCANNED_LINES[1:2]]), dpi=150)
    with mock_aws(), TextractSimulator(max_results=5) as simulator:
        s3 = build_client("s3", region="us-east-1", endpoint_url=None, max_attempts=1)
        s3.create_bucket(Bucket="docpipe-test")
        s3.put_object(Bucket="docpipe-test", Key="docs/scan.pdf", Body=scanned)
        textract = build_client("textract", region="us-east-1", endpoint_url=None, max_attempts=1)
        engine = TextractOcrEngine(textract, "docpipe-test", prefix="docs", min_confidence=80.0)
        job_id = engine.start(
            OcrRequest(
                document_uuid="doc-1",
                storage_key="scan.pdf",
                file_type="pdf",
                client_request_token="attempt-1",
            )
        )
        job = engine.poll(job_id)
        assert simulator.scan_reader is not None

    assert job.state == OcrJob.SUCCEEDED, job.error
    assert "Whitcomb" in job.text
    assert "Meridian" in job.text
    assert job.metadata["lines"] >= 1
    assert job.metadata["low_confidence_lines_dropped"] >= 1  # the simulator's noise line


def test_docpipe_run_without_the_extra_says_how_to_enable_it(tmp_path: Any) -> None:
    """A user without the extra: the import system finds neither rapidocr nor pypdfium2."""
    from tests.conftest import REPO, docpipe

    hide = tmp_path / "hide_ocr_extra"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "# None in sys.modules: find_spec answers None and import raises ImportError.\n"
        "sys.modules['rapidocr_onnxruntime'] = None\n"
        "sys.modules['pypdfium2'] = None\n"
    )
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "scanned.pdf").write_bytes(two_scanned_pages())

    result = docpipe(
        tmp_path, "run", "inbox", "--json", env={"PYTHONPATH": f"{hide}:{REPO}"}, real_process=True
    )

    assert result.returncode == 1, result.stderr
    (row,) = json.loads(result.stdout)["documents"]
    assert row["status"] == "ocr_failed"
    assert "PDF has no text layer (2 page(s), probably scanned images)" in row["error"]
    assert "enable local OCR with pip install 'docpipe[ocr]'" in row["error"]
