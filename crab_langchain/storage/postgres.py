"""Session logs in PostgreSQL: a row per log, a row per line, the lines' bytes as a file's.

A log (a session, or a side log kept beside one) is a row of ``logs``: its
name, the *incarnation* its lines are filed under, how many lines it has and
the bytes its file would have. Its lines are rows of ``lines``, keyed by
incarnation and place, each holding exactly the bytes of one line of the
JSONL file, so a session moves between a directory, Redis and PostgreSQL
unchanged. Replacing a log files its new lines under a new incarnation (from a
sequence), so a reader's cursor never continues into a different log, and a
reader that read the row and its lines in one statement always sees a whole
log: lines of one incarnation are only ever added at its end.

Every operation is one transaction. Writers of one session take turns on its
``logs`` row (``SELECT ... FOR UPDATE``, rows locked in name order), the
database's own lock, held only for the transaction: nobody polls and a writer
killed mid-transaction leaves nothing behind. Each write carries a random
write id, stored with it, so a call resent after its connection dropped (the
reply of a ``COMMIT`` lost) finds its id and answers as the first time instead
of writing twice.

The tables live in one schema (``crab`` by default), created by
:meth:`PostgresStorage.setup`, never as a side effect of reading or writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from crab_langchain.storage.base import (
    Change,
    Chunk,
    Committed,
    Cursor,
    SessionStorage,
    StorageUnavailableError,
    Tail,
    check_name,
    numbered_lines,
    owner_of,
    public_url,
    url_secrets,
)

__all__ = ["SCHEMA_VERSION", "PostgresStorage", "StorageNotSetUpError"]

T = TypeVar("T")

SCHEMA_VERSION = 1
"""The version of the tables :meth:`PostgresStorage.setup` creates."""

_ATTEMPTS = 12  # per call, while the connection keeps dropping (a restart takes a second or two)
_BACKOFF_CAP = 1.0  # seconds
_WRITE_ID_SECONDS = 120  # far past any resend: ours give up within seconds
_FORGET_EVERY = 64  # about one write in this many forgets the write ids past their time
_CONNECT_TIMEOUT = 10  # seconds, for the first connection from_url makes
_POOL_TIMEOUT = 10.0  # seconds a call waits for a connection from the pool


class StorageNotSetUpError(RuntimeError):
    """The database has no crab-langchain tables (or older ones): run ``setup()`` once."""


# One statement each; {names} are the schema's tables, quoted by psycopg.sql.
_LIVE = "(expires IS NULL OR expires > now())"

_SETUP = [
    "CREATE SCHEMA IF NOT EXISTS {schema}",
    "CREATE TABLE IF NOT EXISTS {version} (version integer NOT NULL)",
]
_MIGRATIONS = {
    1: [
        "CREATE SEQUENCE {incarnations}",
        # name: the log; family: the session it belongs to (its own name for a session);
        # listed: named by listings (sessions, not the logs beside them).
        """CREATE TABLE {logs} (
            name text COLLATE "C" PRIMARY KEY,
            family text COLLATE "C" NOT NULL,
            listed boolean NOT NULL,
            incarnation bigint NOT NULL UNIQUE,
            length integer NOT NULL,
            bytes bigint NOT NULL,
            created double precision NOT NULL,
            expires timestamptz
        )""",
        "CREATE INDEX ON {logs} (created DESC, name) WHERE listed",
        # Finding a session by how its name ends is a prefix search of the reversed name.
        "CREATE INDEX ON {logs} ((reverse(name)) text_pattern_ops) WHERE listed",
        "CREATE INDEX ON {logs} (family)",
        "CREATE INDEX ON {logs} (expires) WHERE expires IS NOT NULL",
        """CREATE TABLE {lines} (
            incarnation bigint NOT NULL,
            number integer NOT NULL,
            line bytea NOT NULL,
            PRIMARY KEY (incarnation, number)
        )""",
        """CREATE TABLE {writes} (
            id bytea PRIMARY KEY,
            incarnation bigint NOT NULL,
            length integer NOT NULL,
            made timestamptz NOT NULL DEFAULT now()
        )""",
        "CREATE INDEX ON {writes} (made)",
    ]
}

_STATEMENTS = {
    # A log's row and its lines from a place on, in one statement: one snapshot.
    "read": f"""
        SELECT g.incarnation, g.length, l.number, l.line FROM {{logs}} g
        LEFT JOIN {{lines}} l ON l.incarnation = g.incarnation AND l.number < g.length
          AND l.number >= CASE WHEN g.incarnation = %(incarnation)s AND %(offset)s <= g.length
                               THEN %(offset)s ELSE 0 END
        WHERE g.name = %(name)s AND {_LIVE} ORDER BY l.number""",
    "tail": f"""
        SELECT g.incarnation, g.length, h.line, l.number, l.line FROM {{logs}} g
        JOIN {{lines}} h ON h.incarnation = g.incarnation AND h.number = 0
        LEFT JOIN {{lines}} l ON l.incarnation = g.incarnation AND l.number < g.length
          AND l.number >= greatest(1, g.length - %(count)s)
        WHERE g.name = %(name)s AND {_LIVE} ORDER BY l.number""",
    "lines": """
        SELECT number, line FROM {lines}
        WHERE incarnation = %(incarnation)s AND number >= %(first)s AND number < %(end)s
        ORDER BY number""",
    "headers": f"""
        SELECT g.name, l.line FROM {{logs}} g JOIN {{lines}} l
          ON l.incarnation = g.incarnation AND l.number = 0
        WHERE g.name = ANY(%(names)s) AND {_LIVE}""",
    "sizes": f"SELECT name, bytes FROM {{logs}} WHERE name = ANY(%(names)s) AND {_LIVE}",
    "exists": f"SELECT 1 FROM {{logs}} WHERE name = %(name)s AND {_LIVE}",
    "names": f"SELECT name FROM {{logs}} WHERE listed AND {_LIVE} ORDER BY created DESC, name",
    "names_ending": f"""
        SELECT name FROM {{logs}}
        WHERE listed AND reverse(name) LIKE %(pattern)s AND {_LIVE}
        ORDER BY created DESC, name""",
    # Writers take turns on the rows of the logs they write, locked in name order.
    "lock": f"""
        SELECT name, incarnation, length FROM {{logs}}
        WHERE name = ANY(%(names)s) AND {_LIVE} ORDER BY name FOR UPDATE""",
    "done": "SELECT incarnation, length FROM {writes} WHERE id = %(id)s",
    "forget": f"DELETE FROM {{writes}} WHERE made < now() - interval '{_WRITE_ID_SECONDS} seconds'",
    # Lines appended in one statement: the log's row locked (FOR UPDATE: writers of one log
    # queue here; a no-op in a transaction that locked it already), checked against where the
    # writer read it (if at_incarnation is given), then the lines, the row's length and size,
    # the write id (if given) and the expiry of the log and of its family. Returns the row as
    # locked and its new length (NULL: it had moved, nothing written); no row: no such log.
    "append": f"""
        WITH locked AS (
            SELECT name, incarnation, length FROM {{logs}}
            WHERE name = %(name)s AND {_LIVE} FOR UPDATE),
        ok AS (
            SELECT name, incarnation, length FROM locked
            WHERE %(at_incarnation)s::bigint IS NULL
               OR (incarnation = %(at_incarnation)s AND length = %(at_length)s)),
        added AS (
            INSERT INTO {{lines}} (incarnation, number, line)
            SELECT ok.incarnation, ok.length + u.n - 1, u.line
            FROM ok, unnest(%(lines)s::bytea[]) WITH ORDINALITY AS u(line, n)),
        grown AS (
            UPDATE {{logs}} g SET length = ok.length + %(count)s, bytes = g.bytes + %(size)s,
                expires = coalesce(now() + %(ttl)s::interval, g.expires)
            FROM ok WHERE g.name = ok.name RETURNING g.incarnation, g.length),
        remembered AS (
            INSERT INTO {{writes}} (id, incarnation, length)
            SELECT %(id)s, incarnation, length FROM grown WHERE %(id)s::bytea IS NOT NULL),
        family AS (
            UPDATE {{logs}} SET expires = now() + %(ttl)s::interval
            WHERE family = %(family)s AND name <> %(name)s AND %(ttl)s::interval IS NOT NULL)
        SELECT l.incarnation, l.length, g.length FROM locked l LEFT JOIN grown g ON true""",
    "renew": """
        WITH old AS (SELECT incarnation FROM {logs} WHERE name = %(name)s),
        gone AS (DELETE FROM {lines} WHERE incarnation = (SELECT incarnation FROM old))
        UPDATE {logs} SET incarnation = nextval(%(sequence)s::regclass), length = 0, bytes = 0
        WHERE name = %(name)s RETURNING incarnation""",
    # A log whose time ran out is gone as soon as someone wants its name.
    "clear_expired": """
        WITH gone AS (DELETE FROM {logs} WHERE family = %(family)s
                      AND expires IS NOT NULL AND expires <= now() RETURNING incarnation)
        DELETE FROM {lines} WHERE incarnation IN (SELECT incarnation FROM gone)""",
    "create": """
        INSERT INTO {logs} (name, family, listed, incarnation, length, bytes, created, expires)
        VALUES (%(name)s, %(family)s, %(listed)s, nextval(%(sequence)s::regclass), 0, 0,
                %(created)s, now() + %(ttl)s::interval)
        ON CONFLICT (name) DO NOTHING RETURNING incarnation""",
    "delete": """
        WITH gone AS (DELETE FROM {logs} WHERE name = %(name)s OR family = %(family)s
                      RETURNING name, incarnation, """
    + _LIVE
    + """ AS live),
        lines_gone AS (DELETE FROM {lines} WHERE incarnation IN (SELECT incarnation FROM gone))
        SELECT live FROM gone WHERE name = %(name)s""",
    "sweep": """
        WITH gone AS (DELETE FROM {logs} WHERE family IN (
                        SELECT family FROM {logs} WHERE expires IS NOT NULL AND expires <= now())
                      RETURNING name, listed, incarnation),
        lines_gone AS (DELETE FROM {lines} WHERE incarnation IN (SELECT incarnation FROM gone))
        SELECT count(*) FROM gone WHERE listed""",
}


@dataclass(frozen=True)
class _Query:
    """One statement of a body (see :meth:`PostgresStorage._run`); ``rows``: fetch its rows."""

    statement: bytes
    params: dict[str, Any]
    rows: bool = True


_Body = Generator[_Query, "list[tuple[Any, ...]]", T]
"""A piece of work in one transaction: it yields its statements and is sent their rows
(none for a statement whose rows it does not ask for)."""


@dataclass(frozen=True)
class _Write:
    """A write's id, made once per call, and whether this attempt resends it."""

    id: bytes
    resent: bool


@dataclass(frozen=True)
class _Row:
    name: str
    incarnation: int
    length: int


def _incarnation(cursor: Cursor | None) -> int:
    """The incarnation a cursor read (-1, never one, for a cursor of another storage)."""
    return cursor.identity if cursor is not None and isinstance(cursor.identity, int) else -1


def _ends_at(row: _Row, at: Cursor) -> bool:
    return row.incarnation == _incarnation(at) and row.length == at.offset


def _size(lines: Sequence[bytes]) -> int:
    return sum(len(line) + 1 for line in lines)


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _ttl_seconds(ttl: float | timedelta | None) -> float | None:
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    if seconds is not None and seconds <= 0:
        raise ValueError(f"ttl must be positive, not {ttl!r}")
    return seconds


def _identifier(*parts: str) -> sql.SQL:
    """``parts`` quoted as one identifier, in a statement that also takes parameters: psycopg
    reads every ``%`` of such a statement as a placeholder's, quoted names' included."""
    return sql.SQL(sql.Identifier(*parts).as_string().replace("%", "%%"))


def _family(name: str) -> str:
    owner = owner_of(name)
    return name if owner is None else owner[0]


class PostgresStorage(SessionStorage):
    """Session logs in PostgreSQL, through psycopg 3 connection pools.

    Most code opens one with :meth:`from_url` or
    :meth:`SessionStore.from_url <crab_langchain.SessionStore.from_url>`
    and runs :meth:`setup` once. ``pool`` serves the sync API; ``async_pool``
    (an open :class:`~psycopg_pool.AsyncConnectionPool`) the async one
    (``aget_messages``...), natively. Without one, async calls run the sync
    pool in a worker thread; a storage from :meth:`from_url` keeps async
    connections of its own for each event loop instead. A pool passed in
    stays the caller's to open and close. ``schema`` names
    the schema holding the tables; ``ttl`` (seconds or a ``timedelta``)
    expires a session, with the logs beside it, that long after its last write.
    """

    names_newest_first = True

    def __init__(
        self,
        pool: ConnectionPool[Any],
        *,
        async_pool: AsyncConnectionPool[Any] | None = None,
        schema: str = "crab",
        ttl: float | timedelta | None = None,
        url: str | None = None,
    ) -> None:
        if not isinstance(schema, str) or not schema or "\0" in schema:
            raise ValueError(f"not a schema name: {schema!r}")
        self._pool: ConnectionPool[Any] | None = pool
        self._reopen: Callable[[], ConnectionPool[Any]] | None = None
        self._pool_lock = threading.Lock()
        self.schema = schema
        seconds = _ttl_seconds(ttl)
        self.ttl = timedelta(seconds=seconds) if seconds is not None else None
        self._url = public_url(url) if url else "postgresql://(a pool)"
        self._secrets = url_secrets(url) if url else set()
        self._tables = {
            table: _identifier(schema, table)
            for table in ("logs", "lines", "writes", "version", "incarnations")
        }
        self._sequence = f"{sql.Identifier(schema).as_string()}.incarnations"
        self._statements = {key: self._compose(text) for key, text in _STATEMENTS.items()}
        self._async_given = async_pool
        self._open_async: Callable[[], _LoopConnections] | None = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopConnections] = (
            weakref.WeakKeyDictionary()
        )
        self.native_async = async_pool is not None
        self._writes = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        schema: str = "crab",
        ttl: float | timedelta | None = None,
        max_size: int = 8,
        **connection_options: Any,
    ) -> PostgresStorage:
        """Connect to ``url`` (``postgresql://`` or ``postgres://``) with pools of its own.

        Args:
            url: a libpq connection URL.
            schema: the schema holding the tables.
            ttl: how long a session lives after its last write (None: for ever).
            max_size: connections per pool at most.
            **connection_options: passed to each psycopg connection.

        Returns:
            The storage; run :meth:`setup` once per database and schema.

        Raises:
            StorageUnavailableError: the server cannot be reached or refused the login.
        """
        shown, secrets = public_url(url), url_secrets(url)
        options = {**connection_options, "autocommit": True}
        with _translated(shown, secrets):
            # A first connection of our own, so a refusal says why (a pool would only time out).
            psycopg.connect(url, connect_timeout=_CONNECT_TIMEOUT, **options).close()

        def sync_pool() -> ConnectionPool[Any]:
            made: ConnectionPool[Any] = ConnectionPool(
                url, kwargs=options, min_size=1, max_size=max_size, timeout=_POOL_TIMEOUT, open=True
            )
            with _translated(shown, secrets):
                made.wait(_CONNECT_TIMEOUT)  # its first connection ready for the first call
            return made

        storage = cls(sync_pool(), schema=schema, ttl=ttl, url=url)
        storage._reopen = sync_pool
        storage._open_async = lambda: _LoopConnections(url, options, keep=max_size)
        storage.native_async = True
        return storage

    def __repr__(self) -> str:
        return f"PostgresStorage({self._url!r}, schema={self.schema!r})"

    def describe(self) -> str:
        return f"{self._url} (schema {self.schema!r})"

    @property
    def pool(self) -> ConnectionPool[Any]:
        """The sync connection pool (one the storage opened is opened again after close)."""
        with self._pool_lock:
            if self._pool is None:
                assert self._reopen is not None  # only a pool of our own is ever dropped
                self._pool = self._reopen()
            return self._pool

    def close(self) -> None:
        """Close the pool if the storage opened it (a pool passed in stays open).

        The storage opens a new one when it is used again.
        """
        with self._pool_lock:
            pool = self._pool if self._reopen is not None else None
            if pool is not None:
                self._pool = None
        if pool is not None:
            pool.close()

    async def aclose(self) -> None:
        """Close the async connections the storage keeps for the running event loop."""
        found = self._async.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found.close()

    # --- the tables -----------------------------------------------------------

    def setup(self) -> None:
        """Create the schema and its tables, or bring older ones up to date; idempotent.

        Safe to run from many processes at once: they take turns on an advisory lock.

        Raises:
            StorageNotSetUpError: the tables were made by a newer crab-langchain.
            StorageUnavailableError: the server cannot be reached.
        """
        self._run(self._setup_body)

    async def asetup(self) -> None:
        """Async :meth:`setup`."""
        await self._arun(self._setup_body)

    def _setup_body(self) -> _Body[None]:
        # One setup at a time per database: CREATE ... IF NOT EXISTS races with itself.
        yield _Query(
            self._compose("SELECT pg_advisory_xact_lock(hashtext('crab-langchain setup'))"), {}
        )
        for text in _SETUP:
            yield _Query(self._compose(text), {}, rows=False)
        rows = yield _Query(self._compose("SELECT max(version) FROM {version}"), {})
        found = (rows[0][0] if rows else None) or 0
        if found > SCHEMA_VERSION:
            raise StorageNotSetUpError(
                f"{self.describe()}: the tables are version {found}, made by a newer "
                f"crab-langchain (this one knows version {SCHEMA_VERSION}): upgrade it"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for text in _MIGRATIONS[version]:
                yield _Query(self._compose(text), {}, rows=False)
            insert = self._compose("INSERT INTO {version} (version) VALUES (%(version)s)")
            yield _Query(insert, {"version": version}, rows=False)

    def sweep(self) -> int:
        """Remove every session whose time ran out (see ``ttl``), with the logs beside it.

        Expired sessions are invisible at once; this frees their rows. Run it
        from a periodic job (a creation reusing a name removes that one too).

        Returns:
            How many sessions were removed.
        """
        return self._run(self._sweep_body)

    async def asweep(self) -> int:
        """Async :meth:`sweep`."""
        return await self._arun(self._sweep_body)

    def _sweep_body(self) -> _Body[int]:
        rows = yield self._query("sweep")
        yield self._query("forget", rows=False)
        return int(rows[0][0]) if rows else 0

    def _compose(self, text: str) -> bytes:
        """``text`` with the schema's names in it, rendered once (not at each execution)."""
        composed = sql.SQL(text).format(**self._tables, schema=_identifier(self.schema))
        return composed.as_bytes(None)

    def _query(self, key: str, rows: bool = True, **params: Any) -> _Query:
        return _Query(self._statements[key], params, rows)

    # --- names and places -----------------------------------------------------

    def location(self, name: str) -> str:
        return f"{self._url} {self.schema}.logs {check_name(name)!r}"

    def path(self, name: str) -> None:
        check_name(name)  # refused as everywhere, though no file will ever hold it

    def names(self, *, suffix: str = "") -> list[str]:
        if not suffix:
            rows = self._run(lambda: self._one(self._query("names")), atomic=False)
        else:
            pattern = _like_prefix(suffix[::-1])
            rows = self._run(
                lambda: self._one(self._query("names_ending", pattern=pattern)), atomic=False
            )
        return [row[0] for row in rows]

    def exists(self, name: str) -> bool:
        check_name(name)
        return bool(self._run(lambda: self._one(self._query("exists", name=name)), atomic=False))

    def read_header(self, name: str) -> bytes:
        header = self.read_headers([name])[0]
        if isinstance(header, Exception):
            raise header
        return header

    def read_headers(self, names: Sequence[str]) -> list[bytes | Exception]:
        wanted = [check_name(name) for name in names]
        rows = self._run(lambda: self._one(self._query("headers", names=wanted)), atomic=False)
        found = {row[0]: bytes(row[1]) for row in rows}
        return [
            found[name]
            if name in found
            else FileNotFoundError(2, "no such session", self.location(name))
            for name in wanted
        ]

    def sizes(self, names: Sequence[str]) -> list[int | None]:
        wanted = [check_name(name) for name in names]
        rows = self._run(lambda: self._one(self._query("sizes", names=wanted)), atomic=False)
        found = {row[0]: int(row[1]) for row in rows}
        return [found.get(name) for name in wanted]

    # --- reading --------------------------------------------------------------

    def read(self, name: str, cursor: Cursor | None) -> Chunk | None:
        return self._run(lambda: self._read_body(name, cursor), atomic=False)

    async def aread(self, name: str, cursor: Cursor | None) -> Chunk | None:
        if not self.native_async:
            return await super().aread(name, cursor)
        return await self._arun(lambda: self._read_body(name, cursor), atomic=False)

    def _read_body(self, name: str, cursor: Cursor | None) -> _Body[Chunk | None]:
        offset = cursor.offset if cursor is not None else 0
        rows = yield self._query(
            "read", name=check_name(name), incarnation=_incarnation(cursor), offset=offset
        )
        if not rows:
            raise FileNotFoundError(2, "no such session", self.location(name))
        incarnation, length = rows[0][0], rows[0][1]
        first = offset if _incarnation(cursor) == incarnation and offset <= length else 0
        if first == length:
            return None
        lines = (bytes(line) for *_, number, line in rows if number is not None)
        end = Cursor(length, length, incarnation)
        return Chunk(numbered_lines(lines, first + 1), end, reset=first == 0)

    def read_tail(self, name: str, count: int) -> Tail:
        return self._run(lambda: self._tail_body(name, count), atomic=False)

    async def aread_tail(self, name: str, count: int) -> Tail:
        if not self.native_async:
            return await super().aread_tail(name, count)
        return await self._arun(lambda: self._tail_body(name, count), atomic=False)

    def _tail_body(self, name: str, count: int) -> _Body[Tail]:
        rows = yield self._query("tail", name=check_name(name), count=count)
        if not rows:
            raise FileNotFoundError(2, "no such log", self.location(name))
        incarnation, length, header = rows[0][0], rows[0][1], bytes(rows[0][2])
        kept = [(number, bytes(line)) for *_, number, line in rows if number is not None]
        first = kept[0][0] if kept else length
        lines = numbered_lines((line for _, line in kept), first + 1)
        return Tail(header, lines, Cursor(length, length, incarnation), whole=first <= 1)

    # --- writing --------------------------------------------------------------

    def create(self, name: str, header: bytes, *, created: float | None = None) -> None:
        self._run(self._writing(lambda write: self._create_body(write, name, header, created)))

    def _create_body(
        self, write: _Write, name: str, header: bytes, created: float | None
    ) -> _Body[None]:
        if write.resent and (yield self._query("done", id=write.id)):
            return  # created by this very call before its connection dropped
        family = _family(check_name(name))
        yield self._query("clear_expired", rows=False, family=family)
        rows = yield self._query(
            "create",
            name=name,
            family=family,
            listed=owner_of(name) is None,
            sequence=self._sequence,
            created=created if created is not None else time.time(),
            ttl=self.ttl,
        )
        if not rows:
            raise FileExistsError(17, "session exists", self.location(name))
        yield from self._grow(write, _Row(name, rows[0][0], 0), [header])

    def append(
        self, name: str, lines: Sequence[bytes], after: Cursor | None = None
    ) -> Cursor | None:
        return self._run(
            self._writing(lambda write: self._append_body(write, name, lines, after)), atomic=False
        )

    async def aappend(
        self, name: str, lines: Sequence[bytes], after: Cursor | None = None
    ) -> Cursor | None:
        if not self.native_async:
            return await super().aappend(name, lines, after)
        return await self._arun(
            self._writing(lambda write: self._append_body(write, name, lines, after)), atomic=False
        )

    def append_at(self, name: str, lines: Sequence[bytes], at: Cursor) -> Cursor | None:
        return self._run(
            self._writing(lambda write: self._append_body(write, name, lines, at, check=True)),
            atomic=False,
        )

    async def aappend_at(self, name: str, lines: Sequence[bytes], at: Cursor) -> Cursor | None:
        if not self.native_async:
            return await super().aappend_at(name, lines, at)
        return await self._arun(
            self._writing(lambda write: self._append_body(write, name, lines, at, check=True)),
            atomic=False,
        )

    def _append_body(
        self,
        write: _Write,
        name: str,
        lines: Sequence[bytes],
        after: Cursor | None,
        *,
        check: bool = False,
    ) -> _Body[Cursor | None]:
        # One statement (the storage's most frequent write: a chat turn, a task's writes),
        # so it runs as its own transaction: see "append".
        if not lines:
            raise ValueError("nothing to append")
        done = (yield self._query("done", id=write.id)) if write.resent else []
        if done:  # a resend of an append made: what it left
            row = _Row(name, done[0][0], done[0][1])
        else:
            rows = yield self._appending(
                check_name(name), lines, write.id, after if check else None
            )
            if not rows:
                raise FileNotFoundError(2, "no such session", self.location(name))
            if rows[0][2] is None:
                return None  # it had moved since ``after``: nothing written
            row = _Row(name, rows[0][0], rows[0][2])
            yield from self._forget_now_and_then()
        if after is None or after.identity != row.incarnation:
            return None
        if after.offset != row.length - len(lines):
            return None
        return Cursor(row.length, row.length, row.incarnation)

    def replace(self, name: str, lines: Sequence[bytes]) -> None:
        self._run(self._writing(lambda write: self._replace_body(write, name, lines, None)))

    async def areplace(self, name: str, lines: Sequence[bytes]) -> None:
        if not self.native_async:
            await super().areplace(name, lines)
            return
        await self._arun(self._writing(lambda write: self._replace_body(write, name, lines, None)))

    def replace_at(self, name: str, lines: Sequence[bytes], at: Cursor) -> bool:
        return self._run(self._writing(lambda write: self._replace_body(write, name, lines, at)))

    async def areplace_at(self, name: str, lines: Sequence[bytes], at: Cursor) -> bool:
        if not self.native_async:
            return await super().areplace_at(name, lines, at)
        return await self._arun(
            self._writing(lambda write: self._replace_body(write, name, lines, at))
        )

    def _replace_body(
        self, write: _Write, name: str, lines: Sequence[bytes], at: Cursor | None
    ) -> _Body[bool]:
        if not lines:
            raise ValueError("a log holds at least its header line")
        locked = yield from self._locked(write, [name])
        if locked is None:
            return True  # a resend of a replacement made
        if at is not None and not _ends_at(locked[0], at):
            return False
        yield from self._grow(write, (yield from self._renew(locked[0])), lines)
        return True

    def commit(self, name: str, side: str, change: Change) -> Committed | None:
        return self._run(self._writing(lambda write: self._commit_body(write, name, side, change)))

    async def acommit(self, name: str, side: str, change: Change) -> Committed | None:
        if not self.native_async:
            return await super().acommit(name, side, change)
        return await self._arun(
            self._writing(lambda write: self._commit_body(write, name, side, change))
        )

    def _commit_body(
        self, write: _Write, name: str, side: str, change: Change
    ) -> _Body[Committed | None]:
        locked = yield from self._locked(write, [name, side])
        if locked is None:
            return Committed(None, None)  # a resend of a commit made: read both again
        session, log = locked
        if change.at is not None and not _ends_at(session, change.at):
            return None
        # The side log's lines from ``first`` on that were there before ours (None: not
        # known, read them after writing): what another writer added since ``side_at``.
        first, before_ours = 0, None
        if change.side_at is not None:
            before_ours = yield from self._side_moved(log, change)
            if before_ours is None:
                return None
            first = change.side_at.offset
        if change.side_replace:
            log, first, before_ours = (yield from self._renew(log)), 0, []
        if change.replace:
            session = yield from self._renew(session)
        session = yield from self._grow(write, session, change.lines, remember=False)
        # One transaction: the side log's lines before and after the session's land together.
        ours = [*change.before, *change.after]
        log = yield from self._grow(write, log, ours)
        if before_ours is None:  # not checked: the whole side log, ours among it
            before_ours, ours = [bytes(line) for _, line in (yield self._lines(log, 0))], []
        side_chunk = Chunk(
            numbered_lines([*before_ours, *ours], first + 1),
            Cursor(log.length, log.length, log.incarnation),
            reset=first == 0,
        )
        return Committed(Cursor(session.length, session.length, session.incarnation), side_chunk)

    def _side_moved(self, log: _Row, change: Change) -> _Body[list[bytes] | None]:
        """The lines another writer appended to the locked side log since ``change.side_at``,
        if they let ``change`` be written; None if they do not (or the log was replaced)."""
        at = cast("Cursor", change.side_at)
        if log.incarnation != _incarnation(at) or log.length < at.offset:
            return None
        if log.length == at.offset:
            return []
        rows = yield self._lines(log, at.offset)
        moved = [bytes(line) for _, line in rows]
        passing = Chunk([(at.offset + 1 + n, line) for n, line in enumerate(moved)], at)
        return moved if change.passes(passing) else None

    def delete(self, name: str) -> bool:
        check_name(name)
        family = name if owner_of(name) is None else ""  # a session goes with its companions
        rows = self._run(
            lambda: self._one(self._query("delete", name=name, family=family)), atomic=False
        )
        return bool(rows and rows[0][0])

    @contextlib.contextmanager
    def creation_lock(self) -> Iterator[None]:
        # A session-level advisory lock: the server queues the waiters and frees the lock
        # if this process dies. On a connection of its own, not the pool's: waiters holding
        # pooled connections would starve the holder of the one it needs to create.
        key = f"crab-langchain creation {self.schema}"
        pool = self.pool
        conninfo = pool.conninfo if isinstance(pool.conninfo, str) else pool.conninfo()
        kwargs = pool.kwargs if isinstance(pool.kwargs, dict) else (pool.kwargs or dict)()
        with _translated(self._url, self._secrets):
            conn = psycopg.connect(conninfo, **{**kwargs, "autocommit": True})
        with conn, _translated(self._url, self._secrets):
            conn.execute("SELECT pg_advisory_lock(hashtext(%s))", [key])
            yield  # closing the connection frees the lock

    # --- the bodies' shared steps ----------------------------------------------

    def _locked(self, write: _Write, names: list[str]) -> _Body[list[_Row] | None]:
        """Lock the rows of ``names`` for this transaction: None if ``write`` was made
        before (a resend); ``FileNotFoundError`` if a log is missing."""
        rows = yield self._query("lock", names=[check_name(name) for name in names])
        if write.resent and (yield self._query("done", id=write.id)):
            return None
        found = {row[0]: _Row(*row) for row in rows}
        for name in names:
            if name not in found:
                raise FileNotFoundError(2, "no such session", self.location(name))
        return [found[name] for name in names]

    def _grow(
        self, write: _Write, row: _Row, lines: Sequence[bytes], *, remember: bool = True
    ) -> _Body[_Row]:
        """Append ``lines`` to the locked log ``row``; with ``remember``, end the write."""
        grown = _Row(row.name, row.incarnation, row.length + len(lines))
        if not lines and not remember:
            return grown
        yield self._appending(row.name, lines, write.id if remember else None, None, rows=False)
        if remember:
            yield from self._forget_now_and_then()
        return grown

    def _appending(
        self,
        name: str,
        lines: Sequence[bytes],
        write_id: bytes | None,
        at: Cursor | None,
        *,
        rows: bool = True,
    ) -> _Query:
        """The "append" statement: ``lines`` onto log ``name``, if it ends at ``at`` (None:
        wherever it ends), the write kept under ``write_id`` (None: not kept)."""
        return self._query(
            "append",
            rows,
            name=name,
            family=_family(name),
            at_incarnation=None if at is None else _incarnation(at),
            at_length=None if at is None else at.offset,
            lines=list(lines),
            count=len(lines),
            size=_size(lines),
            id=write_id,
            ttl=self.ttl,
        )

    def _forget_now_and_then(self) -> _Body[None]:
        """About one write in :data:`_FORGET_EVERY` drops the write ids past their time."""
        self._writes += 1
        if self._writes % _FORGET_EVERY == 0:
            yield self._query("forget", False)

    def _renew(self, row: _Row) -> _Body[_Row]:
        """Empty log ``row`` under a new incarnation (its lines go)."""
        rows = yield self._query("renew", name=row.name, sequence=self._sequence)
        return _Row(row.name, rows[0][0], 0)

    def _lines(self, row: _Row, first: int) -> _Query:
        return self._query("lines", incarnation=row.incarnation, first=first, end=row.length)

    @staticmethod
    def _one(query: _Query) -> _Body[list[tuple[Any, ...]]]:
        return (yield query)

    @staticmethod
    def _writing(body: Callable[[_Write], _Body[T]]) -> Callable[[], _Body[T]]:
        """``body`` with a write id, made once: every resend of the call carries the same
        (only a resend asks whether it was made: a fresh id cannot have been)."""
        write_id, attempts = os.urandom(12), itertools.count()
        return lambda: body(_Write(write_id, resent=next(attempts) > 0))

    # --- running bodies ---------------------------------------------------------

    def _run(self, body: Callable[[], _Body[T]], *, atomic: bool = True) -> T:
        """Run ``body()`` in one transaction (a body of one statement, read or delete, needs
        none: ``atomic=False``), again while the connection drops."""
        for attempt in range(_ATTEMPTS):
            try:
                with _translated(self._url, self._secrets), self.pool.connection() as conn:
                    return _drive(conn, body(), atomic=atomic)
            except StorageUnavailableError:
                if attempt == _ATTEMPTS - 1:
                    raise
                self.pool.check()  # the other idle connections died with this one
                time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _arun(self, body: Callable[[], _Body[T]], *, atomic: bool = True) -> T:
        """Async :meth:`_run` on the running loop's pool."""
        pool = await self._async_pool()
        for attempt in range(_ATTEMPTS):
            try:
                with _translated(self._url, self._secrets):
                    async with pool.connection() as conn:
                        return await _adrive(conn, body(), atomic=atomic)
            except StorageUnavailableError:
                if attempt == _ATTEMPTS - 1:
                    raise
                await pool.check()
                await asyncio.sleep(_backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _async_pool(self) -> AsyncConnectionPool[Any] | _LoopConnections:
        if self._async_given is not None:
            return self._async_given
        assert self._open_async is not None  # callers check native_async first
        loop = asyncio.get_running_loop()
        found = self._async.get(loop)
        if found is None:
            found = self._async[loop] = self._open_async()
        return found


class _LoopConnections:
    """Async connections of one event loop, kept between calls: a pool without tasks.

    Not psycopg_pool's AsyncConnectionPool: its background tasks swallow
    cancellation, so one the caller did not close before its event loop ended
    (``asyncio.run`` returning) would hang the loop's shutdown for ever. These
    are only sockets: a loop that ends leaves nothing running.
    """

    def __init__(self, url: str, options: dict[str, Any], *, keep: int) -> None:
        self._url, self._options, self._keep = url, options, keep
        self._idle: list[psycopg.AsyncConnection[Any]] = []

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        conn = self._idle.pop() if self._idle else await self._connect()
        try:
            yield conn
        finally:
            # A broken connection, or one cut short mid-statement, is never handed out again.
            idle = not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE
            if idle and len(self._idle) < self._keep:
                self._idle.append(conn)
            else:
                await conn.close()

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self._url, connect_timeout=_CONNECT_TIMEOUT, **self._options
        )

    async def check(self) -> None:
        """Drop the idle connections: after one broke, the others likely did too."""
        await self.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


def _drive(conn: psycopg.Connection[Any], body: _Body[T], *, atomic: bool) -> T:
    """Run ``body``'s statements on ``conn``, in one transaction if ``atomic``."""
    with conn.transaction() if atomic else contextlib.nullcontext(), _settled(body):
        try:
            query = next(body)
            while True:
                cursor = conn.execute(query.statement, query.params)
                query = body.send(cursor.fetchall() if query.rows else [])
        except StopIteration as done:
            return cast("T", done.value)


async def _adrive(conn: psycopg.AsyncConnection[Any], body: _Body[T], *, atomic: bool) -> T:
    """Async :func:`_drive`."""
    async with conn.transaction() if atomic else contextlib.nullcontext():
        with _settled(body):
            try:
                query = next(body)
                while True:
                    cursor = await conn.execute(query.statement, query.params)
                    query = body.send(await cursor.fetchall() if query.rows else [])
            except StopIteration as done:
                return cast("T", done.value)


@contextlib.contextmanager
def _settled(body: _Body[Any]) -> Iterator[None]:
    try:
        yield
    finally:
        body.close()


def _backoff(attempt: int) -> float:
    """Seconds before resend ``attempt + 1``: exponential, capped, with full jitter."""
    return random.uniform(0, min(_BACKOFF_CAP, 0.02 * 2**attempt))


@contextlib.contextmanager
def _translated(where: str, secrets: set[str]) -> Iterator[None]:
    """psycopg's errors as the seam's: an unreachable server, a full disk, no tables.

    The server's words are kept (they name what failed) with any password cut out.
    """
    try:
        yield
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as error:
        raise StorageNotSetUpError(
            f"{where}: no crab-langchain tables here ({_words(error, secrets)}): "
            "run store.setup() (or saver.setup(), or `crab-sessions --root URL setup`) once"
        ) from None
    except psycopg.errors.DiskFull as error:
        raise OSError(
            errno.ENOSPC, f"the PostgreSQL server's disk is full: {error}", where
        ) from None
    except (psycopg.OperationalError, psycopg.errors.TransactionRollback) as error:
        # A dropped connection, a server restarting, a deadlock broken by the server: the
        # transaction was rolled back (or, if its COMMIT's reply was lost, its write id says so).
        raise StorageUnavailableError(f"{where}: {_words(error, secrets)}") from None
    except psycopg.InterfaceError as error:
        raise StorageUnavailableError(f"{where}: {_words(error, secrets)}") from None


def _words(error: Exception, secrets: set[str]) -> str:
    """The error's first line (the server's others quote the statement), no password in it."""
    first = (str(error).strip().splitlines() or [""])[0]
    text = f"{type(error).__name__}: {first}"
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
