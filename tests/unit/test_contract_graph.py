"""The GraphSink contract on every implementation: the in-memory graph and the Neo4j
adapter executing its exact statements on kuzu (an embedded Cypher engine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.adapters.memory_graph import InMemoryGraphSink
from pipeline.adapters.neo4j_graph import Neo4jGraphSink
from pipeline.testing.contracts.graph import GraphSetup, GraphSinkContract


class TestInMemoryGraph(GraphSinkContract):
    @pytest.fixture
    def graph(self) -> GraphSetup:
        sink = InMemoryGraphSink()
        return GraphSetup(
            sink=sink,
            nodes=lambda: set(sink.nodes),
            edges=lambda: set(sink.edges),
            mention_values=lambda: [
                str(p["value"]) for (label, _), p in sink.nodes.items() if label == "EntityMention"
            ],
        )


class TestNeo4jAdapterOnKuzu(GraphSinkContract):
    @pytest.fixture
    def graph(self, tmp_path: Path) -> Iterator[GraphSetup]:
        pytest.importorskip("kuzu")
        from pipeline.testing.kuzu_graph import KuzuDriver

        driver = KuzuDriver(tmp_path / "graph.kuzu")
        sink = Neo4jGraphSink(driver, "neo4j", batch_size=2)  # type: ignore[arg-type]
        yield GraphSetup(
            sink=sink,
            nodes=lambda: {(r[0], r[1]) for r in driver.rows("MATCH (n) RETURN label(n), n.uuid")},
            edges=lambda: {
                (r[0], r[1], r[2])
                for r in driver.rows("MATCH (a)-[r]->(b) RETURN a.uuid, label(r), b.uuid")
            },
            mention_values=lambda: [
                r[0] for r in driver.rows("MATCH (m:EntityMention) RETURN m.value")
            ],
        )
        driver.close()
