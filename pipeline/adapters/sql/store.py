"""`DocumentStore` on SQLAlchemy Core: one code path for SQLite and PostgreSQL.

The port's four roles (pipeline.ports.store) are four classes over one engine;
this class joins them, so one object serves a worker and the roles share the
engine's connection pool.
"""

from __future__ import annotations

from pipeline.adapters.sql.dead_letters import SqlDeadLetters
from pipeline.adapters.sql.derived import SqlDerivedRows
from pipeline.adapters.sql.documents import SqlDocumentRecords
from pipeline.adapters.sql.work_queue import SqlWorkQueue


class SqlDocumentStore(SqlDocumentRecords, SqlDerivedRows, SqlWorkQueue, SqlDeadLetters):
    """The `DocumentStore` port on a SQLAlchemy engine (SQLite or PostgreSQL).

    `clock` gives the timestamps (created_at, claimed_at, stale-claim cutoff);
    wall-clock time when omitted.
    """
