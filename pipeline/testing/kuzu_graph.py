"""The Neo4j sink's statements on kuzu, an embedded Cypher engine: no server needed.

`KuzuDriver` is the part of the neo4j driver's API that `Neo4jGraphSink` uses
(sessions, explicit transactions, `run(...).consume()`), executing on a kuzu
database created with `KUZU_SCHEMA`. Neo4j's constraint and index DDL is not
kuzu's, so those statements are skipped (kuzu's primary keys play the
uniqueness constraints' part); every write statement runs exactly as sent to
Neo4j, inside one kuzu transaction per document. Needs the `kuzu` package.

Not covered: Neo4j's own planning of the statements, auth, routing, concurrency.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

#: Node and relationship tables for the labels and relationship kinds the sink writes.
KUZU_SCHEMA = (
    "CREATE NODE TABLE Project(uuid STRING, PRIMARY KEY(uuid))",
    "CREATE NODE TABLE Document(uuid STRING, title STRING, category STRING, "
    "project_uuid STRING, PRIMARY KEY(uuid))",
    "CREATE NODE TABLE Chunk(uuid STRING, document_uuid STRING, chunk_index INT64, "
    "start INT64, `end` INT64, text STRING, PRIMARY KEY(uuid))",
    "CREATE NODE TABLE EntityMention(uuid STRING, document_uuid STRING, chunk_uuid STRING, "
    "value STRING, normalized_value STRING, entity_type STRING, confidence DOUBLE, "
    "start INT64, `end` INT64, PRIMARY KEY(uuid))",
    "CREATE NODE TABLE CanonicalEntity(uuid STRING, document_uuid STRING, entity_type STRING, "
    "canonical_name STRING, normalized_name STRING, mention_count INT64, PRIMARY KEY(uuid))",
    "CREATE REL TABLE BELONGS_TO(FROM Document TO Project, FROM Chunk TO Document, "
    "title STRING, category STRING, chunk_index INT64)",
    "CREATE REL TABLE NEXT_CHUNK(FROM Chunk TO Chunk, from_index INT64, to_index INT64)",
    "CREATE REL TABLE PREVIOUS_CHUNK(FROM Chunk TO Chunk, from_index INT64, to_index INT64)",
    "CREATE REL TABLE CONTAINS_MENTION(FROM Chunk TO EntityMention, start INT64, "
    "`end` INT64, entity_type STRING)",
    "CREATE REL TABLE MEMBER_OF_CLUSTER(FROM EntityMention TO CanonicalEntity, "
    "confidence DOUBLE, entity_type STRING)",
)
_SCHEMA_PREFIXES = ("CREATE CONSTRAINT", "CREATE INDEX")


class _Result:
    def consume(self) -> None:
        return None


class _Transaction:
    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._open = True
        connection.execute("BEGIN TRANSACTION")

    def run(self, query: str, parameters: dict[str, Any] | None = None) -> _Result:
        self._connection.execute(query, parameters or {})
        return _Result()

    def commit(self) -> None:
        self._connection.execute("COMMIT")
        self._open = False

    def __enter__(self) -> _Transaction:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._open:  # left without commit (an error): nothing of it stays
            self._connection.execute("ROLLBACK")
            self._open = False


class _Session:
    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def run(self, query: str, parameters: dict[str, Any] | None = None) -> _Result:
        if not query.lstrip().upper().startswith(_SCHEMA_PREFIXES):
            self._connection.execute(query, parameters or {})
        return _Result()

    def begin_transaction(self, timeout: float | None = None) -> _Transaction:
        del timeout  # kuzu has no per-transaction timeout; the sink's value is not checked here
        return _Transaction(self._connection)

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


class KuzuDriver:
    """A kuzu database in `path` with `KUZU_SCHEMA`, behind the driver API the sink uses."""

    def __init__(self, path: Path) -> None:
        import kuzu

        self._database = kuzu.Database(str(path))
        self.connection = kuzu.Connection(self._database)
        for ddl in KUZU_SCHEMA:
            self.connection.execute(ddl)
        self.sessions: list[str] = []

    def session(self, database: str) -> _Session:
        self.sessions.append(database)
        return _Session(self.connection)

    def rows(self, query: str) -> list[list[Any]]:
        """All rows of a read query (for assertions)."""
        result: Any = self.connection.execute(query)
        return [list(row) for row in result.get_all()]

    def close(self) -> None:
        self.connection.close()
        self._database.close()
