"""Benchmarks for the stage 3/4 text functions on 10 KB, 100 KB and 1 MB.

Disabled in normal runs (``--benchmark-disable`` runs each body once);
``pytest tests/unit/test_bench_text.py --benchmark-enable`` measures them.
Both functions must grow linearly with the text.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from pipeline.domain.chunking import chunk_text
from pipeline.domain.cleaning import clean_text
from pipeline.domain.pages import page_marker

SIZES = {"10KB": 10_000, "100KB": 100_000, "1MB": 1_000_000}

# fmt: off
_WORDS = (
    "the", "Buyer", "Seller", "shall", "pay", "purchase", "price", "within", "thirty", "days",
    "of", "written", "notice", "pursuant", "to", "this", "Agreement", "and", "Plaintiff",
    "Defendant", "alleges", "that", "damages", "were", "caused", "by", "breach", "any", "party",
    "may", "terminate", "upon", "default", "Court", "finds",
)
# fmt: on
_CITATIONS = ("42 U.S.C. § 1983", "Fed. R. Civ. P. 12(b)(6)", "Smith v. Jones, 550 U.S. 544")


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 28))]
    if rng.random() < 0.2:
        words.insert(rng.randrange(len(words)), rng.choice(_CITATIONS))
    return " ".join(words).capitalize() + "."


def legal_like_text(size: int, *, raw: bool = False, seed: int = 7) -> str:
    """Articles, headings, paragraphs, numbered lists, citations and page markers.

    ``raw`` adds what extraction leaves behind: CR LF, tabs, no-break spaces,
    NUL bytes and runs of blank lines.
    """
    rng = random.Random(seed)
    parts: list[str] = []
    length = article = page = 0
    while length < size:
        roll = rng.random()
        if roll < 0.05:
            article += 1
            part = f"ARTICLE {article}\nGENERAL PROVISIONS\n\n"
        elif roll < 0.08:
            page += 1
            part = page_marker(page) + "\n"
        elif roll < 0.2:
            items = rng.randint(2, 6)
            part = "\n".join(f"({chr(97 + i)}) {_sentence(rng)}" for i in range(items)) + "\n\n"
        else:
            lines = [_sentence(rng) for _ in range(rng.randint(1, 6))]
            part = " ".join(lines) + "\n\n"
        if raw:
            part = part.replace("\n", "\r\n").replace(". ", ".\t \u00a0 ", 1)
            if rng.random() < 0.1:
                part += "\x00\r\n\r\n\r\n"
        parts.append(part)
        length += len(part)
    return "".join(parts)[:size]


@pytest.fixture(scope="module")
def texts() -> Callable[[str, bool], str]:
    cache: dict[tuple[str, bool], str] = {}

    def get(size_id: str, raw: bool) -> str:
        if (size_id, raw) not in cache:
            cache[size_id, raw] = legal_like_text(SIZES[size_id], raw=raw)
        return cache[size_id, raw]

    return get


@pytest.mark.parametrize("size_id", list(SIZES))
def test_bench_clean_text(
    benchmark: BenchmarkFixture, texts: Callable[[str, bool], str], size_id: str
) -> None:
    raw = texts(size_id, True)

    cleaned = benchmark(clean_text, raw)

    assert "\x00" not in cleaned
    assert "\r" not in cleaned
    assert len(cleaned) > len(raw) * 0.8


@pytest.mark.parametrize("size_id", list(SIZES))
def test_bench_chunk_text(
    benchmark: BenchmarkFixture, texts: Callable[[str, bool], str], size_id: str
) -> None:
    text = texts(size_id, False)

    chunks = benchmark(chunk_text, text)

    assert chunks[0].start == 0
    assert chunks[-1].end == len(text)
    assert len(chunks) >= len(text) // 1500
    assert all(len(chunk.text) <= 1500 for chunk in chunks)
