"""Workers refuse settings they cannot share: `docpipe worker` and plain `celery worker` alike.

Each case is a subprocess, as a user starts it. A refusal needs no broker: the
settings checks come before any connection, so the URLs below point at ports
nothing listens on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.runtime.broker import broker_problems
from pipeline.settings import Settings
from tests.conftest import REPO

#: Nothing listens here; a refusal must come before any connection attempt.
UNUSED_REDIS = "redis://127.0.0.1:9"
REFUSAL = "error: cannot start a worker: "


def start_worker(
    cwd: Path, command: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`docpipe worker ARGS` or `celery -A pipeline.runtime.celery_app ARGS`, in a clean env."""
    base = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "HOME": str(cwd),
        "DOCPIPE_UNDER_TEST": "1",
        "DOCPIPE_ALLOW_CLOUD": "false",
    }
    prefix = (
        ["-m", "pipeline", "worker"]
        if command == "docpipe"
        else ["-m", "celery", "-A", "pipeline.runtime.celery_app"]
    )
    return subprocess.run(
        [sys.executable, *prefix, *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        # A worker that failed to refuse would run until killed: the timeout fails the test.
        timeout=60,
    )


def shared_settings(tmp_path: Path) -> dict[str, str]:
    """Settings a worker accepts (as far as the settings go): separate Redis databases."""
    return {
        "DOCPIPE_BROKER_URL": f"{UNUSED_REDIS}/0",
        "DOCPIPE_REDIS_URL": f"{UNUSED_REDIS}/1",
        "DOCPIPE_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}",
        "DOCPIPE_BLOB_URL": f"file://{tmp_path / 'blobs'}",
    }


def refusal_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    # Refused before Celery prints its banner or touches a broker.
    assert "[queues]" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(REFUSAL)]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_plain_celery_refuses_the_embedded_default_exactly_as_docpipe_worker(
    tmp_path: Path,
) -> None:
    by_docpipe = refusal_line(start_worker(tmp_path, "docpipe", "-Q", "ocr"))
    by_celery = refusal_line(start_worker(tmp_path, "celery", "worker", "-Q", "ocr"))
    assert by_celery == by_docpipe
    assert "DOCPIPE_BROKER_URL is memory://" in by_celery
    assert "DOCPIPE_REDIS_URL is fakeredis://" in by_celery


def test_celery_b_option_that_disagrees_with_docpipe_is_refused(tmp_path: Path) -> None:
    other = "redis://:s3cret-pass@127.0.0.1:9/5"
    env = shared_settings(tmp_path)
    line = refusal_line(
        start_worker(tmp_path, "celery", "-b", other, "worker", "-Q", "ocr", env=env)
    )
    assert "CELERY_BROKER_URL (redis://:***@127.0.0.1:9/5" in line
    assert f"differs from DOCPIPE_BROKER_URL ({UNUSED_REDIS}/0)" in line
    assert "s3cret-pass" not in line


def test_celery_broker_url_variable_is_refused_by_both_commands(tmp_path: Path) -> None:
    env = {**shared_settings(tmp_path), "CELERY_BROKER_URL": f"{UNUSED_REDIS}/7"}
    by_docpipe = refusal_line(start_worker(tmp_path, "docpipe", "-Q", "ocr", env=env))
    by_celery = refusal_line(start_worker(tmp_path, "celery", "worker", "-Q", "ocr", env=env))
    assert by_celery == by_docpipe
    assert "CELERY_BROKER_URL" in by_celery


def shared_redis_settings() -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, broker_url="redis://h:6379/0", redis_url="redis://h:6379/1"
    )


@pytest.mark.parametrize(
    ("environ", "refused"),
    [
        ({}, False),
        ({"CELERY_BROKER_URL": "redis://h:6379/0"}, False),
        # The same database written two ways.
        ({"CELERY_BROKER_URL": "redis://h:6379"}, False),
        ({"CELERY_BROKER_URL": "redis://h:6379/2"}, True),
        ({"CELERY_BROKER_URL": "amqp://guest@h//"}, True),
        ({"CELERY_RESULT_BACKEND": "redis://h:6379/3"}, True),
    ],
)
def test_celery_variables_must_agree_with_docpipe_settings(
    environ: dict[str, str], refused: bool
) -> None:
    problems = broker_problems(shared_redis_settings(), environ)
    assert bool(problems) is refused, problems
    if refused:
        assert next(iter(environ)) in problems[0]
