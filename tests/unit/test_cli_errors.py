"""Usage, configuration and connection errors as a user meets them: a subprocess each.

Every one exits 2 with a few lines that name the setting or service and the
redacted URL - no traceback unless `docpipe -v` - and with `--json` stdout
still holds exactly one JSON object with an `error` field.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import docpipe
from tests.helpers import SHORT_AFFIDAVIT, assert_json_error, assert_short_usage_error

GOOD = SHORT_AFFIDAVIT
#: Credentials for the S3 client (botocore signs before it connects); never real ones.
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a hung service)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(timeout=2)
    for connection in accepted:
        connection.close()
    server.close()


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "good.txt").write_text(GOOD)
    return folder


def test_help_works_whatever_the_settings(tmp_path: Path) -> None:
    bad = {"DOCPIPE_MAX_RETRIES": "abc", "DOCPIPE_VISIBILITY_TIMEOUT_S": "100"}
    result = docpipe(tmp_path, "--help", env=bad)
    assert result.returncode == 0, result.stderr
    assert "Usage: docpipe" in result.stdout


@pytest.mark.parametrize("source", ["environment", "dotenv"])
def test_an_invalid_setting_names_its_variable(tmp_path: Path, inbox: Path, source: str) -> None:
    env = {}
    if source == "environment":
        env["DOCPIPE_MAX_RETRIES"] = "abc"
    else:
        (tmp_path / ".env").write_text("DOCPIPE_MAX_RETRIES=abc\n")

    result = docpipe(tmp_path, "run", "inbox", "--json", env=env)

    assert_short_usage_error(result, "DOCPIPE_MAX_RETRIES", "'abc'", ".env")
    assert_json_error(result, "DOCPIPE_MAX_RETRIES")
    assert not (tmp_path / ".docpipe" / "docpipe.db").exists()


def test_a_contradictory_setting_names_the_variables_involved(tmp_path: Path, inbox: Path) -> None:
    result = docpipe(tmp_path, "run", "inbox", env={"DOCPIPE_VISIBILITY_TIMEOUT_S": "100"})
    assert_short_usage_error(
        result, "DOCPIPE_VISIBILITY_TIMEOUT_S (100)", "DOCPIPE_TASK_TIME_LIMIT_S"
    )


def test_unreachable_postgres_names_the_redacted_url(tmp_path: Path, inbox: Path) -> None:
    url = f"postgresql://postgres:s3cret-pw@127.0.0.1:{closed_port()}/x"

    result = docpipe(tmp_path, "run", "inbox", "--database-url", url, "--json")

    shown = url.replace("s3cret-pw", "***")
    assert_short_usage_error(result, "cannot reach PostgreSQL", shown, "--database-url")
    assert_json_error(result, "cannot reach PostgreSQL", shown)
    assert "s3cret-pw" not in result.stdout + result.stderr


def test_a_database_url_that_is_not_a_url(tmp_path: Path, inbox: Path) -> None:
    plain = docpipe(tmp_path, "run", "inbox", "--database-url", "not-a-url")
    assert_short_usage_error(plain, "'not-a-url' is not a database URL", "sqlite:///")
    assert plain.stdout == ""  # the JSON object only with --json


def test_verbose_adds_the_traceback(tmp_path: Path, inbox: Path) -> None:
    result = docpipe(tmp_path, "-v", "run", "inbox", "--database-url", "not-a-url")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert "'not-a-url' is not a database URL" in result.stderr


def broker_env(tmp_path: Path, port: int) -> dict[str, str]:
    return {
        "DOCPIPE_BROKER_URL": f"redis://:hidden-pw@127.0.0.1:{port}/0",
        "DOCPIPE_REDIS_URL": f"redis://:hidden-pw@127.0.0.1:{port}/1",
        "DOCPIPE_DATABASE_URL": f"sqlite:///{tmp_path / 'broker.db'}",
        "DOCPIPE_BLOB_URL": f"file://{tmp_path / 'blobs'}",
    }


def test_broker_run_with_redis_down_fails_at_once(tmp_path: Path, inbox: Path) -> None:
    env = broker_env(tmp_path, closed_port())

    result = docpipe(tmp_path, "run", "--broker", "inbox", "--json", env=env)

    assert_short_usage_error(result, "cannot reach Redis (the broker)", "DOCPIPE_BROKER_URL")
    assert "redis://:***@127.0.0.1" in result.stderr
    assert_json_error(result, "cannot reach Redis (the broker)")
    assert "hidden-pw" not in result.stdout + result.stderr


def test_broker_run_against_a_hung_redis_shows_the_wait(
    tmp_path: Path, inbox: Path, silent_port: int
) -> None:
    result = docpipe(tmp_path, "run", "--broker", "inbox", env=broker_env(tmp_path, silent_port))

    assert_short_usage_error(result, "cannot reach Redis (the broker)", "Timeout")
    assert f"waiting for Redis (the broker) at redis://:***@127.0.0.1:{silent_port}/0" in (
        result.stderr
    )


def test_s3_unreachable_at_intake(tmp_path: Path, inbox: Path) -> None:
    env = {
        **FAKE_AWS,
        "DOCPIPE_BLOB_URL": "s3://docpipe-docs/in",
        "DOCPIPE_AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}",
    }

    result = docpipe(tmp_path, "run", "inbox", "--json", env=env)

    assert_short_usage_error(result, "cannot reach S3 at http://127.0.0.1:", "AWS_ENDPOINT_URL")
    assert_json_error(result, "cannot reach S3")


def test_a_usage_error_with_json_still_prints_one_object(tmp_path: Path) -> None:
    result = docpipe(tmp_path, "run", "nothing-here", "--json")
    assert_json_error(result, "nothing-here")


def test_any_command_reports_an_unreachable_database_in_short(tmp_path: Path) -> None:
    """Commands without the run's preflight: the CLI group still turns it into exit 2."""
    url = f"postgresql://postgres:s3cret-pw@127.0.0.1:{closed_port()}/x"

    result = docpipe(tmp_path, "documents", "--database-url", url, "--json")

    assert_short_usage_error(result, "database unavailable", "DOCPIPE_DATABASE_URL")
    assert_json_error(result, "database unavailable")
    assert "s3cret-pw" not in result.stdout + result.stderr


def test_a_click_usage_error_with_json_still_prints_one_object(tmp_path: Path) -> None:
    result = docpipe(tmp_path, "run", "--json")  # no PATHS

    assert result.returncode == 2
    assert "Missing argument" in result.stderr and "Traceback" not in result.stderr
    assert_json_error(result, "Missing argument")


def test_simulate_usage_errors_go_through_the_same_rendering(tmp_path: Path) -> None:
    result = docpipe(tmp_path, "simulate", "--docs", "10", "--llm-rate-limit", "nope", "--json")

    assert_short_usage_error(result, "--llm-rate-limit takes CALLS/WINDOW_S")
    assert_json_error(result, "--llm-rate-limit takes CALLS/WINDOW_S")


def test_a_hung_postgres_times_out_with_the_wait_shown(
    tmp_path: Path, inbox: Path, silent_port: int
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{silent_port}/x"

    result = docpipe(tmp_path, "run", "inbox", "--database-url", url)

    assert_short_usage_error(result, "cannot reach PostgreSQL", "timeout")
    assert f"waiting for PostgreSQL at {url}" in result.stderr


def test_an_invalid_scenario_file_is_a_usage_error_with_json_too(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.yaml"
    scenario.write_text("name: bad\nbogus: 1\n", encoding="utf-8")

    result = docpipe(tmp_path, "scenario", "run", str(scenario), "--json")

    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert_json_error(result, "invalid scenario file", "bogus: unknown key")
