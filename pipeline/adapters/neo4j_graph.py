"""Neo4j graph sink: the official driver, batched `UNWIND ... MERGE` on stable ids.

Every statement is a constant string built from fixed allow-lists of labels
and relationship types; all data (ids, entity text, properties) travels only
in parameters, so text with quotes, backticks or Cypher keywords is stored
verbatim and cannot inject. MERGE on the stable uuids makes a replayed
document write the same nodes and edges again, never duplicates. A write first
removes the document's own nodes (chunks, mentions, canonical entities, by
`document_uuid`), in the same transaction: a reprocessed document with fewer
chunks or other entities leaves nothing of its old version behind. Uniqueness
constraints and `document_uuid` indexes are created once per sink, on the
first write (the driver is lazy: building the sink never touches the network).

One document is written in one explicit transaction, without the driver's
own retry loop (`execute_write` would retry for up to 30 s): docpipe's task
retry policy decides, on the errors mapped here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import neo4j
from neo4j import exceptions as neo4j_errors

from pipeline.domain.graph import (
    CANONICAL_ENTITY,
    CHUNK,
    DOCUMENT,
    ENTITY_MENTION,
    PROJECT,
    RELATIONSHIP_PROPERTIES,
)
from pipeline.domain.models import CanonicalEntity, Chunk, DocumentNode, Mention, Relationship
from pipeline.errors import ConfigurationError, PermanentError, TransientError

#: Node labels, in the order nodes are written (edges need both ends to exist).
NODE_LABELS: tuple[str, ...] = (PROJECT, DOCUMENT, CHUNK, ENTITY_MENTION, CANONICAL_ENTITY)

#: Labels whose nodes belong to one document (`document_uuid`); rewritten as a whole.
DOCUMENT_OWNED_LABELS: tuple[str, ...] = (CHUNK, ENTITY_MENTION, CANONICAL_ENTITY)

#: The properties written per label (a fixed list: data never names a property).
NODE_PROPERTIES: dict[str, tuple[str, ...]] = {
    PROJECT: (),
    DOCUMENT: ("title", "category", "project_uuid"),
    CHUNK: ("document_uuid", "chunk_index", "start", "end", "text"),
    ENTITY_MENTION: (
        "document_uuid",
        "chunk_uuid",
        "value",
        "normalized_value",
        "entity_type",
        "confidence",
        "start",
        "end",
    ),
    CANONICAL_ENTITY: (
        "document_uuid",
        "entity_type",
        "canonical_name",
        "normalized_name",
        "mention_count",
    ),
}

RELATIONSHIP_KINDS: tuple[tuple[str, str, str], ...] = tuple(RELATIONSHIP_PROPERTIES)

DEFAULT_BATCH_SIZE = 500


def _set_clause(variable: str, properties: tuple[str, ...]) -> str:
    if not properties:
        return ""
    # Backticks: property names such as `end` are Cypher keywords.
    return " SET " + ", ".join(f"{variable}.`{p}` = row.`{p}`" for p in properties)


# The statements: built once, at import, from the constants above only. Explicit
# `SET n.p = row.p` (not `SET n += row.props`) keeps them in the Cypher subset an
# embedded engine (kuzu) also runs, so tests can execute them without a server.
CONSTRAINT_STATEMENTS: dict[str, str] = {
    label: (
        f"CREATE CONSTRAINT {label.lower()}_uuid IF NOT EXISTS "
        f"FOR (n:{label}) REQUIRE n.uuid IS UNIQUE"
    )
    for label in NODE_LABELS
}
INDEX_STATEMENTS: dict[str, str] = {
    label: (
        f"CREATE INDEX {label.lower()}_document_uuid IF NOT EXISTS "
        f"FOR (n:{label}) ON (n.document_uuid)"
    )
    for label in DOCUMENT_OWNED_LABELS
}
PRUNE_STATEMENTS: dict[str, str] = {
    label: f"MATCH (n:{label}) WHERE n.document_uuid = $document_uuid DETACH DELETE n"
    for label in DOCUMENT_OWNED_LABELS
}
NODE_STATEMENTS: dict[str, str] = {
    label: (
        f"UNWIND $rows AS row MERGE (n:{label} {{uuid: row.uuid}})"
        + _set_clause("n", NODE_PROPERTIES[label])
    )
    for label in NODE_LABELS
}
RELATIONSHIP_STATEMENTS: dict[tuple[str, str, str], str] = {
    (a, kind, b): (
        f"UNWIND $rows AS row "
        f"MATCH (a:{a} {{uuid: row.from_id}}) "
        f"MATCH (b:{b} {{uuid: row.to_id}}) "
        f"MERGE (a)-[r:{kind}]->(b)" + _set_clause("r", RELATIONSHIP_PROPERTIES[(a, kind, b)])
    )
    for a, kind, b in RELATIONSHIP_KINDS
}


@dataclass(frozen=True)
class Statement:
    """One Cypher statement and its parameters (the only place data goes)."""

    query: str
    parameters: dict[str, Any]


def node_rows(
    document: DocumentNode,
    chunks: Sequence[Chunk],
    mentions: Sequence[Mention],
    entities: Sequence[CanonicalEntity],
) -> dict[str, list[dict[str, Any]]]:
    """Rows per label: the uuid and the label's properties, as scalars."""
    return {
        PROJECT: [{"uuid": document.project_uuid}],
        DOCUMENT: [
            {
                "uuid": document.uuid,
                "title": document.title,
                "category": str(document.category),
                "project_uuid": document.project_uuid,
            }
        ],
        CHUNK: [
            {
                "uuid": c.uuid,
                "document_uuid": c.document_uuid,
                "chunk_index": c.chunk_index,
                "start": c.start,
                "end": c.end,
                "text": c.text,
            }
            for c in chunks
        ],
        ENTITY_MENTION: [
            {
                "uuid": m.uuid,
                "document_uuid": m.document_uuid,
                "chunk_uuid": m.chunk_uuid,
                "value": m.value,
                "normalized_value": m.normalized_value,
                "entity_type": str(m.entity_type),
                "confidence": m.confidence,
                "start": m.start,
                "end": m.end,
            }
            for m in mentions
        ],
        CANONICAL_ENTITY: [
            {
                "uuid": e.uuid,
                "document_uuid": e.document_uuid,
                "entity_type": str(e.entity_type),
                "canonical_name": e.canonical_name,
                "normalized_name": e.normalized_name,
                "mention_count": e.mention_count,
            }
            for e in entities
        ],
    }


def plan_statements(
    document: DocumentNode,
    chunks: Sequence[Chunk],
    mentions: Sequence[Mention],
    entities: Sequence[CanonicalEntity],
    relationships: Sequence[Relationship],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[Statement]:
    """The statements that write one document: its old nodes out, nodes by label, edges by kind.

    Pure: no driver needed, so the exact Cypher and parameters are testable
    without a server. Raises PermanentError for a relationship kind or an edge
    property outside the allow-lists (a bug upstream, never retried).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    statements = [
        Statement(PRUNE_STATEMENTS[label], {"document_uuid": document.uuid})
        for label in DOCUMENT_OWNED_LABELS
    ]
    for label, rows in node_rows(document, chunks, mentions, entities).items():
        statements.extend(
            Statement(NODE_STATEMENTS[label], {"rows": batch})
            for batch in _batches(rows, batch_size)
        )
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for rel in relationships:
        kind = (rel.from_label, rel.relationship_type, rel.to_label)
        allowed = RELATIONSHIP_PROPERTIES.get(kind)
        if allowed is None:
            raise PermanentError(f"relationship kind {kind!r} is not in the graph's allow-list")
        unknown = set(rel.properties) - set(allowed)
        if unknown:
            raise PermanentError(f"relationship {kind!r} has unknown properties {sorted(unknown)}")
        row: dict[str, Any] = {"from_id": rel.from_id, "to_id": rel.to_id}
        row.update({p: rel.properties.get(p) for p in allowed})
        grouped.setdefault(kind, []).append(row)
    for kind in RELATIONSHIP_KINDS:
        statements.extend(
            Statement(RELATIONSHIP_STATEMENTS[kind], {"rows": batch})
            for batch in _batches(grouped.get(kind, []), batch_size)
        )
    return statements


def _batches(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


class Neo4jGraphSink:
    """Implements `GraphSink` with the official neo4j driver."""

    def __init__(
        self,
        driver: neo4j.Driver,
        database: str,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        timeout_s: float | None = None,
    ) -> None:
        self._driver = driver
        self._database = database
        self._batch_size = batch_size
        #: The server aborts a write transaction running longer (a hung graph write ends
        #: on every pool, not only where Celery enforces time limits).
        self._timeout_s = timeout_s
        self._constraints_ready = False
        self._constraints_lock = threading.Lock()

    def ensure_constraints(self) -> None:
        """Create constraints and indexes once per sink (IF NOT EXISTS: harmless again)."""
        with self._constraints_lock:
            if self._constraints_ready:
                return
            with (
                _mapped_errors("creating constraints"),
                self._driver.session(database=self._database) as session,
            ):
                # Schema statements run in their own auto-commit transaction.
                for statement in [*CONSTRAINT_STATEMENTS.values(), *INDEX_STATEMENTS.values()]:
                    session.run(statement).consume()
            self._constraints_ready = True

    def write(
        self,
        document: DocumentNode,
        chunks: Sequence[Chunk],
        mentions: Sequence[Mention],
        entities: Sequence[CanonicalEntity],
        relationships: Sequence[Relationship],
    ) -> None:
        statements = plan_statements(
            document, chunks, mentions, entities, relationships, batch_size=self._batch_size
        )
        self.ensure_constraints()
        with (
            _mapped_errors(f"writing document {document.uuid}"),
            self._driver.session(database=self._database) as session,
            session.begin_transaction(timeout=self._timeout_s) as tx,
        ):
            for statement in statements:
                tx.run(statement.query, statement.parameters).consume()
            tx.commit()

    def close(self) -> None:
        self._driver.close()


@contextmanager
def _mapped_errors(doing: str) -> Iterator[None]:
    """Translate driver errors into docpipe's TransientError / PermanentError."""
    try:
        yield
    except (neo4j_errors.Neo4jError, neo4j_errors.DriverError) as exc:
        raise map_neo4j_error(exc, doing) from exc


def map_neo4j_error(exc: Exception, doing: str) -> TransientError | PermanentError:
    """Retryable: server unavailable, session expired, the server's transient class."""
    message = f"Neo4j {doing}: {type(exc).__name__}: {exc}"
    if isinstance(exc, neo4j_errors.ServiceUnavailable | neo4j_errors.SessionExpired):
        return TransientError(message)
    if isinstance(exc, neo4j_errors.Neo4jError) and exc.is_retryable():
        return TransientError(message)
    if isinstance(exc, neo4j_errors.DriverError) and exc.is_retryable():
        return TransientError(message)
    # AuthError, CypherSyntaxError, ConstraintError, ConfigurationError ...
    return PermanentError(message)


def create_neo4j_driver(
    url: str, *, user: str, password: str | None, timeout_s: float = 10.0
) -> neo4j.Driver:
    """A driver for `neo4j://`, `neo4j+s://`, `bolt://`...; it connects on first use.

    `timeout_s` bounds connecting and acquiring a connection.
    A URL the driver refuses (it quotes the whole URI, password included, e.g. for
    `bolt://user:password@host`) is a docpipe ConfigurationError with the text
    redacted and the driver's exception not chained (a traceback would print it).
    """
    auth = None if password is None else neo4j.basic_auth(user, password)
    try:
        # Connecting and waiting for a pooled connection are bounded too.
        return neo4j.GraphDatabase.driver(
            url,
            auth=auth,
            connection_timeout=min(10.0, timeout_s),
            connection_acquisition_timeout=timeout_s,
        )
    except (neo4j_errors.ConfigurationError, ValueError) as exc:
        hint = (
            "; give the user and password in DOCPIPE_NEO4J_USER / DOCPIPE_NEO4J_PASSWORD"
            if "userinfo" in str(exc)
            else ""
        )
        raise ConfigurationError(f"DOCPIPE_GRAPH_URL: {str(exc).rstrip('.')}{hint}") from None
