"""`docpipe flower` refuses weak credentials and never puts them on the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from pipeline.cli import flower as flower_module
from pipeline.cli.flower import COMMANDS, flower_auth_problem, flower_invocation
from pipeline.errors import ConfigurationError
from pipeline.settings import Settings
from tests.conftest import REPO, docpipe

GOOD = "ops:9f2c4e1a7b3d5f60"
BROKER = "redis://:brokerpw@127.0.0.1:6390/0"

flower_cmd = COMMANDS[0]


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(autouse=True)
def _no_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings() also reads ./.env: run every test where none exists.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DOCPIPE_FLOWER_BASIC_AUTH", raising=False)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("opsonly9f2c4e1a", id="no-colon"),
        pytest.param(":9f2c4e1a7b3d5f60", id="no-user"),
        pytest.param("ops:", id="no-password"),
        pytest.param("ops:9f2c4e1a,7b3d5f60", id="comma-splits-into-two-logins"),
        pytest.param("ops:9f2c4e1a 7b3d5f60", id="whitespace"),
        pytest.param("ops:9f2c4e1a\n", id="newline"),
        pytest.param("ops:s3cr3t!", id="shorter-than-8"),
        pytest.param("admin:password", id="admin:password-the-seed-default"),
        pytest.param("ops:password", id="password"),
        pytest.param("ops:admin", id="admin"),
        pytest.param("ops:changeme", id="changeme"),
        pytest.param("ops:Change-Me", id="changeme-dressed-up"),
        pytest.param("ops:flower", id="flower"),
        pytest.param("ops:secret", id="secret"),
        pytest.param("ops:123456", id="123456"),
        pytest.param("ops:12345678", id="12345678"),
        pytest.param("ops:PASSWORD1", id="password1"),
        pytest.param("ops:changeme-to-something-random", id="placeholder"),
        pytest.param("operator:operator", id="password-equals-user"),
        pytest.param("Operator:operator", id="password-equals-user-any-case"),
        pytest.param("ops:P@ssw0rd", id="P@ssw0rd-l33t-of-a-common-password"),
        pytest.param("ops:Summer2024!", id="season-year-symbol"),
        pytest.param("ops:qwertyuiop", id="keyboard-row"),
        pytest.param("ops:docpipe2024", id="service-name-and-year"),
        pytest.param("ops:ops12345678", id="user-name-and-digits"),
        pytest.param("ops:abcdefghijkl", id="sequence"),
    ],
)
def test_flower_auth_problem_refuses_missing_malformed_and_default_credentials(
    value: str | None,
) -> None:
    problem = flower_auth_problem(value)
    assert problem is not None
    assert "DOCPIPE_FLOWER_BASIC_AUTH" in problem
    assert "\n" not in problem
    if value:
        assert value not in problem


@pytest.mark.parametrize(
    "value", [GOOD, "ops:correct-horse-battery-staple", "a:b:c:d:e:f:g:h:i", "ops:Zx8!qL2#rT5"]
)
def test_flower_auth_problem_accepts_user_and_a_non_default_password(value: str) -> None:
    assert flower_auth_problem(value) is None


@pytest.mark.parametrize(
    "value",
    [None, "ops", "admin:password", "ops:changeme", "ops:short", "ops:a,b:cdefghij"],
)
def test_the_command_exits_2_with_one_line_naming_the_variable(value: str | None) -> None:
    env = {"DOCPIPE_BROKER_URL": BROKER, "DOCPIPE_FLOWER_BASIC_AUTH": value}
    result = CliRunner().invoke(flower_cmd, [], env=env)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: DOCPIPE_FLOWER_BASIC_AUTH")
    assert "Traceback" not in result.output
    if value:
        assert value not in result.output


def test_the_command_refuses_the_in_process_memory_broker() -> None:
    env = {"DOCPIPE_BROKER_URL": "memory://", "DOCPIPE_FLOWER_BASIC_AUTH": GOOD}
    result = CliRunner().invoke(flower_cmd, [], env=env)
    assert result.exit_code == 2
    assert "DOCPIPE_BROKER_URL" in result.output
    assert GOOD.partition(":")[2] not in result.output


def test_invalid_settings_are_a_one_line_usage_error_too() -> None:
    env = {"DOCPIPE_FLOWER_BASIC_AUTH": GOOD, "DOCPIPE_CHUNK_MIN_CHARS": "many"}
    result = CliRunner().invoke(flower_cmd, [], env=env)
    assert result.exit_code == 2
    assert result.output.startswith("error: invalid settings: chunk_min_chars")
    assert len(result.output.strip().splitlines()) == 1


def test_invocation_passes_credentials_only_through_the_environment() -> None:
    password = GOOD.partition(":")[2]
    base_env = {
        "PATH": "/usr/bin",
        "FLOWER_UNAUTHENTICATED_API": "true",
        "FLOWER_BASIC_AUTH": "admin:password",
        "FLOWER_ADDRESS": "0.0.0.0",
        "DOCPIPE_FLOWER_BASIC_AUTH": GOOD,
        "DOCPIPE_EAGER": "true",
    }
    argv, env = flower_invocation(
        settings(broker_url=BROKER, flower_basic_auth=SecretStr(GOOD)),
        5999,
        "127.0.0.1",
        base_env=base_env,
    )

    assert argv[:6] == [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "pipeline.runtime.celery_app",
        "flower",
    ]
    assert "--port=5999" in argv
    assert "--address=127.0.0.1" in argv
    assert not any(password in arg or "basic" in arg.lower() for arg in argv)
    assert not any("brokerpw" in arg for arg in argv)
    assert env == {
        "PATH": "/usr/bin",
        "FLOWER_BASIC_AUTH": GOOD,
        "DOCPIPE_BROKER_URL": BROKER,
        "DOCPIPE_EAGER": "false",
    }


def test_invocation_raises_a_configuration_error_without_the_secret() -> None:
    weak = "ops:changeme"
    with pytest.raises(ConfigurationError, match="DOCPIPE_FLOWER_BASIC_AUTH") as caught:
        flower_invocation(
            settings(broker_url=BROKER, flower_basic_auth=SecretStr(weak)), 5555, "127.0.0.1"
        )
    assert "changeme" not in str(caught.value)


def test_a_good_credential_launches_flower_with_it_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    launched: list[tuple[list[str], dict[str, str]]] = []

    def record(argv: list[str], env: dict[str, str]) -> None:
        launched.append((argv, env))

    monkeypatch.setattr(flower_module, "_launch", record)
    env = {"DOCPIPE_BROKER_URL": BROKER, "DOCPIPE_FLOWER_BASIC_AUTH": GOOD}
    result = CliRunner().invoke(flower_cmd, ["--port", "6001"], env=env)

    assert result.exit_code == 0, result.output
    [(argv, child_env)] = launched
    assert "--port=6001" in argv and "--address=127.0.0.1" in argv
    assert child_env["FLOWER_BASIC_AUTH"] == GOOD
    assert "DOCPIPE_FLOWER_BASIC_AUTH" not in child_env
    assert "brokerpw" not in result.output  # the broker URL is shown redacted
    assert GOOD.partition(":")[2] not in result.output


def test_a_public_address_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flower_module, "_launch", lambda argv, env: None)
    env = {"DOCPIPE_BROKER_URL": BROKER, "DOCPIPE_FLOWER_BASIC_AUTH": GOOD}
    result = CliRunner().invoke(flower_cmd, ["--address", "0.0.0.0"], env=env)
    assert result.exit_code == 0
    assert "warning:" in result.output and "/metrics" in result.output


def test_help_says_metrics_stay_open_and_to_use_a_proxy() -> None:
    result = CliRunner().invoke(flower_cmd, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "/metrics and /healthcheck answer WITHOUT auth" in text
    assert "proxy" in text and "127.0.0.1" in text


def test_the_example_env_file_ships_credentials_the_command_refuses() -> None:
    example = (REPO / "deploy" / "docpipe.env.example").read_text()
    [line] = [ln for ln in example.splitlines() if ln.startswith("DOCPIPE_FLOWER_BASIC_AUTH=")]
    assert flower_auth_problem(line.partition("=")[2]) is not None


def test_refusal_in_a_real_process_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from pipeline.cli.flower import COMMANDS; COMMANDS[0]()"],
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "HOME": str(tmp_path),
            "DOCPIPE_BROKER_URL": BROKER,
            "DOCPIPE_FLOWER_BASIC_AUTH": "admin:admin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: DOCPIPE_FLOWER_BASIC_AUTH")


def test_credentials_from_a_dotenv_file_are_checked_the_same_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flower_module, "_launch", lambda argv, env: None)
    (tmp_path / ".env").write_text(
        f"DOCPIPE_BROKER_URL={BROKER}\nDOCPIPE_FLOWER_BASIC_AUTH=ops:flower\n"
    )
    assert CliRunner().invoke(flower_cmd, []).exit_code == 2
    (tmp_path / ".env").write_text(
        f"DOCPIPE_BROKER_URL={BROKER}\nDOCPIPE_FLOWER_BASIC_AUTH={GOOD}\n"
    )
    assert CliRunner().invoke(flower_cmd, []).exit_code == 0


@pytest.mark.parametrize(
    "value",
    ["ops:P@ssw0rd", "ops:Summer2024!", "ops:qwertyuiop", "ops:Welcome123!", "ops:monkey123"],
)
def test_weak_passwords_are_refused_by_the_strength_rule_with_its_explanation(value: str) -> None:
    problem = flower_auth_problem(value)
    assert problem is not None
    assert "too easy to guess" in problem and "zxcvbn strength" in problem
    assert "at least 3 needed" in problem
    assert value.partition(":")[2] not in problem


def test_p_at_ssw0rd_is_refused_by_the_command_in_a_real_process(tmp_path: Path) -> None:
    proc = docpipe(
        tmp_path,
        "flower",
        env={"DOCPIPE_BROKER_URL": BROKER, "DOCPIPE_FLOWER_BASIC_AUTH": "ops:P@ssw0rd"},
        real_process=True,
    )
    assert proc.returncode == 2
    assert "DOCPIPE_FLOWER_BASIC_AUTH: the password is too easy to guess" in proc.stderr
    assert "P@ssw0rd" not in proc.stdout + proc.stderr
