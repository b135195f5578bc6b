"""The old system's Redis features, on one redis-py client (real Redis or fakeredis).

Document state hash, versioned cache, per-document-and-stage locks and the
shared LLM rate limit. Broker and these features use separate databases.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from pipeline.adapters.tokens import fresh_token
from pipeline.errors import RateLimited
from pipeline.ports import CountedAcquisition, StartedRecord

log = logging.getLogger(__name__)

STATE_KEY = "doc:state:{uuid}"
#: Where each feature keeps its keys (the soak test groups keys into families by them).
CACHE_PREFIX = "docpipe:cache:"
LOCK_PREFIX = "docpipe:lock:"
RATE_LIMIT_PREFIX = "docpipe:ratelimit:"
#: A limit's totals key is its window's key with this suffix (`_SLIDING_WINDOW`).
RATE_LIMIT_TOTALS_SUFFIX = ":totals"

_RELEASE_IF_OWNER = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""

# Take a free lock, or take over one held by another delivery of the same owner (task
# id): ARGV[1] is this delivery's token, ARGV[3] the owner's prefix of every token.
_ACQUIRE = """
local current = redis.call('get', KEYS[1])
if current == false or string.sub(current, 1, string.len(ARGV[3])) == ARGV[3] then
    redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
    return 1
end
return 0
"""

#: Added to an attempt's count of deliveries once a delivery of it published what carries
#: its document on (`StateTracker.mark_attempt_finished`): a count at or above it says so
#: and still counts (modulo it); over any limit, it takes no lock.
ATTEMPT_FINISHED = 1_000_000_000

# Mark the attempt whose deliveries KEYS[1] counts as finished: `ATTEMPT_FINISHED` added
# once; a count that is gone (Redis restarted, or its TTL) stays gone.
_MARK_FINISHED = f"""
local counted = tonumber(redis.call('get', KEYS[1]) or '0')
if counted > 0 and counted < {ATTEMPT_FINISHED} then
    redis.call('incrby', KEYS[1], {ATTEMPT_FINISHED})
end
return 0
"""

# The redelivery guard and the lock, the start of `_ACQUIRE_COUNTED_STARTED`: count this
# delivery (KEYS[1], kept ARGV[4] seconds); over ARGV[5] deliveries return {deliveries, 0}
# without trying the lock (KEYS[2]), else `_ACQUIRE` on it with ARGV[1..3] as there, and
# {deliveries, 0} when another owner holds it; the script goes on with the lock taken.
_COUNT_AND_LOCK = """
local deliveries = redis.call('incr', KEYS[1])
redis.call('expire', KEYS[1], ARGV[4])
if deliveries > tonumber(ARGV[5]) then
    return {deliveries, 0}
end
local current = redis.call('get', KEYS[2])
if current ~= false and string.sub(current, 1, string.len(ARGV[3])) ~= ARGV[3] then
    return {deliveries, 0}
end
redis.call('set', KEYS[2], ARGV[1], 'EX', ARGV[2])
"""

# `_COUNT_AND_LOCK`, then, with the lock taken, "started" in the state hash KEYS[3] (TTL
# ARGV[6]; ARGV[7], ARGV[8], ARGV[10] the stage's status, timestamp and started-by fields,
# ARGV[9] the time; started-by gets this delivery's lock token, ARGV[1]) if the stage's
# status there is absent or one of ARGV[11...] (else the stage went past it: a duplicate,
# whose claim refuses). Returns {deliveries, 1, 1, then the status, timestamp, started-by
# and last_status it replaced} when it wrote, {deliveries, 1 if the lock was taken} when not.
_ACQUIRE_COUNTED_STARTED = (
    _COUNT_AND_LOCK
    + """
local replaced = redis.call('hmget', KEYS[3], ARGV[7], ARGV[8], ARGV[10], 'last_status')
local replaceable = replaced[1] == false
for i = 11, #ARGV do
    replaceable = replaceable or replaced[1] == ARGV[i]
end
if not replaceable then
    return {deliveries, 1}
end
redis.call('hset', KEYS[3], ARGV[7], 'started', ARGV[8], ARGV[9], ARGV[10], ARGV[1],
    'last_status', 'started')
redis.call('expire', KEYS[3], ARGV[6])
return {deliveries, 1, 1, replaced[1], replaced[2], replaced[3], replaced[4]}
"""
)

# Undo `_ACQUIRE_COUNTED_STARTED`'s write to the state hash KEYS[1] while the stage's status
# (field ARGV[1]) is still "started" and its started-by field (ARGV[3]) still holds the token
# written (ARGV[4]): a later delivery's "started" has its own token, however close in time.
# Then each of the fields ARGV[1], ARGV[2], ARGV[3], 'last_status' gets back its old value,
# ARGV[6], ARGV[8], ARGV[10], ARGV[12], or goes if ARGV[5], ARGV[7], ARGV[9], ARGV[11] is '0'
# (it was absent); 'last_status' only while it still reads "started". Returns 1 if it undid
# the write.
_UNRECORD_STARTED = """
if redis.call('hget', KEYS[1], ARGV[1]) ~= 'started'
    or redis.call('hget', KEYS[1], ARGV[3]) ~= ARGV[4] then
    return 0
end
local function restore(field, present, value)
    if present == '1' then
        redis.call('hset', KEYS[1], field, value)
    else
        redis.call('hdel', KEYS[1], field)
    end
end
restore(ARGV[1], ARGV[5], ARGV[6])
restore(ARGV[2], ARGV[7], ARGV[8])
restore(ARGV[3], ARGV[9], ARGV[10])
if redis.call('hget', KEYS[1], 'last_status') == 'started' then
    restore('last_status', ARGV[11], ARGV[12])
end
return 1
"""

# A state hash write and its TTL, atomic and in one round trip: ARGV[1] the TTL, then
# field, value pairs.
_RECORD_STATE = """
redis.call('hset', KEYS[1], unpack(ARGV, 2))
redis.call('expire', KEYS[1], ARGV[1])
return 1
"""

# A stage delivery's end: `_RECORD_STATE` on KEYS[1] (ARGV[1] the TTL, field, value pairs
# from ARGV[3]) and `_RELEASE_IF_OWNER` on the lock KEYS[2] with the token ARGV[2], in one
# round trip. Returns 1 if the lock was released.
_RECORD_STATE_RELEASING = """
redis.call('hset', KEYS[1], unpack(ARGV, 3))
redis.call('expire', KEYS[1], ARGV[1])
if redis.call('get', KEYS[2]) == ARGV[2] then
    return redis.call('del', KEYS[2])
end
return 0
"""

# Sliding window of requests and tokens in one round trip. One sorted set per limit name
# (KEYS[1]): score = the request's time, member = "<unique id>:<tokens reserved>"; and its
# totals (KEYS[2]): "<requests>:<tokens>" in the window as the last call left it. Drop what
# left the window (its tokens from the totals), then find how long until one more request
# (ARGV[3] per window) and ARGV[5] more tokens (ARGV[6] per window; 0 = no token limit) both
# fit; take the slot if that is now. A call costs O(log n) plus what left the window, not a
# read of the whole window (issue 15: 5.8 ms of Redis's one thread per call at 10,000
# requests in the window, every other client waiting). Totals that disagree with the set
# (evicted, expired apart, written by a limiter that keeps none) are counted again once.
_SLIDING_WINDOW = """
local key = KEYS[1]
local totals_key = KEYS[2]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local tokens = tonumber(ARGV[5])
local token_limit = tonumber(ARGV[6])
if token_limit > 0 and tokens > token_limit then
    tokens = token_limit
end
local function reserved(member)
    return tonumber(string.match(member, ':(%d+)$') or '0')
end
local kept, used = -1, 0
local totals = redis.call('get', totals_key)
if totals then
    local requests, reserved_tokens = string.match(totals, '^(%d+):(%d+)$')
    if requests then
        kept, used = tonumber(requests), tonumber(reserved_tokens)
    end
end
local cutoff = now - window
local leaving = redis.call('zrangebyscore', key, '-inf', cutoff)
if #leaving > 0 then
    for _, member in ipairs(leaving) do
        used = used - reserved(member)
    end
    kept = kept - #leaving
    redis.call('zremrangebyscore', key, '-inf', cutoff)
end
local count = redis.call('zcard', key)
if count ~= kept then
    used = 0
    for _, member in ipairs(redis.call('zrange', key, 0, -1)) do
        used = used + reserved(member)
    end
end
local wait = 0
if count >= limit then
    local nth = redis.call('zrange', key, count - limit, count - limit, 'WITHSCORES')
    wait = tonumber(nth[2]) + window - now
end
if token_limit > 0 then
    local excess = used + tokens - token_limit
    local rank = 0
    while excess > 0 and rank < count do
        local batch = redis.call('zrange', key, rank, rank + 63, 'WITHSCORES')
        for i = 1, #batch, 2 do
            if excess <= 0 then
                break
            end
            excess = excess - reserved(batch[i])
            wait = math.max(wait, tonumber(batch[i + 1]) + window - now)
        end
        rank = rank + 64
    end
end
local ttl = math.ceil(window * 1000)
if wait <= 0 then
    redis.call('zadd', key, now, ARGV[4] .. ':' .. string.format('%.0f', tokens))
    redis.call('pexpire', key, ttl)
    count = count + 1
    used = used + tokens
end
redis.call('set', totals_key, count .. ':' .. string.format('%.0f', used), 'PX', ttl)
if wait <= 0 then
    return 0
end
return tostring(math.max(wait, 0.001))
"""


class HotScripts:
    """Scripts every stage delivery runs twice, sent on connections kept for them.

    redis-py's command path costs ~50-70 us of CPU per call on top of the round
    trip (its pool's checks, each with a syscall, its retry and observability
    layers, the argument encoder): two such calls were a fifth of the task
    layer's CPU per hop (issue 15). Here a call packs its arguments once and
    writes them on a connection kept by this object, which is only ever given
    back in a clean state (a whole reply read), so the pool's check for unread
    data is not needed. Anything unexpected goes the ordinary way: a script the
    server does not know (restarted, flushed) and a broken connection take
    `Script.__call__` (which loads the script and has the client's retries); a
    client whose connections are not redis-py's sockets (fakeredis) always does.

    Connections come from the client's pool and go back to it only broken (so
    closing the client closes them all); after a fork the child forgets the
    parent's, as the pool does.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._lean = client.connection_pool.connection_class in _SOCKET_CONNECTIONS
        # redis-py's connection methods are untyped.
        self._idle: list[Any] = []
        #: Replies not read yet, by kept connection (`send`).
        self._unread: dict[int, int] = {}
        self._pid = os.getpid()

    def call(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if not self._lean:
            return script(keys=keys, args=args)
        connection = self._connection()
        try:
            connection.send_packed_command(
                [_pack_evalsha(script.sha, keys, args)], check_health=False
            )
            reply = connection.read_response()
        except NoScriptError:
            self._idle.append(connection)  # an error reply, read whole: the connection is clean
            return script(keys=keys, args=args)
        except (redis.ConnectionError, redis.TimeoutError):
            self._discard(connection)
            return script(keys=keys, args=args)
        except BaseException:
            # A reply left half read (a time limit raised mid-read) must not reach the next call.
            self._discard(connection)
            raise
        self._idle.append(connection)
        return reply

    def send(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Run `script` without waiting for its reply: a write whose outcome nobody acts on.

        The reply is read, and an error in it logged, before the connection's next
        command. Sent as EVAL (the script's text), so that a server that does not know
        it (restarted, flushed) runs it all the same; a broken connection loses it.
        """
        if not self._lean:
            try:
                script(keys=keys, args=args)
            except redis.RedisError as exc:
                log.warning("a Redis script sent without waiting failed: %s", exc)
            return
        connection = self._connection()
        try:
            connection.send_packed_command(
                [_pack_command(_EVAL, script.script, keys, args)], check_health=False
            )
        except BaseException:
            self._discard(connection)
            raise
        self._unread[id(connection)] = self._unread.get(id(connection), 0) + 1
        self._idle.append(connection)

    def _connection(self) -> Any:
        """A kept connection with every reply read, or a new one from the pool."""
        if self._pid != os.getpid():
            self._idle, self._unread, self._pid = [], {}, os.getpid()
        while True:
            try:
                connection = self._idle.pop()
            except IndexError:
                return self._client.connection_pool.get_connection()
            unread = self._unread.pop(id(connection), 0)
            try:
                for _ in range(unread):
                    try:
                        connection.read_response()
                    except redis.ResponseError as exc:
                        log.warning("a Redis script sent without waiting failed: %s", exc)
            except BaseException:
                # Broken, or a read cut short: its replies are lost with it.
                self._discard(connection)
                continue
            return connection

    def _discard(self, connection: Any) -> None:
        """Close it and give it back to the pool, which connects it again when next used."""
        self._unread.pop(id(connection), None)
        connection.disconnect()
        self._client.connection_pool.release(connection)


def _pack_evalsha(sha: str, keys: Sequence[str], args: Sequence[Any]) -> bytes:
    """EVALSHA sha numkeys keys... args... in RESP, encoded as redis-py's Encoder does."""
    return _pack_command(_EVALSHA, sha, keys, args)


def _pack_command(command: bytes, script: Any, keys: Sequence[str], args: Sequence[Any]) -> bytes:
    """EVAL or EVALSHA, its script or sha, numkeys, keys..., args..., in RESP."""
    items = [command, _encode(script), str(len(keys)).encode()]
    items += [_encode(item) for item in keys]
    items += [_encode(item) for item in args]
    parts = [b"*%d\r\n" % len(items)]
    parts += [b"$%d\r\n%s\r\n" % (len(item), item) for item in items]
    return b"".join(parts)


_EVALSHA = b"EVALSHA"
_EVAL = b"EVAL"
#: redis-py's own connections (TCP, TLS, Unix socket), whose wire format `HotScripts` writes.
_SOCKET_CONNECTIONS = (redis.Connection, redis.SSLConnection, redis.UnixDomainSocketConnection)


def _encode(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value).encode()
    raise redis.DataError(f"cannot send a {type(value).__name__} to Redis")


class RedisStateTracker:
    """`doc:state:{uuid}` with `{stage}_status`, `{stage}_timestamp`, `{stage}_metadata`.

    `lock_prefix` is the `RedisLockManager`'s, for `record_and_release`.
    """

    def __init__(
        self, client: redis.Redis, *, ttl_seconds: int, lock_prefix: str = LOCK_PREFIX
    ) -> None:
        self._client = client
        self._ttl = ttl_seconds
        self._lock_prefix = lock_prefix
        self._hot = HotScripts(client)
        self._record = client.register_script(_RECORD_STATE)
        self._record_releasing = client.register_script(_RECORD_STATE_RELEASING)
        self._release = client.register_script(_RELEASE_IF_OWNER)
        self._acquire_counted_started = client.register_script(_ACQUIRE_COUNTED_STARTED)
        self._unrecord_started = client.register_script(_UNRECORD_STARTED)
        self._mark_finished = client.register_script(_MARK_FINISHED)

    def record(
        self, document_uuid: str, stage: str, status: str, metadata: dict[str, object] | None = None
    ) -> None:
        key = STATE_KEY.format(uuid=document_uuid)
        self._record(keys=[key], args=[self._ttl, *_state_pairs(stage, status, metadata)])

    def record_and_release(
        self,
        document_uuid: str,
        stage: str,
        status: str,
        *,
        lock_name: str,
        token: str,
        metadata: dict[str, object] | None = None,
    ) -> None:
        lock_key = self._lock_prefix + lock_name
        try:
            self._hot.call(
                self._record_releasing,
                [STATE_KEY.format(uuid=document_uuid), lock_key],
                [self._ttl, token, *_state_pairs(stage, status, metadata)],
            )
        except redis.RedisError:
            # Neither was written. The release alone, as the caller made it before the
            # two were one script; Redis still down leaves the lock to expire.
            with contextlib.suppress(redis.RedisError):
                self._release(keys=[lock_key], args=[token])
            raise

    def mark_attempt_finished(self, counter: str) -> None:
        # Not waited for: its reply is read before the connection's next call.
        self._hot.send(self._mark_finished, [counter], [])

    def acquire_counted_and_record_started(
        self,
        document_uuid: str,
        stage: str,
        *,
        lock_name: str,
        ttl_seconds: int,
        owner: str,
        counter: str,
        counter_ttl_s: int,
        limit: int,
        replacing: Sequence[str],
    ) -> CountedAcquisition:
        prefix = f"{owner}#"
        token = prefix + fresh_token()
        status_field, timestamp_field, started_by_field = _started_fields(stage)
        reply = self._hot.call(
            self._acquire_counted_started,
            [counter, self._lock_prefix + lock_name, STATE_KEY.format(uuid=document_uuid)],
            [
                token,
                ttl_seconds,
                prefix,
                counter_ttl_s,
                limit,
                self._ttl,
                status_field,
                timestamp_field,
                _timestamp(),
                started_by_field,
                *replacing,
            ],
        )
        counted, acquired = int(reply[0]), int(reply[1]) == 1
        # Marked finished, the count is over any limit: the script took no lock, wrote nothing.
        finished = counted >= ATTEMPT_FINISHED
        deliveries = counted % ATTEMPT_FINISHED
        started: StartedRecord | None = None
        if len(reply) > 2:
            fields = (status_field, timestamp_field, started_by_field, "last_status")
            replaced = tuple(
                (field, None if value is None else _text(value))
                for field, value in zip(fields, reply[3:7], strict=True)
            )
            started = StartedRecord(document_uuid, stage, token, replaced)
        return CountedAcquisition(deliveries, token if acquired else None, started, finished)

    def unrecord_started(self, started: StartedRecord) -> None:
        args: list[Any] = [*_started_fields(started.stage), started.token]
        for _, value in started.replaced:
            args.extend(("0", "") if value is None else ("1", value))
        try:
            self._unrecord_started(keys=[STATE_KEY.format(uuid=started.document_uuid)], args=args)
        except redis.RedisError as exc:
            log.warning(
                "could not undo the started of %s %s in the state hash (%s)",
                started.stage,
                started.document_uuid,
                exc,
            )

    def get(self, document_uuid: str) -> dict[str, str]:
        raw: dict[Any, Any] = self._client.hgetall(STATE_KEY.format(uuid=document_uuid))
        return {_text(k): _text(v) for k, v in raw.items()}


#: Keys per MGET: bounds one reply (cached LLM answers are a few KB each).
MGET_KEYS = 500


class RedisCache:
    """Plain string cache; callers put the processing version in the key."""

    def __init__(self, client: redis.Redis, *, prefix: str = CACHE_PREFIX) -> None:
        self._client = client
        self._prefix = prefix

    def get(self, key: str) -> str | None:
        value = self._client.get(self._prefix + key)
        return None if value is None else _text(value)

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """One MGET per `MGET_KEYS` keys: a retry of a 630-chunk extraction read its cached
        answers with 630 GETs, a round trip each. (A Redis Cluster would refuse keys of
        several slots in one MGET; docpipe's Redis is one server.)"""
        values: list[str | None] = []
        for start in range(0, len(keys), MGET_KEYS):
            batch = [self._prefix + key for key in keys[start : start + MGET_KEYS]]
            values.extend(None if v is None else _text(v) for v in self._client.mget(batch))
        return values

    def set(self, key: str, value: str, ttl_seconds: int) -> None:
        self._client.set(self._prefix + key, value, ex=ttl_seconds)


class RedisLockManager:
    """Non-blocking locks, each acquisition with a token of its own, released only by it.

    `owner` (a task id) groups acquisitions: another delivery of the same
    task id takes the lock over at once - a task redelivered after its worker
    was killed must not wait out the dead holder's TTL - and gets a new token,
    so the older delivery can no longer release (or renew) it. Telling the two
    deliveries apart is what lets the document's fence refuse the older one's
    writes (`stages.begin`).
    """

    def __init__(self, client: redis.Redis, *, prefix: str = LOCK_PREFIX) -> None:
        self._client = client
        self._prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE_IF_OWNER)

    def acquire(self, name: str, ttl_seconds: int, owner: str | None = None) -> str | None:
        delivery = fresh_token()
        if owner is None:
            # No owner: nobody else may take it over (the prefix is the token itself).
            token = prefix = delivery
        else:
            prefix = f"{owner}#"
            token = prefix + delivery
        acquired = self._acquire(keys=[self._prefix + name], args=[token, ttl_seconds, prefix])
        return token if acquired == 1 else None

    def release(self, name: str, token: str) -> None:
        self._release(keys=[self._prefix + name], args=[token])


class RedisRateLimiter:
    """A sliding window of requests and tokens shared by every worker process; fails closed.

    `limit` requests per window and, when `token_limit` > 0, `token_limit`
    tokens per window (what each request reserves, passed to `acquire`). A
    request over the whole token limit reserves all of it (it waits for an
    empty window instead of never fitting). When Redis cannot answer, the call
    is refused with `RateLimited` (retried later by the task) rather than let
    through or turned into an empty result.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        limit: int,
        window_seconds: float,
        token_limit: int = 0,
        prefix: str = RATE_LIMIT_PREFIX,
    ) -> None:
        self._client = client
        self._limit = limit
        self._window = window_seconds
        self._token_limit = token_limit
        self._prefix = prefix
        self._script = client.register_script(_SLIDING_WINDOW)

    def acquire(self, name: str, tokens: int = 0) -> None:
        try:
            key = self._prefix + name
            wait = self._script(
                keys=[key, key + RATE_LIMIT_TOTALS_SUFFIX],
                args=[
                    time.time(),
                    self._window,
                    self._limit,
                    uuid.uuid4().hex,
                    max(0, int(tokens)),
                    self._token_limit,
                ],
            )
        except redis.RedisError as exc:
            raise RateLimited(
                f"rate limiter unavailable ({type(exc).__name__}); refusing the call"
            ) from exc
        retry_after = float(_text(wait))
        if retry_after > 0:
            tokens_part = f" and {self._token_limit} tokens" if self._token_limit else ""
            raise RateLimited(
                f"rate limit of {self._limit} calls{tokens_part} per {self._window:g}s "
                f"reached for {name}",
                retry_after=retry_after,
            )


def _state_pairs(stage: str, status: str, metadata: dict[str, object] | None) -> list[Any]:
    """A state write's field, value pairs, flat (the scripts' ARGV)."""
    fields: dict[str, Any] = {
        f"{stage}_status": status,
        f"{stage}_timestamp": _timestamp(),
        "last_status": status,
    }
    if metadata:
        fields[f"{stage}_metadata"] = json.dumps(metadata, sort_keys=True, default=str)
    return [item for field in fields.items() for item in field]


def _started_fields(stage: str) -> tuple[str, str, str]:
    """The state hash fields a "started" write sets for `stage`: status, timestamp, started-by."""
    return f"{stage}_status", f"{stage}_timestamp", f"{stage}_started_by"


def _timestamp() -> str:
    """A state write's `{stage}_timestamp`: epoch seconds to the millisecond."""
    return f"{time.time():.3f}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
