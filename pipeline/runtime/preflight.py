"""Reachability checks a command runs before it starts work.

An unreachable database, Redis or S3 is reported within seconds as a short
`ServiceUnavailable` (exit code 2) that names the service, the redacted URL
and what to check - not as a timeout deep inside a stage, a kombu reconnect
loop or a per-document failure. A check that takes longer than a moment says
what it is waiting for (`waiting`), so the user never stares at silence.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from pipeline.errors import ConfigurationError, ServiceUnavailable
from pipeline.settings import Settings, redact_url

#: How long a check waits for a service to answer before calling it unreachable.
CONNECT_TIMEOUT_S = 3.0
#: Checks faster than this print nothing; slower ones say what they wait for.
ANNOUNCE_AFTER_S = 0.5

Say = Callable[[str], None]


@contextmanager
def waiting(what: str, say: Say, *, timeout_s: float = CONNECT_TIMEOUT_S) -> Iterator[None]:
    """Announce `waiting for WHAT ...` if the block is still running after a moment."""
    timer = threading.Timer(
        ANNOUNCE_AFTER_S, say, args=[f"waiting for {what} (up to {timeout_s:g} s) ..."]
    )
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def check_services(
    settings: Settings, say: Say, *, broker: bool = False, timeout_s: float = CONNECT_TIMEOUT_S
) -> None:
    """Every remote service these settings name (in-process ones need no check)."""
    check_database(settings.database_url, say, timeout_s=timeout_s)
    if broker and settings.broker_kind == "amqp":
        check_rabbitmq(settings.broker_url, say, timeout_s)
    elif broker:
        check_redis(settings.broker_url, "the broker", "DOCPIPE_BROKER_URL", say, timeout_s)
    check_redis(settings.redis_url, "state and cache", "DOCPIPE_REDIS_URL", say, timeout_s)
    if urlparse(settings.blob_url).scheme == "s3":
        check_s3(settings, say, timeout_s=timeout_s)


# --- the database -----------------------------------------------------------------------


DATABASE_SETTING = "--database-url / DOCPIPE_DATABASE_URL"


def check_database(url: str, say: Say, *, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A PostgreSQL URL must name a reachable server and an existing database.

    SQLite needs no check: the file is created on first use.
    """
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, OperationalError
    from sqlalchemy.pool import NullPool

    from pipeline.adapters.sql import postgres_engine_options

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError(
            f"{redact_url(url)!r} is not a database URL",
            hint=f"set {DATABASE_SETTING} to sqlite:///PATH or postgresql://USER@HOST:PORT/DB",
        ) from None
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        return  # SQLite; other schemes are refused by the store with their own message
    engine_url, connect_args = postgres_engine_options(parsed)
    if "connect_timeout" not in engine_url.query:
        connect_args["connect_timeout"] = max(1, round(timeout_s))
    engine = create_engine(engine_url, connect_args=connect_args, poolclass=NullPool)
    shown = redact_url(url)
    try:
        with waiting(f"PostgreSQL at {shown}", say, timeout_s=timeout_s), engine.connect():
            pass
    except OperationalError as exc:
        raise _database_problem(str(exc.orig), parsed.database or "", shown) from None
    finally:
        engine.dispose()


def _database_problem(reason: str, database: str, shown: str) -> ServiceUnavailable:
    first_line = redact_url(reason.strip().splitlines()[0] if reason.strip() else "no answer")
    if "does not exist" in reason and f'database "{database}"' in reason:
        return ServiceUnavailable(
            f"PostgreSQL at {shown}: database {database!r} does not exist",
            hint=f"create it (createdb {database}) or point {DATABASE_SETTING} at an existing one",
        )
    if "authentication failed" in reason or ("role" in reason and "does not exist" in reason):
        return ServiceUnavailable(
            f"PostgreSQL at {shown} refused the login: {first_line}",
            hint=f"check the user and password in {DATABASE_SETTING}",
        )
    return ServiceUnavailable(
        f"cannot reach PostgreSQL at {shown}: {first_line}",
        hint=f"check that the server is running and that host and port in {DATABASE_SETTING} "
        "are right",
    )


# --- Redis ---------------------------------------------------------------------------------


def check_redis(
    url: str, role: str, setting: str, say: Say, timeout_s: float = CONNECT_TIMEOUT_S
) -> None:
    """A PING within `timeout_s`; in-process URLs (fakeredis://, memory://) pass."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return
    import redis

    shown = redact_url(url)
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        with waiting(f"Redis ({role}) at {shown}", say, timeout_s=timeout_s):
            client.ping()
    except redis.AuthenticationError:
        raise ServiceUnavailable(
            f"Redis ({role}) at {shown} refused the login",
            hint=f"check the password in {setting}",
        ) from None
    except (redis.RedisError, OSError) as exc:
        reason = redact_url(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        raise ServiceUnavailable(
            f"cannot reach Redis ({role}) at {shown}: {type(exc).__name__}"
            + (f": {reason}" if reason else ""),
            hint=f"check that redis-server is running there and that {setting} is right",
        ) from None
    finally:
        client.close()


# --- RabbitMQ ------------------------------------------------------------------------------


def check_rabbitmq(url: str, say: Say, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """An AMQP connection (login and vhost included) within `timeout_s`."""
    from pipeline.runtime.rabbitmq import RabbitUnavailable, connect

    shown = redact_url(url)
    try:
        with waiting(f"RabbitMQ (the broker) at {shown}", say, timeout_s=timeout_s):
            connect(url, timeout_s=timeout_s).release()
    except RabbitUnavailable as exc:
        reason = str(exc)
        if "ACCESS_REFUSED" in reason or "AccessRefused" in reason:
            hint = "check the user and password in DOCPIPE_BROKER_URL"
        elif "vhost" in reason.lower():
            hint = (
                "the virtual host in DOCPIPE_BROKER_URL does not exist or the user may not use "
                "it (rabbitmqctl add_vhost NAME; rabbitmqctl set_permissions -p NAME USER "
                "'.*' '.*' '.*')"
            )
        else:
            hint = (
                "check that rabbitmq-server is running there and that DOCPIPE_BROKER_URL is right"
            )
        raise ServiceUnavailable(
            f"cannot use RabbitMQ (the broker) at {shown}: {reason}", hint=hint
        ) from None


# --- S3 ------------------------------------------------------------------------------------


def check_s3(settings: Settings, say: Say, *, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """The blob bucket answers a HEAD within `timeout_s`, once (no retries)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from pipeline.adapters.aws import build_client, error_code, http_status
    from pipeline.bootstrap import s3_location
    from pipeline.settings import is_loopback_url

    bucket, _ = s3_location(settings)
    if not is_loopback_url(settings.aws_endpoint_url) and not settings.allow_cloud:
        return  # the composition root refuses it with its own message
    endpoint = redact_url(settings.aws_endpoint_url or f"AWS S3 ({settings.aws_region})")
    client = build_client(
        "s3",
        region=settings.aws_region,
        endpoint_url=settings.aws_endpoint_url,
        max_attempts=1,
        connect_timeout_s=timeout_s,
        read_timeout_s=timeout_s,
    )
    try:
        with waiting(f"S3 at {endpoint}", say, timeout_s=timeout_s):
            client.head_bucket(Bucket=bucket)
    except NoCredentialsError:
        raise ConfigurationError(
            f"no AWS credentials for S3 bucket {bucket!r}",
            hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile",
        ) from None
    except ClientError as exc:
        if http_status(exc) == 404 or error_code(exc) in ("404", "NoSuchBucket"):
            raise ServiceUnavailable(
                f"S3 bucket {bucket!r} does not exist at {endpoint}",
                hint="create it, or fix DOCPIPE_BLOB_URL / DOCPIPE_S3_BUCKET",
            ) from None
        # Anything else (403: HEAD not allowed while PUT is) is left to the writes.
    except BotoCoreError as exc:
        raise ServiceUnavailable(
            f"cannot reach S3 at {endpoint}: {type(exc).__name__}",
            hint="check DOCPIPE_AWS_ENDPOINT_URL (unset means AWS itself) and the network",
        ) from None
    finally:
        client.close()
