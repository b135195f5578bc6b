"""An in-memory graph that behaves like the Neo4j sink: MERGE on stable ids."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.domain.graph import (
    CANONICAL_ENTITY,
    CHUNK,
    ENTITY_MENTION,
    RELATIONSHIP_PROPERTIES,
)
from pipeline.domain.models import CanonicalEntity, Chunk, DocumentNode, Mention, Relationship
from pipeline.errors import PermanentError
from pipeline.ports import Clock

#: Labels whose nodes belong to one document; a write replaces them as a whole.
DOCUMENT_OWNED_LABELS = (CHUNK, ENTITY_MENTION, CANONICAL_ENTITY)


class InMemoryGraphSink:
    """Nodes keyed by (label, id), edges by (from, type, to): replays never duplicate.

    As in the Neo4j sink, a write first removes the document's own nodes
    (chunks, mentions, canonical entities) and their edges, so a reprocessed
    document leaves nothing of its old version; a relationship kind or edge
    property outside the graph's allow-list is refused before anything is written.
    `write_seconds` (document uuid -> seconds) simulates the graph database's
    write time, slept on `clock` before the write. Writes from several threads (a
    threads worker's graph tasks) take turns, as Neo4j's transactions on the same
    nodes do: a prune walking the nodes while another write added some raised.
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
        self._writing = threading.Lock()

    def write(
        self,
        document: DocumentNode,
        chunks: Sequence[Chunk],
        mentions: Sequence[Mention],
        entities: Sequence[CanonicalEntity],
        relationships: Sequence[Relationship],
    ) -> None:
        for rel in relationships:
            kind = (rel.from_label, rel.relationship_type, rel.to_label)
            allowed = RELATIONSHIP_PROPERTIES.get(kind)
            if allowed is None:
                raise PermanentError(f"relationship kind {kind!r} is not in the graph's allow-list")
            unknown = set(rel.properties) - set(allowed)
            if unknown:
                raise PermanentError(
                    f"relationship {kind!r} has unknown properties {sorted(unknown)}"
                )
        if self._clock is not None and self._write_seconds is not None:
            self._clock.sleep(self._write_seconds(document.uuid))
        with self._writing:
            self._prune(document.uuid)
            self.nodes[("Project", document.project_uuid)] = {"uuid": document.project_uuid}
            self.nodes[("Document", document.uuid)] = {
                "uuid": document.uuid,
                "title": document.title,
                "category": str(document.category),
            }
            for chunk in chunks:
                self.nodes[(CHUNK, chunk.uuid)] = {
                    "uuid": chunk.uuid,
                    "index": chunk.chunk_index,
                    "document_uuid": chunk.document_uuid,
                }
            for mention in mentions:
                self.nodes[(ENTITY_MENTION, mention.uuid)] = {
                    "uuid": mention.uuid,
                    "value": mention.value,
                    "type": str(mention.entity_type),
                    "document_uuid": mention.document_uuid,
                }
            for entity in entities:
                self.nodes[(CANONICAL_ENTITY, entity.uuid)] = {
                    "uuid": entity.uuid,
                    "name": entity.canonical_name,
                    "type": str(entity.entity_type),
                    "document_uuid": entity.document_uuid,
                }
            for rel in relationships:
                allowed = RELATIONSHIP_PROPERTIES[
                    (rel.from_label, rel.relationship_type, rel.to_label)
                ]
                self.edges[(rel.from_id, rel.relationship_type, rel.to_id)] = {
                    name: rel.properties.get(name) for name in allowed
                }

    def _prune(self, document_uuid: str) -> None:
        """DETACH DELETE of the document's own nodes: the nodes and every edge they touch."""
        owned = {
            key
            for key, properties in self.nodes.items()
            if key[0] in DOCUMENT_OWNED_LABELS and properties.get("document_uuid") == document_uuid
        }
        for key in owned:
            del self.nodes[key]
        gone = {uuid for _, uuid in owned}
        for edge in [e for e in self.edges if e[0] in gone or e[2] in gone]:
            del self.edges[edge]
