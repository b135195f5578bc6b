"""Neo4jGraphSink without a Neo4j server: what can honestly be checked here.

- the statements are constants from allow-lists; data travels only in parameters;
- batching, ordering and the allow-list refusal;
- the sink's transaction/constraint behaviour and error mapping, against a small
  recording double of the driver's session API, and the *real* driver against a
  closed loopback port (ServiceUnavailable -> transient, fast);
- the exact statements executed by kuzu, an embedded Cypher engine: they parse,
  store hostile text verbatim, a replay duplicates nothing, and a reprocessed
  document leaves no node of its old version (other documents untouched).

Not checked (no server): Neo4j's own parsing/planning of these statements, the
constraint DDL, auth, routing, and behaviour under concurrent writers.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from neo4j import exceptions as neo4j_errors

from pipeline.adapters.neo4j_graph import (
    CONSTRAINT_STATEMENTS,
    DOCUMENT_OWNED_LABELS,
    INDEX_STATEMENTS,
    NODE_LABELS,
    NODE_STATEMENTS,
    PRUNE_STATEMENTS,
    RELATIONSHIP_STATEMENTS,
    Neo4jGraphSink,
    create_neo4j_driver,
    plan_statements,
)
from pipeline.bootstrap import build_services
from pipeline.domain.models import (
    Relationship,
)
from pipeline.errors import ConfigurationError, PermanentError, TransientError
from pipeline.testing.contracts.graph import HOSTILE, document_graph
from pipeline.testing.kuzu_graph import KUZU_SCHEMA
from tests.conftest import embedded_settings

# --- the statements ---------------------------------------------------------------------


def test_statements_are_constants_and_hostile_text_travels_only_in_parameters() -> None:
    graph = document_graph(HOSTILE)
    statements = plan_statements(*graph)

    writes = set(NODE_STATEMENTS.values()) | set(RELATIONSHIP_STATEMENTS.values())
    prunes = set(PRUNE_STATEMENTS.values())
    assert {s.query for s in statements} <= writes | prunes
    for statement in statements:
        expected = {"document_uuid"} if statement.query in prunes else {"rows"}
        assert set(statement.parameters) == expected
        for value in HOSTILE:
            assert value not in statement.query
    stored = [
        row["value"]
        for s in statements
        if s.query == NODE_STATEMENTS["EntityMention"]
        for row in s.parameters["rows"]
    ]
    assert stored == HOSTILE  # verbatim, unescaped: the driver sends them as values


def test_every_node_and_edge_is_merged_on_stable_ids_so_a_replay_plans_the_same() -> None:
    first = plan_statements(*document_graph(HOSTILE))
    again = plan_statements(*document_graph(HOSTILE))
    assert first == again
    for query in NODE_STATEMENTS.values():
        assert query.startswith("UNWIND $rows AS row MERGE (n:") and "{uuid: row.uuid}" in query
        assert "CREATE" not in query
    for query in RELATIONSHIP_STATEMENTS.values():
        assert "MATCH (a:" in query and "MATCH (b:" in query and "MERGE (a)-[r:" in query
        assert "CREATE" not in query


def test_nodes_are_written_before_edges_in_batches() -> None:
    values = [f"Org {i}" for i in range(1201)]
    statements = plan_statements(*document_graph(values), batch_size=500)
    queries = [s.query for s in statements]
    mention_batches = [
        len(s.parameters["rows"]) for s in statements if s.query == NODE_STATEMENTS["EntityMention"]
    ]
    assert mention_batches == [500, 500, 201]
    last_node = max(i for i, q in enumerate(queries) if q in NODE_STATEMENTS.values())
    first_edge = min(i for i, q in enumerate(queries) if q in RELATIONSHIP_STATEMENTS.values())
    assert last_node < first_edge


def test_relationships_outside_the_allow_list_are_refused() -> None:
    document, chunks, mentions, entities, relationships = document_graph(["Acme Corp"])
    injected = Relationship(
        from_id=chunks[0].uuid,
        from_label="Chunk",
        to_id=document.uuid,
        to_label="Document",
        relationship_type="OWNS]->(x) DETACH DELETE x //",
    )
    with pytest.raises(PermanentError, match="allow-list"):
        plan_statements(document, chunks, mentions, entities, [*relationships, injected])
    odd_property = Relationship(
        from_id=chunks[0].uuid,
        from_label="Chunk",
        to_id=document.uuid,
        to_label="Document",
        relationship_type="BELONGS_TO",
        properties={"x = 1 DETACH DELETE b //": 1},
    )
    with pytest.raises(PermanentError, match="unknown properties"):
        plan_statements(document, chunks, mentions, entities, [odd_property])


def test_a_write_first_removes_the_documents_own_nodes_by_document_uuid() -> None:
    document, *_ = graph = document_graph(["Acme Corp"])
    statements = plan_statements(*graph)
    assert [s.query for s in statements[: len(DOCUMENT_OWNED_LABELS)]] == [
        PRUNE_STATEMENTS[label] for label in DOCUMENT_OWNED_LABELS
    ]
    assert all(
        s.parameters == {"document_uuid": document.uuid}
        for s in statements[: len(DOCUMENT_OWNED_LABELS)]
    )
    assert set(INDEX_STATEMENTS) == set(DOCUMENT_OWNED_LABELS)


def test_constraint_statements_cover_every_label() -> None:
    assert set(CONSTRAINT_STATEMENTS) == set(NODE_LABELS)
    assert CONSTRAINT_STATEMENTS["Chunk"] == (
        "CREATE CONSTRAINT chunk_uuid IF NOT EXISTS FOR (n:Chunk) REQUIRE n.uuid IS UNIQUE"
    )


# --- the sink against a recording double of the driver's session API ---------------------


class RecordingDriver:
    """Just the surface the sink uses: session(database) -> run / begin_transaction."""

    def __init__(self, fail_on: str | None = None, error: Exception | None = None) -> None:
        self.fail_on = fail_on
        self.error = error
        self.autocommit: list[str] = []
        self.committed: list[list[tuple[str, dict[str, Any]]]] = []
        self.databases: list[str] = []
        self.transaction_timeouts: list[float | None] = []

    def session(self, database: str) -> RecordingDriver._Session:
        self.databases.append(database)
        return RecordingDriver._Session(self)

    def close(self) -> None:
        pass

    class _Result:
        def consume(self) -> None:
            pass

    class _Session:
        def __init__(self, driver: RecordingDriver) -> None:
            self.driver = driver

        def __enter__(self) -> RecordingDriver._Session:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def run(self, query: str) -> RecordingDriver._Result:
            self.driver.autocommit.append(query)
            return RecordingDriver._Result()

        def begin_transaction(self, timeout: float | None = None) -> RecordingDriver._Tx:
            self.driver.transaction_timeouts.append(timeout)
            return RecordingDriver._Tx(self.driver)

    class _Tx:
        def __init__(self, driver: RecordingDriver) -> None:
            self.driver = driver
            self.ran: list[tuple[str, dict[str, Any]]] = []

        def __enter__(self) -> RecordingDriver._Tx:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def run(self, query: str, parameters: dict[str, Any]) -> RecordingDriver._Result:
            if self.driver.fail_on is not None and self.driver.fail_on in query:
                assert self.driver.error is not None
                raise self.driver.error
            self.ran.append((query, parameters))
            return RecordingDriver._Result()

        def commit(self) -> None:
            self.driver.committed.append(self.ran)


def test_a_document_is_one_transaction_and_constraints_are_created_once() -> None:
    driver = RecordingDriver()
    sink = Neo4jGraphSink(driver, "docs")  # type: ignore[arg-type]
    graph = document_graph(HOSTILE)
    sink.write(*graph)
    sink.write(*graph)

    assert driver.autocommit == [*CONSTRAINT_STATEMENTS.values(), *INDEX_STATEMENTS.values()]
    assert len(driver.committed) == 2
    assert driver.committed[0] == [(s.query, s.parameters) for s in plan_statements(*graph)]
    assert set(driver.databases) == {"docs"}


def test_the_write_transaction_carries_the_configured_timeout() -> None:
    # Only the prefork pool enforces Celery's time limits: on threads the server-side
    # transaction timeout is what ends a hung graph write.
    driver = RecordingDriver()
    sink = Neo4jGraphSink(driver, "docs", timeout_s=1.5)  # type: ignore[arg-type]
    sink.write(*document_graph(["Acme Corp"]))
    assert driver.transaction_timeouts == [1.5]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (neo4j_errors.ServiceUnavailable("gone"), TransientError),
        (neo4j_errors.SessionExpired("expired"), TransientError),
        (neo4j_errors.TransientError("deadlock"), TransientError),
        (neo4j_errors.AuthError("bad credentials"), PermanentError),
        (neo4j_errors.CypherSyntaxError("bad syntax"), PermanentError),
        (neo4j_errors.ConstraintError("duplicate"), PermanentError),
    ],
)
def test_driver_errors_are_mapped_and_nothing_is_committed(
    error: Exception, expected: type[Exception]
) -> None:
    driver = RecordingDriver(fail_on="CONTAINS_MENTION", error=error)
    sink = Neo4jGraphSink(driver, "neo4j")  # type: ignore[arg-type]
    with pytest.raises(expected) as raised:
        sink.write(*document_graph(["Acme Corp"]))
    assert type(raised.value) is expected
    assert driver.committed == []


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_real_driver_without_a_server_fails_transient_and_fast() -> None:
    driver = create_neo4j_driver(f"bolt://127.0.0.1:{_closed_port()}", user="neo4j", password="pw")
    sink = Neo4jGraphSink(driver, "neo4j")
    try:
        with pytest.raises(TransientError, match="ServiceUnavailable"):
            sink.write(*document_graph(["Acme Corp"]))
    finally:
        sink.close()


# --- wiring and the guard ---------------------------------------------------------------


def test_bootstrap_builds_the_sink_for_a_loopback_bolt_url_without_connecting(
    tmp_path: Path,
) -> None:
    settings = embedded_settings(
        tmp_path, graph_url=f"bolt://127.0.0.1:{_closed_port()}", neo4j_password="s3cret-pw"
    )
    services = build_services(settings)
    assert isinstance(services.graph, Neo4jGraphSink)
    services.graph.close()
    assert "s3cret-pw" not in repr(settings)


@pytest.mark.parametrize(
    "url", ["neo4j+s://abcd1234.databases.neo4j.io", "bolt://neo4j.internal:7687"]
)
def test_a_remote_neo4j_is_refused_under_tests(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigurationError, match="Neo4j is a real cloud adapter"):
        build_services(embedded_settings(tmp_path, graph_url=url))


def test_an_unknown_graph_scheme_is_a_configuration_error_with_the_password_redacted(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        build_services(embedded_settings(tmp_path, graph_url="http://user:hunter2@host/db"))
    assert "hunter2" not in str(raised.value)


# --- the exact statements on an embedded Cypher engine --------------------------------------


@pytest.fixture
def kuzu_connection(tmp_path: Path) -> Iterator[Any]:
    kuzu = pytest.importorskip("kuzu")
    database = kuzu.Database(str(tmp_path / "graph.kuzu"))
    connection = kuzu.Connection(database)
    for ddl in KUZU_SCHEMA:
        connection.execute(ddl)
    yield connection
    connection.close()
    database.close()


def _count(connection: Any, query: str) -> int:
    return int(connection.execute(query).get_next()[0])


def test_kuzu_runs_the_exact_statements_stores_hostile_text_and_a_replay_adds_nothing(
    kuzu_connection: Any,
) -> None:
    graph = document_graph(HOSTILE, chunk_count=3)
    statements = plan_statements(*graph, batch_size=2)
    for _ in range(2):  # a replayed document
        for statement in statements:
            kuzu_connection.execute(statement.query, statement.parameters)

    _, chunks, mentions, entities, relationships = graph
    assert _count(kuzu_connection, "MATCH (n) RETURN count(n)") == (
        2 + len(chunks) + len(mentions) + len(entities)
    )
    assert _count(kuzu_connection, "MATCH ()-[r]->() RETURN count(r)") == len(relationships)
    values = kuzu_connection.execute("MATCH (m:EntityMention) RETURN m.value").get_all()
    assert sorted(v[0] for v in values) == sorted(HOSTILE)
    names = kuzu_connection.execute("MATCH (e:CanonicalEntity) RETURN e.canonical_name").get_all()
    assert sorted(v[0] for v in names) == sorted(HOSTILE)


def test_kuzu_a_reprocessed_document_leaves_nothing_of_its_old_version_and_spares_others(
    kuzu_connection: Any,
) -> None:
    def write(graph: Any) -> None:
        for statement in plan_statements(*graph):
            kuzu_connection.execute(statement.query, statement.parameters)

    other = document_graph(["Other Holdings"], chunk_count=2, name="d2")
    write(other)
    write(document_graph(HOSTILE, chunk_count=3))
    reprocessed = document_graph(["Acme Corp"], chunk_count=1)
    write(reprocessed)

    nodes = 2 + 1  # project, and both documents
    for _, chunks, mentions, entities, _relationships in (reprocessed, other):
        nodes += len(chunks) + len(mentions) + len(entities)
    assert _count(kuzu_connection, "MATCH (n) RETURN count(n)") == nodes
    edges = len(reprocessed[4]) + len(other[4])
    # Document-to-project edges of both documents are MERGEd once each.
    assert _count(kuzu_connection, "MATCH ()-[r]->() RETURN count(r)") == edges
    names = kuzu_connection.execute("MATCH (e:CanonicalEntity) RETURN e.canonical_name").get_all()
    assert sorted(v[0] for v in names) == ["Acme Corp", "Other Holdings"]
