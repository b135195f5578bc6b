"""The SQL adapter: the document store on SQLite (embedded default) or PostgreSQL.

base (transactions, dialect helpers), one module per role of the store port
(documents, derived, work_queue, dead_letters), store (the four joined),
engine (URLs to engines, `create_store`), schema and migrations.
"""

from pipeline.adapters.sql.engine import (
    create_database_engine,
    create_store,
    missing_columns,
    postgres_engine_options,
)
from pipeline.adapters.sql.store import SqlDocumentStore

__all__ = [
    "SqlDocumentStore",
    "create_database_engine",
    "create_store",
    "missing_columns",
    "postgres_engine_options",
]
