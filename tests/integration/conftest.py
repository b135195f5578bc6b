"""Throw-away PostgreSQL databases for integration tests.

`postgres_url` gives each test module its own freshly created database
(`docpipe_test_<hex>`), dropped when the module is done; a test that needs a
database of its own calls `postgres_databases.create()` (dropped at session
end). The admin URL defaults to the local cluster with trust auth and can be
overridden with DOCPIPE_TEST_POSTGRES_URL. An unreachable server fails the
tests, unless DOCPIPE_SKIP_POSTGRES=1 asks to skip them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

ADMIN_URL_ENV = "DOCPIPE_TEST_POSTGRES_URL"
SKIP_ENV = "DOCPIPE_SKIP_POSTGRES"
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


class PostgresDatabases:
    """Creates uniquely named databases and drops them again (WITH (FORCE))."""

    def __init__(self, admin_url: str) -> None:
        url = make_url(admin_url)
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        self._url = url
        self._admin: Engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        self._created: list[str] = []

    def ping(self) -> None:
        with self._admin.connect() as conn:
            conn.execute(text("SELECT 1"))

    def create(self) -> str:
        """Create an empty database; returns its URL (psycopg 3 driver)."""
        name = f"docpipe_test_{uuid.uuid4().hex[:16]}"
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        self._created.append(name)
        return self._url.set(database=name).render_as_string(hide_password=False)

    def drop(self, database_url: str) -> None:
        name = make_url(database_url).database
        if name is None or name not in self._created:
            raise ValueError(f"{database_url} was not created here")
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self._created.remove(name)

    def drop_all(self) -> None:
        for name in list(self._created):
            self.drop(self._url.set(database=name).render_as_string(hide_password=False))
        self._admin.dispose()


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    admin_url = os.environ.get(ADMIN_URL_ENV) or DEFAULT_ADMIN_URL
    databases = PostgresDatabases(admin_url)
    try:
        databases.ping()
    except OperationalError as exc:
        databases.drop_all()
        message = (
            f"PostgreSQL is unreachable at {make_url(admin_url)!r}: {exc.orig}. Start it "
            "(pg_ctlcluster --skip-systemctl-redirect <version> main start), point "
            f"{ADMIN_URL_ENV} at a server, or set {SKIP_ENV}=1 to skip these tests."
        )
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    yield databases
    databases.drop_all()


@pytest.fixture(scope="module")
def postgres_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """A fresh, empty throw-away database for this test module (dropped afterwards)."""
    url = postgres_databases.create()
    yield url
    postgres_databases.drop(url)
