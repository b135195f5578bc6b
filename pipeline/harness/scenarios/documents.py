"""A scenario's documents as files on disk: repository files, or generated ones.

Generated documents depend only on the seed, so the same scenario and seed
give the same texts (and the same chunks, mentions and faults) on every run.
"""

from __future__ import annotations

import io
import random
import shutil
import zipfile
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from pipeline.harness.scenarios.model import Generated, Scenario, ScenarioError

PEOPLE = (
    "Jane R. Holloway",
    "Marcus T. Whitfield",
    "Elena Vasquez",
    "Robert K. Chen",
    "Priya Raman",
    "Thomas O'Neill",
)
ORGS = (
    "Meridian Capital Partners LLC",
    "Northwind Logistics Inc.",
    "Harbor Point Holdings LLC",
    "Bellweather Insurance Company",
    "Crestline Manufacturing Corp.",
)
PLACES = ("Chicago, Illinois", "Austin, Texas", "Denver, Colorado", "Boston, Massachusetts")
MONTHS = ("January", "March", "May", "July", "September", "November")
HEADINGS = ("RECITALS", "PAYMENT TERMS", "REPRESENTATIONS", "TERMINATION", "GOVERNING LAW")


@dataclass(frozen=True)
class ScenarioDocument:
    """One file to submit, under the name expectations and fault patterns match."""

    name: str
    path: Path


def legal_pages(rng: random.Random, pages: int) -> list[str]:
    """Pages of contract-like prose the rule-based extractor finds entities in."""
    result = []
    for page in range(pages):
        paragraphs = [f"{rng.choice(HEADINGS)}"] if page else ["SERVICES AGREEMENT"]
        for _ in range(3):
            person, other = rng.sample(PEOPLE, 2)
            org = rng.choice(ORGS)
            paragraphs.append(
                f"Section {rng.randint(1, 40)}. On {rng.choice(MONTHS)} {rng.randint(1, 28)}, "
                f"{rng.randint(2015, 2024)}, {person} of {org} met {other} in "
                f"{rng.choice(PLACES)}. {org} shall pay ${rng.randint(1, 900) * 1000:,}.00 "
                f"within thirty days, as required under 15 U.S.C. § 78j(b). The parties "
                f"agree that notices go to counsel and that this agreement binds successors."
            )
        result.append("\n\n".join(paragraphs))
    return result


def _pad(pages: list[str], size: int | None, encoded: int) -> list[str]:
    if size is None or encoded >= size:
        return pages
    repeats = size // max(encoded, 1) + 1
    return pages * repeats


def _pdf(pages: list[str]) -> bytes:
    """A minimal PDF with a text layer (Helvetica, one text line per source line)."""

    def escape(line: str) -> str:
        ascii_line = line.replace("§", "Sec.").encode("ascii", "replace").decode()
        return ascii_line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    objects: list[bytes] = []
    page_ids = [4 + 2 * i for i in range(len(pages))]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = " ".join(f"{pid} 0 R" for pid in page_ids)
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for page_id, text in zip(page_ids, pages, strict=True):
        lines: list[str] = []
        for paragraph in text.split("\n"):
            while len(paragraph) > 95:
                cut = paragraph.rfind(" ", 0, 95)
                cut = cut if cut > 0 else 95
                lines.append(paragraph[:cut])
                paragraph = paragraph[cut:].lstrip()
            lines.append(paragraph)
        stream = "BT /F1 9 Tf 11 TL 40 800 Td " + " ".join(f"({escape(x)}) Tj T*" for x in lines)
        content = f"{stream} ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {page_id + 1} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1))
    out.write(b"startxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def _docx(pages: list[str]) -> bytes:
    import docx

    document = docx.Document()
    for page in pages:
        for paragraph in page.split("\n\n"):
            document.add_paragraph(paragraph)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


#: How far a generated `zip_bomb` DOCX expands by default (its document.xml).
ZIP_BOMB_XML_BYTES = 10 * 1024 * 1024


def _docx_bomb(text: str, xml_bytes: int) -> bytes:
    """A valid DOCX whose word/document.xml repeats one paragraph up to `xml_bytes`.

    The repetition compresses about 1000x: a file of a few KB that a parser
    without limits would expand in full (issue 11.3's 392 KB DOCX held 100 MB).
    """
    paragraph = "<w:p><w:r><w:t>{}</w:t></w:r></w:p>".format(
        text.split("\n\n")[-1].replace("&", "&amp;").replace("<", "&lt;")
    )
    body = paragraph * (xml_bytes // len(paragraph.encode()) + 1)
    with zipfile.ZipFile(io.BytesIO(_docx([text]))) as template:
        members = [(info.filename, template.read(info)) for info in template.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as bomb:
        for name, data in members:
            if name == "word/document.xml":
                head, _, tail = data.decode().partition("<w:body>")
                data = f"{head}<w:body>{body}{tail}".encode()
            bomb.writestr(name, data)
    return out.getvalue()


def _eml(pages: list[str], name: str) -> bytes:
    message = EmailMessage()
    message["From"] = "counsel@meridian.example"
    message["To"] = "legal@northwind.example"
    message["Subject"] = f"Correspondence regarding {name}"
    message["Date"] = "Fri, 03 Mar 2023 10:00:00 +0000"
    message.set_content("\n\n".join(pages))
    return message.as_bytes()


def render(spec: Generated, rng: random.Random, name: str) -> bytes:
    """The bytes of one generated document."""
    if spec.content == "empty":
        return b""
    if spec.content == "binary":
        return b"\x89PNG\r\n\x1a\n" + rng.randbytes(max(spec.size or 2048, 64))
    if spec.content == "zip_bomb":
        return _docx_bomb(legal_pages(rng, 1)[0], spec.size or ZIP_BOMB_XML_BYTES)
    pages = [spec.text] * spec.pages if spec.text is not None else legal_pages(rng, spec.pages)
    data = _encode(spec, pages, name)
    if spec.size is not None and len(data) < spec.size:
        data = _encode(spec, _pad(pages, spec.size, len(data)), name)
    if spec.content == "truncated":
        data = data[: max(len(data) * 2 // 5, 1)]
    if spec.content == "scanned":
        data = _scanned(data)
    return data


def _scanned(pdf: bytes) -> bytes:
    """The PDF as a scanner makes it: image-only pages, the first slightly askew."""
    from pipeline.adapters.local_ocr import INSTALL_HINT, local_ocr_installed, scan_pdf

    if not local_ocr_installed():
        raise ScenarioError(f"content: scanned renders pages with the [ocr] extra: {INSTALL_HINT}")
    return scan_pdf(pdf, dpi=150, rotate_degrees=[2.0])


def _encode(spec: Generated, pages: list[str], name: str) -> bytes:
    if spec.type == "pdf":
        return _pdf(pages)
    if spec.type == "docx":
        return _docx(pages)
    if spec.type == "eml":
        return _eml(pages, name)
    return "\n\n".join(pages).encode()


def materialize(
    scenario: Scenario, source: Path | None, seed: int, inbox: Path
) -> list[ScenarioDocument]:
    """Copy or generate every document into `inbox`; names are unique."""
    inbox.mkdir(parents=True, exist_ok=True)
    base = source.parent if source is not None else Path.cwd()
    documents: list[ScenarioDocument] = []
    for index, spec in enumerate(scenario.documents):
        if spec.files is not None:
            for pattern_index, pattern in enumerate(spec.files):
                found = sorted(p for p in _glob(base, pattern) if p.is_file())
                if not found:
                    raise ScenarioError(
                        f"{source}: documents[{index}].files[{pattern_index}]: {pattern!r} "
                        f"matches no file (paths are relative to {base})"
                    )
                for path in found:
                    target = inbox / path.name
                    shutil.copyfile(path, target)
                    documents.append(ScenarioDocument(path.name, target))
        else:
            generated = spec.generate
            assert generated is not None
            for i in range(1, generated.count + 1):
                template = generated.name or f"generated{index}-{{i:03d}}.{generated.type}"
                name = template.format(i=i)
                rng = random.Random(f"{seed}:{index}:{i}")
                target = inbox / name
                target.write_bytes(render(generated, rng, name))
                documents.append(ScenarioDocument(name, target))
    names = [d.name for d in documents]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ScenarioError(
            f"{source}: documents: names must be unique (expectations and faults match "
            f"them); duplicated: {', '.join(duplicates)}"
        )
    return documents


def _glob(base: Path, pattern: str) -> list[Path]:
    """`pattern` relative to `base`, or an absolute path / pattern as written."""
    path = Path(pattern)
    if path.is_absolute():
        return list(Path(path.anchor).glob(str(path.relative_to(path.anchor))))
    return list(base.glob(pattern))
