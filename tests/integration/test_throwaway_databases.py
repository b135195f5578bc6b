"""Throw-away databases and vhosts left behind by a killed creator go with the next run.

A real PostgreSQL (the integration tests' admin URL) and RabbitMQ (its management API,
and rabbitmqctl); each database and vhost here is the test's own, named
`docpipe_test_<hex>` as `PostgresDatabases` and `RabbitVhosts` name them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from pipeline.errors import ConfigurationError
from pipeline.harness.localstack import (
    ABANDONED_AFTER_S,
    OWNER_NOTE,
    PostgresDatabases,
    RabbitVhosts,
    machine_identity,
    process_start,
    throwaway_name,
)
from tests.integration.conftest import postgres_admin_url

pytestmark = pytest.mark.integration


@dataclass
class Admin:
    engine: Engine
    made: list[str] = field(default_factory=list)


@pytest.fixture
def admin(postgres_databases: PostgresDatabases) -> Iterator[Admin]:
    """An admin connection; the databases the test made (`docpipe_test_*`) dropped after it."""
    engine = create_engine(
        make_url(postgres_admin_url()), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    made = Admin(engine)
    yield made
    with engine.connect() as conn:
        for name in made.made:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def _database(admin: Admin, *, comment: str | None) -> str:
    name = throwaway_name()
    with admin.engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.made.append(name)
        if comment is not None:
            conn.execute(text(f"COMMENT ON DATABASE \"{name}\" IS '{comment}'"))
    return name


def _owner(*, pid: int, start: int | None, age_s: float, host: str | None = None) -> str:
    here, boot = machine_identity()
    created = int(time.time() - age_s)
    return OWNER_NOTE.format(host=host or here, boot=boot, pid=pid, start=start, created=created)


def _existing(admin: Admin, names: list[str]) -> set[str]:
    with admin.engine.connect() as conn:
        rows = conn.execute(text("SELECT datname FROM pg_database")).scalars()
        return set(rows) & set(names)


def test_a_killed_creators_databases_are_dropped_and_no_others(admin: Admin) -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    me, my_start = os.getpid(), process_start(os.getpid())
    old = 2 * ABANDONED_AFTER_S
    abandoned = _database(admin, comment=_owner(pid=finished.pid, start=1, age_s=old))
    # Our pid, but another process's start time: the creator's pid was reused.
    reused = _database(admin, comment=_owner(pid=me, start=1, age_s=old))
    running = _database(admin, comment=_owner(pid=me, start=my_start, age_s=old))
    recent = _database(admin, comment=_owner(pid=finished.pid, start=1, age_s=1))
    elsewhere = _database(
        admin, comment=_owner(pid=finished.pid, start=1, age_s=old, host="another-host")
    )
    unmarked = _database(admin, comment=None)
    in_use = _database(admin, comment=_owner(pid=finished.pid, start=1, age_s=old))
    url = make_url(postgres_admin_url()).set(database=in_use)
    user = create_engine(url, poolclass=NullPool)
    with user.connect():
        databases = PostgresDatabases(postgres_admin_url())
        own = databases.create()  # the first create drops what was abandoned
        try:
            left = _existing(
                admin, [abandoned, reused, running, recent, elsewhere, unmarked, in_use]
            )
        finally:
            databases.drop(own)
    user.dispose()

    assert left == {running, recent, elsewhere, unmarked, in_use}


def test_a_database_the_creator_still_uses_is_never_abandoned(
    postgres_databases: PostgresDatabases,
) -> None:
    databases = PostgresDatabases(postgres_admin_url())
    own = databases.create()
    try:
        assert make_url(own).database not in databases.drop_abandoned(older_than_s=0)
    finally:
        databases.drop(own)


def _add_vhost(vhosts: RabbitVhosts, name: str, note: str) -> None:
    if vhosts.via == "management API":
        vhosts._api_call("PUT", f"/api/vhosts/{name}", {"description": note})
    else:
        vhosts._rabbitmqctl("add_vhost", name, "--description", note)


def _delete_vhost(vhosts: RabbitVhosts, name: str) -> None:
    with contextlib.suppress(ConfigurationError):
        if vhosts.via == "management API":
            vhosts._api_call("DELETE", f"/api/vhosts/{name}", None)
        else:
            vhosts._rabbitmqctl("delete_vhost", name)


@pytest.mark.parametrize("via", ["management API", "rabbitmqctl"])
def test_a_killed_creators_vhosts_are_deleted_and_no_others(
    rabbitmq_vhosts: RabbitVhosts, via: str
) -> None:
    sweeper = RabbitVhosts(rabbitmq_vhosts.url("/"))
    sweeper.ping()
    try:
        if via == "management API" and sweeper.via != via:
            pytest.skip("the RabbitMQ management API does not answer here")
        sweeper.via = via
        sweeper._throwaway_vhosts()
    except ConfigurationError as exc:
        pytest.skip(f"{via} cannot reach the server: {exc}")
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    me = os.getpid()
    notes = {
        "abandoned": _owner(pid=finished.pid, start=1, age_s=2 * ABANDONED_AFTER_S),
        "running": _owner(pid=me, start=process_start(me), age_s=2 * ABANDONED_AFTER_S),
        "recent": _owner(pid=finished.pid, start=1, age_s=1),
    }
    names = {label: throwaway_name() for label in notes}
    try:
        for label, note in notes.items():
            _add_vhost(rabbitmq_vhosts, names[label], note)
        sweeper.delete_abandoned()
        listed = {name for name, _ in sweeper._throwaway_vhosts()}
    finally:
        for name in names.values():
            _delete_vhost(rabbitmq_vhosts, name)

    # Gone, by this sweep or by another test process's first `create` meanwhile.
    assert names["abandoned"] not in listed
    assert {names["running"], names["recent"]} <= listed
