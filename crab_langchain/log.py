"""The session-log layer: one session's lines in a storage.

This is the one place that knows what a line of a session is. The first line
is the header (:class:`~crab_langchain.models.SessionMeta`); every other
non-blank line is an entry: a message, a compaction marker or a run event,
as :func:`~crab_langchain.models.parse_entry` classifies it. A
:class:`SessionLog` reads a log from a cursor, appends to it and replaces it,
and names the log and the line whenever a line is malformed. It knows nothing
of LangChain's histories, of hooks or of the working context.

Its async twins (``aread``, ``aappend``, ``aclear``, ``areplace``) run
natively where the storage has an async client and in a worker thread where
it has not; :class:`~crab_langchain.storage.SessionStorage` decides which.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from pathlib import Path

from crab_langchain.models import (
    CompactMarker,
    Entry,
    RunEvent,
    SessionFormatError,
    SessionMeta,
    parse_entry,
)
from crab_langchain.storage import Change, Chunk, Committed, Cursor, SessionStorage, Tail

__all__ = [
    "NumberedLines",
    "SessionLog",
    "header_identity",
    "is_message_line",
    "last_marker",
    "meta_of",
    "split_header",
]

NumberedLines = list[tuple[int, bytes]]
"""``(line number, bytes)`` pairs, as storage reads them (numbers start at 1)."""

# How crabtalk spells the keys of the non-message entries. Inside a JSON
# string these bytes would be escaped (``\"compact\"``), so a line without
# them is a message (or malformed) without parsing it.
_MARKER_KEY = b'"compact"'
_EVENT_KEY = b'"event"'


class SessionLog:
    """The lines of log ``name`` in ``storage``: the header, then the entries."""

    def __init__(self, storage: SessionStorage, name: str) -> None:
        """Address log ``name`` of ``storage`` (nothing is read yet).

        Args:
            storage: where the log's bytes live.
            name: the log's name there (a session file's name).
        """
        self.storage = storage
        self.name = name

    def __repr__(self) -> str:
        return f"SessionLog({self.location!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SessionLog)
            and other.storage is self.storage
            and other.name == self.name
        )

    def __hash__(self) -> int:
        return hash((id(self.storage), self.name))

    @property
    def location(self) -> str:
        """Where the log is, for people: a path, or a server and key."""
        return self.storage.location(self.name)

    @property
    def path(self) -> Path | None:
        """The local file holding the log, if there is one."""
        return self.storage.path(self.name)

    # --- what a line is -----------------------------------------------------

    def error(self, error: SessionFormatError, number: int) -> SessionFormatError:
        """``error`` located at line ``number`` of this log."""
        return error.at(self.location, number)

    def entry(self, number: int, line: bytes) -> Entry:
        """Line ``number`` as its entry; :class:`SessionFormatError` naming it if malformed."""
        try:
            return parse_entry(line)
        except SessionFormatError as error:
            raise self.error(error, number) from None

    def split(self, lines: NumberedLines) -> tuple[SessionMeta, NumberedLines]:
        """The header of ``lines`` (read from line 1) and the lines after it."""
        header, body = split_header(self.location, lines)
        return meta_of(self.storage, self.name, header), body

    def entries(self) -> list[tuple[int, Entry]]:
        """Every entry of the log, in order, with its line number (the whole log is read).

        Raises:
            FileNotFoundError: the log does not exist.
            SessionFormatError: a line is malformed (naming it).
        """
        chunk = self.read(None)
        _, body = self.split([] if chunk is None else chunk.lines)
        return [(number, self.entry(number, line)) for number, line in body]

    # --- reading --------------------------------------------------------------

    def header_line(self) -> bytes:
        """The header line, byte for byte; a rewrite never re-serialises it.

        (Re-serialising would change what a reader of that header gets: a
        number such as ``1e400``, key order, escapes.)
        """
        try:
            return self.storage.read_header(self.name)
        except EOFError as error:
            raise SessionFormatError(str(error), path=self.location, line=1) from None

    def meta(self) -> SessionMeta:
        """The header, parsed; :class:`SessionFormatError` naming the log if malformed."""
        return meta_of(self.storage, self.name, self.header_line())

    def read(self, cursor: Cursor | None) -> Chunk | None:
        """The complete lines past ``cursor`` (all if None or stale); None if nothing changed."""
        return self.storage.read(self.name, cursor)

    async def aread(self, cursor: Cursor | None) -> Chunk | None:
        """Async :meth:`read`."""
        return await self.storage.aread(self.name, cursor)

    def read_tail(self, count: int) -> Tail:
        """The header and the last ``count`` lines (or more), without those before them.

        See :meth:`~crab_langchain.storage.SessionStorage.read_tail`.
        """
        return self.storage.read_tail(self.name, count)

    async def aread_tail(self, count: int) -> Tail:
        """Async :meth:`read_tail`."""
        return await self.storage.aread_tail(self.name, count)

    # --- writing --------------------------------------------------------------

    def append(self, lines: Sequence[bytes], after: Cursor | None = None) -> Cursor | None:
        """Append ``lines`` as one block (all or nothing).

        Returns the cursor past the block if ``after`` was the end of the log
        just before it (so the writer need not read its own lines back), else None.
        """
        return self.storage.append(self.name, lines, after)

    async def aappend(self, lines: Sequence[bytes], after: Cursor | None = None) -> Cursor | None:
        """Async :meth:`append`."""
        return await self.storage.aappend(self.name, lines, after)

    def create(self, header: bytes, *, created: float | None = None) -> None:
        """Create the log holding just ``header``; ``FileExistsError`` if it exists."""
        self.storage.create(self.name, header, created=created)

    def replace(self, lines: Sequence[bytes]) -> None:
        """Replace the whole log by ``lines`` (its header first), atomically."""
        self.storage.replace(self.name, lines)

    async def areplace(self, lines: Sequence[bytes]) -> None:
        """Async :meth:`replace`."""
        await self.storage.areplace(self.name, lines)

    def commit(self, side: SessionLog, change: Change) -> Committed | None:
        """Write ``change`` to this log and ``side`` (kept beside it) at once, or nothing.

        See :meth:`~crab_langchain.storage.SessionStorage.commit`.
        """
        return self.storage.commit(self.name, side.name, change)

    async def acommit(self, side: SessionLog, change: Change) -> Committed | None:
        """Async :meth:`commit`."""
        return await self.storage.acommit(self.name, side.name, change)

    def delete(self) -> bool:
        """Remove the log; False if there was none."""
        return self.storage.delete(self.name)

    def clear(self) -> None:
        """Keep the header line alone, atomically: readers see the old log or the cleared one."""
        self.storage.replace(self.name, [self.header_line()])

    async def aclear(self) -> None:
        """Async :meth:`clear`."""
        header = await asyncio.to_thread(self.header_line)
        await self.storage.areplace(self.name, [header])


def split_header(location: str, lines: NumberedLines) -> tuple[bytes, NumberedLines]:
    """The header line of ``lines`` (read from line 1) and the lines after it.

    Raises:
        SessionFormatError: there is no header line (naming ``location``).
    """
    if not lines or lines[0][0] != 1:
        raise SessionFormatError("no header line", path=location, line=1)
    return lines[0][1], lines[1:]


def meta_of(storage: SessionStorage, name: str, header: bytes | Exception) -> SessionMeta:
    """The header line ``header`` of log ``name`` (or the error reading it raised), parsed.

    Raises:
        SessionFormatError: the header is incomplete or malformed (naming the log).
        Exception: ``header`` itself, if it is another error.
    """
    if isinstance(header, EOFError):
        raise SessionFormatError(str(header), path=storage.location(name), line=1) from None
    if isinstance(header, Exception):
        raise header
    try:
        return SessionMeta.from_line(header)
    except SessionFormatError as error:
        raise error.at(storage.location(name), 1) from None


def header_identity(header: bytes) -> str:
    """What tells this session from one re-created under its name: a digest of its header line.

    A header is written once, at creation, with the time to the microsecond;
    a log kept beside the session (a checkpointer's side log) records it, so
    it is never taken for the log of another incarnation.
    """
    return hashlib.blake2b(header, digest_size=9).hexdigest()


def last_marker(log: SessionLog, body: NumberedLines) -> int:
    """The index in ``body`` of its last compaction marker (0 if it has none).

    Only lines holding the marker's key are parsed.
    """
    for index in range(len(body) - 1, -1, -1):
        number, line = body[index]
        if _MARKER_KEY in line and isinstance(log.entry(number, line), CompactMarker):
            return index
    return 0


def is_message_line(line: bytes) -> bool:
    """Whether a body line is a message: not blank, not a marker, not a run event.

    Counting messages this way parses only the lines that may be something
    else; a malformed one counts as a message (:func:`SessionLog.entry` says
    what is wrong with it).
    """
    if not line.strip():
        return False
    if _MARKER_KEY not in line and _EVENT_KEY not in line:
        return True
    try:
        return not isinstance(parse_entry(line), (CompactMarker, RunEvent))
    except SessionFormatError:
        return True
