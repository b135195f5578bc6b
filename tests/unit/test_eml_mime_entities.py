"""E-mail bodies without envelope headers (issue 17), modelled on CPython's e-mail test files.

A MIME entity that declares its content (Content-Type / MIME-Version) is read
whether or not it has From/To/Subject/Date; content that is not MIME at all
keeps failing with a reason that says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.adapters.parsers import detect_file_type, extract_eml
from pipeline.domain.models import FileType
from pipeline.errors import CorruptDocument
from tests.conftest import docpipe

#: Like CPython's msg_18.txt, with a body: a single part saved without its envelope.
CONTENT_TYPE_ONLY = (
    b'Content-Type: text/plain; charset="us-ascii"\n'
    b"MIME-Version: 1.0\n"
    b"Content-Transfer-Encoding: 7bit\n"
    b"\n"
    b"Jane R. Holloway signed the Meridian Capital Holdings term sheet on March 3, 2023.\n"
)

#: Like CPython's msg_37.txt / msg_38.txt: a multipart entity, no envelope at all.
MULTIPART_WITHOUT_ENVELOPE = (
    b"Content-Type: multipart/mixed; boundary=ABCDE\n"
    b"\n"
    b"--ABCDE\n"
    b"Content-Type: text/x-one\n"
    b"\n"
    b"Thomas A. Whitfield approved the transfer.\n"
    b"\n"
    b"--ABCDE\n"
    b"Content-Type: text/html\n"
    b"\n"
    b"<p>Harbor Point Advisors LLC was copied.</p>\n"
    b"--ABCDE\n"
    b"Content-Type: application/octet-stream\n"
    b"Content-Disposition: attachment; filename=ledger.bin\n"
    b"\n"
    b"AAAA\n"
    b"--ABCDE--\n"
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(32)


def test_a_part_with_only_content_headers_is_an_email_and_its_body_is_read() -> None:
    assert detect_file_type("part.eml", CONTENT_TYPE_ONLY) is FileType.EML

    text = extract_eml(CONTENT_TYPE_ONLY)

    assert text.startswith("Jane R. Holloway signed the Meridian Capital Holdings term sheet")
    assert "From:" not in text  # no envelope invented


def test_a_multipart_entity_without_envelope_reads_its_text_parts_not_attachments() -> None:
    assert detect_file_type("digest.eml", MULTIPART_WITHOUT_ENVELOPE) is FileType.EML

    text = extract_eml(MULTIPART_WITHOUT_ENVELOPE)

    # text/x-one is readable text, kept before the HTML alternative is needed
    assert "Thomas A. Whitfield approved the transfer." in text
    assert "AAAA" not in text


def test_plain_text_without_any_header_is_still_not_an_email() -> None:
    with pytest.raises(CorruptDocument) as caught:
        detect_file_type("mail.eml", b"Send Ppp mailing list submissions to\n\tppp@zzz.org\n")

    assert "not an RFC 822 e-mail message or MIME entity" in str(caught.value)
    assert "Content-Type" in str(caught.value)


def test_a_png_named_eml_keeps_its_clear_reason() -> None:
    with pytest.raises(CorruptDocument, match=r"\.eml: it looks like a PNG image, not an e-mail"):
        detect_file_type("scan.eml", PNG)


def test_docpipe_run_completes_envelope_free_mime_and_rejects_a_png(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "part.eml").write_bytes(CONTENT_TYPE_ONLY)
    (inbox / "digest.eml").write_bytes(MULTIPART_WITHOUT_ENVELOPE)
    (inbox / "picture.eml").write_bytes(PNG)

    result = docpipe(tmp_path, "run", "inbox", "--json")

    assert result.returncode == 1, result.stderr
    rows = {Path(row["file"]).name: row for row in json.loads(result.stdout)["documents"]}
    assert rows["part.eml"]["status"] == "completed"
    assert rows["part.eml"]["mentions"] > 0
    assert rows["digest.eml"]["status"] == "completed"
    assert rows["picture.eml"]["status"] == "ocr_failed"
    assert "it looks like a PNG image, not an e-mail message" in rows["picture.eml"]["error"]
