"""Benchmarks for the text stages on 10 KB, 100 KB and 1 MB: local parsers (stage 1),
cleaning, title and category (stage 2) and chunking (stage 3).

Disabled in normal runs (``--benchmark-disable`` runs each body once); `make bench`
measures them and compares them with the saved baseline (tests/benchmarks/baselines).
The inputs are those of scripts/bench_growth.py, which checks that each stage grows
linearly with its input.
"""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from pipeline.domain.models import Category
from tests.benchmarks.workloads import SWEEPS_BY_NAME, TEXT_SIZES, TXT_SIZES, Sweep

SIZE_IDS = list(TEXT_SIZES)


def _measure(benchmark: BenchmarkFixture, sweep: Sweep, size_id: str) -> object:
    data = sweep.prepare(sweep.sizes[size_id])
    benchmark.group = sweep.name
    return benchmark(sweep.run, data)


@pytest.mark.parametrize("size_id", list(TXT_SIZES))
def test_bench_parse_txt(benchmark: BenchmarkFixture, size_id: str) -> None:
    text = _measure(benchmark, SWEEPS_BY_NAME["parse_txt"], size_id)

    assert isinstance(text, str)
    assert len(text) == TXT_SIZES[size_id]


@pytest.mark.parametrize("size_id", SIZE_IDS)
def test_bench_parse_eml(benchmark: BenchmarkFixture, size_id: str) -> None:
    text = _measure(benchmark, SWEEPS_BY_NAME["parse_eml"], size_id)

    assert isinstance(text, str)
    assert text.startswith("From: Jane Holloway")
    assert "<p>" not in text
    assert len(text) > TEXT_SIZES[size_id] * 0.8


@pytest.mark.parametrize("size_id", SIZE_IDS)
def test_bench_parse_docx(benchmark: BenchmarkFixture, size_id: str) -> None:
    text = _measure(benchmark, SWEEPS_BY_NAME["parse_docx"], size_id)

    assert isinstance(text, str)
    assert len(text) > TEXT_SIZES[size_id] * 0.8


@pytest.mark.parametrize("size_id", SIZE_IDS)
def test_bench_clean_text(benchmark: BenchmarkFixture, size_id: str) -> None:
    cleaned = _measure(benchmark, SWEEPS_BY_NAME["clean_text"], size_id)

    assert isinstance(cleaned, str)
    assert "\x00" not in cleaned
    assert "\r" not in cleaned
    assert len(cleaned) > TEXT_SIZES[size_id] * 0.8


@pytest.mark.parametrize("size_id", SIZE_IDS)
def test_bench_title_and_category(benchmark: BenchmarkFixture, size_id: str) -> None:
    sweep = SWEEPS_BY_NAME["title_and_category"]
    text = sweep.prepare(TEXT_SIZES[size_id])
    benchmark.group = sweep.name

    title, category = benchmark(sweep.run, text)

    # The first paragraphs are sentences over 200 characters; the first short line is a list item.
    assert title == "(a) Agreement pursuant plaintiff default this alleges."
    assert category is Category.LEGAL_FILING


@pytest.mark.parametrize("size_id", SIZE_IDS)
def test_bench_chunk_text(benchmark: BenchmarkFixture, size_id: str) -> None:
    chunks = _measure(benchmark, SWEEPS_BY_NAME["chunk_text"], size_id)

    assert isinstance(chunks, list)
    size = TEXT_SIZES[size_id]
    assert chunks[0].start == 0
    assert chunks[-1].end == size
    assert len(chunks) >= size // 1500
    assert all(len(chunk.text) <= 1500 for chunk in chunks)
