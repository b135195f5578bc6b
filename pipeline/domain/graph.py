"""Relationship staging: the edges of one document's graph, in a deterministic order.

Every id is a stable uuid already, so the Neo4j writer can MERGE on them and a
replayed document never duplicates a node or an edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from pipeline.domain.models import CanonicalEntity, Chunk, DocumentNode, Mention, Relationship

PROJECT = "Project"
DOCUMENT = "Document"
CHUNK = "Chunk"
ENTITY_MENTION = "EntityMention"
CANONICAL_ENTITY = "CanonicalEntity"

BELONGS_TO = "BELONGS_TO"
NEXT_CHUNK = "NEXT_CHUNK"
PREVIOUS_CHUNK = "PREVIOUS_CHUNK"
CONTAINS_MENTION = "CONTAINS_MENTION"
MEMBER_OF_CLUSTER = "MEMBER_OF_CLUSTER"

#: Every (from label, type, to label) the pipeline stages, with its edge properties
#: (`stage_relationships`); a graph sink refuses anything else (PermanentError).
RELATIONSHIP_PROPERTIES: dict[tuple[str, str, str], tuple[str, ...]] = {
    (DOCUMENT, BELONGS_TO, PROJECT): ("title", "category"),
    (CHUNK, BELONGS_TO, DOCUMENT): ("chunk_index",),
    (CHUNK, NEXT_CHUNK, CHUNK): ("from_index", "to_index"),
    (CHUNK, PREVIOUS_CHUNK, CHUNK): ("from_index", "to_index"),
    (CHUNK, CONTAINS_MENTION, ENTITY_MENTION): ("start", "end", "entity_type"),
    (ENTITY_MENTION, MEMBER_OF_CLUSTER, CANONICAL_ENTITY): ("confidence", "entity_type"),
}


def expected_relationship_count(chunks: int, mentions: int) -> int:
    """1 project edge + 1 per chunk + 2 per adjacent chunk pair + 2 per mention."""
    return 1 + chunks + 2 * max(chunks - 1, 0) + 2 * mentions


def stage_relationships(
    document: DocumentNode,
    chunks: Sequence[Chunk],
    mentions: Sequence[Mention],
    entities: Sequence[CanonicalEntity],
) -> list[Relationship]:
    """All edges of the document, ordered: project, chunks, chunk chain, mentions.

    Raises ValueError when a chunk belongs to another document or repeats an
    index, or when a mention has no canonical entity, points at an unknown
    chunk or at an entity not in `entities`.
    """
    ordered_chunks = sorted(chunks, key=lambda c: c.chunk_index)
    chunk_ids: set[str] = set()
    for i, chunk in enumerate(ordered_chunks):
        if chunk.document_uuid != document.uuid:
            raise ValueError(f"chunk {chunk.uuid} belongs to document {chunk.document_uuid}")
        if i and ordered_chunks[i - 1].chunk_index == chunk.chunk_index:
            raise ValueError(f"two chunks share chunk_index {chunk.chunk_index}")
        chunk_ids.add(chunk.uuid)
    entity_ids = {e.uuid for e in entities}

    relationships = [
        Relationship(
            from_id=document.uuid,
            from_label=DOCUMENT,
            to_id=document.project_uuid,
            to_label=PROJECT,
            relationship_type=BELONGS_TO,
            properties={"title": document.title, "category": str(document.category)},
        )
    ]
    relationships.extend(
        Relationship(
            from_id=chunk.uuid,
            from_label=CHUNK,
            to_id=document.uuid,
            to_label=DOCUMENT,
            relationship_type=BELONGS_TO,
            properties={"chunk_index": chunk.chunk_index},
        )
        for chunk in ordered_chunks
    )
    pairs = list(pairwise(ordered_chunks))
    relationships.extend(
        Relationship(
            from_id=a.uuid,
            from_label=CHUNK,
            to_id=b.uuid,
            to_label=CHUNK,
            relationship_type=NEXT_CHUNK,
            properties={"from_index": a.chunk_index, "to_index": b.chunk_index},
        )
        for a, b in pairs
    )
    relationships.extend(
        Relationship(
            from_id=b.uuid,
            from_label=CHUNK,
            to_id=a.uuid,
            to_label=CHUNK,
            relationship_type=PREVIOUS_CHUNK,
            properties={"from_index": b.chunk_index, "to_index": a.chunk_index},
        )
        for a, b in pairs
    )

    ordered_mentions = sorted(
        mentions, key=lambda m: (m.chunk_index, m.start, m.end, m.entity_type, m.uuid)
    )
    for mention in ordered_mentions:
        if mention.canonical_uuid is None:
            raise ValueError(f"mention {mention.uuid} ({mention.value!r}) has no canonical entity")
        if mention.chunk_uuid not in chunk_ids:
            raise ValueError(f"mention {mention.uuid} ({mention.value!r}) is in an unknown chunk")
        if mention.canonical_uuid not in entity_ids:
            raise ValueError(
                f"mention {mention.uuid} ({mention.value!r}) points at unknown entity "
                f"{mention.canonical_uuid}"
            )
    relationships.extend(
        Relationship(
            from_id=mention.chunk_uuid,
            from_label=CHUNK,
            to_id=mention.uuid,
            to_label=ENTITY_MENTION,
            relationship_type=CONTAINS_MENTION,
            properties={
                "start": mention.start,
                "end": mention.end,
                "entity_type": str(mention.entity_type),
            },
        )
        for mention in ordered_mentions
    )
    relationships.extend(
        Relationship(
            from_id=mention.uuid,
            from_label=ENTITY_MENTION,
            to_id=str(mention.canonical_uuid),
            to_label=CANONICAL_ENTITY,
            relationship_type=MEMBER_OF_CLUSTER,
            properties={"confidence": mention.confidence, "entity_type": str(mention.entity_type)},
        )
        for mention in ordered_mentions
    )
    return relationships
