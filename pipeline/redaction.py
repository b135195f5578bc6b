"""Secrets never leave docpipe in a message: URL passwords and every secret setting.

Vendor libraries quote what they were given: the neo4j driver prints the whole
`bolt://neo4j:SECRET@host` URI, a database driver its DSN, an SDK may echo a key.
Their text enters docpipe's own messages in one place - the constructor of
`PipelineError`, the family every adapter translates vendor errors into - and
in `readable()` / the CLI for anything unexpected; all of them call `redact`.

`redact` hides two things: the password of any `scheme://user:password@` URL
(whatever it is), and every secret the settings hold (`remember_secrets` is
called for each `Settings` object built in this process): passwords of every URL
setting, the OpenAI key, the Neo4j password, Flower's password - wherever they
appear, URL-shaped or not (values under 4 characters, common passwords and
English words excepted: see `_common_words`). This module imports nothing from
docpipe, so the error types can use it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from pydantic import SecretStr

MASK = "***"
#: Shorter values are not replaced wherever they occur: a 3-character "secret"
#: would turn every word containing it into noise, and protects nothing anyway.
MIN_SECRET_CHARS = 4

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@")

_lock = threading.Lock()
#: Longest first, so a secret containing another is replaced whole. Replaced as a
#: new tuple under the lock, read without it (readers never see a half-built set).
_known: tuple[str, ...] = ()


def redact_url(url: str) -> str:
    """Hide the password of `scheme://user:password@host` URLs (logs, reports, errors)."""
    return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", url)


def redact(text: str) -> str:
    """`text` with URL passwords and every remembered secret replaced by `***`."""
    text = redact_url(text)
    for secret in _known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _url_password(value: str) -> str | None:
    """The password of a URL, unless it is the user name too (RabbitMQ's `guest:guest`):
    that one is no secret, and blanking it as a bare word would blank the user name."""
    if "://" not in value:
        return None
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:  # a malformed URL (bad port...): the regex in redact_url still applies
        return None
    return None if password == parts.username else password


def secret_values(values: Iterable[Any]) -> set[str]:
    """The secrets among setting values: SecretStr contents, passwords inside URLs."""
    found: set[str] = set()
    for value in values:
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            found.add(secret)
            # `user:password` credentials (Flower): the password alone leaks too.
            found.add(secret.partition(":")[2])
            found.update(filter(None, [_url_password(secret)]))
        elif isinstance(value, str):
            password = _url_password(value)
            if password:
                found.add(password)
    # A URL carries the password percent-encoded; messages may show either form.
    found |= {unquote(s) for s in found} | {quote(s, safe="") for s in found}
    found = {s for s in found if len(s) >= MIN_SECRET_CHARS}
    if found:
        found = {s for s in found if s.lower() not in _common_words()}
    return found


@lru_cache(maxsize=1)
def _common_words() -> frozenset[str]:
    """Common passwords and English words (zxcvbn's shipped lists, 60,000 entries).

    Such a value is not replaced as a bare word: `password` or `secret` would
    blank those words out of docpipe's own messages ("the *** is a well-known
    default"), and it protects nothing - it is the first thing an attacker
    tries. Inside a URL it is still hidden (`redact_url`), and Flower refuses it.
    """
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"]) | frozenset(FREQUENCY_LISTS["english_wikipedia"])


def remember_secrets(values: Iterable[Any]) -> None:
    """Add the secrets among `values` (a settings object's field values) to `redact`."""
    new = secret_values(values)
    global _known
    with _lock:
        if new <= set(_known):
            return
        _known = tuple(sorted(new | set(_known), key=len, reverse=True))


class RedactingFormatter(logging.Formatter):
    """Wraps a log handler's formatter: the whole line, traceback included, is redacted.

    Worker logs carry vendor text that never became a docpipe error: Celery's
    own "Task ... raised unexpected" tracebacks, chained exceptions, retries.
    """

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def redact_log_output(logger: logging.Logger | None = None) -> None:
    """Redact everything the handlers of `logger` (default: the root logger) write."""
    for handler in (logger or logging.getLogger()).handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter))
