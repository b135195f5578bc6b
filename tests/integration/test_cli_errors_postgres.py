"""`docpipe run` against the local PostgreSQL: a missing database is a short error, exit 2."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from pipeline.harness.localstack import PostgresDatabases
from tests.conftest import docpipe
from tests.helpers import SHORT_AFFIDAVIT as GOOD
from tests.helpers import assert_json_error, assert_short_usage_error
from tests.integration.conftest import postgres_admin_url

pytestmark = pytest.mark.integration


def test_a_database_that_does_not_exist_is_named_with_what_to_do(
    tmp_path: Path, postgres_databases: PostgresDatabases
) -> None:
    (tmp_path / "good.txt").write_text(GOOD)
    missing = f"docpipe_missing_{uuid.uuid4().hex[:12]}"
    url = make_url(postgres_admin_url()).set(database=missing).render_as_string(False)

    result = docpipe(tmp_path, "run", "good.txt", "--database-url", url, "--json")

    assert_short_usage_error(result, f"database '{missing}' does not exist", f"createdb {missing}")
    assert_json_error(result, "does not exist")


def test_a_reachable_database_passes_the_check_and_the_run_completes(
    tmp_path: Path, postgres_url: str
) -> None:
    (tmp_path / "good.txt").write_text(GOOD)

    result = docpipe(tmp_path, "run", "good.txt", "--database-url", postgres_url, "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["totals"]["completed"] == 1
