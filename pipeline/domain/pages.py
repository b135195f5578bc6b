"""Page markers: how pages are joined in extracted text (and found again)."""

from __future__ import annotations

import re
from collections.abc import Sequence

PAGE_MARKER_RE = re.compile(r"^--- Page (\d+) ---$", re.MULTILINE)


def page_marker(number: int) -> str:
    return f"--- Page {number} ---"


def join_pages(pages: Sequence[str]) -> str:
    """Join page texts with a marker line before each page (1-based)."""
    return "\n\n".join(f"{page_marker(i)}\n{text.strip()}" for i, text in enumerate(pages, 1))
