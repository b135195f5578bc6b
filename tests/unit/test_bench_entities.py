"""Benchmarks for the entity stages: verifying the LLM's answers for a document of
10 KB, 100 KB and 1 MB (stage 4), then resolution and relationship staging on 100,
1,000 and 10,000 mentions (stages 5 and 6).

Run with `make bench` (`--benchmark-enable`, compared with the saved baseline);
normal runs execute each once. The inputs are those of scripts/bench_growth.py.
"""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from pipeline.domain.graph import expected_relationship_count
from pipeline.domain.models import Mention, Relationship
from pipeline.domain.resolution import Resolution
from tests.benchmarks.workloads import (
    MENTION_COUNTS,
    SWEEPS_BY_NAME,
    TEXT_SIZES,
    extraction_input,
)


@pytest.mark.parametrize("size_id", list(TEXT_SIZES))
def test_bench_verify_entities(benchmark: BenchmarkFixture, size_id: str) -> None:
    sweep = SWEEPS_BY_NAME["verify_entities"]
    data = extraction_input(TEXT_SIZES[size_id])
    benchmark.group = sweep.name

    mentions = benchmark(sweep.run, data)

    assert isinstance(mentions, list)
    assert len(mentions) > len(data.chunks)
    for mention in mentions:
        assert isinstance(mention, Mention)
        chunk = data.chunks[mention.chunk_index]
        assert chunk.text[mention.start : mention.end] == mention.value
        assert mention.value != "Hallucinated Holdings"


@pytest.mark.parametrize("size_id", list(MENTION_COUNTS))
def test_bench_resolve_mentions(benchmark: BenchmarkFixture, size_id: str) -> None:
    sweep = SWEEPS_BY_NAME["resolve_mentions"]
    size = MENTION_COUNTS[size_id]
    mentions = sweep.prepare(size)
    benchmark.group = sweep.name

    resolution = benchmark(sweep.run, mentions)

    assert isinstance(resolution, Resolution)
    assert len(resolution.mention_canonical) == size
    assert len(resolution.entities) < size


@pytest.mark.parametrize("size_id", list(MENTION_COUNTS))
def test_bench_stage_relationships(benchmark: BenchmarkFixture, size_id: str) -> None:
    sweep = SWEEPS_BY_NAME["stage_relationships"]
    size = MENTION_COUNTS[size_id]
    data = sweep.prepare(size)
    benchmark.group = sweep.name

    relationships = benchmark(sweep.run, data)

    assert isinstance(relationships, list)
    assert all(isinstance(r, Relationship) for r in relationships)
    assert len(relationships) == expected_relationship_count(len(data.chunks), size)
