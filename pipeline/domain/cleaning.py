"""Text cleaning for stage 3 and the document title derived from it.

The cleaned text is what gets stored and what chunk offsets point into, so it
must be stable (cleaning twice changes nothing) and safe for PostgreSQL, which
refuses NUL in text columns. Every step is a single regex or C-level pass, so
the whole clean is linear in the length of the input.
"""

from __future__ import annotations

import re
import unicodedata

from pipeline.domain.pages import PAGE_MARKER_RE

#: Line separators left once CR LF is a newline: lone CR, vertical tab, form
#: feed (a page break in extracted text), NEL, U+2028 and U+2029.
_LINE_BREAK_RE = re.compile("[\r\x0b\x0c\x85\u2028\u2029]")
#: C0/C1 controls except tab and newline, lone surrogates (not encodable as
#: UTF-8), the byte-order mark and zero-width space.
_DROP_RE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufeff\u200b]")
#: Tab and every Unicode space separator other than the plain space.
_OTHER_SPACE_RE = re.compile("[\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_SPACE_RUN_RE = re.compile(" {2,}")
_LINE_EDGE_RE = re.compile(" ?\n ?")
_BLANK_RUN_RE = re.compile("\n{3,}")

TITLE_MAX_CHARS = 200
_TITLE_SCAN_CHARS = 8000
_TITLE_SCAN_LINES = 40
_PAGE_FOOTER_RE = re.compile(r"page\s+\d+(?:\s+of\s+\d+)?", re.IGNORECASE)
_PATH_SEPARATORS_RE = re.compile(r"[\\/]")


def clean_text(raw: str) -> str:
    """Normalise extracted text for storage, chunking and entity offsets.

    Line endings become ``\\n``, control characters go (tab becomes a space),
    the text is NFC-normalised, every run of horizontal space becomes one
    space, each line is stripped, blank-line runs shrink to a single blank
    line and the whole text is stripped. Page-marker lines survive unchanged.
    """
    text = _LINE_BREAK_RE.sub("\n", raw.replace("\r\n", "\n"))
    text = _DROP_RE.sub("", text)
    text = unicodedata.normalize("NFC", text)
    text = _OTHER_SPACE_RE.sub(" ", text)
    text = _SPACE_RUN_RE.sub(" ", text)
    text = _LINE_EDGE_RE.sub("\n", text)
    text = _BLANK_RUN_RE.sub("\n\n", text)
    return text.strip()


def derive_title(file_name: str, cleaned_text: str) -> str:
    """The first meaningful line near the top of the text, else the file stem.

    A line counts when it is not a page marker or a bare page number, has at
    least three letters or digits (one of them a letter) and fits in
    ``TITLE_MAX_CHARS``; only the first lines are considered, because a
    title deep inside the body is not a title.
    """
    head = cleaned_text[:_TITLE_SCAN_CHARS]
    for line in head.split("\n", _TITLE_SCAN_LINES)[:_TITLE_SCAN_LINES]:
        candidate = clean_text(line)
        if len(candidate) <= TITLE_MAX_CHARS and _is_meaningful(candidate):
            return candidate
    return file_stem(file_name)


def file_stem(file_name: str) -> str:
    """The file name without directories or extension, cleaned to one line; never empty."""
    name = _PATH_SEPARATORS_RE.split(file_name)[-1]
    stem, dot, _ = name.rpartition(".")
    if not dot or not stem.strip("."):
        stem = name
    stem = " ".join(clean_text(stem).split())[:TITLE_MAX_CHARS].strip()
    return stem or "Untitled document"


def _is_meaningful(line: str) -> bool:
    if not line or PAGE_MARKER_RE.fullmatch(line) or _PAGE_FOOTER_RE.fullmatch(line):
        return False
    alnum = sum(1 for char in line if char.isalnum())
    return alnum >= 3 and any(char.isalpha() for char in line)
