"""Session logs in Redis or Redis Cluster: one list per session, its items the JSONL lines.

A session's list holds exactly the lines its file would hold, header first,
so a session moves between a directory and Redis unchanged. Beside it live
the session's *meta* hash (its token, a random string naming this
incarnation of the log: a replace or a re-creation gets a new one, so a
reader's cursor never continues into a different log; and the bytes its file
would have, so listings show sizes without reading lines) and its recent
write ids. The three keys share one hash
tag, so they sit in one cluster slot and each operation on a session is one
Lua script: atomic, one round trip, on a single node and on a cluster alike.

Every call is safe to send again, and each is retried (with backoff) when its
connection drops: a reply lost after the server ran an ``RPUSH`` would
otherwise mean either an error for a write that happened or, resent, the
lines twice. So an append carries a write id, kept for a couple of minutes,
and a resent one finds its id and returns the first result instead of
pushing again; creation and replacement carry the new token the same way,
and the creation lock counts "already mine" as taken.

An index (two sorted sets in one slot of their own) lists the sessions: by
creation time for listings and latest-session look-ups, and by reversed name
so that finding a session by its id is a range query, not a scan. A session
is created before it is indexed and deleted before it is unindexed, so the
index never lists a session that is still being created; entries whose list
is gone (a TTL ran out, a deleter died between its two steps) are pruned when
a listing meets them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
import redis.exceptions
from redis.commands.core import AsyncScript

from crab_langchain.models import SessionFormatError
from crab_langchain.storage.base import (
    COMPANION_KINDS,
    Change,
    Chunk,
    Committed,
    Cursor,
    SessionStorage,
    StorageUnavailableError,
    Tail,
    check_name,
    companion_name,
    numbered_lines,
    owner_of,
    public_url,
)

__all__ = ["RedisStorage", "StorageUnavailableError"]

T = TypeVar("T")

SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

_PUSH_BATCH = 1000  # items per RPUSH inside a script: Lua's unpack() has a stack limit
# Write ids are kept this long: far past any resend (ours give up within seconds),
# and by time, not by count, since many writers can append between a loss and its resend.
_WRITE_ID_MS = 120_000
_ATTEMPTS = 10  # per call, while the connection keeps dropping
_BACKOFF_CAP = 0.5  # seconds
_CREATION_LOCK_SECONDS = 30.0
_CREATION_LOCK_POLL = 0.005  # seconds between tries: creating a session takes about 1 ms
_NO_SESSION = "CRAB_NO_SESSION"

# Shared Lua: push ARGV[first..] onto KEYS[1] in batches, count their bytes as a file's
# (a newline each) in KEYS[2]; refresh the TTL (ms in ARGV[2]).
_WRONG_TYPE = "CRAB_WRONG_TYPE"
# Each script first checks that the session's keys hold what they should (someone may
# have SET one): an error then, before any write, leaves the session as it was.
# KEYS come in threes (lines, meta, writes): the log's own, then its family's (see touch()).
_SESSION_TYPES = f"""
local wanted = {{'list', 'hash', 'zset'}}
for i, key in ipairs(KEYS) do
  local found = redis.call('TYPE', key)['ok']
  local kind = wanted[(i - 1) % 3 + 1]
  if found ~= 'none' and found ~= kind then
    return redis.error_reply('{_WRONG_TYPE} ' .. found .. ' ' .. kind)
  end
end
"""
# Every key of the session's family (the session and the logs kept beside it), so a
# session and its side log live and expire together, whichever of them was written.
_TOUCH = """
local function touch()
  local ttl = tonumber(ARGV[2])
  if ttl > 0 then
    for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ttl) end
  end
end
"""

# The meta hash KEYS[2] keeps each recent write id's result ('w:<id>' -> value); the writes
# sorted set KEYS[3], their server times, to forget them after _WRITE_ID_MS.
_REMEMBER = f"""
local function remember(value)
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  redis.call('HSET', KEYS[2], 'w:' .. ARGV[1], value)
  redis.call('ZADD', KEYS[3], now, ARGV[1])
  local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - {_WRITE_ID_MS}, 'LIMIT', 0, 64)
  for _, stale in ipairs(old) do
    redis.call('HDEL', KEYS[2], 'w:' .. stale)
    redis.call('ZREM', KEYS[3], stale)
  end
end
"""

_PUSH = (
    f"""
local function push(first)
  local length, size = 0, 0
  for i = first, #ARGV, {_PUSH_BATCH} do
    length = redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + {_PUSH_BATCH - 1}, #ARGV)))
  end
  for i = first, #ARGV do size = size + #ARGV[i] + 1 end
  redis.call('HINCRBY', KEYS[2], 'bytes', size)
  return length
end
"""
    + _TOUCH
)

# KEYS: lines, meta, writes. ARGV: token, ttl, header. 1 if created (now or by
# this very call before a retry), 0 if the name is taken.
_CREATE = (
    _PUSH
    + _SESSION_TYPES
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HGET', KEYS[2], 'token') == ARGV[1] and 1 or 0
end
redis.call('DEL', KEYS[2], KEYS[3])
push(3)
redis.call('HSET', KEYS[2], 'token', ARGV[1])
touch()
return 1
"""
)

# Whether the log still ends where a reader left it (ARGV[3] its token, ARGV[4] its
# length; length -1: wherever it ends).
_ENDS_AT = """
local function ends_at()
  if ARGV[4] == '-1' then return true end
  local token = redis.call('HGET', KEYS[2], 'token') or ''
  return token == ARGV[3] and redis.call('LLEN', KEYS[1]) == tonumber(ARGV[4])
end
"""

# KEYS: lines, meta, writes. ARGV: write id, ttl, token, length, lines... ->
# {length, token}, length -1 (nothing written) if the log does not end at ARGV[3..4].
# A resent append finds its write id remembered, with the length it left.
_APPEND = (
    _PUSH
    + _REMEMBER
    + _SESSION_TYPES
    + _ENDS_AT
    + f"""
local id = 'w:' .. ARGV[1]
local done = redis.call('HGET', KEYS[2], id)
if done then return {{tonumber(done), redis.call('HGET', KEYS[2], 'token')}} end
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('{_NO_SESSION}') end
if not ends_at() then return {{-1, redis.call('HGET', KEYS[2], 'token')}} end
local length = push(5)
remember(length)
touch()
return {{length, redis.call('HGET', KEYS[2], 'token')}}
"""
)

# Push ARGV[first..last] onto list KEYS[k], counting their bytes in KEYS[k + 1].
_PUSH_RANGE = f"""
local function push_range(k, first, last)
  local size = 0
  for i = first, last, {_PUSH_BATCH} do
    redis.call('RPUSH', KEYS[k], unpack(ARGV, i, math.min(i + {_PUSH_BATCH - 1}, last)))
  end
  for i = first, last do size = size + #ARGV[i] + 1 end
  redis.call('HINCRBY', KEYS[k + 1], 'bytes', size)
end
-- Whether log k (its lines and meta keys) ends at token ARGV[t], length ARGV[t + 1].
local function ends(k, t)
  return (redis.call('HGET', KEYS[k + 1], 'token') or '') == ARGV[t]
    and redis.call('LLEN', KEYS[k]) == tonumber(ARGV[t + 1])
end
"""

# KEYS: the session's lines, meta, writes; the side log's; the rest of the family.
# ARGV: 1 write id, 2 ttl, 3-4 session token and length (-1: not checked, not written),
# 5-6 side token and length (-1: not checked), 7 passing prefix, 8 session mode
# ('a' append, 'r' replace), 9 side mode, 10-11 new session and side tokens,
# 12-14 how many before, lines and after items follow, then those items.
# -> {0} if the session or side log moved (nothing written); {2} if this write id was
# done before (a resend: read both again); else {1, session token, length, side token,
# length, first, side lines from first} (first: where the side log was read from).
_COMMIT = (
    _PUSH_RANGE
    + _REMEMBER
    + _TOUCH
    + _SESSION_TYPES
    + f"""
local id = 'w:' .. ARGV[1]
if redis.call('HEXISTS', KEYS[2], id) == 1 then return {{2}} end
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[4]) == 0 then
  return redis.error_reply('{_NO_SESSION}')
end
if ARGV[4] ~= '-1' and not ends(1, 3) then return {{0}} end
local from = 0
if ARGV[6] ~= '-1' then
  from = tonumber(ARGV[6])
  if (redis.call('HGET', KEYS[5], 'token') or '') ~= ARGV[5] then return {{0}} end
  local length = redis.call('LLEN', KEYS[4])
  if length < from then return {{0}} end
  if length > from then
    local passing = ARGV[7]
    if passing == '' then return {{0}} end
    for _, line in ipairs(redis.call('LRANGE', KEYS[4], from, -1)) do
      if string.sub(line, 1, #passing) ~= passing then return {{0}} end
    end
  end
end
local before, lines, after = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local b, l, a = 15, 15 + before, 15 + before + lines
if ARGV[9] == 'r' then
  redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
  redis.call('HSET', KEYS[5], 'token', ARGV[11])
  from = 0
end
if before > 0 then push_range(4, b, l - 1) end
if lines > 0 then
  if ARGV[8] == 'r' then
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
    redis.call('HSET', KEYS[2], 'token', ARGV[10])
  end
  push_range(1, l, a - 1)
end
if after > 0 then push_range(4, a, #ARGV) end
remember(1)
touch()
return {{1, redis.call('HGET', KEYS[2], 'token'), redis.call('LLEN', KEYS[1]),
  redis.call('HGET', KEYS[5], 'token'), redis.call('LLEN', KEYS[4]), from,
  redis.call('LRANGE', KEYS[4], from, -1)}}
"""
)

# KEYS: lines, meta, writes. ARGV: new token, ttl, token, length, lines... -> 1, or 0
# (nothing changed) if the log does not end at ARGV[3..4].
_REPLACE = (
    _PUSH
    + _SESSION_TYPES
    + _ENDS_AT
    + f"""
if redis.call('HGET', KEYS[2], 'token') == ARGV[1] then return 1 end
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('{_NO_SESSION}') end
if not ends_at() then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
push(5)
redis.call('HSET', KEYS[2], 'token', ARGV[1])
touch()
return 1
"""
)

# KEYS: lines, meta. ARGV: token, offset. nil if no log; else {token, length}
# when nothing is new, or {token, length, first, items} (first 0: read it all).
_READ = (
    _SESSION_TYPES
    + """
local length = redis.call('LLEN', KEYS[1])
if length == 0 then return false end
local token = redis.call('HGET', KEYS[2], 'token')
local first = 0
if token and token == ARGV[1] then first = tonumber(ARGV[2]) end
if first > length then first = 0 end
if first == length then return {token, length} end
return {token, length, first, redis.call('LRANGE', KEYS[1], first, -1)}
"""
)

# KEYS: lines, meta. ARGV: count. nil if no log; else {token, length, header, first,
# items}: the header and the last ``count`` lines (first: where they start, from 0).
_TAIL = (
    _SESSION_TYPES
    + """
local length = redis.call('LLEN', KEYS[1])
if length == 0 then return false end
local first = math.max(1, length - tonumber(ARGV[1]))
return {redis.call('HGET', KEYS[2], 'token'), length, redis.call('LINDEX', KEYS[1], 0), first,
  redis.call('LRANGE', KEYS[1], first, -1)}
"""
)

# KEYS: lines, meta, writes (and those of the logs kept beside it). 1 if there was a log.
_DELETE = """
local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', unpack(KEYS))
return existed
"""

# KEYS: lock. ARGV: token, lease ms. 1 if the lock is ours now (or already was:
# a resent acquisition whose first reply was lost).
_LOCK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: by-time, by-name. ARGV: name, reversed name, created.
_INDEX_ADD = """
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
return 1
"""

# KEYS: by-time, by-name. ARGV: (name, reversed name, created or '')... Removes
# each entry, but only if its creation time is still the one given: an entry
# for a session re-created under the same name meanwhile is a new entry.
_INDEX_REMOVE = """
local removed = 0
for i = 1, #ARGV, 3 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if ARGV[i + 2] == '' or (score and tonumber(score) == tonumber(ARGV[i + 2])) then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i + 1])
  end
end
return removed
"""


def _quote(text: str) -> str:
    # Braces delimit hash tags: keep a name's own braces from choosing the slot.
    return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def _reversed(name: str) -> bytes:
    return name[::-1].encode("utf-8")


def _ttl_ms(ttl: float | timedelta | None) -> int:
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    if seconds is None:
        return 0
    if seconds <= 0:
        raise ValueError(f"ttl must be positive, not {ttl!r}")
    return max(1, round(seconds * 1000))


def _token() -> bytes:
    return os.urandom(12).hex().encode("ascii")


class _Keys:
    """The key names of one storage (one prefix)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = _quote(prefix)
        index = f"{self.prefix}:{{{self.prefix}:index}}"
        self.by_time = f"{index}:by-time"
        self.by_name = f"{index}:by-name"
        self.lock = f"{index}:creation-lock"

    def session(self, name: str) -> list[str]:
        """The lines, meta and write-id keys of log ``name``.

        A companion log shares its session's hash tag, so a checkpointer's
        session and side log sit in one slot of a cluster.
        """
        owner = owner_of(name)
        if owner is None:
            tagged = f"{self.prefix}:{{{_quote(name)}}}"
        else:
            tagged = f"{self.prefix}:{{{_quote(owner[0])}}}:{owner[1]}"
        return [f"{tagged}:lines", f"{tagged}:meta", f"{tagged}:writes"]

    def family(self, name: str) -> list[str]:
        """The keys of log ``name``, then those of its session and of the session's companions.

        Writing any of them refreshes the expiry of all (one slot: one hash tag).
        """
        owner = owner_of(name)
        session = name if owner is None else owner[0]
        logs = [session, *(companion_name(session, kind) for kind in COMPANION_KINDS)]
        return [key for log in [name, *(n for n in logs if n != name)] for key in self.session(log)]

    def pair(self, name: str, side: str) -> list[str]:
        """The keys a :meth:`RedisStorage.commit` touches: the session's three, the side
        log's three, then the rest of their family (whose expiry it refreshes)."""
        first = [*self.session(name), *self.session(side)]
        return [*first, *(key for key in self.family(name) if key not in first)]


class RedisStorage(SessionStorage):
    """Session logs in Redis (``redis.Redis``) or Redis Cluster (``RedisCluster``).

    Most code opens one with :meth:`from_url` or
    :meth:`SessionStore.from_url <crab_langchain.SessionStore.from_url>`.
    ``client`` must return bytes (the default, ``decode_responses=False``).
    ``async_client`` serves the async API (``aget_messages``...); without
    one, async calls run the sync client in a worker thread. ``prefix`` starts
    every key, so several stores share a server. ``ttl`` (seconds or a
    ``timedelta``) expires a session that long after its last write.
    """

    def __init__(
        self,
        client: SyncClient,
        *,
        async_client: AsyncClient | Callable[[], AsyncClient] | None = None,
        prefix: str = "crab",
        ttl: float | timedelta | None = None,
        url: str | None = None,
    ) -> None:
        if not prefix:
            raise ValueError("prefix must be a non-empty string")
        self.client = client
        self.prefix = prefix
        self._ttl_ms = _ttl_ms(ttl)
        self.ttl = timedelta(milliseconds=self._ttl_ms) if self._ttl_ms else None
        self._keys = _Keys(prefix)
        self._url = public_url(url) if url else _describe_client(client)
        self._scripts = _register(client)
        # An asyncio client belongs to the event loop it connected in: one per loop,
        # opened here (and closed by aclose) unless the caller gave its own.
        self._owns_async = callable(async_client)
        self._open_async: Callable[[], AsyncClient] | None = (
            async_client if callable(async_client) or async_client is None else lambda: async_client
        )
        self._async: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[AsyncClient, dict[str, AsyncScript]]
        ] = weakref.WeakKeyDictionary()
        self.native_async = async_client is not None

    names_newest_first = True

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "crab",
        ttl: float | timedelta | None = None,
        cluster: bool | None = None,
        **client_options: Any,
    ) -> RedisStorage:
        """Connect to ``url`` (``redis://``, ``rediss://`` or ``unix://``).

        ``cluster=None`` asks the server whether it is a cluster node and
        connects accordingly; True or False says so without asking.
        ``client_options`` go to redis-py's client (timeouts, TLS, retries).
        Raises :class:`StorageUnavailableError` if the server cannot be reached.
        """
        options = {**client_options, "decode_responses": False}
        shown = public_url(url)
        try:
            netloc = urlsplit(url).netloc
        except ValueError as error:  # urlsplit's words name no part of the URL
            raise ValueError(f"{shown}: {error}") from None
        if "@" in url and "@" not in netloc:
            # redis-py would read part of the password as path, query or fragment.
            raise ValueError(
                f"{shown}: the user name or password holds a reserved character "
                "(/ ? #): percent-encode it (e.g. / as %2F)"
            )
        with _translated(shown), _url_refused(shown):
            if cluster is None:
                cluster = _is_cluster(url, options)
            client = _connect(url, options, cluster=cluster)
        return cls(
            client,
            async_client=lambda: _connect_async(url, options, cluster=cluster),
            prefix=prefix,
            ttl=ttl,
            url=url,
        )

    def __repr__(self) -> str:
        return f"RedisStorage({self._url!r}, prefix={self.prefix!r})"

    def describe(self) -> str:
        return f"{self._url} (prefix {self.prefix!r})"

    def close(self) -> None:
        """Close the sync client's connections (it reconnects when used again)."""
        with contextlib.suppress(Exception):
            self.client.close()

    async def aclose(self) -> None:
        """Close the async client of the running event loop (a new one connects when needed)."""
        found = self._async.pop(asyncio.get_running_loop(), None)
        if found is not None and self._owns_async:
            await found[0].aclose()

    # --- names and places ---------------------------------------------------

    def location(self, name: str) -> str:
        return f"{self._url} {self._keys.session(check_name(name))[0]}"

    def path(self, name: str) -> None:
        check_name(name)  # refused as everywhere, though no file will ever hold it

    def names(self, *, suffix: str = "") -> list[str]:
        if not suffix:
            newest = self._run(lambda: self.client.zrevrange(self._keys.by_time, 0, -1))
            return [item.decode("utf-8") for item in cast("list[bytes]", newest)]
        start = _reversed(suffix)
        found = self._run(
            lambda: self.client.zrangebylex(
                self._keys.by_name, b"[" + start, b"(" + start + b"\xff"
            )
        )
        return [item.decode("utf-8")[::-1] for item in cast("list[bytes]", found)]

    def exists(self, name: str) -> bool:
        key = self._keys.session(check_name(name))[0]
        return bool(self._run(lambda: self.client.exists(key)))

    def read_header(self, name: str) -> bytes:
        return _header_or_raise(self.read_headers([name])[0])

    def read_headers(self, names: Sequence[str]) -> list[bytes | Exception]:
        keys = [self._keys.session(check_name(name))[0] for name in names]
        found = self._run(lambda: self._each(keys, "lindex", 0))
        gone = [name for name, header in zip(names, found, strict=True) if header is None]
        if gone:
            self._run(lambda: self._prune(gone))
        return [
            self._header_or_error(name, header) for name, header in zip(names, found, strict=True)
        ]

    def _header_or_error(self, name: str, header: bytes | Exception | None) -> bytes | Exception:
        if header is None:
            return FileNotFoundError(2, "no such session", self.location(name))
        if isinstance(header, redis.exceptions.ResponseError):
            return _wrong_type(self.location(name), "value of another type", "list")
        return header

    def sizes(self, names: Sequence[str]) -> list[int | None]:
        keys = [self._keys.session(check_name(name))[1] for name in names]
        found = self._run(lambda: self._each(keys, "hget", "bytes"))
        return [int(size) if isinstance(size, bytes) else None for size in found]

    def _each(self, keys: Sequence[str], command: str, *args: Any) -> list[Any]:
        """``command key *args`` for every key, in one round trip (per node of a cluster).

        A key that refuses the command (one of the wrong type) gives its error
        in its place, so one bad session does not fail the others.
        """
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            getattr(pipe, command)(key, *args)
        return cast("list[Any]", pipe.execute(raise_on_error=False))

    def _prune(self, names: list[str]) -> None:
        """Drop index entries whose list is gone, unless re-created meanwhile."""
        scores = self.client.zmscore(self._keys.by_time, names)
        still_gone = self._each([self._keys.session(name)[0] for name in names], "exists")
        args: list[bytes | str] = []
        for name, score, exists in zip(names, scores, still_gone, strict=True):
            if not exists and score is not None:
                args += [name, _reversed(name), repr(score)]
        if args:
            self._script("index_remove", [self._keys.by_time, self._keys.by_name], args)

    # --- reading --------------------------------------------------------------

    def read(self, name: str, cursor: Cursor | None) -> Chunk | None:
        keys, args = self._read_call(name, cursor)
        with _session_errors(self.location(name)):
            return self._chunk(name, self._run(lambda: self._script("read", keys, args)))

    async def aread(self, name: str, cursor: Cursor | None) -> Chunk | None:
        if not self.native_async:
            return await super().aread(name, cursor)
        keys, args = self._read_call(name, cursor)
        with _session_errors(self.location(name)):
            return self._chunk(name, await self._acall("read", keys, args))

    def read_tail(self, name: str, count: int) -> Tail:
        keys = self._keys.session(check_name(name))[:2]
        with _session_errors(self.location(name)):
            reply = self._run(lambda: self._script("tail", keys, [count]))
        return self._tail(name, reply)

    async def aread_tail(self, name: str, count: int) -> Tail:
        if not self.native_async:
            return await super().aread_tail(name, count)
        keys = self._keys.session(check_name(name))[:2]
        with _session_errors(self.location(name)):
            reply = await self._acall("tail", keys, [count])
        return self._tail(name, reply)

    def _tail(self, name: str, reply: Any) -> Tail:
        if reply is None:
            raise FileNotFoundError(2, "no such session", self.location(name))
        token, length, header, first = reply[0] or b"", int(reply[1]), reply[2], int(reply[3])
        lines = numbered_lines(reply[4], first + 1)
        return Tail(header, lines, Cursor(length, length, token), whole=first == 1)

    def _read_call(self, name: str, cursor: Cursor | None) -> tuple[list[str], list[Any]]:
        keys = self._keys.session(check_name(name))[:2]
        if cursor is None or not isinstance(cursor.identity, bytes):
            return keys, [b"", 0]
        return keys, [cursor.identity, cursor.offset]

    def _chunk(self, name: str, reply: Any) -> Chunk | None:
        if reply is None:
            raise FileNotFoundError(2, "no such session", self.location(name))
        token, length = reply[0] or b"", int(reply[1])
        if len(reply) == 2:
            return None
        first = int(reply[2])
        numbered = numbered_lines(reply[3], first + 1)
        return Chunk(numbered, Cursor(length, length, token), reset=first == 0)

    # --- writing --------------------------------------------------------------

    def create(self, name: str, header: bytes, *, created: float | None = None) -> None:
        keys, token = self._family(name), _token()
        # The token is made once, so a resent create knows the session is its own.
        with _session_errors(self.location(name)):
            made = self._run(lambda: self._script("create", keys, [token, self._ttl_ms, header]))
        if not made:
            raise FileExistsError(17, "session exists", self.location(name))
        if owner_of(name) is not None:
            return  # a companion log is listed with its session, not on its own
        index_args = [name, _reversed(name), repr(created if created is not None else 0.0)]
        index_keys = [self._keys.by_time, self._keys.by_name]
        self._run(lambda: self._script("index_add", index_keys, index_args))

    def append(
        self, name: str, lines: Sequence[bytes], after: Cursor | None = None
    ) -> Cursor | None:
        keys, args = self._append_call(name, lines, None)
        with _session_errors(self.location(name)):
            reply = self._run(lambda: self._script("append", keys, args))
        return _appended(reply, len(lines), after)

    async def aappend(
        self, name: str, lines: Sequence[bytes], after: Cursor | None = None
    ) -> Cursor | None:
        if not self.native_async:
            return await super().aappend(name, lines, after)
        keys, args = self._append_call(name, lines, None)
        with _session_errors(self.location(name)):
            reply = await self._acall("append", keys, args)
        return _appended(reply, len(lines), after)

    def append_at(self, name: str, lines: Sequence[bytes], at: Cursor) -> Cursor | None:
        keys, args = self._append_call(name, lines, at)
        with _session_errors(self.location(name)):
            reply = self._run(lambda: self._script("append", keys, args))
        return _appended(reply, len(lines), at)

    async def aappend_at(self, name: str, lines: Sequence[bytes], at: Cursor) -> Cursor | None:
        if not self.native_async:
            return await super().aappend_at(name, lines, at)
        keys, args = self._append_call(name, lines, at)
        with _session_errors(self.location(name)):
            reply = await self._acall("append", keys, args)
        return _appended(reply, len(lines), at)

    def _append_call(
        self, name: str, lines: Sequence[bytes], at: Cursor | None
    ) -> tuple[list[str], list[Any]]:
        if not lines:
            raise ValueError("nothing to append")
        return self._family(name), [_token(), self._ttl_ms, *_end(at), *lines]

    def _family(self, name: str) -> list[str]:
        """The keys a write of log ``name`` touches: its own three first, then its family's."""
        check_name(name)
        if not name.endswith(".jsonl") and owner_of(name) is None:
            return self._keys.session(name)  # not a session's: a log of its own
        return self._keys.family(name)

    def replace(self, name: str, lines: Sequence[bytes]) -> None:
        keys, args = self._replace_call(name, lines, None)
        with _session_errors(self.location(name)):
            self._run(lambda: self._script("replace", keys, args))

    async def areplace(self, name: str, lines: Sequence[bytes]) -> None:
        if not self.native_async:
            await super().areplace(name, lines)
            return
        keys, args = self._replace_call(name, lines, None)
        with _session_errors(self.location(name)):
            await self._acall("replace", keys, args)

    def replace_at(self, name: str, lines: Sequence[bytes], at: Cursor) -> bool:
        keys, args = self._replace_call(name, lines, at)
        with _session_errors(self.location(name)):
            return bool(self._run(lambda: self._script("replace", keys, args)))

    async def areplace_at(self, name: str, lines: Sequence[bytes], at: Cursor) -> bool:
        if not self.native_async:
            return await super().areplace_at(name, lines, at)
        keys, args = self._replace_call(name, lines, at)
        with _session_errors(self.location(name)):
            return bool(await self._acall("replace", keys, args))

    def _replace_call(
        self, name: str, lines: Sequence[bytes], at: Cursor | None
    ) -> tuple[list[str], list[Any]]:
        if not lines:
            raise ValueError("a log holds at least its header line")
        return self._family(name), [_token(), self._ttl_ms, *_end(at), *lines]

    def commit(self, name: str, side: str, change: Change) -> Committed | None:
        keys, args = self._commit_call(name, side, change)
        with _session_errors(self.location(name)):
            reply = self._run(lambda: self._script("commit", keys, args))
        return _committed(reply)

    async def acommit(self, name: str, side: str, change: Change) -> Committed | None:
        if not self.native_async:
            return await super().acommit(name, side, change)
        keys, args = self._commit_call(name, side, change)
        with _session_errors(self.location(name)):
            reply = await self._acall("commit", keys, args)
        return _committed(reply)

    def _commit_call(self, name: str, side: str, change: Change) -> tuple[list[str], list[Any]]:
        keys = self._keys.pair(check_name(name), check_name(side))
        modes = [b"r" if change.replace else b"a", b"r" if change.side_replace else b"a"]
        counts = [len(change.before), len(change.lines), len(change.after)]
        return keys, [
            _token(),
            self._ttl_ms,
            *_end(change.at),
            *_end(change.side_at),
            change.passing,
            *modes,
            _token(),
            _token(),
            *counts,
            *change.before,
            *change.lines,
            *change.after,
        ]

    def delete(self, name: str) -> bool:
        # A session goes with its companions in one script: never one without the other.
        keys = self._family(name) if owner_of(name) is None else self._keys.session(name)
        existed = self._run(lambda: self._script("delete", keys, []))
        index_keys = [self._keys.by_time, self._keys.by_name]
        self._run(lambda: self._script("index_remove", index_keys, [name, _reversed(name), ""]))
        return bool(existed)

    @contextlib.contextmanager
    def creation_lock(self) -> Iterator[None]:
        lease = _CREATION_LOCK_SECONDS
        with self._leased(self._keys.lock, "the session-creation lock", lease, lease):
            yield

    @contextlib.contextmanager
    def _leased(self, key: str, what: str, lease: float, patience: float) -> Iterator[None]:
        # A lease, not a plain lock: a holder that dies frees it when the lease ends.
        # (Not redis-py's Lock: its acquisition, resent after a lost reply, finds the
        # lock held by itself and waits out the whole lease.)
        keys, token = [key], _token()
        args = [token, int(lease * 1000)]
        deadline = time.monotonic() + patience
        while not self._run(lambda: self._script("lock", keys, args)):
            if time.monotonic() > deadline:
                raise TimeoutError(self._not_free(what, patience))
            time.sleep(_CREATION_LOCK_POLL)
        try:
            yield
        finally:
            with contextlib.suppress(StorageUnavailableError):  # the lease ends it anyway
                self._run(lambda: self._script("unlock", keys, [token]))

    def _not_free(self, what: str, seconds: float) -> str:
        return f"{self.describe()}: {what} was not free within {seconds:.0f} s"

    # --- resending ------------------------------------------------------------

    def _script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        return self._scripts[script](keys=keys, args=args)

    def _run(self, call: Callable[[], T]) -> T:
        """``call()``, resent while its connection drops: every call here is safe to resend."""
        for attempt in range(_ATTEMPTS):
            try:
                with _translated(self._url):
                    return call()
            except StorageUnavailableError:
                if attempt == _ATTEMPTS - 1:
                    raise
                time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _arun(self, call: Callable[[], Awaitable[T]]) -> T:
        """Async :meth:`_run`."""
        for attempt in range(_ATTEMPTS):
            try:
                with _translated(self._url):
                    return await call()
            except StorageUnavailableError:
                if attempt == _ATTEMPTS - 1:
                    raise
                await asyncio.sleep(_backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    # --- async plumbing -------------------------------------------------------

    async def _acall(self, script: str, keys: list[str], args: list[Any]) -> Any:
        _, scripts = self._async_client()
        return await self._arun(lambda: scripts[script](keys=keys, args=args))

    def _async_client(self) -> tuple[AsyncClient, dict[str, AsyncScript]]:
        loop = asyncio.get_running_loop()
        found = self._async.get(loop)
        if found is None:
            assert self._open_async is not None  # callers check native_async first
            client = self._open_async()
            found = self._async[loop] = (client, _register(client))
        return found


def _register(client: Any) -> dict[str, Any]:
    scripts = {
        "create": _CREATE,
        "append": _APPEND,
        "replace": _REPLACE,
        "read": _READ,
        "tail": _TAIL,
        "delete": _DELETE,
        "index_add": _INDEX_ADD,
        "index_remove": _INDEX_REMOVE,
        "lock": _LOCK,
        "unlock": _UNLOCK,
        "commit": _COMMIT,
    }
    return {name: client.register_script(source) for name, source in scripts.items()}


_PASSING = (
    redis.exceptions.TryAgainError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
)
"""Refusals that pass: asked again (every call here is safe to send again), they succeed."""


def _backoff(attempt: int) -> float:
    """Seconds before resend ``attempt + 1``: exponential, capped, with full jitter."""
    return random.uniform(0, min(_BACKOFF_CAP, 0.01 * 2**attempt))


def _end(at: Cursor | None) -> list[Any]:
    """The scripts' ``token, length`` arguments: where the log must end (-1: anywhere)."""
    if at is None:
        return [b"", -1]
    token = at.identity if isinstance(at.identity, bytes) else b"\0"  # not ours: never there
    return [token, at.offset]


def _committed(reply: Any) -> Committed | None:
    """What the commit script's reply says (see ``_COMMIT``)."""
    if int(reply[0]) == 0:
        return None
    if int(reply[0]) == 2:  # a resend of a commit made: where it landed is not known
        return Committed(None, None)
    session_token, session_length, side_token, side_length, first = reply[1:6]
    side_cursor = Cursor(int(side_length), int(side_length), side_token or b"")
    side = Chunk(numbered_lines(reply[6], int(first) + 1), side_cursor, reset=int(first) == 0)
    length = int(session_length)
    return Committed(Cursor(length, length, session_token or b""), side)


def _appended(reply: Any, count: int, after: Cursor | None) -> Cursor | None:
    """The cursor past a block of ``count`` lines, if ``after`` was the log's end before it."""
    length, token = int(reply[0]), reply[1] or b""
    if after is None or after.identity != token or after.offset != length - count:
        return None
    return Cursor(length, length, token)


def _header_or_raise(header: bytes | Exception) -> bytes:
    if isinstance(header, Exception):
        raise header
    return header


def _describe_client(client: Any) -> str:
    try:
        kwargs = client.connection_pool.connection_kwargs
        return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
    except AttributeError:
        nodes = client.get_nodes() if hasattr(client, "get_nodes") else []
        first = nodes[0] if nodes else None
        return f"redis://{first.host}:{first.port}" if first else repr(client)


def _connect(url: str, options: dict[str, Any], *, cluster: bool) -> SyncClient:
    if cluster:
        return redis.cluster.RedisCluster.from_url(url, **options)  # asks the nodes at once
    client = redis.Redis.from_url(url, **options)
    client.ping()  # fail here, naming the server, not at the first read
    return client


def _connect_async(url: str, options: dict[str, Any], *, cluster: bool) -> AsyncClient:
    if cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(url, **options)
    return redis.asyncio.Redis.from_url(url, **options)


def _is_cluster(url: str, options: dict[str, Any]) -> bool:
    probe = redis.Redis.from_url(url, **options)
    try:
        return bool(probe.info("cluster").get("cluster_enabled"))
    finally:
        probe.close()


@contextlib.contextmanager
def _translated(where: str) -> Iterator[None]:
    """Raise redis-py's connection errors as :class:`StorageUnavailableError` naming ``where``.

    A server out of memory refuses writes as a full disk does, so it raises as
    one: ``OSError(ENOSPC)``. (Each script checks before its first write, so a
    refused write has written nothing.)
    """
    try:
        yield
    except redis.exceptions.OutOfMemoryError as error:
        raise OSError(errno.ENOSPC, f"the Redis server is out of memory: {error}", where) from None
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
        raise StorageUnavailableError(f"{where}: {error}") from error
    except (redis.exceptions.ClusterError, redis.exceptions.RedisClusterException) as error:
        raise StorageUnavailableError(f"{where}: cluster unavailable: {error}") from error
    except _PASSING as error:  # a slot migrating, a failover: the same call works again soon
        raise StorageUnavailableError(f"{where}: {type(error).__name__}: {error}") from error


@contextlib.contextmanager
def _url_refused(shown: str) -> Iterator[None]:
    """redis-py's complaint about a URL, without its words: they may quote the password."""
    try:
        yield
    except ValueError as error:
        raise ValueError(
            f"{shown}: redis-py cannot use this URL ({type(error).__name__}); "
            "percent-encode reserved characters (: / ? # @) in the user name and password"
        ) from None


@contextlib.contextmanager
def _session_errors(location: str) -> Iterator[None]:
    """The scripts' refusals as the seam's errors: a missing log, a key of the wrong type."""
    try:
        yield
    except redis.exceptions.ResponseError as error:
        text = str(error)
        if _NO_SESSION in text:
            raise FileNotFoundError(2, "no such session", location) from None
        if _WRONG_TYPE in text:
            found, wanted = text[text.index(_WRONG_TYPE) :].split()[1:3]
            raise _wrong_type(location, found, wanted) from None
        raise


def _wrong_type(location: str, found: str, wanted: str) -> SessionFormatError:
    return SessionFormatError(
        f"a session key holds a {found}, not a {wanted} (written by another program); "
        "this session cannot be read or written until it is deleted",
        path=location,
    )
