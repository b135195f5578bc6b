"""Secrets never reach docpipe's messages, whatever vendor text quotes them (issue 11, item 4).

With `DOCPIPE_GRAPH_URL=bolt://neo4j:SECRET@host:1` the neo4j driver's error
printed the password. Vendor text enters docpipe's messages in one place (the
`PipelineError` constructor, plus `readable()` for unexpected exceptions), and
there every URL password and every secret setting is redacted.
"""

from __future__ import annotations

import io
import logging
import pickle
import socket
from pathlib import Path

import pytest
from celery.signals import after_setup_task_logger
from pydantic import SecretStr

from pipeline.adapters.neo4j_graph import Neo4jGraphSink, create_neo4j_driver
from pipeline.app.policy import readable
from pipeline.domain.models import Stage
from pipeline.errors import ConfigurationError, PermanentError, TransientError
from pipeline.redaction import RedactingFormatter, redact, redact_log_output, secret_values
from pipeline.settings import Settings
from pipeline.testing.contracts.graph import document_graph
from tests.conftest import GOOD, docpipe


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "secret"),
    [
        ("database_url", "postgresql://app:Db-Secret-1@db.example/x", "Db-Secret-1"),
        ("database_url", "postgresql://app:p%40ss%2Fw0rd-9@db/x", "p@ss/w0rd-9"),
        ("redis_url", "redis://:Redis-Secret-2@cache:6379/1", "Redis-Secret-2"),
        ("broker_url", "redis://user:Broker-Secret-3@mq:6379/0", "Broker-Secret-3"),
        ("result_backend", "redis://u:Backend-Secret-4@mq/2", "Backend-Secret-4"),
        ("graph_url", "bolt://neo4j:Graph-Secret-5@graph:7687", "Graph-Secret-5"),
        ("blob_url", "s3://key:Blob-Secret-6@bucket/prefix", "Blob-Secret-6"),
        ("scenario_postgres_url", "postgresql://pg:Admin-Secret-7@h/postgres", "Admin-Secret-7"),
        ("aws_endpoint_url", "http://k:Aws-Secret-8@127.0.0.1:5000", "Aws-Secret-8"),
        ("openai_base_url", "http://k:Oai-Url-Secret-9@127.0.0.1:9", "Oai-Url-Secret-9"),
        ("openai_api_key", SecretStr("sk-proj-Key-Secret-10"), "sk-proj-Key-Secret-10"),
        ("neo4j_password", SecretStr("Neo-Pw-Secret-11"), "Neo-Pw-Secret-11"),
        ("flower_basic_auth", SecretStr("ops:Flower-Secret-12"), "Flower-Secret-12"),
    ],
)
def test_every_secret_setting_is_redacted_even_when_not_url_shaped(
    field: str, value: object, secret: str
) -> None:
    settings(**{field: value})
    # Vendor text quoting the bare secret (no scheme://user:...@ around it).
    leaked = f"driver said: authentication failed for {secret!s} (at {secret})"

    assert secret not in redact(leaked)
    assert redact(leaked).count("***") == 2
    assert secret not in str(TransientError(leaked))
    assert secret not in str(PermanentError(leaked))
    assert secret not in str(ConfigurationError(leaked))


def test_a_url_password_is_redacted_even_from_settings_never_built() -> None:
    text = "could not connect to amqp://guest:Never-Seen-13@rabbit:5672//"
    assert redact(text) == "could not connect to amqp://guest:***@rabbit:5672//"


def test_short_values_are_not_treated_as_secrets() -> None:
    # A two-letter password would otherwise blank out every word containing it.
    assert secret_values([SecretStr("ab"), "redis://:cd@h/0"]) == set()


def test_the_redacted_error_survives_pickling_for_celery() -> None:
    settings(neo4j_password=SecretStr("Pickle-Secret-14"))
    error = TransientError("boom Pickle-Secret-14", retry_after=3)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == "boom ***"


def test_readable_redacts_unexpected_vendor_exceptions() -> None:
    settings(openai_api_key=SecretStr("sk-Readable-Secret-15"))
    message = readable(Stage.ENTITY_EXTRACTION, RuntimeError("401 for sk-Readable-Secret-15"))
    assert "sk-Readable-Secret-15" not in message
    assert message.endswith("unexpected RuntimeError: 401 for ***")


def test_a_neo4j_url_with_userinfo_is_a_configuration_error_without_the_password() -> None:
    with pytest.raises(ConfigurationError) as raised:
        create_neo4j_driver(
            f"bolt://neo4j:Userinfo-Secret-16@127.0.0.1:{closed_port()}",
            user="neo4j",
            password=None,
        )
    assert "Userinfo-Secret-16" not in str(raised.value)
    assert "DOCPIPE_GRAPH_URL" in str(raised.value) and "DOCPIPE_NEO4J_PASSWORD" in str(
        raised.value
    )
    # Not chained: a logged traceback would print the driver's own text.
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_the_real_neo4j_driver_against_a_closed_port_fails_without_the_password() -> None:
    password = "Closed-Port-Secret-17"
    settings(neo4j_password=SecretStr(password))
    driver = create_neo4j_driver(
        f"bolt://127.0.0.1:{closed_port()}", user="neo4j", password=password
    )
    sink = Neo4jGraphSink(driver, "neo4j")
    try:
        with pytest.raises(TransientError, match="ServiceUnavailable") as raised:
            sink.write(*document_graph(["Acme Corp"]))
    finally:
        sink.close()
    assert password not in str(raised.value)


def test_run_with_a_password_in_the_graph_url_never_prints_it(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(GOOD)
    url = f"bolt://neo4j:Cli-Graph-Secret-18@127.0.0.1:{closed_port()}"
    env = {"DOCPIPE_GRAPH_URL": url}

    result = docpipe(tmp_path, "run", "a.txt", env=env)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Cli-Graph-Secret-18" not in result.stdout + result.stderr
    assert "bolt://neo4j:***@127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_against_an_unreachable_graph_stores_no_password_in_the_row(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(GOOD)
    env = {
        "DOCPIPE_GRAPH_URL": f"bolt://127.0.0.1:{closed_port()}",
        "DOCPIPE_NEO4J_PASSWORD": "Row-Secret-19",
        "DOCPIPE_MAX_RETRIES": "0",
    }

    result = docpipe(tmp_path, "run", "a.txt", "--json", env=env)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "ServiceUnavailable" in result.stdout  # the row's error: the cause is shown ...
    assert "Row-Secret-19" not in result.stdout + result.stderr  # ... the password is not


def _logger_writing_to(stream: io.StringIO, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers = [logging.StreamHandler(stream)]
    logger.handlers[0].setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.propagate = False
    return logger


def test_log_lines_and_tracebacks_are_redacted() -> None:
    settings(openai_api_key=SecretStr("sk-Log-Secret-20"))
    stream = io.StringIO()
    logger = _logger_writing_to(stream, "test_redaction.plain")
    redact_log_output(logger)
    redact_log_output(logger)  # idempotent: wrapped once

    try:
        raise RuntimeError("vendor said sk-Log-Secret-20 via redis://u:Url-Log-21@h/0")
    except RuntimeError:
        logger.exception("call failed for %s", "sk-Log-Secret-20")

    output = stream.getvalue()
    assert "Traceback" in output and "RuntimeError: vendor said ***" in output
    assert "sk-Log-Secret-20" not in output and "Url-Log-21" not in output
    assert output.startswith("ERROR call failed for ***")
    assert isinstance(logger.handlers[0].formatter, RedactingFormatter)
    assert not isinstance(logger.handlers[0].formatter.inner, RedactingFormatter)


def test_celery_worker_loggers_are_redacted_when_celery_sets_them_up() -> None:
    import pipeline.runtime.celery_app  # noqa: F401  (connects the signal receivers)

    settings(neo4j_password=SecretStr("Worker-Log-Secret-22"))
    stream = io.StringIO()
    logger = _logger_writing_to(stream, "test_redaction.worker")
    after_setup_task_logger.send(
        sender=None, logger=logger, loglevel=logging.INFO, logfile=None, format="", colorize=False
    )

    logger.error("neo4j auth failed with Worker-Log-Secret-22")

    assert stream.getvalue() == "ERROR neo4j auth failed with ***\n"


def test_a_common_word_as_secret_does_not_blank_out_docpipes_own_messages() -> None:
    settings(flower_basic_auth=SecretStr("ops:password"), neo4j_password=SecretStr("secret"))

    problem = str(ConfigurationError("the password is a well-known default, secret or not"))

    assert problem == "the password is a well-known default, secret or not"
    # In a URL it is still hidden.
    assert redact("bolt://neo4j:secret@h:7687") == "bolt://neo4j:***@h:7687"


def test_flower_refusal_of_a_default_password_stays_readable() -> None:
    from click.testing import CliRunner

    from pipeline.cli.flower import COMMANDS

    env = {
        "DOCPIPE_BROKER_URL": "redis://127.0.0.1:6390/0",
        "DOCPIPE_FLOWER_BASIC_AUTH": "ops:password",
    }
    result = CliRunner().invoke(COMMANDS[0], [], env=env)

    assert result.exit_code == 2
    assert "the password is a well-known default" in result.output


def test_a_password_equal_to_its_user_name_is_no_bare_secret() -> None:
    """RabbitMQ's well-known `guest:guest`: hidden inside URLs, not blanked as a word."""
    assert secret_values(["amqp://guest:guest@127.0.0.1:5672/"]) == set()
    assert secret_values(["amqp://docpipe:S3cret-Vhost-77@rabbit:5672/"]) >= {"S3cret-Vhost-77"}
    assert redact("amqp://guest:guest@rabbit:5672//") == "amqp://guest:***@rabbit:5672//"
