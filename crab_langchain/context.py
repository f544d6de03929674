"""The working-context layer: what a session says now, kept incrementally.

A session's working context is what follows its last compaction marker: the
marker's summary as a user message, then every message after it. Run events
are a run's trace, not conversation, and messages marked auto-injected (kept
by an audit plugin) were for one earlier run only; neither is part of it.

:class:`WorkingContext` holds that context as LangChain messages, the one
representation kept. It is fed the chunks a :class:`~crab_langchain.log.SessionLog`
reads past its cursor, so a read costs what was appended since the last one;
crabtalk's form of the same messages (``Session.history``) is derived from it
when someone asks.

:class:`Follower` is how every door follows a session: the chat history, a
checkpointer's thread and the middleware read on through it, under one rule
(no lock held across I/O, a plugin call or an ``await``; a read is taken only
if nobody moved the context meanwhile). :class:`Followed` is the bounded
cache each door keeps them in.
"""

from __future__ import annotations

import bisect
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, Generic, TypeVar, overload

from langchain_core.messages import BaseMessage

from crab_langchain.convert import (
    ReadBack,
    decode_line,
    is_auto_injected,
    marker_message,
    to_crab_message,
)
from crab_langchain.forksafe import ForkSafeLock
from crab_langchain.log import NumberedLines, SessionLog, last_marker
from crab_langchain.models import (
    CompactMarker,
    CrabMessage,
    Session,
    SessionFormatError,
    SessionMeta,
)
from crab_langchain.steps import Blocking, Read, Steps
from crab_langchain.storage import Chunk, Cursor

__all__ = [
    "OFF_LOOP_FROM",
    "Followed",
    "Follower",
    "Numbered",
    "ReadOnlyMessages",
    "WorkingContext",
    "context_of",
    "read_context",
]

Numbered = tuple[list[BaseMessage], list[int]]
"""Messages of a context and the log's line number of each (a marker's, for its summary)."""


class WorkingContext:
    """The messages after the last compaction marker of one log, and how far it was read.

    Not thread-safe: its owner serializes access. ``version`` changes whenever
    the messages are replaced rather than added to (a load, a clear, a marker).
    """

    def __init__(self, transform: Callable[[BaseMessage], BaseMessage] | None = None) -> None:
        """An empty context: nothing read yet.

        Args:
            transform: applied to each message read from a line (a saver unseals
                encrypted messages so); messages taken as written are not passed.
        """
        self.transform = transform
        self._messages: list[BaseMessage] = []
        self._unbuilt: list[Callable[[], BaseMessage]] = []
        """Calls building the last messages, taken as written and not asked for yet."""
        self.lines = array("q")
        """The log's line number of each message (a marker's, for its summary)."""
        self.start = 0
        """The line the context starts at: its marker's, or 0 (no marker)."""
        self.cursor: Cursor | None = None
        self.meta: SessionMeta | None = None
        self.header: bytes | None = None
        """The header line as read, byte for byte."""
        self.version = 0
        self._crab: list[CrabMessage] = []

    def reset(self) -> None:
        """Forget everything read: the next chunk must start at line 1."""
        self.cursor = None
        self.meta = None
        self._restart()

    @property
    def messages(self) -> list[BaseMessage]:
        """The context's messages (built now where only the call building one was kept)."""
        if self._unbuilt:
            self._messages.extend(build() for build in self._unbuilt)
            self._unbuilt = []
        return self._messages

    def _restart(self, marker: tuple[int, BaseMessage] | None = None) -> None:
        self._messages, self._unbuilt, self.lines, self.start = [], [], array("q"), 0
        if marker is not None:
            self.start = marker[0]
            self._add(*marker)
        self._crab = []
        self.version += 1

    def _add(self, number: int, message: BaseMessage) -> None:
        self.messages.append(message)
        self.lines.append(number)

    def as_of(self, line: int) -> Numbered | None:
        """The context as it stood at ``line`` of the log (new lists), if this one tells.

        It tells for a line it has read, at or after the last compaction
        marker: the messages up to it, and their line numbers. None for a
        line before that marker (the context then started elsewhere) or past
        the cursor.
        """
        if self.cursor is None or not self.start <= line <= self.cursor.lines:
            return None
        upto = bisect.bisect_right(self.lines, line)
        return self.messages[:upto], self.lines[:upto].tolist()

    def crab_messages(self) -> list[CrabMessage]:
        """The context as crabtalk messages, converted once each, as they are first asked for."""
        if len(self._crab) < len(self.messages):
            self._crab.extend(to_crab_message(m) for m in self.messages[len(self._crab) :])
        return self._crab

    # --- taking what was read -----------------------------------------------

    def take(self, log: SessionLog, chunk: Chunk) -> None:
        """Add ``chunk`` of ``log``: all of it (``chunk.reset``) or what follows the cursor.

        Raises:
            SessionFormatError: a line is malformed (naming it); the context
                is then reset, so the next read starts again from line 1.
        """
        try:
            if chunk.reset:
                self._load(log, chunk.lines)
            else:
                self._take_lines(log, chunk.lines)
        except BaseException:
            self.reset()
            raise
        self.cursor = chunk.cursor

    def take_appended(
        self,
        log: SessionLog,
        lines: Sequence[bytes],
        read_back: Sequence[ReadBack] | None,
        cursor: Cursor,
    ) -> None:
        """Add ``lines`` just appended (ending at ``cursor``) without reading them back.

        ``read_back`` holds what reading each line gives, where the writer
        knows it: a message, or a call that builds it when first asked for.
        """
        first = cursor.lines - len(lines) + 1
        try:
            for index, line in enumerate(lines):
                known = read_back[index] if read_back else None
                if isinstance(known, BaseMessage):
                    self._add(first + index, known)
                elif known is not None:
                    self._unbuilt.append(known)
                    self.lines.append(first + index)
                else:
                    self._take_line(log, first + index, line)
        except BaseException:
            self.reset()
            raise
        self.cursor = cursor

    def _load(self, log: SessionLog, lines: NumberedLines) -> None:
        """A whole log: its header, then only what follows its last compaction marker."""
        meta, body = log.split(lines)
        self.meta, self.header = meta, lines[0][1]
        self._restart()
        self._take_lines(log, body[last_marker(log, body) :])

    def _take_lines(self, log: SessionLog, lines: NumberedLines) -> None:
        for number, line in lines:
            self._take_line(log, number, line)

    def _take_line(self, log: SessionLog, number: int, line: bytes) -> None:
        try:
            entry = decode_line(line)
        except SessionFormatError as error:
            raise log.error(error, number) from None
        try:
            if isinstance(entry, CompactMarker):
                self._restart((number, self._transformed(marker_message(entry))))
            elif isinstance(entry, BaseMessage) and not is_auto_injected(entry):
                self._add(number, self._transformed(entry))
        except SessionFormatError as error:
            raise log.error(error, number) from None
        # A run event, or a message an audit plugin kept: neither is for a later run.

    def _transformed(self, message: BaseMessage) -> BaseMessage:
        return message if self.transform is None else self.transform(message)


def read_context(log: SessionLog) -> WorkingContext:
    """The working context of ``log`` read afresh from its first line, on its own.

    For readers that keep no context (a transcript, an export).

    Raises:
        FileNotFoundError: the log does not exist.
        SessionFormatError: a line is malformed (naming it).
    """
    context = WorkingContext()
    chunk = log.read(None)
    if chunk is not None:
        context.take(log, chunk)
    return context


def context_of(
    log: SessionLog,
    body: NumberedLines,
    transform: Callable[[BaseMessage], BaseMessage] | None = None,
) -> Numbered:
    """The working context that the body lines ``body`` of ``log`` give, with its line numbers.

    For a context as it stood at an earlier line: pass the lines up to it.
    Only what follows the last compaction marker in ``body`` is decoded.

    Raises:
        SessionFormatError: a line is malformed (naming it).
    """
    context = WorkingContext(transform)
    context._take_lines(log, body[last_marker(log, body) :])
    return context.messages, context.lines.tolist()


class ReadOnlyMessages(Sequence[BaseMessage]):
    """A read-only view of a list, so hooks see a conversation without copying it."""

    __slots__ = ("_items",)

    def __init__(self, items: list[BaseMessage]) -> None:
        """A view of ``items`` (not a copy)."""
        self._items = items

    @overload
    def __getitem__(self, index: int) -> BaseMessage: ...
    @overload
    def __getitem__(self, index: slice) -> list[BaseMessage]: ...
    def __getitem__(self, index: int | slice) -> Any:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[BaseMessage]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"ReadOnly({self._items!r})"


T = TypeVar("T")
OFF_LOOP_FROM = 1000
"""Lines (or messages) an async door parses or converts in a worker thread, not on the loop."""

AfterLoad = Callable[[], Any]
"""Gives the ``crab_after_load`` hook caller (pluggy's), or None: plugins load on first use."""


class Follower:
    """One session log, followed: its working context, read on from where the last read stopped.

    Every door follows a session through one of these. The rule: the lock
    guards the context and is never held across I/O, a plugin call or an
    ``await``; a reader reads without it and takes what it read only if the
    cursor did not move meanwhile (another reader took its read first: it
    reads on from there). Whoever loads the log from its first line tells
    the plugins (``crab_after_load``), outside the lock, with a read-only
    view of the context.
    """

    def __init__(
        self,
        log: SessionLog,
        session_id: str,
        *,
        transform: Callable[[BaseMessage], BaseMessage] | None = None,
        after_load: AfterLoad | None = None,
    ) -> None:
        """Follow ``log``, the session ``session_id`` (nothing is read yet).

        Args:
            log: the session's log.
            session_id: the id the session is told with.
            transform: applied to each message read (see :class:`WorkingContext`).
            after_load: gives the ``crab_after_load`` hook caller, if plugins are told.
        """
        self.log = log
        self.session_id = session_id
        self.context = WorkingContext(transform)
        self.lock = ForkSafeLock()
        self._after_load = after_load
        self._told: tuple[tuple[int, Cursor | None], Session] | None = None

    def __repr__(self) -> str:
        return f"Follower({self.log.location!r})"

    @property
    def cursor(self) -> Cursor | None:
        """How far the context was read (None: not yet)."""
        with self.lock:
            return self.context.cursor

    def read_on(self) -> Steps[Chunk | None]:
        """Read what was appended since the last read, and take it; what was read.

        One body for the sync and async doors (:func:`~crab_langchain.steps.run`,
        :func:`~crab_langchain.steps.arun`).

        Raises:
            FileNotFoundError: the log does not exist.
            SessionFormatError: a line is malformed (naming it).
        """
        while True:
            cursor = self.cursor
            chunk: Chunk | None = yield Read(self.log, cursor)
            if chunk is not None and len(chunk.lines) >= OFF_LOOP_FROM:
                taken = yield Blocking(lambda: self.take(cursor, chunk))  # noqa: B023 - used at once
            else:
                taken = self.take(cursor, chunk)
            if taken:
                return chunk

    def take(self, cursor: Cursor | None, chunk: Chunk | None) -> bool:
        """Take ``chunk``, read past ``cursor``; False if the context moved on since."""
        # Asked first, outside the lock: the session told is built only for a listener.
        hook = self._listener() if chunk is not None and chunk.reset else None
        with self.lock:
            if self.context.cursor != cursor:
                return False
            if chunk is None:
                return True
            self.context.take(self.log, chunk)
            loaded = None if hook is None else (list(self.context.messages), self._session())
        if hook is not None and loaded is not None:
            hook(session=loaded[1], messages=ReadOnlyMessages(loaded[0]))
        return True

    def take_appended(
        self,
        cursor: Cursor | None,
        lines: Sequence[bytes],
        read_back: Sequence[ReadBack] | None,
        after: Cursor | None,
    ) -> bool:
        """Take ``lines``, appended right after ``cursor`` (ending at ``after``), unread.

        False when that cannot be done: others wrote between (``after`` is
        None) or the context moved meanwhile.
        """
        with self.lock:
            if after is None or cursor is None or self.context.cursor != cursor:
                return False
            self.context.take_appended(self.log, lines, read_back, after)
            return True

    def reset(self) -> None:
        """Forget what was read: the next read starts from line 1."""
        with self.lock:
            self.context.reset()

    def session(self) -> Session:
        """The session as plugins are told of it: header fields and working context.

        Made once for each state of the context. Raises
        :class:`SessionFormatError` if the log was not read yet.
        """
        with self.lock:
            return self._session()

    def _session(self) -> Session:
        state = (self.context.version, self.context.cursor)
        if self._told is not None and self._told[0] == state:
            return self._told[1]
        meta = self.context.meta
        if meta is None:
            raise SessionFormatError("the session was not read", path=self.log.location)
        history = list(self.context.crab_messages())
        told = Session.from_meta(self.session_id, meta, file_path=self.log.path, history=history)
        self._told = (state, told)
        return told

    def _listener(self) -> Any:
        """The ``crab_after_load`` hook caller, if any plugin implements it; else None."""
        hook = self._after_load() if self._after_load is not None else None
        return hook if hook is not None and hook.get_hookimpls() else None


class Followed(Generic[T]):
    """A bounded cache of followed sessions (a :class:`Follower`, or a door's record holding
    one), the most recently used kept: the one every door keeps its sessions in.

    Each door keeps its own: a checkpointer's view of a session goes with its
    index of the side log, which another door's reads must not move past.
    """

    def __init__(self, size: int = 1024) -> None:
        """Keep at most ``size`` sessions."""
        self._size = size
        self._known: OrderedDict[Hashable, T] = OrderedDict()
        self._lock = ForkSafeLock()

    def get(self, key: Hashable, make: Callable[[], T | None]) -> T | None:
        """What is kept under ``key``, or what ``make()`` gives (then kept).

        ``make`` may do I/O (find the session): it is called outside the lock,
        and returns None when there is nothing to follow (yet).
        """
        with self._lock:
            known = self._known.get(key)
            if known is not None:
                self._known.move_to_end(key)
                return known
        made = make()
        if made is None:
            return None
        with self._lock:
            found = self._known.setdefault(key, made)
            self._known.move_to_end(key)
            while len(self._known) > self._size:
                self._known.popitem(last=False)
        return found

    def forget(self, key: Hashable, kept: T | None = None) -> None:
        """Let go of what is kept under ``key`` (its log was deleted): of ``kept``, if given.

        One made anew meanwhile (the session created again) stays.
        """
        with self._lock:
            if kept is None or self._known.get(key) is kept:
                self._known.pop(key, None)
