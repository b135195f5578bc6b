"""Relationship staging: exact edge counts, stable order, refusal of dangling mentions."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.domain.graph import expected_relationship_count, stage_relationships
from pipeline.domain.models import (
    CanonicalEntity,
    Category,
    Chunk,
    DocumentNode,
    EntityType,
    Mention,
    stable_uuid,
)

DOC = DocumentNode("doc-1", "project-1", "Complaint", Category.LEGAL_FILING, "text")


def make_chunks(count: int) -> list[Chunk]:
    return [
        Chunk(stable_uuid(DOC.uuid, "chunk", i), DOC.uuid, i, 10 * i, 10 * i + 10, "x" * 10)
        for i in range(count)
    ]


def make_entities(count: int) -> list[CanonicalEntity]:
    return [
        CanonicalEntity(
            stable_uuid(DOC.uuid, "entity", i), DOC.uuid, EntityType.PERSON, f"P{i}", f"p{i}", 1
        )
        for i in range(count)
    ]


def make_mentions(
    chunks: list[Chunk], entities: list[CanonicalEntity], picks: list[tuple[int, int]]
) -> list[Mention]:
    mentions = []
    for n, (chunk_pick, entity_pick) in enumerate(picks):
        chunk = chunks[chunk_pick % len(chunks)]
        entity = entities[entity_pick % len(entities)]
        mentions.append(
            Mention(
                uuid=stable_uuid(DOC.uuid, "mention", n),
                document_uuid=DOC.uuid,
                chunk_uuid=chunk.uuid,
                chunk_index=chunk.chunk_index,
                value=entity.canonical_name,
                normalized_value=entity.normalized_name,
                entity_type=entity.entity_type,
                confidence=0.9,
                start=n,
                end=n + 2,
                canonical_uuid=entity.uuid,
            )
        )
    return mentions


@given(
    st.integers(0, 25),
    st.lists(st.tuples(st.integers(0, 100), st.integers(0, 100)), max_size=40),
    st.randoms(use_true_random=False),
)
def test_relationship_counts_are_exact(
    chunk_count: int, picks: list[tuple[int, int]], rng: random.Random
) -> None:
    chunks = make_chunks(chunk_count)
    entities = make_entities(5)
    mentions = make_mentions(chunks, entities, picks) if chunks else []
    relationships = stage_relationships(DOC, chunks, mentions, entities)

    kinds = Counter((r.from_label, r.relationship_type, r.to_label) for r in relationships)
    m = len(mentions)
    assert (
        kinds
        == Counter(
            {
                ("Document", "BELONGS_TO", "Project"): 1,
                ("Chunk", "BELONGS_TO", "Document"): chunk_count,
                ("Chunk", "NEXT_CHUNK", "Chunk"): max(chunk_count - 1, 0),
                ("Chunk", "PREVIOUS_CHUNK", "Chunk"): max(chunk_count - 1, 0),
                ("Chunk", "CONTAINS_MENTION", "EntityMention"): m,
                ("EntityMention", "MEMBER_OF_CLUSTER", "CanonicalEntity"): m,
            }
        )
        - Counter()
    )  # drop zero counts
    assert len(relationships) == expected_relationship_count(chunk_count, m)
    edges = [(r.from_id, r.relationship_type, r.to_id) for r in relationships]
    assert len(set(edges)) == len(edges)

    # Input order does not matter.
    shuffled_chunks, shuffled_mentions = chunks[:], mentions[:]
    rng.shuffle(shuffled_chunks)
    rng.shuffle(shuffled_mentions)
    assert stage_relationships(DOC, shuffled_chunks, shuffled_mentions, entities) == relationships


def test_edges_point_the_right_way() -> None:
    chunks = make_chunks(3)
    entities = make_entities(1)
    (mention,) = make_mentions(chunks, entities, [(1, 0)])
    relationships = stage_relationships(DOC, chunks, [mention], entities)
    by_type = {(r.relationship_type, r.from_id): r for r in relationships}

    project = relationships[0]
    assert (project.from_id, project.to_id) == (DOC.uuid, DOC.project_uuid)
    assert by_type[("NEXT_CHUNK", chunks[0].uuid)].to_id == chunks[1].uuid
    assert by_type[("PREVIOUS_CHUNK", chunks[1].uuid)].to_id == chunks[0].uuid
    contains = by_type[("CONTAINS_MENTION", chunks[1].uuid)]
    assert contains.to_id == mention.uuid
    member = by_type[("MEMBER_OF_CLUSTER", mention.uuid)]
    assert (member.to_id, member.properties["confidence"]) == (entities[0].uuid, 0.9)
    assert by_type[("BELONGS_TO", chunks[2].uuid)].properties == {"chunk_index": 2}


def test_a_mention_without_canonical_entity_is_refused_by_name() -> None:
    chunks = make_chunks(1)
    entities = make_entities(1)
    (mention,) = make_mentions(chunks, entities, [(0, 0)])
    orphan = replace(mention, canonical_uuid=None)
    with pytest.raises(ValueError, match=mention.uuid):
        stage_relationships(DOC, chunks, [orphan], entities)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"canonical_uuid": "no-such-entity"}, "unknown entity"),
        ({"chunk_uuid": "no-such-chunk"}, "unknown chunk"),
    ],
)
def test_dangling_mentions_are_refused(change: dict[str, str], message: str) -> None:
    chunks = make_chunks(1)
    entities = make_entities(1)
    (mention,) = make_mentions(chunks, entities, [(0, 0)])
    with pytest.raises(ValueError, match=message):
        stage_relationships(DOC, chunks, [replace(mention, **change)], entities)  # type: ignore[arg-type]


def test_chunks_of_another_document_or_repeated_indexes_are_refused() -> None:
    chunks = make_chunks(2)
    with pytest.raises(ValueError, match="belongs to document"):
        stage_relationships(DOC, [replace(chunks[0], document_uuid="other")], [], [])
    with pytest.raises(ValueError, match="chunk_index 1"):
        stage_relationships(DOC, [chunks[1], replace(chunks[0], chunk_index=1)], [], [])
