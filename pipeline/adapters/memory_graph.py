"""An in-memory graph that behaves like Neo4j MERGE on stable ids."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pipeline.domain.models import CanonicalEntity, Chunk, DocumentNode, Mention, Relationship
from pipeline.ports import Clock


class InMemoryGraphSink:
    """Nodes keyed by (label, id), edges by (from, type, to): replays never duplicate.

    `write_seconds` (document uuid -> seconds) simulates the graph database's
    write time, slept on `clock` before the write.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        write_seconds: Callable[[str], float] | None = None,
    ) -> None:
        self._clock = clock
        self._write_seconds = write_seconds
        self.nodes: dict[tuple[str, str], dict[str, Any]] = {}
        self.edges: dict[tuple[str, str, str], dict[str, Any]] = {}

    def write(
        self,
        document: DocumentNode,
        chunks: Sequence[Chunk],
        mentions: Sequence[Mention],
        entities: Sequence[CanonicalEntity],
        relationships: Sequence[Relationship],
    ) -> None:
        if self._clock is not None and self._write_seconds is not None:
            self._clock.sleep(self._write_seconds(document.uuid))
        self.nodes[("Project", document.project_uuid)] = {"uuid": document.project_uuid}
        self.nodes[("Document", document.uuid)] = {
            "uuid": document.uuid,
            "title": document.title,
            "category": str(document.category),
        }
        for chunk in chunks:
            self.nodes[("Chunk", chunk.uuid)] = {"uuid": chunk.uuid, "index": chunk.chunk_index}
        for mention in mentions:
            self.nodes[("EntityMention", mention.uuid)] = {
                "uuid": mention.uuid,
                "value": mention.value,
                "type": str(mention.entity_type),
            }
        for entity in entities:
            self.nodes[("CanonicalEntity", entity.uuid)] = {
                "uuid": entity.uuid,
                "name": entity.canonical_name,
                "type": str(entity.entity_type),
            }
        for rel in relationships:
            self.edges[(rel.from_id, rel.relationship_type, rel.to_id)] = dict(rel.properties)
