"""The `GraphSink` contract: what the graph holds after the graph stage wrote a document.

Observed through a reader the implementation's setup provides (the sink itself
only writes): the nodes as (label, uuid), the edges as (from uuid, type, to uuid),
and the mention values as stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from pipeline.domain.graph import stage_relationships
from pipeline.domain.models import (
    CanonicalEntity,
    Category,
    Chunk,
    DocumentNode,
    EntityType,
    Mention,
    Relationship,
    stable_uuid,
)
from pipeline.errors import PermanentError
from pipeline.ports import GraphSink

DocumentGraph = tuple[
    DocumentNode, list[Chunk], list[Mention], list[CanonicalEntity], list[Relationship]
]

#: Entity text that would break a graph query built by string concatenation.
HOSTILE = [
    'O\'Brien & "Sons" LLC',
    "`Robert`); DROP DATABASE neo4j; //",
    "x'}) DETACH DELETE n //",
    "MATCH (n) DETACH DELETE n",
    "$rows {uuid: 'a'} \\u0027 \\",
]


def document_graph(values: list[str], chunk_count: int = 2, name: str = "d1") -> DocumentGraph:
    """What the graph stage writes for one document whose chunks mention `values` (ORG)."""
    doc_uuid = stable_uuid("doc", name)
    document = DocumentNode(
        uuid=doc_uuid,
        project_uuid=stable_uuid("project", "p"),
        title="Title with `ticks` and 'quotes'",
        category=Category.CONTRACT,
        cleaned_text="...",
    )
    chunks = [
        Chunk(
            uuid=stable_uuid("chunk", doc_uuid, str(i)),
            document_uuid=doc_uuid,
            chunk_index=i,
            start=i * 100,
            end=i * 100 + 100,
            text=" ".join(values),
        )
        for i in range(chunk_count)
    ]
    entities: list[CanonicalEntity] = []
    mentions: list[Mention] = []
    for n, value in enumerate(values):
        entity = CanonicalEntity(
            uuid=stable_uuid("entity", doc_uuid, value),
            document_uuid=doc_uuid,
            entity_type=EntityType.ORG,
            canonical_name=value,
            normalized_name=value.lower(),
            mention_count=1,
        )
        entities.append(entity)
        mentions.append(
            Mention(
                uuid=stable_uuid("mention", doc_uuid, str(n)),
                document_uuid=doc_uuid,
                chunk_uuid=chunks[n % chunk_count].uuid,
                chunk_index=n % chunk_count,
                value=value,
                normalized_value=value.lower(),
                entity_type=EntityType.ORG,
                confidence=0.9,
                start=0,
                end=len(value),
                canonical_uuid=entity.uuid,
            )
        )
    relationships = stage_relationships(document, chunks, mentions, entities)
    return document, chunks, mentions, entities, relationships


def expected_nodes(*graphs: DocumentGraph) -> set[tuple[str, str]]:
    nodes: set[tuple[str, str]] = set()
    for document, chunks, mentions, entities, _ in graphs:
        nodes |= {("Project", document.project_uuid), ("Document", document.uuid)}
        nodes |= {("Chunk", c.uuid) for c in chunks}
        nodes |= {("EntityMention", m.uuid) for m in mentions}
        nodes |= {("CanonicalEntity", e.uuid) for e in entities}
    return nodes


def expected_edges(*graphs: DocumentGraph) -> set[tuple[str, str, str]]:
    return {(r.from_id, r.relationship_type, r.to_id) for g in graphs for r in g[4]}


@dataclass
class GraphSetup:
    sink: GraphSink
    #: Every node as (label, uuid).
    nodes: Callable[[], set[tuple[str, str]]]
    #: Every edge as (from uuid, relationship type, to uuid).
    edges: Callable[[], set[tuple[str, str, str]]]
    #: The `value` of every EntityMention node, as stored.
    mention_values: Callable[[], list[str]]


class GraphSinkContract:
    """Subclasses provide a `graph` fixture: a `GraphSetup` on an empty graph."""

    def test_a_document_is_written_as_its_nodes_and_edges(self, graph: GraphSetup) -> None:
        written = document_graph(["Acme Corp", "Meridian LLC"], chunk_count=3)

        graph.sink.write(*written)

        assert graph.nodes() == expected_nodes(written)
        assert graph.edges() == expected_edges(written)

    def test_a_replayed_write_adds_nothing(self, graph: GraphSetup) -> None:
        written = document_graph(["Acme Corp"], chunk_count=2)
        graph.sink.write(*written)
        graph.sink.write(*written)

        assert graph.nodes() == expected_nodes(written)
        assert graph.edges() == expected_edges(written)

    def test_entity_text_is_stored_verbatim(self, graph: GraphSetup) -> None:
        graph.sink.write(*document_graph(HOSTILE, chunk_count=3))

        assert sorted(graph.mention_values()) == sorted(HOSTILE)

    def test_a_reprocessed_document_leaves_nothing_of_its_old_version(
        self, graph: GraphSetup
    ) -> None:
        other = document_graph(["Other Holdings"], chunk_count=2, name="d2")
        graph.sink.write(*other)
        graph.sink.write(*document_graph(HOSTILE, chunk_count=3))
        reprocessed = document_graph(["Acme Corp"], chunk_count=1)

        graph.sink.write(*reprocessed)

        assert graph.nodes() == expected_nodes(reprocessed, other)
        assert graph.edges() == expected_edges(reprocessed, other)

    def test_a_relationship_outside_the_allow_list_is_refused_and_nothing_written(
        self, graph: GraphSetup
    ) -> None:
        document, chunks, mentions, entities, relationships = document_graph(["Acme Corp"])
        injected = Relationship(
            from_id=chunks[0].uuid,
            from_label="Chunk",
            to_id=document.uuid,
            to_label="Document",
            relationship_type="OWNS]->(x) DETACH DELETE x //",
        )

        with pytest.raises(PermanentError, match="allow-list"):
            graph.sink.write(document, chunks, mentions, entities, [*relationships, injected])

        assert graph.nodes() == set()
        assert graph.edges() == set()
