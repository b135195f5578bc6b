"""`docpipe db upgrade` on a throw-away PostgreSQL database: repeatable, and Supabase-style URLs."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from pipeline.adapters.sql import create_database_engine, create_store
from pipeline.adapters.sql.migrations import LATEST_VERSION
from pipeline.cli import main
from pipeline.harness.localstack import PostgresDatabases

pytestmark = pytest.mark.integration

SNAPSHOT = """
SELECT 'column', table_name || '.' || column_name || ':' || data_type || ':' || is_nullable
  FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'index', indexname || ':' || indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'constraint', conname || ':' || pg_get_constraintdef(c.oid)
  FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = 'public'
ORDER BY 1, 2
"""


def snapshot(url: str) -> list[tuple[str, str]]:
    engine = create_engine(make_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [(kind, item) for kind, item in conn.execute(text(SNAPSHOT))]
    finally:
        engine.dispose()


def upgrade(url: str) -> dict[str, object]:
    result = CliRunner().invoke(main, ["db", "upgrade", "--database-url", url, "--json"])
    assert result.exit_code == 0, result.output
    payload: dict[str, object] = json.loads(result.output)
    return payload


def test_upgrade_creates_the_schema_and_a_second_run_changes_nothing(
    postgres_databases: PostgresDatabases,
) -> None:
    # Its own empty database: the module's is shared with tests that create tables.
    postgres_url = postgres_databases.create()
    first = upgrade(postgres_url)
    assert first["changed"] is True
    assert first["from_version"] == 0 and first["to_version"] == LATEST_VERSION
    assert {"source_documents", "neo4j_chunks", "schema_version"} <= set(
        first["created_tables"]  # type: ignore[arg-type]
    )
    after_first = snapshot(postgres_url)

    second = upgrade(postgres_url)

    assert second["changed"] is False and second["applied"] == []
    assert second["from_version"] == second["to_version"] == LATEST_VERSION
    assert snapshot(postgres_url) == after_first
    engine = create_engine(make_url(postgres_url), poolclass=NullPool)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM schema_version")).scalar() == LATEST_VERSION
    engine.dispose()


def test_upgrade_adopts_a_database_the_store_created_without_touching_its_tables(
    postgres_databases: PostgresDatabases,
) -> None:
    url = postgres_databases.create()
    create_store(url).close()
    before = snapshot(url)

    result = upgrade(url)

    assert result["applied"] == list(range(1, LATEST_VERSION + 1))
    assert result["created_tables"] == ["schema_version"]
    assert [row for row in snapshot(url) if "schema_version" not in row[1]] == before


def test_the_store_works_with_libpq_ssl_options_and_prepared_statements_off(
    postgres_url: str,
) -> None:
    # The local server may have no TLS, so `prefer` stands in for Supabase's `require`:
    # what is shown is that libpq options pass through and prepare_threshold reaches psycopg.
    url = make_url(postgres_url).update_query_dict(
        {"sslmode": "prefer", "prepare_threshold": "none", "application_name": "docpipe-test"}
    )
    engine = create_database_engine(url.render_as_string(hide_password=False))
    try:
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            assert raw.prepare_threshold is None  # type: ignore[attr-defined]
            name = conn.execute(text("SHOW application_name")).scalar()
            assert name == "docpipe-test"
    finally:
        engine.dispose()
    store = create_store(url.render_as_string(hide_password=False))
    try:
        assert store.ensure_project("supabase-style") == store.ensure_project("supabase-style")
    finally:
        store.close()
