"""Engines for `sqlite:///path` and `postgresql://...` URLs, and the store built on one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    inspect,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import StaticPool
from sqlalchemy.util import LRUCache

from pipeline.adapters.sql.base import SQLITE_BUSY_TIMEOUT_SECONDS
from pipeline.adapters.sql.hot import execute_raw
from pipeline.adapters.sql.schema import (
    BEGIN_IMMEDIATE,
    create_schema,
    metadata,
)
from pipeline.adapters.sql.store import SqlDocumentStore
from pipeline.errors import ConfigurationError, TransientError
from pipeline.ports import Clock
from pipeline.settings import redact_url


# --- engine construction ------------------------------------------------------------
def create_store(
    database_url: str, *, create: bool = True, clock: Clock | None = None
) -> SqlDocumentStore:
    """Build the store for a `sqlite:///path` or `postgresql://...` URL.

    `create` runs `create_schema` (idempotent). The caller owns the store and
    should `close()` it (workers: one per process, built after fork).
    """
    engine = create_database_engine(database_url)
    if create and _is_in_memory_sqlite(engine):
        # Nothing to adopt or check in a database born this instant: a copy of the schema.
        _copy_schema_template(engine)
    elif create:
        try:
            create_schema(engine)
            missing = missing_columns(engine)
        except OperationalError as exc:
            engine.dispose()
            raise TransientError(f"database unavailable: {exc.orig}") from exc
        if missing:
            engine.dispose()
            # `create_all` adds tables, never columns: a database made by an older
            # docpipe would fail later on its first query, as "no such column".
            raise ConfigurationError(
                f"the database at {redact_url(database_url)} has an older schema (missing "
                f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})",
                hint=f"run `docpipe db upgrade --database-url {redact_url(database_url)}` "
                "once, then run this command again",
            )
    return SqlDocumentStore(engine, clock=clock)


#: The serialized image of an in-memory SQLite database just after `create_schema`, made
#: once per process (bytes: safe across fork). Throw-away databases (simulated runs,
#: docpipe explore's thousands, tests) start as a copy: running the DDL and checking each
#: table's columns cost ~10 ms a store, deserializing the image a tenth of a millisecond.
_schema_template: bytes | None = None


def _is_in_memory_sqlite(engine: Engine) -> bool:
    """A private in-memory database (`sqlite://`); a named shared-cache one may hold data."""
    url = engine.url
    return engine.dialect.name == "sqlite" and (url.database or "") in ("", ":memory:")


def _copy_schema_template(engine: Engine) -> None:
    """Give the in-memory database of `engine` the schema `create_schema` makes."""
    global _schema_template
    if _schema_template is None:
        template = create_database_engine("sqlite://")
        try:
            create_schema(template)
            with template.connect() as conn:
                _schema_template = conn.connection.driver_connection.serialize()  # type: ignore[union-attr]
        finally:
            template.dispose()
    # One connection (StaticPool), kept by the engine: the copy is the database it serves.
    with engine.connect() as conn:
        conn.connection.driver_connection.deserialize(_schema_template)  # type: ignore[union-attr]


def missing_columns(engine: Engine) -> list[str]:
    """`table.column` of this code's schema that the database's existing tables lack."""
    with engine.connect() as conn:
        inspector = inspect(conn)
        present = set(inspector.get_table_names())
        missing = []
        for table in metadata.sorted_tables:
            if table.name in present:
                have = {column["name"] for column in inspector.get_columns(table.name)}
                missing += [f"{table.name}.{c.name}" for c in table.columns if c.name not in have]
    return missing


def create_database_engine(database_url: str) -> Engine:
    """An engine configured for the pipeline; PostgreSQL URLs use psycopg 3."""
    try:
        url = make_url(database_url)
    except ArgumentError:
        raise ConfigurationError(
            f"{redact_url(database_url)!r} is not a database URL "
            "(use sqlite:///PATH or postgresql://USER@HOST:PORT/DB)"
        ) from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url)
    if backend in ("postgresql", "postgres"):
        url, connect_args = postgres_engine_options(url)
        if "connect_timeout" not in url.query:
            # libpq would wait for the OS's TCP timeout (minutes) on a host that never answers.
            connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    raise ConfigurationError(f"unsupported database URL scheme {url.drivername!r}")


#: Seconds libpq waits for a PostgreSQL connection unless the URL sets connect_timeout.
POSTGRES_CONNECT_TIMEOUT_S = 10

#: Supabase's transaction-mode pooler (Supavisor): host suffix and port.
SUPABASE_POOLER_HOST = ".pooler.supabase.com"
SUPABASE_TRANSACTION_PORT = 6543


def postgres_engine_options(url: URL) -> tuple[URL, dict[str, Any]]:
    """The psycopg 3 URL and connect arguments for a PostgreSQL / Supabase URL.

    libpq options in the query (`sslmode=require`, `sslrootcert=...`,
    `connect_timeout=...`) stay in the URL and reach libpq unchanged.
    `prepare_threshold` is psycopg's, not libpq's: it is taken out of the query
    and passed as a connect argument (`none` disables prepared statements, which
    a transaction-mode pooler needs: the next transaction may run on another
    server connection that never saw the statement). On Supabase's pooler port
    6543 prepared statements are disabled unless the URL says otherwise.
    """
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    connect_args: dict[str, Any] = {}
    query = dict(url.query)
    if "prepare_threshold" in query:
        raw = query.pop("prepare_threshold")
        value = raw[-1] if isinstance(raw, tuple) else raw
        if value.strip().lower() in ("", "none", "null", "off", "false"):
            connect_args["prepare_threshold"] = None
        else:
            try:
                connect_args["prepare_threshold"] = int(value)
            except ValueError:
                raise ConfigurationError(
                    f"prepare_threshold must be an integer or 'none', not {value!r}"
                ) from None
        url = url.set(query=query)
    elif (url.host or "").endswith(SUPABASE_POOLER_HOST) and url.port == SUPABASE_TRANSACTION_PORT:
        connect_args["prepare_threshold"] = None
    return url, connect_args


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
    connect_args: dict[str, Any] = {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
    if in_memory:
        # One shared connection, or every checkout would see its own empty database.
        connect_args["check_same_thread"] = False
        engine = create_engine(url, connect_args=connect_args, poolclass=StaticPool)
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args=connect_args)
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)
    if in_memory:
        # Throw-away databases (simulated runs, tests) build an engine each; sharing the
        # compiled statements spares each one compiling every query again (same dialect,
        # same statements: SQLAlchemy's cache key is the statement's structure).
        return engine.execution_options(compiled_cache=_IN_MEMORY_COMPILED_CACHE)
    return engine


#: Compiled statements shared by the in-memory SQLite engines of this process.
_IN_MEMORY_COMPILED_CACHE: LRUCache[Any, Any] = LRUCache(2000)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (see _on_sqlite_begin): the pysqlite recipe.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _on_sqlite_begin(conn: Connection) -> None:
    """Write transactions take the lock up front.

    A deferred transaction that reads and then writes can fail at once with
    SQLITE_BUSY (busy_timeout cannot help when its snapshot is stale); with
    BEGIN IMMEDIATE writers simply queue for the lock.
    """
    immediate = conn.get_execution_options().get(BEGIN_IMMEDIATE, False)
    # On the DBAPI cursor: every transaction begins here, and SQLAlchemy's statement
    # execution would cost more than SQLite's BEGIN itself.
    execute_raw(conn, "BEGIN IMMEDIATE" if immediate else "BEGIN", {})
