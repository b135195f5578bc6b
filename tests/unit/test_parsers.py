"""Parsers on the sample documents and on the bad inputs users actually upload."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import docx
import pytest
from pypdf import PdfWriter

from pipeline.adapters.parsers import (
    DEFAULT_LIMITS,
    ExtractedText,
    decode_text,
    detect_file_type,
    extract_docx,
    extract_eml,
    extract_pdf_pages,
    extract_text,
    html_to_text,
)
from pipeline.domain.models import FileType
from pipeline.domain.pages import PAGE_MARKER_RE
from pipeline.errors import (
    CorruptDocument,
    EmptyDocument,
    PermanentError,
    UnsupportedFileType,
)

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def blank_pdf(pages: int = 1) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=612, height=792)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def encrypted_pdf(user_password: str) -> bytes:
    reader_data = sample("master_services_agreement.pdf")
    writer = PdfWriter(clone_from=io.BytesIO(reader_data))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def docx_bytes(paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    document = docx.Document()
    for text in paragraphs:
        document.add_paragraph(text)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for row, values in zip(grid.rows, table, strict=True):
            for cell, value in zip(row.cells, values, strict=True):
                cell.text = value
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


# --- detection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("master_services_agreement.pdf", FileType.PDF),
        ("complaint_holloway_v_meridian.pdf", FileType.PDF),
        ("settlement_term_sheet.docx", FileType.DOCX),
        ("affidavit_of_jane_holloway.txt", FileType.TXT),
        ("counsel_correspondence.eml", FileType.EML),
    ],
)
def test_samples_are_detected_by_extension_and_content(name: str, expected: FileType) -> None:
    assert detect_file_type(name, sample(name)) is expected


def test_extension_is_case_insensitive_and_ignores_directories() -> None:
    data = sample("master_services_agreement.pdf")
    assert detect_file_type("C:\\Scans\\Exhibit A.PDF", data) is FileType.PDF
    assert detect_file_type("uploads/2024/notes.Txt", b"plain words") is FileType.TXT


def test_pdf_header_may_follow_a_bom_and_whitespace() -> None:
    data = b"\xef\xbb\xbf \r\n" + sample("master_services_agreement.pdf")
    assert detect_file_type("a.pdf", data) is FileType.PDF


def test_empty_file_is_an_empty_document() -> None:
    with pytest.raises(EmptyDocument, match=r"empty file \(0 bytes\)"):
        detect_file_type("affidavit.txt", b"")


@pytest.mark.parametrize("name", ["scan.xyz", "report.doc", "photo.png", "README"])
def test_unsupported_extension_names_the_supported_ones(name: str) -> None:
    with pytest.raises(UnsupportedFileType, match=r"supported: \.pdf, \.docx, \.txt, \.eml"):
        detect_file_type(name, b"some bytes")


def test_unsupported_extension_message_shows_the_extension() -> None:
    with pytest.raises(UnsupportedFileType, match=r"unsupported file type '\.xyz'"):
        detect_file_type("scan.XYZ", b"some bytes")


def test_garbage_named_pdf_is_corrupt() -> None:
    with pytest.raises(CorruptDocument, match=r"content does not match extension \.pdf"):
        detect_file_type("contract.pdf", bytes(range(256)) * 4)


def test_docx_that_is_not_a_zip_is_corrupt() -> None:
    with pytest.raises(CorruptDocument, match=r"content does not match extension \.docx"):
        detect_file_type("term_sheet.docx", b"This is plain text with a .docx name.\n")


def test_a_docx_cut_short_is_reported_as_a_damaged_zip_not_as_another_type() -> None:
    whole = docx_bytes(["Meridian Capital Partners LLC"])
    with pytest.raises(CorruptDocument) as raised:
        detect_file_type("term_sheet.docx", whole[: len(whole) // 2])
    assert "starts as a ZIP archive but cannot be opened as one, damaged or cut short" in str(
        raised.value
    )
    assert "looks like" not in str(raised.value)


def test_zip_without_a_word_document_is_corrupt() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(CorruptDocument, match=r"word/document\.xml"):
        detect_file_type("sheet.docx", buffer.getvalue())


def test_png_named_txt_is_corrupt_and_says_what_it_looks_like() -> None:
    with pytest.raises(CorruptDocument, match=r"\.txt: it looks like a PNG image"):
        detect_file_type("notes.txt", PNG_HEADER + b"\x00" * 64)


def test_pdf_named_txt_is_corrupt() -> None:
    with pytest.raises(CorruptDocument, match="a PDF document"):
        detect_file_type("notes.txt", sample("master_services_agreement.pdf"))


def test_binary_control_bytes_named_txt_are_corrupt() -> None:
    with pytest.raises(CorruptDocument, match="binary"):
        detect_file_type("notes.txt", bytes(range(1, 32)) * 100)


def test_text_with_a_few_nul_bytes_is_still_text() -> None:
    data = b"Deposition of Jane R. Holloway\x00\nQ. State your name.\x00\nA. Jane Holloway.\n"
    assert detect_file_type("deposition.txt", data) is FileType.TXT
    extracted = extract_text(FileType.TXT, data)
    assert "\x00" not in extracted.text
    assert "Q. State your name." in extracted.text


def test_utf16_text_with_bom_is_text() -> None:
    data = "Affidavit of Renée Holloway - § 1542".encode("utf-16")
    assert detect_file_type("affidavit.txt", data) is FileType.TXT


def test_eml_without_headers_is_corrupt() -> None:
    with pytest.raises(CorruptDocument, match="RFC 822"):
        detect_file_type("mail.eml", b"just a body line\nand another\n")


def test_eml_that_is_a_pdf_is_corrupt() -> None:
    with pytest.raises(CorruptDocument, match=r"\.eml: it looks like a PDF"):
        detect_file_type("mail.eml", sample("complaint_holloway_v_meridian.pdf"))


# --- decoding -----------------------------------------------------------------------------


def test_decode_utf8() -> None:
    assert decode_text("Ms. Holloway – § 1542 – café".encode()) == "Ms. Holloway – § 1542 – café"


def test_decode_latin1_text_with_accents() -> None:
    data = "Notary: María Ortega-Díaz, Señora Müller".encode("latin-1")
    assert decode_text(data) == "Notary: María Ortega-Díaz, Señora Müller"


def test_decode_cp1252_smart_quotes() -> None:
    data = "“Holloway” – $1,250,000.00 …".encode("cp1252")
    assert decode_text(data) == "“Holloway” – $1,250,000.00 …"


def test_decode_bytes_undefined_in_cp1252_fall_back_to_latin1() -> None:
    assert decode_text(b"caf\xe9 \x81") == "café \x81"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-8-sig"])
def test_decode_with_bom(encoding: str) -> None:
    text = "Judge Okafor – § 1983"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    assert decode_text(data) == text


def test_decode_utf16_without_bom() -> None:
    assert decode_text("Case No. 2:23-cv-01234-ABC".encode("utf-16-le")) == (
        "Case No. 2:23-cv-01234-ABC"
    )


def test_decode_keeps_nul_bytes_and_never_fails() -> None:
    assert decode_text(b"a\x00b") == "a\x00b"
    assert isinstance(decode_text(bytes(range(256))), str)


# --- DOCX -------------------------------------------------------------------------------------


def test_docx_sample_has_paragraphs_then_the_payment_table() -> None:
    text = extract_docx(sample("settlement_term_sheet.docx"))
    assert text.startswith("CONFIDENTIAL SETTLEMENT TERM SHEET")
    assert "Cal. Civ. Code § 1542" in text
    assert "Installment | Due Date | Amount | Paid By / Payee" in text
    assert "2 - Second payment | 05/15/2024 | $750,000.00 | Meridian to Escrow Agent" in text
    assert text.index("Agreed:") < text.index("Installment | Due Date")


def test_docx_merged_cells_appear_once() -> None:
    text = extract_docx(sample("settlement_term_sheet.docx"))
    assert "Total | $2,500,000.00" in text
    assert "Total | Total" not in text


def test_docx_built_in_memory() -> None:
    data = docx_bytes(["First paragraph.", "Second paragraph."], [["a", "b"], ["c", "d"]])
    assert extract_docx(data) == "First paragraph.\nSecond paragraph.\n\na | b\nc | d"


def test_docx_not_a_zip_is_corrupt() -> None:
    with pytest.raises(CorruptDocument, match="cannot read the Word document"):
        extract_docx(b"not a zip at all")


def test_docx_with_broken_xml_is_corrupt() -> None:
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(docx_bytes(["x"]))) as source,
        zipfile.ZipFile(buffer, "w") as target,
    ):
        for info in source.infolist():
            payload = source.read(info.filename)
            if info.filename == "word/document.xml":
                payload = payload[: len(payload) // 2]
            target.writestr(info, payload)
    with pytest.raises(CorruptDocument, match=r"re-save it as \.docx"):
        extract_docx(buffer.getvalue())


# --- EML ---------------------------------------------------------------------------------------


def test_eml_sample_has_headers_then_the_plain_part() -> None:
    text = extract_eml(sample("counsel_correspondence.eml"))
    lines = text.splitlines()
    assert lines[0] == 'From: "Daniel K. Reyes" <dreyes@reyeswhitman.example>'
    assert lines[1].startswith("To: Priya Natarajan")
    assert lines[2].startswith("Cc: Jane Holloway")
    assert lines[3] == "Date: Wed, 10 Jan 2024 14:32:07 -0800"
    assert lines[4].startswith("Subject: Holloway v. Meridian")
    assert "Cal. Civ. Code § 1542" in text
    assert "> Dan - thank you for today." in text  # the plain part, not the HTML one
    assert "trackOpen" not in text


def test_eml_with_only_an_html_part_is_converted_to_text() -> None:
    data = (
        b"From: Priya Natarajan <pnatarajan@caldwellbrooks.example>\r\n"
        b"Subject: =?utf-8?q?Meridian_=E2=80=93_motion?=\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><head><style>p{color:red}</style><script>alert(1)</script></head>"
        b"<body><p>Dear Mr.&nbsp;Reyes,</p><p>The hearing before <b>Judge Okafor</b>\n"
        b"is on March 3, 2023.<br>Regards</p><ul><li>One</li><li>Two</li></ul></body></html>"
    )
    text = extract_eml(data)
    assert text.startswith("From: Priya Natarajan <pnatarajan@caldwellbrooks.example>\n")
    assert "Subject: Meridian – motion" in text
    assert "Dear Mr. Reyes,\n\nThe hearing before Judge Okafor is on March 3, 2023.\nRegards" in (
        text
    )
    assert "One\nTwo" in text
    assert "alert" not in text and "color" not in text


def test_eml_ignores_attachments_and_decodes_a_mislabelled_charset() -> None:
    data = (
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: docs\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        b"Se\xf1ora Ortega signed on 03/15/2023.\r\n"
        b"--b1\r\nContent-Type: text/plain; name=secret.txt\r\n"
        b'Content-Disposition: attachment; filename="secret.txt"\r\n\r\n'
        b"ATTACHMENT BODY\r\n--b1--\r\n"
    )
    text = extract_eml(data)
    assert "Señora Ortega signed on 03/15/2023." in text
    assert "ATTACHMENT BODY" not in text


def test_eml_with_unknown_charset_still_decodes() -> None:
    data = (
        b"From: a@example.com\r\nSubject: x\r\n"
        b"Content-Type: text/plain; charset=x-unknown-8bit\r\n\r\nCaf\xc3\xa9 Holloway\r\n"
    )
    assert "Café Holloway" in extract_eml(data)


def test_html_to_text_keeps_pre_formatting() -> None:
    assert html_to_text("<p>a   b</p><pre>x   y\n  z</pre>") == "a b\n\nx   y\nz"


# --- PDF ---------------------------------------------------------------------------------------


def test_pdf_samples_have_a_text_layer_per_page() -> None:
    msa = extract_pdf_pages(sample("master_services_agreement.pdf"))
    complaint = extract_pdf_pages(sample("complaint_holloway_v_meridian.pdf"))
    assert len(msa) == 3
    assert len(complaint) == 4
    assert "ARTICLE 1 - DEFINITIONS" in msa[0]
    assert "By: /s/ Thomas A. Whitfield" in msa[-1]
    assert "Case No. 2:23-cv-01234-ABC" in complaint[0]
    assert "15 U.S.C. § 78j(b)" in "".join(complaint)


def test_truncated_pdf_is_corrupt_with_a_reason() -> None:
    with pytest.raises(CorruptDocument, match="cannot read the PDF") as info:
        extract_pdf_pages(sample("complaint_holloway_v_meridian.pdf")[:300])
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    "data",
    [b"%PDF-1.7\n" + bytes(range(256)) * 8, b"%PDF-", b"%PDF-1.4\n%%EOF\n", b"\x00" * 50],
)
def test_garbage_pdf_is_corrupt_not_a_library_error(data: bytes) -> None:
    with pytest.raises(CorruptDocument):
        extract_pdf_pages(data)


def test_pdf_without_text_layer_is_empty() -> None:
    with pytest.raises(EmptyDocument, match=r"PDF has no text layer \(2 page"):
        extract_pdf_pages(blank_pdf(pages=2))


def test_password_protected_pdf_is_a_permanent_error() -> None:
    with pytest.raises(PermanentError, match="password-protected"):
        extract_pdf_pages(encrypted_pdf(user_password="secret"))


def test_pdf_encrypted_with_empty_user_password_is_read() -> None:
    pages = extract_pdf_pages(encrypted_pdf(user_password=""))
    assert "MASTER SERVICES AGREEMENT" in pages[0]


# --- extract_text ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pages", "method"),
    [
        ("master_services_agreement.pdf", 3, "pdf_text_layer"),
        ("complaint_holloway_v_meridian.pdf", 4, "pdf_text_layer"),
        ("settlement_term_sheet.docx", 1, "docx_parser"),
        ("affidavit_of_jane_holloway.txt", 1, "text_decoder"),
        ("counsel_correspondence.eml", 1, "email_parser"),
    ],
)
def test_extract_text_on_samples(name: str, pages: int, method: str) -> None:
    data = sample(name)
    extracted = extract_text(detect_file_type(name, data), data)
    assert isinstance(extracted, ExtractedText)
    assert (extracted.pages, extracted.method) == (pages, method)
    assert 2_000 <= len(extracted.text.encode()) <= 8_000
    assert "Holloway" in extracted.text


def test_extract_text_joins_pdf_pages_with_markers() -> None:
    extracted = extract_text(FileType.PDF, sample("complaint_holloway_v_meridian.pdf"))
    assert [int(n) for n in PAGE_MARKER_RE.findall(extracted.text)] == [1, 2, 3, 4]


def test_extract_text_reads_utf8_affidavit_with_accents() -> None:
    extracted = extract_text(FileType.TXT, sample("affidavit_of_jane_holloway.txt"))
    assert "María Ortega-Díaz, Notary Public" in extracted.text


def test_extract_text_rejects_whitespace_only_text() -> None:
    with pytest.raises(EmptyDocument, match=r"no text found in the \.txt file"):
        extract_text(FileType.TXT, b" \r\n\t\x00 \n")


def test_extract_text_rejects_empty_docx() -> None:
    with pytest.raises(EmptyDocument):
        extract_text(FileType.DOCX, docx_bytes([]))


def test_the_same_bytes_are_parsed_once_and_read_back_equal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.adapters import parsers

    monkeypatch.setattr(parsers, "_extracted", parsers._ExtractedMemo())
    parsed: list[bytes] = []
    real = parsers.decode_text_bounded

    def counting(data: bytes, limits: parsers.ExtractionLimits) -> str:
        parsed.append(data)
        return real(data, limits)

    monkeypatch.setattr(parsers, "decode_text_bounded", counting)
    first = extract_text(FileType.TXT, b"Jane Holloway signed.", DEFAULT_LIMITS)
    again = extract_text(FileType.TXT, b"Jane Holloway signed.", DEFAULT_LIMITS)
    other = extract_text(FileType.TXT, b"Jane Holloway signed!", DEFAULT_LIMITS)
    tighter = parsers.ExtractionLimits(max_extracted_chars=100)
    extract_text(FileType.TXT, b"Jane Holloway signed.", tighter)
    assert first == again and other.text.endswith("!")
    # Another content or other limits are parsed again.
    assert len(parsed) == 3


def test_remembered_text_is_bounded_and_failures_are_not_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.adapters import parsers

    memo = parsers._ExtractedMemo(max_chars=50)
    monkeypatch.setattr(parsers, "_extracted", memo)
    for n in range(5):
        extract_text(FileType.TXT, f"document number {n} of five".encode(), DEFAULT_LIMITS)
    assert 0 < len(memo._entries) < 5 and memo._chars <= 50
    with pytest.raises(EmptyDocument):
        extract_text(FileType.TXT, b"   ", DEFAULT_LIMITS)
    assert all(value.text.strip() for value, _ in memo._entries.values())
