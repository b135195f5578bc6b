"""Benchmarks: resolution and relationship staging on 100, 1,000 and 10,000 mentions.

Run with `make bench` (`--benchmark-enable`); normal runs execute each once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from pipeline.domain.entities import normalize_value
from pipeline.domain.graph import expected_relationship_count, stage_relationships
from pipeline.domain.models import Category, Chunk, DocumentNode, EntityType, Mention, stable_uuid
from pipeline.domain.resolution import resolve_mentions

Benchmark = Callable[..., Any]
DOC = DocumentNode("doc-bench", "project-bench", "Bench", Category.LEGAL_FILING, "")
SIZES = [pytest.param(n, id=str(n)) for n in (100, 1_000, 10_000)]

FIRST = ["Jane", "Mark", "Alan", "Rebecca", "Thomas", "Samuel", "Gregory", "Daniel", "Maria"]
MIDDLE = ["", "R.", "A.", "T.", "M."]
ORG_SUFFIX = ["LLC", "L.L.C.", "Inc.", "Corp.", "Partners", "Bank"]
SYLLABLES = ["hol", "lo", "way", "mer", "id", "ian", "pier", "ce", "whit", "field", "lind", "qvist"]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def generate_mentions(count: int, seed: int = 7) -> list[Mention]:
    """A document-like mix: a pool of people and companies (about one per 10 mentions)
    written in varied forms, plus dates and amounts, with many repeats."""
    rng = random.Random(seed)
    people = [
        (rng.choice(FIRST), rng.choice(MIDDLE), _word(rng)) for _ in range(max(count // 20, 3))
    ]
    orgs = [(_word(rng), _word(rng)) for _ in range(max(count // 20, 3))]
    mentions = []
    for n in range(count):
        roll = rng.random()
        if roll < 0.4:
            first, middle, last = rng.choice(people)
            value = rng.choice(
                [
                    f"{first} {middle} {last}".replace("  ", " "),
                    f"Ms. {last}",
                    last,
                    f"{first} {last}",
                ]
            )
            entity_type = EntityType.PERSON
        elif roll < 0.75:
            a, b = rng.choice(orgs)
            value = rng.choice([f"{a} {b} {rng.choice(ORG_SUFFIX)}", f"{a} {b}", a])
            entity_type = EntityType.ORG
        elif roll < 0.9:
            value = f"March {rng.randint(1, 28)}, {rng.randint(2015, 2024)}"
            entity_type = EntityType.DATE
        else:
            value = f"${rng.randint(1, 500) * 1000:,}.00"
            entity_type = EntityType.MONEY
        chunk_index = n // 20
        start = (n % 20) * 50
        mentions.append(
            Mention(
                uuid=stable_uuid(DOC.uuid, "mention", chunk_index, start, entity_type),
                document_uuid=DOC.uuid,
                chunk_uuid=stable_uuid(DOC.uuid, "chunk", chunk_index),
                chunk_index=chunk_index,
                value=value,
                normalized_value=normalize_value(value, entity_type),
                entity_type=entity_type,
                confidence=0.9,
                start=start,
                end=start + len(value),
            )
        )
    return mentions


def chunks_for(mentions: list[Mention]) -> list[Chunk]:
    count = max(m.chunk_index for m in mentions) + 1
    return [
        Chunk(stable_uuid(DOC.uuid, "chunk", i), DOC.uuid, i, 1000 * i, 1000 * (i + 1), "x" * 1000)
        for i in range(count)
    ]


@pytest.mark.parametrize("size", SIZES)
def test_bench_resolve_mentions(benchmark: Benchmark, size: int) -> None:
    mentions = generate_mentions(size)
    resolution = benchmark(resolve_mentions, DOC.uuid, mentions)
    assert len(resolution.mention_canonical) == size
    assert len(resolution.entities) < size


@pytest.mark.parametrize("size", SIZES)
def test_bench_stage_relationships(benchmark: Benchmark, size: int) -> None:
    mentions = generate_mentions(size)
    resolution = resolve_mentions(DOC.uuid, mentions)
    resolved = resolution.apply(mentions)
    chunks = chunks_for(resolved)
    relationships = benchmark(stage_relationships, DOC, chunks, resolved, resolution.entities)
    assert len(relationships) == expected_relationship_count(len(chunks), size)
