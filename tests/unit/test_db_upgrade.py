"""`docpipe db upgrade` on SQLite, and the PostgreSQL/Supabase URL options (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from pipeline.adapters.sql import create_database_engine, postgres_engine_options
from pipeline.adapters.sql.migrations import LATEST_VERSION
from pipeline.cli import main
from pipeline.errors import ConfigurationError

SUPABASE_POOLER = (
    "postgresql://postgres.abcdefghijklmnop:s3cret-pw@aws-0-eu-central-1.pooler.supabase.com"
    ":6543/postgres?sslmode=require"
)


def test_upgrade_on_sqlite_is_repeatable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    runner = CliRunner()
    first = json.loads(
        runner.invoke(main, ["db", "upgrade", "--database-url", url, "--json"]).output
    )
    second = json.loads(
        runner.invoke(main, ["db", "upgrade", "--database-url", url, "--json"]).output
    )
    assert first["changed"] is True
    assert first["applied"] == list(range(1, LATEST_VERSION + 1))
    assert second["changed"] is False and second["created_tables"] == []


def test_upgrade_redacts_the_password_of_an_unreachable_database() -> None:
    url = "postgresql://docpipe:hunter2@127.0.0.1:1/docpipe?connect_timeout=2"
    result = CliRunner().invoke(main, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 1
    assert "hunter2" not in result.output


def test_supabase_pooler_url_keeps_ssl_and_disables_prepared_statements() -> None:
    url, connect_args = postgres_engine_options(make_url(SUPABASE_POOLER))
    assert url.drivername == "postgresql+psycopg"
    assert url.query == {"sslmode": "require"}
    assert url.port == 6543 and url.password == "s3cret-pw"
    assert connect_args == {"prepare_threshold": None}


@pytest.mark.parametrize(
    ("query", "expected"),
    [("prepare_threshold=none", None), ("prepare_threshold=5", 5), ("prepare_threshold=off", None)],
)
def test_prepare_threshold_moves_from_the_query_to_connect_args(
    query: str, expected: int | None
) -> None:
    url, connect_args = postgres_engine_options(
        make_url(f"postgresql://u:p@db.example.com:5432/postgres?sslmode=require&{query}")
    )
    assert url.query == {"sslmode": "require"}  # libpq would reject prepare_threshold
    assert connect_args == {"prepare_threshold": expected}


def test_a_direct_connection_keeps_prepared_statements() -> None:
    _, connect_args = postgres_engine_options(
        make_url("postgresql://u:p@db.abcdefghijklmnop.supabase.co:5432/postgres?sslmode=require")
    )
    assert connect_args == {}


def test_a_bad_prepare_threshold_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="prepare_threshold"):
        create_database_engine("postgresql://u:p@h/db?prepare_threshold=often")


def test_the_engine_url_keeps_sslmode_for_libpq() -> None:
    engine = create_database_engine(SUPABASE_POOLER)
    try:
        assert engine.url.query == {"sslmode": "require"}
        _, kwargs = engine.dialect.create_connect_args(engine.url)
        assert kwargs["sslmode"] == "require" and "prepare_threshold" not in kwargs
    finally:
        engine.dispose()


@pytest.mark.parametrize(("query", "expected"), [("", "10"), ("?connect_timeout=3", "3")])
def test_postgres_connections_give_up_on_a_silent_host(query: str, expected: str) -> None:
    """libpq's default is the OS's TCP timeout (minutes); the URL's own value wins."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    engine = create_database_engine(f"postgresql://u:p@127.0.0.1:1/postgres{query}")
    seen: dict[str, object] = {}

    @event.listens_for(engine, "do_connect")
    def capture(dialect: object, record: object, cargs: object, cparams: dict[str, object]) -> None:
        seen.update(cparams)

    try:
        with pytest.raises(OperationalError):  # nothing listens on port 1: refused at once
            engine.connect()
        assert str(seen["connect_timeout"]) == expected
    finally:
        engine.dispose()


def test_upgrade_adds_the_content_hash_to_a_database_made_before_it(tmp_path: Path) -> None:
    """A version-2 database (no content_sha256) gets the column and its index from step 3."""
    from sqlalchemy import inspect, text

    from pipeline.adapters.sql.migrations import upgrade
    from pipeline.adapters.sql.schema import CONTENT_INDEX

    engine = create_database_engine(f"sqlite:///{tmp_path / 'old.db'}")
    assert upgrade(engine).applied == [1, 2, 3]
    with engine.begin() as conn:
        conn.execute(text(f"DROP INDEX {CONTENT_INDEX}"))
        conn.execute(text("ALTER TABLE source_documents DROP COLUMN content_sha256"))
        conn.execute(text("DELETE FROM schema_version WHERE version = 3"))
    result = upgrade(engine)
    assert result.applied == [3]
    inspector = inspect(engine)
    assert "content_sha256" in {c["name"] for c in inspector.get_columns("source_documents")}
    assert CONTENT_INDEX in {i["name"] for i in inspector.get_indexes("source_documents")}
    assert upgrade(engine).applied == []
    engine.dispose()


def test_a_database_older_than_the_code_is_refused_with_the_upgrade_command(
    tmp_path: Path,
) -> None:
    """Not "no such column" on the first query: exit 2, naming `docpipe db upgrade`."""
    from sqlalchemy import text

    from pipeline.adapters.sql import create_store
    from pipeline.adapters.sql.schema import CONTENT_INDEX
    from tests.conftest import GOOD, docpipe

    url = f"sqlite:///{tmp_path / '.docpipe' / 'docpipe.db'}"
    create_store(url).close()
    engine = create_database_engine(url)
    with engine.begin() as conn:  # what a database made before migration 3 looks like
        conn.execute(text(f"DROP INDEX {CONTENT_INDEX}"))
        conn.execute(text("ALTER TABLE source_documents DROP COLUMN content_sha256"))
    engine.dispose()
    with pytest.raises(ConfigurationError, match=r"older schema .*content_sha256"):
        create_store(url)

    (tmp_path / "a.txt").write_text(GOOD)
    refused = docpipe(tmp_path, "run", "a.txt")
    assert refused.returncode == 2
    assert "docpipe db upgrade" in refused.stderr and "Traceback" not in refused.stderr
    assert docpipe(tmp_path, "db", "upgrade").returncode == 0
    assert docpipe(tmp_path, "run", "a.txt").returncode == 0
