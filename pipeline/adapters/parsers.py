"""Local text extraction: file-type detection and the DOCX/TXT/EML/PDF parsers.

DOCX, TXT and EML are parsed here in production too; PDFs go through the OCR
engine (the fake OCR engine reads their text layer with `extract_pdf_pages`).
Every failure is a `pipeline.errors` type whose message ends up in the
document row, so messages say what is wrong and what the user can do.
"""

from __future__ import annotations

import codecs
import email
import email.policy
import hashlib
import io
import re
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any

from pipeline.domain.models import ExtractedText, FileType
from pipeline.domain.pages import join_pages
from pipeline.errors import (
    CorruptDocument,
    DocumentTooLarge,
    EmptyDocument,
    PermanentError,
    UnsupportedFileType,
)

# python-docx and pypdf are imported by the functions that parse those formats:
# the use cases import this module (detect_file_type, pdf_page_count) and need
# neither library to be loaded for that.
if TYPE_CHECKING:
    from pypdf import PdfReader

    from pipeline.settings import Settings

SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(f".{t.value}" for t in FileType)

#: How far into the file the PDF header may start (Acrobat tolerates 1 KB of junk).
_PDF_HEADER_WINDOW = 1024
#: How much of a .txt file is inspected for binary content.
_TEXT_SNIFF_BYTES = 8192
#: Share of control bytes (not \t \n \r \f \v, not NUL) above which a .txt is binary.
_MAX_CONTROL_RATIO = 0.30
#: Share of NUL bytes above which a .txt (without a UTF-16/32 signature) is binary.
_MAX_NUL_RATIO = 0.30

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (e.g. .docx/.xlsx)"),
    (b"PK\x05\x06", "an empty ZIP archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "a legacy Office file (.doc/.xls/.msg)"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"{\\rtf", "an RTF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
)

#: Byte-order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one).
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

_EMAIL_HEADERS = ("From", "To", "Cc", "Date", "Subject")

#: A ZIP member below this size is not held to the compression ratio: a few hundred
#: kilobytes of repetitive XML may compress 500x and cost nothing (Apache POI's habit).
_RATIO_GRACE_BYTES = 1024 * 1024
#: ZIP members are decompressed in pieces this big when their real size is counted.
_ZIP_READ_BYTES = 64 * 1024
#: No encoding used here spends more than 4 bytes on a character (UTF-8, UTF-16, UTF-32).
_MAX_BYTES_PER_CHAR = 4


# --- limits ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractionLimits:
    """What one document may expand to; each field is the setting of the same name.

    Checked before and during extraction, so a small file that expands to
    gigabytes fails on its own, quickly, with the setting to raise in its reason.
    """

    max_extracted_chars: int = 10_000_000
    max_zip_member_bytes: int = 64 * 1024 * 1024
    max_zip_total_bytes: int = 256 * 1024 * 1024
    max_compression_ratio: float = 100.0
    max_pdf_pages: int = 3000

    @classmethod
    def from_settings(cls, settings: Settings) -> ExtractionLimits:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


DEFAULT_LIMITS = ExtractionLimits()


class _ExtractedMemo:
    """The text of the documents parsed last, by content digest and limits.

    Parsing is a pure function of the bytes and the limits, and the same bytes are
    parsed again: by each retry or redelivery of a stage, and thousands of times by
    the simulator (`docpipe explore` runs the sample files in every schedule). Bounded
    by characters kept, so a worker holds at most a few megabytes; failures are not
    kept (they are raised again by parsing again).
    """

    def __init__(self, max_chars: int = 4_000_000) -> None:
        self._max_chars = max_chars
        self._entries: OrderedDict[tuple[Any, ...], tuple[Any, int]] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(kind: str, data: bytes, limits: ExtractionLimits) -> tuple[Any, ...]:
        return (kind, hashlib.sha256(data).digest(), len(data), limits)

    def get(self, key: tuple[Any, ...]) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: tuple[Any, ...], value: Any, chars: int) -> None:
        if chars > self._max_chars:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (value, chars)
            self._chars += chars
            while self._chars > self._max_chars:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._chars -= dropped


_extracted = _ExtractedMemo()


class _CharBudget:
    """Counts extracted characters as they are produced and stops at the limit.

    Raising while extracting (not after) keeps a runaway document from building
    all of its text first.
    """

    def __init__(self, limits: ExtractionLimits, what: str) -> None:
        self._limit = limits.max_extracted_chars
        self._what = what
        self.used = 0

    def take(self, text: str) -> str:
        self.used += len(text)
        if self.used > self._limit:
            raise too_many_chars(
                f"{self._what} holds more than {self._limit:,} characters", self._limit
            )
        return text

    def take_all(self, texts: Iterable[str]) -> list[str]:
        return [self.take(text) for text in texts]


def too_many_chars(found: str, limit: int) -> DocumentTooLarge:
    return DocumentTooLarge.over_limit(found, "max_extracted_chars", limit, "characters")


def check_zip_members(archive: zipfile.ZipFile, limits: ExtractionLimits) -> None:
    """Refuse a ZIP that expands too far, before any parser touches it.

    The declared sizes are checked first (nothing is decompressed). Headers can
    lie, so every member is then decompressed in small pieces and its real size
    counted; zipfile itself stops a member at its declared size and fails it on
    its CRC (a corrupt document), so nothing larger than declared is ever held.
    """
    members = [info for info in archive.infolist() if not info.is_dir()]
    declared_total = 0
    for info in members:
        _check_member(info, info.file_size, limits)
        declared_total += info.file_size
    _check_zip_total(declared_total, limits)
    actual_total = 0
    for info in members:
        size = 0
        try:
            with archive.open(info) as member:
                while piece := member.read(_ZIP_READ_BYTES):
                    size += len(piece)
                    _check_member(info, size, limits)
                    _check_zip_total(actual_total + size, limits)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise CorruptDocument(
                f"ZIP member {info.filename} is damaged or its header understates its size "
                f"({_reason(exc)}); re-save the document and upload it again"
            ) from exc
        actual_total += size


def _check_member(info: zipfile.ZipInfo, size: int, limits: ExtractionLimits) -> None:
    if size > limits.max_zip_member_bytes:
        raise DocumentTooLarge.over_limit(
            f"ZIP member {info.filename} expands to {size:,} bytes",
            "max_zip_member_bytes",
            limits.max_zip_member_bytes,
            "bytes per member",
        )
    ratio = size / max(info.compress_size, 1)
    if size > _RATIO_GRACE_BYTES and ratio > limits.max_compression_ratio:
        raise DocumentTooLarge.over_limit(
            f"ZIP member {info.filename} expands {ratio:,.0f}x ({info.compress_size:,} bytes "
            f"to {size:,}; a zip bomb?)",
            "max_compression_ratio",
            limits.max_compression_ratio,
            "times its compressed size",
        )


def _check_zip_total(size: int, limits: ExtractionLimits) -> None:
    if size > limits.max_zip_total_bytes:
        raise DocumentTooLarge.over_limit(
            f"the ZIP's members expand to {size:,} bytes together",
            "max_zip_total_bytes",
            limits.max_zip_total_bytes,
            "bytes",
        )


_EMAIL_REQUIRED_ANY = ("from", "to", "subject", "date")
#: A MIME entity needs no envelope: a body part saved alone, or a message stripped of its
#: envelope, still declares its content (CPython's e-mail test files hold several).
_MIME_HEADERS = ("mime-version", "content-type", "content-transfer-encoding")


# --- detection ----------------------------------------------------------------------


def detect_file_type(file_name: str, data: bytes) -> FileType:
    """The file type from the extension, after checking the bytes agree with it.

    Extensions, never MIME types (a MIME type stored as a type failed 95 % of
    documents once); the content check turns a mislabelled file into one clear
    error here instead of a confusing one deep in a parser.
    """
    extension = _extension(file_name)
    try:
        file_type = FileType(extension.removeprefix("."))
    except ValueError:
        shown = f"'{extension}'" if extension else "(no extension)"
        raise UnsupportedFileType(
            f"unsupported file type {shown} (supported: {', '.join(SUPPORTED_EXTENSIONS)})"
        ) from None
    if not data:
        raise EmptyDocument("empty file (0 bytes)")
    problem = _content_problem(file_type, data)
    if problem is not None:
        raise CorruptDocument(f"content does not match extension .{file_type.value}: {problem}")
    return file_type


def _extension(file_name: str) -> str:
    base = file_name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if "." not in base.strip("."):
        return ""
    return "." + base.rsplit(".", 1)[-1].lower()


def _sniff(data: bytes) -> str | None:
    """A description of a well-known binary format the bytes start with, if any."""
    for magic, description in _MAGIC:
        if data.startswith(magic):
            return description
    return None


def _looks_like(data: bytes) -> str:
    sniffed = _sniff(data)
    return f"it looks like {sniffed}" if sniffed else "the content is not recognisable"


def _content_problem(file_type: FileType, data: bytes) -> str | None:
    """Why the bytes are not a `file_type`, or None when they plausibly are."""
    if file_type is FileType.PDF:
        if _pdf_header_offset(data) is None:
            return f"no '%PDF-' header in the first 1 KB ({_looks_like(data)})"
        return None
    if file_type is FileType.DOCX:
        return _docx_problem(data)
    if file_type is FileType.EML:
        return _eml_problem(data)
    return _text_problem(data)


def _pdf_header_offset(data: bytes) -> int | None:
    stripped = data[:_PDF_HEADER_WINDOW].lstrip(b" \t\r\n\f\x00")
    if stripped.startswith(codecs.BOM_UTF8):
        stripped = stripped[len(codecs.BOM_UTF8) :].lstrip(b" \t\r\n\f\x00")
    if not stripped.startswith(b"%PDF-"):
        return None
    return data.index(b"%PDF-")


def _docx_problem(data: bytes) -> str | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        if data.startswith(b"PK\x03\x04"):
            # "not a ZIP file (it looks like a ZIP archive)" would read as a contradiction.
            return (
                "it starts as a ZIP archive but cannot be opened as one, damaged or cut "
                f"short ({exc})"
            )
        return f"it is not a ZIP-based Word file ({_looks_like(data)})"
    if "word/document.xml" not in names:
        return "it is a ZIP archive without word/document.xml (not a Word document)"
    return None


def _eml_problem(data: bytes) -> str | None:
    sniffed = _sniff(data)
    if sniffed:
        return f"it looks like {sniffed}, not an e-mail message"
    head = data[:65536]
    message = email.message_from_bytes(head, policy=email.policy.compat32)
    present = {key.lower() for key in message}
    if not present.intersection(_EMAIL_REQUIRED_ANY + _MIME_HEADERS):
        return (
            "no From, To, Subject, Date, MIME-Version or Content-Type header found "
            "(not an RFC 822 e-mail message or MIME entity)"
        )
    return None


def _text_problem(data: bytes) -> str | None:
    sniffed = _sniff(data)
    if sniffed:
        return f"it looks like {sniffed}, not plain text"
    if _bom_encoding(data) is not None:
        return None
    sample = data[:_TEXT_SNIFF_BYTES]
    nul = sample.count(0)
    control = sum(1 for byte in sample if byte < 0x20 and byte not in b"\t\n\r\f\v\x00")
    control += sample.count(0x7F)
    if control / len(sample) > _MAX_CONTROL_RATIO:
        return "it looks like binary data (too many control characters for text)"
    if nul / len(sample) > _MAX_NUL_RATIO and _utf16_without_bom(sample) is None:
        return "it looks like binary data (too many NUL bytes for text)"
    return None


# --- decoding ----------------------------------------------------------------------


def decode_text(data: bytes) -> str:
    """Decode bytes of unknown encoding; never fails.

    Order: a byte-order mark, UTF-16 without a mark (NUL-interleaved ASCII),
    strict UTF-8, cp1252 (Windows text, the usual non-UTF-8 case for legal
    documents), then latin-1, which maps every byte.
    """
    bom = _bom_encoding(data)
    if bom is not None:
        encoding, skip = bom
        return data[skip:].decode(encoding, errors="replace")
    utf16 = _utf16_without_bom(data[:_TEXT_SNIFF_BYTES])
    if utf16 is not None:
        try:
            return data.decode(utf16)
        except UnicodeDecodeError:
            pass
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _bom_encoding(data: bytes) -> tuple[str, int] | None:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return encoding, len(bom)
    return None


def _utf16_without_bom(sample: bytes) -> str | None:
    """'utf-16-le'/'-be' when the bytes look like mostly-ASCII UTF-16, else None."""
    if len(sample) < 4:
        return None
    even, odd = sample[0::2], sample[1::2]
    even_nul, odd_nul = even.count(0) / len(even), odd.count(0) / len(odd)
    if odd_nul > 0.7 and even_nul < 0.1:
        return "utf-16-le"
    if even_nul > 0.7 and odd_nul < 0.1:
        return "utf-16-be"
    return None


def decode_text_bounded(data: bytes, limits: ExtractionLimits = DEFAULT_LIMITS) -> str:
    """`decode_text`, refusing text over the character limit - before decoding when it must be.

    Every encoding here spends at most 4 bytes per character, so a file of more
    than 4 x the limit in bytes holds too many characters and is refused unread.
    """
    limit = limits.max_extracted_chars
    bom = _bom_encoding(data)
    at_least = (len(data) - (bom[1] if bom else 0)) // _MAX_BYTES_PER_CHAR
    if at_least > limit:
        raise too_many_chars(f"the text file holds at least {at_least:,} characters", limit)
    text = decode_text(data)
    if len(text) > limit:
        raise too_many_chars(f"the text file holds {len(text):,} characters", limit)
    return text


# --- DOCX ------------------------------------------------------------------------------


def extract_docx(data: bytes, limits: ExtractionLimits = DEFAULT_LIMITS) -> str:
    """Body paragraphs in order, then each table row as 'cell | cell'.

    The ZIP's expansion is checked before python-docx parses it (which holds
    every XML part in memory), and the text is counted while it is collected.
    """
    import docx

    budget = _CharBudget(limits, "the Word document")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            check_zip_members(archive, limits)
        document = docx.Document(io.BytesIO(data))
        lines = budget.take_all(paragraph.text for paragraph in document.paragraphs)
        for table in document.tables:
            lines.append("")
            lines.extend(budget.take_all(_table_lines(table, seen=set())))
    except PermanentError:
        raise
    except Exception as exc:  # python-docx raises zip, lxml and KeyError failures alike
        raise CorruptDocument(
            f"cannot read the Word document ({_reason(exc)}); "
            "re-save it as .docx in Word or LibreOffice and upload it again"
        ) from exc
    return _tidy_lines(lines)


def _table_lines(table: Any, seen: set[Any]) -> Iterator[str]:
    """One line per row; merged cells (the same XML cell repeated) appear once."""
    for row in table.rows:
        texts: list[str] = []
        nested: list[Any] = []
        for cell in row.cells:
            # Keep the XML elements themselves: an id() of a freed lxml proxy is reused.
            if cell._tc in seen:
                continue
            seen.add(cell._tc)
            text = " ".join(p.text.strip() for p in cell.paragraphs if p.text.strip())
            if text:
                texts.append(text)
            nested.extend(cell.tables)
        if texts:
            yield " | ".join(texts)
        for inner in nested:
            yield from _table_lines(inner, seen)


# --- EML -------------------------------------------------------------------------------


def extract_eml(data: bytes, limits: ExtractionLimits = DEFAULT_LIMITS) -> str:
    """Key headers, then the plain-text body (the HTML body when there is no plain one)."""
    budget = _CharBudget(limits, "the e-mail message")
    try:
        message = email.message_from_bytes(data, policy=email.policy.default)
    except Exception as exc:  # the parser is lenient; this is belt and braces
        raise CorruptDocument(f"cannot parse the e-mail message ({_reason(exc)})") from exc
    header_lines = []
    for name in _EMAIL_HEADERS:
        value = _header(message, name)
        if value:
            header_lines.append(f"{name}: {value}")
    plain: list[str] = []
    html: list[str] = []
    for part in _body_parts(message):
        content_type = part.get_content_type()
        if content_type == "text/html":
            html.append(budget.take(html_to_text(_part_text(part))))
        elif part.get_content_maintype() == "text":
            # text/plain, and other readable text (text/enriched, text/x-...) alike.
            plain.append(budget.take(_part_text(part)))
    body = "\n\n".join(t.strip() for t in (plain or html) if t.strip())
    if not header_lines:  # a MIME entity without envelope: the body alone
        return body
    return "\n".join(header_lines) + ("\n\n" + body if body else "")


def _body_parts(message: Message) -> Iterator[Message]:
    """Leaf parts that are not attachments (nor inside attached messages)."""
    if message.is_multipart():
        for sub in message.get_payload():
            if not isinstance(sub, Message) or sub.get_content_disposition() == "attachment":
                continue
            if sub.get_content_maintype() == "message":
                continue
            yield from _body_parts(sub)
    elif message.get_content_disposition() != "attachment":
        yield message


def _header(message: Message, name: str) -> str:
    """A header as readable text; malformed encoded words fall back to the raw value."""
    try:
        value = message.get(name)
        return " ".join(str(value).split()) if value is not None else ""
    except Exception:
        pass
    if isinstance(message, EmailMessage):
        for key, raw in message.raw_items():
            if key.lower() == name.lower():
                try:
                    return " ".join(str(make_header(decode_header(str(raw)))).split())
                except Exception:
                    return " ".join(str(raw).split())
    return ""


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return str(payload or "")
    charset = part.get_content_charset()
    if charset:
        try:
            return payload.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass  # unknown or lying charset label: guess from the bytes
    return decode_text(payload)


#: Blocks that make a paragraph (a blank line around them) and ones that only break a line.
_PARAGRAPH_TAGS = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "ul", "ol", "hr"}
)
_LINE_TAGS = frozenset(
    {"br", "div", "li", "tr", "dd", "dt", "dl", "section", "article", "header", "footer"}
    | {"address", "aside", "figure", "figcaption", "form", "main", "nav", "fieldset"}
)
_SKIP_TAGS = frozenset({"script", "style", "head", "title", "noscript", "template"})
#: Break markers; a run of them (with the whitespace around) becomes one break, so
#: `</li><li>` is a single newline and `</p> <p>` a single blank line.
_LINE_BREAK, _PARAGRAPH_BREAK = "\x01", "\x02"
_BREAK_RUN_RE = re.compile(r"\s*[\x01\x02][\x01\x02\s]*")


class _HtmlText(HTMLParser):
    """Collects text; whitespace collapses as a browser would, except inside <pre>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0
        self._pre_depth = 0

    def _break(self, tag: str) -> None:
        if tag in _PARAGRAPH_TAGS:
            self.parts.append(_PARAGRAPH_BREAK)
        elif tag in _LINE_TAGS:
            self.parts.append(_LINE_BREAK)
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth += 1
            return
        if tag == "pre":
            self._pre_depth += 1
        self._break(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._break(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
            return
        if tag == "pre":
            self._pre_depth = max(0, self._pre_depth - 1)
        if tag != "br":
            self._break(tag)

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        data = data.replace(_LINE_BREAK, "").replace(_PARAGRAPH_BREAK, "")
        self.parts.append(data if self._pre_depth else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """Readable text from HTML: scripts and styles dropped, blocks on their own lines."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts).replace("\xa0", " ")
    text = _BREAK_RUN_RE.sub(lambda m: "\n\n" if _PARAGRAPH_BREAK in m.group() else "\n", text)
    return _tidy_lines([line.strip() for line in text.splitlines()])


# --- PDF -------------------------------------------------------------------------------


def extract_pdf_pages(data: bytes, limits: ExtractionLimits = DEFAULT_LIMITS) -> list[str]:
    """The text layer of each page (what Textract would read, minus scans).

    Pages are counted before any is read, and the text while it is read.
    """
    key = _extracted.key("pdf_pages", data, limits)
    known: tuple[str, ...] | None = _extracted.get(key)
    if known is not None:
        return list(known)
    pages = _read_pdf_pages(data, limits)
    _extracted.put(key, tuple(pages), sum(len(page) for page in pages))
    return pages


def _read_pdf_pages(data: bytes, limits: ExtractionLimits) -> list[str]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError, PyPdfError

    budget = _CharBudget(limits, "the PDF's text layer")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            _decrypt_with_empty_password(reader)
        _check_pdf_pages(len(reader.pages), limits)
        pages = budget.take_all(page.extract_text() or "" for page in reader.pages)
    except PermanentError:
        raise
    except (PdfReadError, PyPdfError) as exc:
        raise CorruptDocument(f"cannot read the PDF ({_reason(exc)}); it may be truncated") from exc
    except Exception as exc:  # pypdf raises ValueError, KeyError, zlib.error... on garbage
        raise CorruptDocument(
            f"cannot read the PDF ({_reason(exc)}); it may be truncated or damaged"
        ) from exc
    if not pages:
        raise EmptyDocument("PDF has no pages")
    if not any(page.strip() for page in pages):
        raise EmptyDocument(
            f"PDF has no text layer ({len(pages)} page(s), probably scanned images); it needs OCR"
        )
    return [page.replace("\x00", "") for page in pages]


def _check_pdf_pages(pages: int, limits: ExtractionLimits) -> None:
    if pages > limits.max_pdf_pages:
        raise DocumentTooLarge.over_limit(
            f"PDF has {pages:,} pages", "max_pdf_pages", limits.max_pdf_pages, "pages"
        )


def pdf_page_count(data: bytes) -> int | None:
    """Pages of a PDF from its page tree (no text extraction); None when it cannot be read."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            _decrypt_with_empty_password(reader)
        return len(reader.pages)
    except Exception:  # the OCR engine reports an unreadable file with its own reason
        return None


def _decrypt_with_empty_password(reader: PdfReader) -> None:
    from pypdf.errors import DependencyError

    try:
        decrypted = reader.decrypt("")
    except DependencyError as exc:
        raise PermanentError(
            "PDF is encrypted with AES, which this worker cannot decrypt "
            "(install the 'cryptography' package) - or upload an unencrypted copy"
        ) from exc
    if not decrypted:
        raise PermanentError("PDF is password-protected; upload a copy without a password")


# --- dispatch ------------------------------------------------------------------------


def extract_text(
    file_type: FileType, data: bytes, limits: ExtractionLimits = DEFAULT_LIMITS
) -> ExtractedText:
    """Text of a document of a known type, with page count and method, within `limits`."""
    key = _extracted.key(f"text:{file_type.value}", data, limits)
    known: ExtractedText | None = _extracted.get(key)
    if known is not None:
        return known  # frozen
    extracted = _extract_text(file_type, data, limits)
    _extracted.put(key, extracted, len(extracted.text))
    return extracted


def _extract_text(file_type: FileType, data: bytes, limits: ExtractionLimits) -> ExtractedText:
    if file_type is FileType.PDF:
        pages = extract_pdf_pages(data, limits)
        result = ExtractedText(join_pages(pages), len(pages), "pdf_text_layer")
    elif file_type is FileType.DOCX:
        result = ExtractedText(extract_docx(data, limits), 1, "docx_parser")
    elif file_type is FileType.EML:
        result = ExtractedText(extract_eml(data, limits), 1, "email_parser")
    else:
        result = ExtractedText(decode_text_bounded(data, limits), 1, "text_decoder")
    # PostgreSQL text columns reject NUL characters; they carry no meaning in text.
    text = result.text.replace("\x00", "")
    if not text.strip():
        raise EmptyDocument(f"no text found in the .{file_type.value} file")
    return ExtractedText(text, result.pages, result.method)


# --- helpers -------------------------------------------------------------------------


def _tidy_lines(lines: list[str]) -> str:
    """Strip trailing spaces and keep at most one blank line in a row."""
    text = "\n".join(line.rstrip() for line in lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _reason(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    if len(message) > 200:
        message = message[:197] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class LocalDocumentParser:
    """The DocumentParser port: DOCX, TXT and EML are parsed in the worker itself."""

    def __init__(self, limits: ExtractionLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits

    def extract(self, file_type: FileType, data: bytes, document_uuid: str) -> ExtractedText:
        return extract_text(file_type, data, self.limits)

    def detect_file_type(self, file_name: str, data: bytes) -> FileType:
        return detect_file_type(file_name, data)

    def page_count(self, data: bytes) -> int | None:
        return pdf_page_count(data)
