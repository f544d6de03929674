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
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Sequence

from langchain_core.messages import BaseMessage

from crab_langchain.convert import decode_line, is_auto_injected, marker_message, to_crab_message
from crab_langchain.log import NumberedLines, SessionLog, last_marker
from crab_langchain.models import CompactMarker, CrabMessage, SessionFormatError, SessionMeta
from crab_langchain.storage import Chunk, Cursor

__all__ = ["Numbered", "WorkingContext", "context_of", "read_context"]

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
        self.messages: list[BaseMessage] = []
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

    def _restart(self, marker: tuple[int, BaseMessage] | None = None) -> None:
        self.messages, self.lines, self.start = [], array("q"), 0
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
        read_back: Sequence[BaseMessage | None] | None,
        cursor: Cursor,
    ) -> None:
        """Add ``lines`` just appended (ending at ``cursor``) without reading them back.

        ``read_back`` holds what reading each line gives, where the writer knows it.
        """
        first = cursor.lines - len(lines) + 1
        try:
            for index, line in enumerate(lines):
                known = read_back[index] if read_back else None
                if known is not None:
                    self._add(first + index, known)
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
