"""Where a simulated run keeps its fault rules and counters: a dict, not Redis.

fakes/faults.py keeps the active rules and every rule's call and fire counters
in Redis so that worker processes in other processes follow them. A simulated
run is one process: the same keys in a dict give the same counts and the same
seeded draws (they depend on the rule, the seed and the call number, never on
where the counter lives) for a fraction of the cost - through the in-process
fakeredis every consultation was a GET and an INCR or two over a simulated
socket, a fifth of an explored schedule's time.

The keys are the experiment's, not the deployment's, so they stay out of the
run's Redis: a `redis.server restart` fault does not touch them (as the
simulator always arranged) and the locks, state and caches the stage code uses
stay in fakeredis, with Redis semantics.

`FaultBoard` implements the redis-py calls fakes/faults.py makes (bytes back,
as redis-py without `decode_responses`); any other call is an AttributeError, so
a change there that needs more shows up in tests/unit/test_faultboard.py.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import redis


class FaultBoard:
    """The subset of a Redis client the fault injectors use, over a dict."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}

    @staticmethod
    def _key(name: str | bytes) -> str:
        return name.decode() if isinstance(name, bytes) else name

    @staticmethod
    def _value(value: Any) -> bytes:
        # What redis-py sends: bytes as they are, str UTF-8 encoded, numbers as text.
        if isinstance(value, bytes):
            return value
        return str(value).encode()

    def get(self, name: str | bytes) -> bytes | None:
        return self._data.get(self._key(name))

    def set(self, name: str | bytes, value: Any) -> bool:
        self._data[self._key(name)] = self._value(value)
        return True

    def incr(self, name: str | bytes, amount: int = 1) -> int:
        key = self._key(name)
        value = int(self._data.get(key, b"0")) + amount
        self._data[key] = str(value).encode()
        return value

    def delete(self, *names: str | bytes) -> int:
        removed = 0
        for name in names:
            removed += self._data.pop(self._key(name), None) is not None
        return removed

    def scan_iter(self, match: str | None = None, **_: Any) -> Iterator[bytes]:
        for key in list(self._data):
            if match is None or fnmatch.fnmatchcase(key, match):
                yield key.encode()

    def as_redis(self) -> redis.Redis:
        """Typed as the client the injectors take (they call only what is above)."""
        return cast("redis.Redis", self)
