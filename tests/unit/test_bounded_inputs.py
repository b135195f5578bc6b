"""Issue 11.3: what one file may expand to is bounded, and each limit fails that document alone.

Inputs are small and synthetic (a DOCX zip bomb is a few KB); limits are set
low where a real-size input would be slow. Every failure names its limit and
the DOCPIPE_ variable to raise.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import docx
import pytest
from pypdf import PdfWriter

from pipeline.adapters.parsers import (
    ExtractionLimits,
    decode_text_bounded,
    extract_docx,
    extract_eml,
    extract_pdf_pages,
    extract_text,
)
from pipeline.app.intake import submit_and_dispatch
from pipeline.app.report import build_report
from pipeline.bootstrap import Services
from pipeline.domain.models import FileType
from pipeline.errors import CorruptDocument, DocumentTooLarge
from pipeline.settings import Settings
from tests.conftest import REPO, SAMPLES

MakeServices = Callable[..., Services]

PROSE = (
    "On March 3, 2023 Jane R. Holloway of Chicago, Illinois met Marcus T. Whitfield of "
    "Meridian Capital Partners LLC, which shall pay $45,000.00 within thirty days."
)


def docx_with(paragraphs: list[str]) -> bytes:
    document = docx.Document()
    for text in paragraphs:
        document.add_paragraph(text)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def docx_bomb(xml_bytes: int) -> bytes:
    """A real DOCX whose word/document.xml is padded with one paragraph repeated: tiny zipped."""
    base = zipfile.ZipFile(io.BytesIO(docx_with(["cover"])))
    paragraph = f"<w:p><w:r><w:t>{PROSE}</w:t></w:r></w:p>"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as bomb:
        for info in base.infolist():
            data = base.read(info)
            if info.filename == "word/document.xml":
                head, _, tail = data.decode().partition("<w:body>")
                body = paragraph * (xml_bytes // len(paragraph) + 1)
                data = f"{head}<w:body>{body}{tail}".encode()
            bomb.writestr(info.filename, data)
    return out.getvalue()


def understate_size(archive: bytes, member: str, declared: int) -> bytes:
    """The ZIP with `member`'s uncompressed size rewritten in both headers (a lying header)."""
    data = bytearray(archive)
    name = member.encode()
    local = data.index(b"PK\x03\x04")
    while data[local + 30 : local + 30 + len(name)] != name:
        local = data.index(b"PK\x03\x04", local + 4)
    struct.pack_into("<I", data, local + 22, declared)
    central = data.index(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(name)] != name:
        central = data.index(b"PK\x01\x02", central + 4)
    struct.pack_into("<I", data, central + 24, declared)
    return bytes(data)


def pdf_with_pages(pages: int) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=612, height=792)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


# --- ZIP members, before parsing -------------------------------------------------------


def test_a_docx_zip_bomb_fails_on_its_compression_ratio_before_parsing() -> None:
    bomb = docx_bomb(3 * 1024 * 1024)
    assert len(bomb) < 64 * 1024  # a few KB that expand to 3 MB

    with pytest.raises(DocumentTooLarge) as failure:
        extract_docx(bomb)

    message = str(failure.value)
    assert "ZIP member word/document.xml expands" in message
    assert "DOCPIPE_MAX_COMPRESSION_RATIO" in message


def test_a_small_repetitive_member_is_not_held_to_the_ratio() -> None:
    """Below 1 MiB a high ratio is harmless (styles.xml of real files compresses ~30x)."""
    text = extract_docx(docx_bomb(200 * 1024))
    assert text.startswith(PROSE) and text.endswith("cover")


def test_a_member_over_the_size_limit_fails_on_its_declared_size() -> None:
    limits = ExtractionLimits(max_zip_member_bytes=100_000)

    with pytest.raises(DocumentTooLarge) as failure:
        extract_docx(docx_with([PROSE] * 1000), limits)

    message = str(failure.value)
    assert "word/document.xml expands to" in message
    assert "the limit is 100,000 bytes per member" in message
    assert "DOCPIPE_MAX_ZIP_MEMBER_BYTES" in message


def test_members_together_over_the_total_limit_fail() -> None:
    data = docx_with([PROSE] * 50)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        total = sum(info.file_size for info in archive.infolist())
        largest = max(info.file_size for info in archive.infolist())
    limits = ExtractionLimits(max_zip_member_bytes=largest, max_zip_total_bytes=total - 1)

    with pytest.raises(DocumentTooLarge) as failure:
        extract_docx(data, limits)

    assert f"expand to {total:,} bytes together" in str(failure.value)
    assert "DOCPIPE_MAX_ZIP_TOTAL_BYTES" in str(failure.value)
    assert extract_docx(data, ExtractionLimits(max_zip_total_bytes=total)).startswith(PROSE)


def test_a_member_whose_header_understates_its_size_is_corrupt_and_never_read_whole() -> None:
    """The declared 1,000 bytes pass the checks; reading stops there and the CRC fails."""
    lying = understate_size(docx_bomb(3 * 1024 * 1024), "word/document.xml", 1000)

    with pytest.raises(CorruptDocument) as failure:
        extract_docx(lying)

    assert "word/document.xml is damaged or its header understates its size" in str(failure.value)
    assert "CRC" in str(failure.value)


# --- extracted characters, while extracting --------------------------------------------


def test_docx_text_over_the_character_limit_fails_while_it_is_read() -> None:
    data = docx_with([PROSE] * 20)
    limits = ExtractionLimits(max_extracted_chars=len(PROSE) * 5)

    with pytest.raises(DocumentTooLarge) as failure:
        extract_docx(data, limits)

    message = str(failure.value)
    assert f"the Word document holds more than {len(PROSE) * 5:,} characters" in message
    assert "DOCPIPE_MAX_EXTRACTED_CHARS" in message


def test_a_text_file_far_over_the_limit_is_refused_without_decoding() -> None:
    with pytest.raises(DocumentTooLarge) as failure:
        decode_text_bounded(b"a" * 5000, ExtractionLimits(max_extracted_chars=1000))
    assert "holds at least 1,250 characters; the limit is 1,000 characters" in str(failure.value)


def test_a_text_file_just_over_the_limit_is_refused_after_decoding() -> None:
    with pytest.raises(DocumentTooLarge) as failure:
        decode_text_bounded(b"a" * 1001, ExtractionLimits(max_extracted_chars=1000))
    assert "holds 1,001 characters" in str(failure.value)


def test_a_text_file_at_the_limit_in_a_wide_encoding_is_accepted() -> None:
    """1,000 characters of UTF-32 are 4,004 bytes: the byte pre-check must not refuse them."""
    data = ("é" * 1000).encode("utf-32")
    assert decode_text_bounded(data, ExtractionLimits(max_extracted_chars=1000)) == "é" * 1000


def test_email_body_over_the_character_limit_fails() -> None:
    message = EmailMessage()
    message["From"] = "a@example.com"
    message["Subject"] = "long"
    message.set_content(PROSE * 20)

    with pytest.raises(DocumentTooLarge) as failure:
        extract_eml(message.as_bytes(), ExtractionLimits(max_extracted_chars=1000))

    assert "the e-mail message holds more than 1,000 characters" in str(failure.value)


def test_pdf_text_over_the_character_limit_fails() -> None:
    data = (SAMPLES / "master_services_agreement.pdf").read_bytes()

    with pytest.raises(DocumentTooLarge) as failure:
        extract_pdf_pages(data, ExtractionLimits(max_extracted_chars=2000))

    assert "the PDF's text layer holds more than 2,000 characters" in str(failure.value)


# --- pages ---------------------------------------------------------------------------


def test_pdf_pages_are_counted_before_any_text_is_read() -> None:
    """Blank pages would be an EmptyDocument; the page limit is checked first."""
    with pytest.raises(DocumentTooLarge) as failure:
        extract_text(FileType.PDF, pdf_with_pages(3), ExtractionLimits(max_pdf_pages=2))
    assert "PDF has 3 pages; the limit is 2 pages (raise DOCPIPE_MAX_PDF_PAGES" in str(
        failure.value
    )


def test_limits_come_from_the_settings_with_the_same_defaults() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert ExtractionLimits.from_settings(settings) == ExtractionLimits()
    raised = Settings(_env_file=None, max_extracted_chars=5, max_pdf_pages=7)  # type: ignore[call-arg]
    assert ExtractionLimits.from_settings(raised).max_extracted_chars == 5
    assert ExtractionLimits.from_settings(raised).max_pdf_pages == 7


# --- the pipeline: each limit fails that document alone -----------------------------------


def run(services: Services, files: dict[str, bytes], folder: Path) -> dict[str, dict[str, object]]:
    folder.mkdir()
    project = services.store.ensure_project("bounds")
    submissions = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        submissions.append(submit_and_dispatch(services, folder / name, project))
    report = build_report(services, submissions, elapsed_s=1.0)
    return {Path(str(row["file"])).name: row for row in report["documents"]}


def test_extraction_limits_fail_the_document_at_ocr_and_the_others_complete(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services = make_services(max_extracted_chars=3000, max_pdf_pages=3)
    rows = run(
        services,
        {
            "bomb.docx": docx_bomb(3 * 1024 * 1024),
            "long.txt": ((PROSE + "\n\n") * 40).encode(),
            "long.pdf": pdf_with_pages(4),
            "small.txt": PROSE.encode(),
        },
        tmp_path / "inbox",
    )

    assert rows["small.txt"]["status"] == "completed"
    expected = {
        "bomb.docx": "DOCPIPE_MAX_COMPRESSION_RATIO",
        "long.txt": "DOCPIPE_MAX_EXTRACTED_CHARS",
        "long.pdf": "DOCPIPE_MAX_PDF_PAGES",
    }
    for name, setting in expected.items():
        assert rows[name]["status"] == "ocr_failed", name
        assert setting in str(rows[name]["error"]), (name, rows[name]["error"])


def test_a_pdf_over_the_page_limit_is_refused_at_intake_and_never_uploaded(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services = make_services(max_pdf_pages=3)

    rows = run(services, {"long.pdf": pdf_with_pages(4)}, tmp_path / "inbox")

    row = rows["long.pdf"]
    assert row["status"] == "ocr_failed"
    assert "PDF has 4 pages; the limit is 3 pages (raise DOCPIPE_MAX_PDF_PAGES" in str(row["error"])
    document = services.store.get_document(str(row["document_uuid"]))
    with pytest.raises(KeyError):
        services.blobs.get(document.storage_key)


def test_text_extracted_by_the_ocr_engine_is_bounded_too(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services = make_services(max_extracted_chars=2000)
    pdf = (SAMPLES / "master_services_agreement.pdf").read_bytes()

    rows = run(services, {"contract.pdf": pdf}, tmp_path / "inbox")

    assert rows["contract.pdf"]["status"] == "ocr_failed"
    assert "DOCPIPE_MAX_EXTRACTED_CHARS" in str(rows["contract.pdf"]["error"])


def test_too_many_chunks_fail_the_document_before_any_chunk_is_written(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services = make_services(max_chunks_per_document=2, chunk_min_chars=100, chunk_max_chars=400)
    long_text = "\n\n".join(f"Section {i}. {PROSE}" for i in range(1, 12))

    rows = run(
        services, {"long.txt": long_text.encode(), "small.txt": PROSE.encode()}, tmp_path / "in"
    )

    long_row, small_row = rows["long.txt"], rows["small.txt"]
    assert small_row["status"] == "completed"
    assert long_row["status"] == "text_failed", long_row
    assert "chunks; the limit is 2 chunks per document" in str(long_row["error"])
    assert "DOCPIPE_MAX_CHUNKS_PER_DOCUMENT" in str(long_row["error"])
    assert services.store.get_chunks(str(long_row["document_uuid"])) == []


def test_too_many_mentions_fail_the_document_at_entity_extraction(
    make_services: MakeServices, tmp_path: Path
) -> None:
    services = make_services(max_mentions_per_document=10)
    long_text = "\n\n".join([PROSE] * 6)

    rows = run(
        services, {"long.txt": long_text.encode(), "small.txt": PROSE.encode()}, tmp_path / "in"
    )

    long_row = rows["long.txt"]
    assert rows["small.txt"]["status"] == "completed"
    assert 0 < int(str(rows["small.txt"]["mentions"])) <= 10
    assert long_row["status"] == "entity_failed", long_row
    assert "more than 10 entity mentions" in str(long_row["error"])
    assert "DOCPIPE_MAX_MENTIONS_PER_DOCUMENT" in str(long_row["error"])
    assert services.store.get_mentions(str(long_row["document_uuid"])) == []


# --- what the user sees -----------------------------------------------------------------


def test_docpipe_run_reports_the_limit_and_the_setting_to_raise(tmp_path: Path) -> None:
    (tmp_path / "bomb.docx").write_bytes(docx_bomb(3 * 1024 * 1024))
    (tmp_path / "small.txt").write_text(PROSE)
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "HOME": str(tmp_path),
        "DOCPIPE_UNDER_TEST": "1",
    }

    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "bomb.docx", "small.txt", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 1, result.stderr
    rows = {Path(r["file"]).name: r for r in json.loads(result.stdout)["documents"]}
    assert rows["small.txt"]["status"] == "completed"
    assert rows["bomb.docx"]["status"] == "ocr_failed"
    assert "raise DOCPIPE_MAX_COMPRESSION_RATIO to accept it" in rows["bomb.docx"]["error"]
