"""What one saver knows of one thread: its session and side log, and how far it read each."""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple

from langchain_core.messages import BaseMessage

from crab_langchain.checkpoint.sidelog import SIDE_KIND, SideIndex, check_side_header
from crab_langchain.context import Follower, WorkingContext
from crab_langchain.log import SessionLog, split_header
from crab_langchain.storage import Chunk, Cursor, Tail, companion_name

__all__ = ["Base", "Thread"]

_RECENT_PUTS = 8  # a put continuing one of these (a retry, a fork of a step) is found by pointer


class Base(NamedTuple):
    """A message list LangGraph holds, and the session's line it stands for.

    A new message list that starts with ``messages`` (the very objects: a
    pointer comparison) continues the session from ``line``.
    """

    epoch: int
    version: int
    """The working context's version then: a clear or a reload makes it stale."""
    line: int
    messages: list[BaseMessage]
    unseen: frozenset[str] = frozenset()
    """Ids of another door's messages in the session up to ``line`` that ``messages`` lacks:
    written after LangGraph was told the conversation, so never removed by it."""


class Thread:
    """What one saver knows of one thread: its session (followed) and side log, how far read."""

    def __init__(self, thread_id: str, follower: Follower) -> None:
        self.thread_id = thread_id
        self.follower = follower
        self.session = follower.log
        self.side = SessionLog(self.session.storage, companion_name(self.session.name, SIDE_KIND))
        # The session's lock guards the side log's state too: a put decides on both at once.
        self.lock = follower.lock
        self.index = SideIndex(self.side)
        self.side_cursor: Cursor | None = None
        self.side_identity: str | None = None
        """The identity of the session the side log says it belongs to (None: not said)."""
        self.puts: deque[Base] = deque(maxlen=_RECENT_PUTS)
        """The message lists of this saver's last puts, and where the session stood after each."""
        self.handed: Base | None = None
        """The messages this saver last handed out as the newest checkpoint's, and where."""
        self.first_told: tuple[str, int, list[Any]] | None = None
        """``(checkpoint id, epoch, messages)`` first handed out as the newest checkpoint's:
        what every run that read it was told at least (later readers may be told more)."""

    @property
    def context(self) -> WorkingContext:
        """The session's working context (guarded by :attr:`lock`)."""
        return self.follower.context

    def take_side(self, cursor: Cursor | None, chunk: Chunk | None) -> bool:
        """Take ``chunk``, read past ``cursor``; False if another reader moved on meanwhile.

        A reader that moved on within the chunk (it took a record appended
        since ``cursor``) is no obstacle: the lines past it are taken. A chunk
        telling of a new epoch (another writer replaced the session) makes
        the working context be read again: what was read of the session is
        the old epoch's, and a decision must never take it for the new one's.
        """
        with self.lock:
            epoch = self.index.epoch
            if self.side_cursor != cursor:
                now = self.side_cursor
                if chunk is None or now is None or not _within(now, cursor, chunk):
                    return False
                chunk = Chunk([line for line in chunk.lines if line[0] > now.lines], chunk.cursor)
            if chunk is None:
                return True
            try:
                if chunk.reset:
                    header, body = split_header(self.side.location, chunk.lines)
                    self.side_identity = check_side_header(self.side, header)
                    self.index = SideIndex(self.side)
                    self.index.take(body)
                else:
                    self.index.take(chunk.lines)
            except BaseException:
                self.forget_side()
                raise
            self.side_cursor = chunk.cursor
            if self.index.epoch != epoch:
                self.context.reset()
            return True

    def take_whole(self, chunk: Chunk | None) -> None:
        """Take ``chunk``, the whole side log, in place of a partial index (if still there)."""
        with self.lock:
            if not self.index.partial or chunk is None:
                return
            header, body = split_header(self.side.location, chunk.lines)
            identity = check_side_header(self.side, header)
            index = SideIndex(self.side)
            index.take(body)
            self._replace_index(index, chunk.cursor, identity)

    def take_tail(self, tail: Tail, index: SideIndex) -> None:
        """Take ``index``, made from ``tail`` (the side log's end), unless another reader
        took the side log meanwhile."""
        with self.lock:
            if self.side_cursor is not None:
                return
            self._replace_index(index, tail.cursor, check_side_header(self.side, tail.header))

    def _replace_index(self, index: SideIndex, cursor: Cursor, identity: str | None) -> None:
        """Hold ``index`` (read up to ``cursor``) in place of the one held, under the lock.

        As in :meth:`take_side`, an index of another epoch makes the working
        context be read again.
        """
        if index.epoch != self.index.epoch:
            self.context.reset()
        self.index, self.side_cursor, self.side_identity = index, cursor, identity

    def forget_side(self) -> None:
        """Forget the side log read so far (it is gone, or unreadable): read it afresh."""
        self.index, self.side_cursor, self.side_identity = SideIndex(self.side), None, None


def _within(now: Cursor, cursor: Cursor | None, chunk: Chunk) -> bool:
    """Whether ``now`` stands inside ``chunk`` (read past ``cursor``) of the same log."""
    return (
        cursor is not None
        and not chunk.reset
        and now.identity == cursor.identity == chunk.cursor.identity
        and cursor.lines <= now.lines <= chunk.cursor.lines
    )
