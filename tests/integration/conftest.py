"""Throw-away PostgreSQL databases and RabbitMQ vhosts for integration tests.

`postgres_url` gives each test module its own freshly created database
(`docpipe_test_<hex>`), dropped when the module is done; a test that needs a
database of its own calls `postgres_databases.create()` (dropped at session
end). The admin URL defaults to the local cluster with trust auth and can be
overridden with DOCPIPE_TEST_POSTGRES_URL. An unreachable server fails the
tests, unless DOCPIPE_SKIP_POSTGRES=1 asks to skip them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pipeline.errors import ConfigurationError
from pipeline.harness.localstack import DEFAULT_RABBITMQ_URL, PostgresDatabases, RabbitVhosts
from pipeline.harness.scenarios.real_workers import background_stops
from pipeline.settings import get_settings

ADMIN_URL_ENV = "DOCPIPE_TEST_POSTGRES_URL"
SKIP_ENV = "DOCPIPE_SKIP_POSTGRES"
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def postgres_admin_url() -> str:
    return os.environ.get(ADMIN_URL_ENV) or DEFAULT_ADMIN_URL


@pytest.fixture(scope="session", autouse=True)
def broker_stacks_stopped() -> Iterator[None]:
    """Scenario runs here stop their stacks in the background (`stop_in_background`): the
    session ends once every one stopped, and fails if one could not."""
    yield
    background_stops.wait()


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases(postgres_admin_url())
    try:
        databases.ping()
    except ConfigurationError as exc:
        databases.drop_all()
        message = (
            f"{exc}. Start it "
            "(pg_ctlcluster --skip-systemctl-redirect <version> main start), point "
            f"{ADMIN_URL_ENV} at a server, or set {SKIP_ENV}=1 to skip these tests."
        )
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    yield databases
    databases.drop_all()


@pytest.fixture
def scenario_postgres(
    postgres_databases: PostgresDatabases, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Scenarios that cut the database off get their throw-away database on the test server."""
    monkeypatch.setenv("DOCPIPE_SCENARIO_POSTGRES_URL", postgres_admin_url())
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def postgres_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    """A fresh, empty throw-away database for this test module (dropped afterwards)."""
    url = postgres_databases.create()
    yield url
    postgres_databases.drop(url)


# --- RabbitMQ: a throw-away vhost per test module ------------------------------------------

RABBITMQ_URL_ENV = "DOCPIPE_SCENARIO_RABBITMQ_URL"


@pytest.fixture(scope="session")
def rabbitmq_vhosts() -> Iterator[RabbitVhosts]:
    """The local RabbitMQ (DOCPIPE_SCENARIO_RABBITMQ_URL overrides), or a skip if it is absent.

    Absent means nothing answers on its AMQP port; a server that answers but on
    which no vhost can be created fails the tests.
    """
    vhosts = RabbitVhosts(os.environ.get(RABBITMQ_URL_ENV) or DEFAULT_RABBITMQ_URL)
    try:
        vhosts.ping()
    except ConfigurationError as exc:
        if "unreachable" in str(exc):
            pytest.skip(
                f"{exc}. RabbitMQ is absent: install and start rabbitmq-server (.ci/run does) "
                f"or point {RABBITMQ_URL_ENV} at one"
            )
        raise
    yield vhosts
    vhosts.delete_all()


@pytest.fixture(scope="module")
def rabbitmq_url(rabbitmq_vhosts: RabbitVhosts) -> Iterator[str]:
    """The broker URL of a fresh vhost for this test module (deleted afterwards)."""
    url = rabbitmq_vhosts.create()
    yield url
    rabbitmq_vhosts.delete(url)
