"""Issue 17 follow-ups: local OCR's time limit fits the task limits; skipped scanned pages
are recorded and reported; recognised pages are cached so a redelivered poll resumes.

None of these needs the `[ocr]` extra: a blank PDF page has no text layer, which is all
the engine looks at before OCR, and the recogniser is stubbed where pages are "read".
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from pipeline.adapters import local_ocr
from pipeline.adapters.embedded_ocr import EmbeddedOcrEngine
from pipeline.adapters.local_ocr import (
    LocalScanReader,
    OcrLine,
    RecognisedPageCache,
)
from pipeline.adapters.memory_blob import InMemoryBlobStore
from pipeline.app.report import skipped_pages_note
from pipeline.domain.models import OcrJob
from pipeline.errors import ConfigurationError
from pipeline.ports import OcrRequest
from pipeline.settings import load_settings
from tests.conftest import start_fake_ocr_job

SHORT_LIMITS = {"task_soft_time_limit_s": 300, "task_time_limit_s": 400}


# --- 1. ocr_local_job_timeout_s fits below task_soft_time_limit_s ------------------------------


@pytest.mark.parametrize("job_timeout_s", [300, 250])
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
    assert load_settings(**SHORT_LIMITS, ocr_local_job_timeout_s=230).ocr_local_job_timeout_s == 230


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
    engine, job_id = start_fake_ocr_job(data, scans=None)
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
    from tests.conftest import docpipe

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


# --- 3. recognised pages are cached: a poll redelivered after a worker died resumes ---------

needs_pdfium = pytest.mark.skipif(
    importlib.util.find_spec("pypdfium2") is None, reason="the [ocr] extra is not installed"
)


class WorkerKilled(BaseException):
    """Stands for SIGKILL mid-document: nothing after it runs, nothing catches it."""


class DictCache:
    """The cache port in a dict (what RedisCache keeps in Redis)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        return [self.values.get(key) for key in keys]

    def set(self, key: str, value: str, ttl_seconds: int) -> None:
        self.values[key] = value


class KilledOnPageReader(LocalScanReader):
    """Recognises stub lines, recording each page read; the worker dies on `kill_on`."""

    def __init__(self, kill_on: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kill_on = kill_on
        self.pages_read: list[int] = []

    def recognise_page(self, page: Any, number: int) -> list[OcrLine]:
        if number == self.kill_on:
            raise WorkerKilled
        self.pages_read.append(number)
        return [
            OcrLine(number, f"Whitcomb page {number}", 95.0, 0.1, 0.1, 0.5, 0.05, ((0.1, 0.1),)),
            OcrLine(number, "smudge", 20.0, 0.1, 0.3, 0.2, 0.05),
        ]


def scanned_engine(scans: LocalScanReader, cache: DictCache) -> tuple[EmbeddedOcrEngine, str]:
    blobs = InMemoryBlobStore()
    blobs.put("docs/scan.pdf", mixed_pdf(blank_pages=(1, 2, 3, 4), pages=4))
    engine = EmbeddedOcrEngine(blobs, fakeredis.FakeRedis(), scans=scans, page_cache=cache)
    job_id = engine.start(
        OcrRequest(
            document_uuid="doc-1",
            storage_key="docs/scan.pdf",
            file_type="pdf",
            client_request_token="token-1",
        )
    )
    return engine, job_id


@needs_pdfium
def test_a_poll_redelivered_after_its_worker_died_resumes_at_the_first_unread_page() -> None:
    cache = DictCache()
    dying = KilledOnPageReader(kill_on=3, min_confidence=80.0)
    engine, job_id = scanned_engine(dying, cache)
    with pytest.raises(WorkerKilled):
        engine.poll(job_id)
    assert dying.pages_read == [1, 2]

    # The redelivery: another worker process (a new reader) polls the same job.
    redelivered = KilledOnPageReader(min_confidence=80.0)
    engine._scans = redelivered  # same Redis, same cache; only the process differs
    job = engine.poll(job_id)

    assert redelivered.pages_read == [3, 4]
    assert job.state == OcrJob.SUCCEEDED, job.error
    assert [f"Whitcomb page {n}" in job.text for n in (1, 2, 3, 4)] == [True] * 4
    assert "smudge" not in job.text  # the floor applies to cached lines too
    assert job.metadata["ocr_pages"] == 4
    assert job.metadata["ocr_pages_from_cache"] == 2


@needs_pdfium
def test_cached_lines_are_the_recognised_lines_with_their_geometry() -> None:
    cache = DictCache()
    # One file: fpdf stamps each output with its creation time, and the cache is keyed by
    # the file's digest (two builds a second apart missed it).
    data = mixed_pdf(blank_pages=(1,), pages=1)
    first = KilledOnPageReader()
    first.read(data, [""], page_cache_for(cache))
    again = KilledOnPageReader()

    result = again.read(data, [""], page_cache_for(cache))

    assert again.pages_read == []
    assert result.lines == [OcrLine(1, "Whitcomb page 1", 95.0, 0.1, 0.1, 0.5, 0.05, ((0.1, 0.1),))]
    assert result.low_confidence_lines_dropped == 1


@needs_pdfium
def test_other_engine_settings_or_another_document_do_not_reuse_cached_pages() -> None:
    cache = DictCache()
    data = mixed_pdf(blank_pages=(1,), pages=1)
    KilledOnPageReader(dpi=200).read(data, [""], page_cache_for(cache))

    other_dpi = KilledOnPageReader(dpi=300)
    other_dpi.read(data, [""], page_cache_for(cache))
    other_document = KilledOnPageReader(dpi=200)
    other_document.read(data, [""], page_cache_for(cache, document_uuid="doc-2"))

    assert other_dpi.pages_read == [1]
    assert other_document.pages_read == [1]


def page_cache_for(cache: DictCache, document_uuid: str = "doc-1") -> RecognisedPageCache:
    return RecognisedPageCache(cache, document_uuid, ttl_seconds=60)
