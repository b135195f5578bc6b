"""Issue 17 follow-ups: local OCR's time limit fits the task limits; skipped scanned pages
are recorded and reported; recognised pages are cached so a redelivered poll resumes.

None of these needs the `[ocr]` extra: a blank PDF page has no text layer, which is all
the engine looks at before OCR, and the recogniser is stubbed where pages are "read".
"""

from __future__ import annotations

import json
from pathlib import Path

import fakeredis
import pytest

from fakes.blobs import InMemoryBlobStore
from fakes.ocr import FakeOcrEngine
from pipeline.adapters import local_ocr
from pipeline.adapters.local_ocr import skipped_pages_note
from pipeline.domain.models import OcrJob
from pipeline.errors import ConfigurationError
from pipeline.ports import OcrRequest
from pipeline.settings import load_settings

SHORT_LIMITS = {"task_soft_time_limit_s": 300, "task_time_limit_s": 400}


# --- 1. ocr_local_job_timeout_s fits below task_soft_time_limit_s ------------------------------


@pytest.mark.parametrize("job_timeout_s", [300, 290])
def test_a_local_ocr_job_limit_that_does_not_fit_the_soft_limit_is_refused_naming_both(
    job_timeout_s: float, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.chdir(str(tmp_path))  # no project .env read
    with pytest.raises(ConfigurationError) as refused:
        load_settings(**SHORT_LIMITS, ocr_local_job_timeout_s=job_timeout_s)
    message = str(refused.value)
    assert f"DOCPIPE_OCR_LOCAL_JOB_TIMEOUT_S ({job_timeout_s})" in message
    assert "must be below DOCPIPE_TASK_SOFT_TIME_LIMIT_S (300)" in message
    assert "DOCPIPE_OCR_LOCAL=false" in message


def test_a_local_ocr_job_limit_with_room_for_one_page_passes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.chdir(str(tmp_path))
    assert load_settings(**SHORT_LIMITS, ocr_local_job_timeout_s=280).ocr_local_job_timeout_s == 280


def test_with_local_ocr_off_its_job_limit_is_not_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.chdir(str(tmp_path))
    settings = load_settings(**SHORT_LIMITS, ocr_local=False, ocr_local_job_timeout_s=600)
    assert settings.ocr_local is False


# --- 2. a mixed PDF read without local OCR says which scanned pages it skipped ----------------

TEXT_PAGE = (
    "Dennis Ray Whitcomb of Meridian Capital Holdings met Jane Holloway in Los Angeles "
    "on March 3, 2023, to settle the Harbor Point Advisors dispute."
)


def mixed_pdf(blank_pages: tuple[int, ...] = (2,), pages: int = 3) -> bytes:
    """Typed pages with a text layer; the pages in `blank_pages` (1-based) have none."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for number in range(1, pages + 1):
        pdf.add_page()
        if number not in blank_pages:
            pdf.multi_cell(0, 6, TEXT_PAGE)
    return bytes(pdf.output())


def poll_without_local_ocr(data: bytes) -> OcrJob:
    blobs = InMemoryBlobStore()
    blobs.put("docs/mixed.pdf", data)
    engine = FakeOcrEngine(blobs, fakeredis.FakeRedis(), scans=None)
    job_id = engine.start(
        OcrRequest(
            document_uuid="doc-1",
            storage_key="docs/mixed.pdf",
            file_type="pdf",
            client_request_token="token-1",
        )
    )
    return engine.poll(job_id)


def test_a_mixed_pdf_without_local_ocr_records_the_pages_it_did_not_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local_ocr, "local_ocr_installed", lambda: False)

    job = poll_without_local_ocr(mixed_pdf(blank_pages=(2, 4), pages=4))

    assert job.state == OcrJob.SUCCEEDED, job.error
    assert "Whitcomb" in job.text
    assert job.metadata["pages_without_text"] == [2, 4]
    assert job.metadata["skipped_scanned_pages"] == 2
    assert skipped_pages_note(job.metadata) == (
        "2 scanned page(s) not read (pages 2, 4): install 'docpipe[ocr]'"
    )


def test_with_the_extra_installed_but_turned_off_the_note_names_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local_ocr, "local_ocr_installed", lambda: True)

    job = poll_without_local_ocr(mixed_pdf())

    assert skipped_pages_note(job.metadata) == (
        "1 scanned page(s) not read (page 2): set DOCPIPE_OCR_LOCAL=true"
    )


def test_a_pdf_whose_pages_all_have_text_has_no_note() -> None:
    job = poll_without_local_ocr(mixed_pdf(blank_pages=()))

    assert job.state == OcrJob.SUCCEEDED
    assert "pages_without_text" not in job.metadata
    assert skipped_pages_note(job.metadata) is None


def test_docpipe_run_and_status_show_the_skipped_scanned_pages(tmp_path: Path) -> None:
    """What a user sees: the run's JSON row and table, and `docpipe status`, note the pages."""
    from tests.unit.test_cli import docpipe

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "mixed.pdf").write_bytes(mixed_pdf(blank_pages=(2,), pages=3))
    (inbox / "typed.pdf").write_bytes(mixed_pdf(blank_pages=()))
    off = {"DOCPIPE_OCR_LOCAL": "false"}

    as_json = docpipe(tmp_path, "run", "inbox", "--json", env=off)
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    rows = {Path(row["file"]).name: row for row in report["documents"]}
    assert rows["mixed.pdf"]["status"] == "completed"
    assert rows["mixed.pdf"]["skipped_scanned_pages"] == 1
    assert rows["mixed.pdf"]["note"].startswith("1 scanned page(s) not read (page 2): ")
    assert rows["typed.pdf"]["note"] is None
    assert report["totals"]["skipped_scanned_pages"] == 1

    status = docpipe(tmp_path, "status", rows["mixed.pdf"]["document_uuid"], env=off)
    assert status.returncode == 0, status.stderr
    assert "note: 1 scanned page(s) not read (page 2)" in status.stdout

    table = docpipe(tmp_path, "run", "inbox", "--reprocess", env=off)
    assert table.returncode == 0, table.stderr
    assert "mixed.pdf: 1 scanned page(s) not read (page 2)" in table.stdout
    assert "typed.pdf:" not in table.stdout
