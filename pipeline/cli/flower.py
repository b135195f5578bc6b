"""`docpipe flower`: Flower for the docpipe Celery app, never without real credentials.

Flower 2.2 protects its UI and API with `--basic-auth`, but `/metrics` and
`/healthcheck` answer without it, so it binds to loopback by default and
belongs behind a proxy. The credentials reach Flower only through its
environment (`FLOWER_BASIC_AUTH`), never argv, which `ps` shows to everyone.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from typing import NoReturn

import click
from pydantic import ValidationError

from pipeline.errors import ConfigurationError
from pipeline.extras import FLOWER_MODULES, require_extra
from pipeline.settings import Settings, redact_url

AUTH_ENV = "DOCPIPE_FLOWER_BASIC_AUTH"
FLOWER_AUTH_ENV = "FLOWER_BASIC_AUTH"
MIN_PASSWORD_CHARS = 8
#: zxcvbn's score (0-4) a password needs: 3 = at least 10^8 guesses ("safely
#: unguessable" against online attacks, moderate protection offline). `P@ssw0rd`
#: scores 0, a 16-character random hex string 4.
MIN_PASSWORD_SCORE = 3
#: zxcvbn refuses longer inputs; the first 72 characters decide the estimate.
_ZXCVBN_MAX_CHARS = 72
#: Words an attacker tries first against this service, besides the user name.
_SERVICE_WORDS = ("docpipe", "flower", "celery", "pipeline", "ops", "admin")
EXIT_USAGE = 2

#: Passwords that ship in examples, tutorials and seed configs (compared case- and
#: punctuation-insensitively, so `Change-Me` counts as `changeme`).
WELL_KNOWN_PASSWORDS = frozenset(
    {
        "password", "admin", "changeme", "flower", "secret", "123456", "guest", "root",
        "default", "test", "12345678", "123456789", "1234567890", "password1",
        "password123", "admin123", "administrator", "changeit", "letmein", "qwerty",
        "qwerty123", "welcome", "welcome1", "iloveyou", "celery", "docpipe", "placeholder",
    }
)  # fmt: skip
#: A password containing one of these is a placeholder someone forgot to replace.
PLACEHOLDER_MARKERS = ("changeme", "replaceme", "placeholder")

_CONTROL_OR_SPACE = re.compile(r"[\s\x00-\x1f\x7f]")


def _normalized(password: str) -> str:
    return re.sub(r"[^a-z0-9]", "", password.lower())


def flower_auth_problem(value: str | None) -> str | None:
    """Why `value` must not protect Flower (one line, never quoting it); None = acceptable."""
    if not value:
        return f"{AUTH_ENV} is not set: flower refuses to start without credentials (user:password)"
    user, colon, password = value.partition(":")
    if not colon or not user or not password:
        return f"{AUTH_ENV} must have the form user:password (neither part empty)"
    if "," in value:
        # Flower splits FLOWER_BASIC_AUTH on commas into several accepted credentials.
        return f"{AUTH_ENV} must not contain ',' (Flower would split it into several logins)"
    if _CONTROL_OR_SPACE.search(value):
        return f"{AUTH_ENV} must not contain whitespace or control characters"
    if len(password) < MIN_PASSWORD_CHARS:
        return f"{AUTH_ENV}: the password is shorter than {MIN_PASSWORD_CHARS} characters"
    normalized = _normalized(password)
    if normalized in WELL_KNOWN_PASSWORDS or any(m in normalized for m in PLACEHOLDER_MARKERS):
        return (
            f"{AUTH_ENV}: the password is a well-known default or placeholder; use a random "
            "one (python -c 'import secrets; print(secrets.token_hex(16))')"
        )
    if normalized == _normalized(user) or password.lower() == user.lower():
        return f"{AUTH_ENV}: the password must not equal the user name"
    return _strength_problem(user, password)


def _strength_problem(user: str, password: str) -> str | None:
    """Dropbox's zxcvbn estimate: dictionaries of common passwords, names and words,
    keyboard patterns, dates, repeats and l33t substitutions (`P@ssw0rd` is `password`)."""
    from zxcvbn import zxcvbn

    estimate = zxcvbn(
        password[:_ZXCVBN_MAX_CHARS],
        user_inputs=[user, *_SERVICE_WORDS],
        max_length=_ZXCVBN_MAX_CHARS,
    )
    score = int(estimate["score"])
    if score >= MIN_PASSWORD_SCORE:
        return None
    # zxcvbn's warning is generic text ("This is similar to a commonly used password."),
    # it never quotes the password.
    warning = str(estimate["feedback"].get("warning") or "").rstrip(".")
    return (
        f"{AUTH_ENV}: the password is too easy to guess (zxcvbn strength {score}/4, "
        f"at least {MIN_PASSWORD_SCORE} needed{': ' + warning if warning else ''}); use a "
        "random one (python -c 'import secrets; print(secrets.token_hex(16))')"
    )


def flower_invocation(
    settings: Settings,
    port: int,
    address: str,
    *,
    base_env: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The argv and the complete environment of the Flower process.

    The environment is `base_env` (default: this process's) without any inherited
    `FLOWER_*` variable - `FLOWER_UNAUTHENTICATED_API` would open the API - plus
    the credentials, the settings' broker and `DOCPIPE_EAGER=false` (Flower's
    task-apply API must publish to the broker, not run the task in Flower).
    Raises ConfigurationError (with a message that never contains the secret).
    """
    secret = settings.flower_basic_auth
    credentials = secret.get_secret_value() if secret is not None else ""
    problem = flower_auth_problem(credentials)
    if problem is not None:
        raise ConfigurationError(problem)
    if settings.broker_url.startswith("memory://"):
        raise ConfigurationError(
            "DOCPIPE_BROKER_URL is memory:// (in-process): flower needs the workers' broker, "
            "e.g. redis://127.0.0.1:6379/0"
        )

    env = {
        key: value
        for key, value in (os.environ if base_env is None else base_env).items()
        if not key.startswith("FLOWER_") and key != AUTH_ENV
    }
    env[FLOWER_AUTH_ENV] = credentials
    env["DOCPIPE_BROKER_URL"] = settings.broker_url
    env["DOCPIPE_EAGER"] = "false"
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "pipeline.runtime.celery_app",
        "flower",
        f"--port={port}",
        f"--address={address}",
        # A flowerconfig.py in the working directory must not change auth behind our back.
        f"--conf={os.devnull}",
    ]
    return argv, env


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _refuse(message: str) -> NoReturn:
    click.echo(f"error: {redact_url(message)}", err=True)
    sys.exit(EXIT_USAGE)


def _launch(argv: list[str], env: dict[str, str]) -> NoReturn:
    """Become Flower (exec): one process to supervise and stop, signals reach it directly."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execve(argv[0], argv, env)
    sys.exit(subprocess.call(argv, env=env))  # pragma: no cover - not POSIX


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=5555,
    show_default=True,
    help="TCP port Flower listens on.",
)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Address Flower binds to. Keep it on loopback and put a proxy in front.",
)
def flower(port: int, address: str) -> None:
    """Start Flower (Celery monitoring) for the docpipe app on the DOCPIPE_BROKER_URL broker.

    Credentials come from DOCPIPE_FLOWER_BASIC_AUTH=user:password (env or .env)
    and reach Flower through its environment, never its command line. Flower is
    not started (exit 2) when they are missing, malformed or a well-known
    default, or when the broker is the in-process memory:// one.

    Warning: in Flower 2.2 /metrics and /healthcheck answer WITHOUT auth. Never
    expose Flower publicly: bind it to 127.0.0.1 (the default) and front it with
    a reverse proxy (TLS, access control). FLOWER_* variables and a
    flowerconfig.py are ignored, so only DOCPIPE_ settings shape it.
    """
    # Flower is an extra (`pip install 'docpipe[flower]'`): a worker does not need it.
    require_extra("flower", FLOWER_MODULES, "docpipe flower")
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        _refuse(f"invalid settings: {problems}")
    try:
        argv, env = flower_invocation(settings, port, address)
    except ConfigurationError as exc:
        _refuse(str(exc))
    if not _is_loopback(address):
        click.echo(
            f"warning: flower binds to {address or 'all interfaces'}; /metrics and /healthcheck "
            "answer without auth - keep it behind a proxy",
            err=True,
        )
    click.echo(
        f"flower: http://{address}:{port}/ (broker {redact_url(settings.broker_url)})", err=True
    )
    _launch(argv, env)


COMMANDS: list[click.Command] = [flower]
