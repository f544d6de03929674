"""The storage seam: where the lines of session logs live.

A session log is a sequence of lines, the header first. Storage knows bytes
and lines only: no JSON, no LangChain. The directory of JSONL files is one
implementation; a shared backend implements the same few operations.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, unquote_plus

__all__ = [
    "COMPANION_KINDS",
    "Change",
    "Chunk",
    "Committed",
    "Cursor",
    "SessionStorage",
    "StorageUnavailableError",
    "Tail",
    "TornTailWarning",
    "check_name",
    "companion_name",
    "is_json_object",
    "numbered_lines",
    "owner_of",
    "public_url",
    "url_scheme",
    "url_secrets",
]


class TornTailWarning(UserWarning):
    """A log ends in an incomplete line: a writer died mid-append."""


class StorageUnavailableError(ConnectionError):
    """The storage's server could not be reached or stopped answering.

    Raised instead of the client library's own errors, naming the server.
    Whatever the failed call was writing happened whole or not at all.
    """


@dataclass(frozen=True)
class Cursor:
    """How far a reader has read one log.

    ``offset`` is the position after the last complete line read, ``lines``
    the number of lines before it (so line numbers stay absolute).
    ``identity`` names the incarnation of the log, and ``check`` is whatever
    else the storage needs to tell that log from a replacement that reuses
    its identity (a file system hands freed inodes out again).
    """

    offset: int
    lines: int
    identity: Hashable
    check: Hashable = None


@dataclass(frozen=True)
class Change:
    """Writes to a session and to the log beside it that land together or not at all.

    Nothing is written unless the session ends at ``at`` (None: the session is
    neither checked nor written) and the side log ends at ``side_at``, or
    only lines starting with ``passing`` follow it there (lines that do not
    bear on the writer's decision: another writer's pending writes). Then,
    in this order, so that a directory killed part-way says what it was
    doing: ``before`` is appended to the side log (with ``side_replace``, the
    side log becomes ``before``, its header first); ``lines`` are appended
    to the session (with ``replace``, the session becomes ``lines``, its
    header first); ``after`` is appended to the side log.
    """

    at: Cursor | None
    side_at: Cursor | None
    lines: Sequence[bytes] = ()
    replace: bool = False
    before: Sequence[bytes] = ()
    after: Sequence[bytes] = ()
    side_replace: bool = False
    passing: bytes = b""

    def __post_init__(self) -> None:
        if self.side_replace and (not self.before or self.after or self.side_at is None):
            raise ValueError("a side log replaced is its header and records, read first")
        if self.replace and (not self.lines or self.at is None):
            raise ValueError("a session replaced is its header and lines, read first")
        if self.lines and self.at is None:
            raise ValueError("lines are written to a session only where it was read to")

    def passes(self, moved: Chunk | None) -> bool:
        """Whether the side log, having moved by ``moved`` past ``side_at``, may be written."""
        if moved is None:
            return True
        if moved.reset or not self.passing:
            return False
        return all(line.startswith(self.passing) for _, line in moved.lines)


@dataclass(frozen=True)
class Committed:
    """Where a session and its side log stand after a :class:`Change`."""

    session: Cursor | None
    """Past the session's new lines (its whole new text if replaced); None: read it again."""
    side: Chunk | None
    """The side log's lines past ``side_at`` (all of it, ``reset``, if replaced or not
    checked), the change's own among them; None: read it again."""


@dataclass
class Chunk:
    """Lines read past a cursor: ``(line number, bytes)``, blank lines left out."""

    lines: list[tuple[int, bytes]]
    cursor: Cursor
    reset: bool = False
    """True when ``lines`` start at line 1 (first read, or the log was replaced)."""


@dataclass
class Tail:
    """A log's header and its last lines, read without the lines before them."""

    header: bytes
    lines: list[tuple[int, bytes]]
    """The last lines (blank ones left out), numbered on from ``whole``'s numbering or not
    (see :meth:`SessionStorage.read_tail`)."""
    cursor: Cursor
    """Past the last line: reading on from it gives what was appended since."""
    whole: bool
    """True when ``lines`` are every line after the header, numbered from 2."""


def check_name(name: str) -> str:
    """Return ``name`` if it can name a log anywhere (a plain file name); else ``ValueError``.

    Every storage takes the same names, so a session can move between them.
    """
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "\0" in name
        or "/" in name
        or "\n" in name
        or os.path.basename(name) != name
    ):
        raise ValueError(f"not a plain file name: {name!r}")
    return name


_SESSION_END = ".jsonl"

COMPANION_KINDS = ("checkpoints",)
"""The companion logs a session may have (:func:`companion_name`): a checkpointer's side log."""


def companion_name(session: str, kind: str) -> str:
    """The name of log ``kind`` kept beside session log ``session`` (a ``*.jsonl`` name).

    A companion log (a checkpointer's side log) belongs to its session: it is
    not a session of its own, so it does not end in ``.jsonl`` (crabtalk and
    listings pass it by), and a storage keeps it where it keeps the session
    (the same hash tag on Redis).
    """
    if not session.endswith(_SESSION_END) or not kind.isidentifier():
        raise ValueError(f"no companion {kind!r} for log {session!r}")
    return check_name(f"{session}.{kind}")


def owner_of(name: str) -> tuple[str, str] | None:
    """``(session, kind)`` if ``name`` is a companion log (:func:`companion_name`), else None."""
    session, dot, kind = name.rpartition(_SESSION_END + ".")
    if not dot or not session or not kind.isidentifier():
        return None
    return session + _SESSION_END, kind


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_QUERY_PASSWORD = re.compile(r"(?i)(^|[?&;])(password=)[^&;#]*")


def url_scheme(text: str) -> str:
    """The scheme of URL ``text``, lower case (``""`` for a path); it holds no secret."""
    found = _SCHEME.match(text)
    return found[1].lower() if found else ""


def _split_userinfo(url: str) -> tuple[str, str, str, str]:
    """``(scheme://, user info to show, the secret in it, the rest)``.

    The user info is all before the *last* ``@``, parsed by hand, not with
    urlsplit: a password holding ``/``, ``?`` or ``#`` that nobody
    percent-encoded would be read as path, query or fragment there, and
    shown. What follows its first ``:`` is the secret; without a ``:`` all
    of it is (Redis' ``redis://password@host``), unless the query holds
    ``password=`` or the URL is PostgreSQL's (then it is a user name).
    """
    scheme = url_scheme(url)
    head = url[: len(scheme) + 3]
    userinfo, at, rest = url[len(head) :].rpartition("@")
    if not at:
        return head, "", "", rest
    user, colon, password = userinfo.partition(":")
    if colon:
        return head, f"{user}:***", password, rest
    if _QUERY_PASSWORD.search(rest) or scheme in ("postgresql", "postgres"):
        return head, userinfo, "", rest
    return head, "***", userinfo, rest


def public_url(url: str) -> str:
    """``url`` as it may be shown anywhere: no password, wherever and however it is written.

    The user info loses its secret (see :func:`_split_userinfo`),
    ``password=`` query values become ``***`` and a fragment is dropped. A
    path is returned as it is.
    """
    if not url_scheme(url):
        return url
    head, shown, _, rest = _split_userinfo(url)
    rest = _QUERY_PASSWORD.sub(r"\1\2***", rest.partition("#")[0])
    return f"{head}{shown}@{rest}" if shown else head + rest


def url_secrets(url: str) -> set[str]:
    """The passwords ``url`` holds, as typed and percent-decoded, to keep out of messages."""
    _, _, secret, rest = _split_userinfo(url)
    found = {secret} if secret else set()
    for pair in re.split(r"[&;?]", rest.partition("#")[0]):
        key, equals, value = pair.partition("=")
        if equals and unquote_plus(key).lower() == "password":
            found.add(value)
    forms = (form for secret in found for form in (secret, unquote(secret), unquote_plus(secret)))
    return {form for form in forms if form}


_WHITESPACE = b" \t\r\n\x0b\x0c"


def numbered_lines(lines: Iterable[bytes], first: int) -> list[tuple[int, bytes]]:
    """``(line number, line)`` from ``first`` on, blank lines left out (crabtalk skips them).

    Only a line that starts with whitespace can be blank, so most lines skip the strip().
    """
    return [
        (number, line)
        for number, line in enumerate(lines, first)
        if line and (line[0] not in _WHITESPACE or line.strip())
    ]


def is_json_object(data: bytes) -> bool:
    """Whether ``data`` is one whole JSON object: a last line complete but for its newline.

    A writer cut short never leaves one (a proper prefix of an object is not
    JSON), so such a line is read as crabtalk reads it, not set aside as torn.
    """
    if not data.lstrip().startswith(b"{") or not data.rstrip().endswith(b"}"):
        return False
    try:
        return isinstance(json.loads(data), dict)
    except (ValueError, RecursionError):
        return False


class SessionStorage(ABC):
    """A flat namespace of session logs, addressed by name (``*.jsonl``).

    The async twins (``aread``, ``aappend``, ``areplace``) run the sync method
    in a worker thread unless a storage has a native async client
    (``native_async``), as :class:`~langchain_core.chat_history.BaseChatMessageHistory`
    does for its own methods.
    """

    native_async: bool = False
    """Whether the async twins do their I/O without a worker thread."""

    names_newest_first: bool = False
    """Whether :meth:`names` lists the newest log first (the storage keeps an index)."""

    def describe(self) -> str:
        """Where the logs live, for people: a directory, a server URL and prefix."""
        return repr(self)

    @abstractmethod
    def location(self, name: str) -> str:
        """A human-readable place for messages: a path, a URL."""

    @abstractmethod
    def path(self, name: str) -> Path | None:
        """The local file holding the log, if there is one."""

    @abstractmethod
    def names(self, *, suffix: str = "") -> list[str]:
        """Names of the logs that end with ``suffix`` (all by default).

        Newest first where the storage keeps an index by creation time,
        otherwise in no particular order. Storages with an index answer a
        ``suffix`` without listing every log.
        """

    @abstractmethod
    def exists(self, name: str) -> bool:
        """Whether log ``name`` exists."""

    @abstractmethod
    def read_header(self, name: str) -> bytes:
        """The first line, without its newline. ``FileNotFoundError`` if absent."""

    def read_headers(self, names: Sequence[str]) -> list[bytes | Exception]:
        """The header of each log in ``names``, or the error reading it raised.

        ``FileNotFoundError`` stands for a log that is gone. Storages on a
        server fetch them all in one round trip.
        """
        headers: list[bytes | Exception] = []
        for name in names:
            try:
                headers.append(self.read_header(name))
            except (OSError, EOFError) as error:
                headers.append(error)
        return headers

    def sizes(self, names: Sequence[str]) -> list[int | None]:
        """The bytes each log would take as a file (None where it is gone), read cheaply."""
        return [None] * len(names)

    @abstractmethod
    def create(self, name: str, header: bytes, *, created: float | None = None) -> None:
        """Create a log holding just ``header``; ``FileExistsError`` if it exists.

        Readers never see a log without its header. ``created`` (unix
        seconds) orders the log in a storage's index, if it keeps one.
        """

    @abstractmethod
    def read(self, name: str, cursor: Cursor | None) -> Chunk | None:
        """Complete lines after ``cursor`` (all of them if None or stale).

        Returns None when nothing changed since ``cursor``. An incomplete last
        line is not returned (it may still be being written).
        """

    def read_tail(self, name: str, count: int) -> Tail:
        """The header and the last ``count`` lines (or more) of a log, in one read.

        For a reader that needs only the newest records of a long log. The
        lines are numbered in order, and reading on from ``cursor`` numbers
        what follows on from them; unless ``whole``, the numbers need not be
        the lines' places in the log (a directory cannot tell them without
        reading every line). This default reads the whole log.

        Raises:
            FileNotFoundError: there is no such log.
        """
        chunk = self.read(name, None)
        if chunk is None or not chunk.lines:
            raise FileNotFoundError(2, "no such log", self.location(name))
        return Tail(chunk.lines[0][1], chunk.lines[1:], chunk.cursor, whole=True)

    @abstractmethod
    def append(
        self, name: str, lines: Sequence[bytes], after: Cursor | None = None
    ) -> Cursor | None:
        """Append ``lines`` as one contiguous block, atomically with respect to
        other writers. On failure nothing of the block remains.

        If ``after`` is a cursor at the end of the log as it was just before
        the block, returns the cursor just past the block, so the caller can
        skip reading back its own lines; otherwise returns None.
        """

    @abstractmethod
    def append_at(self, name: str, lines: Sequence[bytes], at: Cursor) -> Cursor | None:
        """:meth:`append` only if the log still ends where ``at`` read it.

        The check and the write are one atomic step (no hold needed): a
        writer that must know where its lines land (a checkpoint saver's
        intent says so) learns instead that the log moved.

        Returns:
            The cursor past the block, or None when the log moved since ``at``
            (written to or replaced): then nothing was written.
        """

    @abstractmethod
    def replace(self, name: str, lines: Sequence[bytes]) -> None:
        """Replace the whole log atomically: readers see the old or the new one."""

    @abstractmethod
    def replace_at(self, name: str, lines: Sequence[bytes], at: Cursor) -> bool:
        """:meth:`replace` only if the log still ends where ``at`` read it.

        A rewrite computed from what was read never drops a line written
        after the read: the check and the replacement are one atomic step.

        Returns:
            True if replaced; False (nothing changed) when the log moved since ``at``.
        """

    @abstractmethod
    def delete(self, name: str) -> bool:
        """Remove a log (a session with its companion logs, at once); False if there was none."""

    @abstractmethod
    def creation_lock(self) -> AbstractContextManager[None]:
        """Serialize finding-or-creating logs across threads and processes."""

    @abstractmethod
    def commit(self, name: str, side: str, change: Change) -> Committed | None:
        """Write ``change`` to session ``name`` and the log ``side`` kept beside it, or nothing.

        The one step by which writers of one session take turns: the checks
        and the writes are atomic with respect to every other writer of
        either log (a ``flock`` held inside this one call, one Redis script),
        and nobody waits on a lease or polls. A writer that gets None reads
        what is new and decides again.

        Returns:
            Where both logs stand after it (None fields: written, but read
            them again to learn where); None when the session did not end at
            ``change.at`` or the side log moved past ``change.side_at``:
            nothing was written.

        Raises:
            FileNotFoundError: either log does not exist.
        """

    def close(self) -> None:  # noqa: B027 - most storages hold nothing to release
        """Release what the storage holds open (it reopens what it needs later)."""

    def setup(self) -> None:  # noqa: B027 - most storages need nothing made first
        """Make what the storage needs before its first use (a database's tables); idempotent."""

    async def asetup(self) -> None:
        """Async :meth:`setup`."""
        await asyncio.to_thread(self.setup)

    # --- async twins ----------------------------------------------------------

    async def aread(self, name: str, cursor: Cursor | None) -> Chunk | None:
        """Async :meth:`read`."""
        return await asyncio.to_thread(self.read, name, cursor)

    async def aread_tail(self, name: str, count: int) -> Tail:
        """Async :meth:`read_tail`."""
        return await asyncio.to_thread(self.read_tail, name, count)

    async def aappend(
        self, name: str, lines: Sequence[bytes], after: Cursor | None = None
    ) -> Cursor | None:
        """Async :meth:`append`."""
        return await asyncio.to_thread(self.append, name, lines, after)

    async def aappend_at(self, name: str, lines: Sequence[bytes], at: Cursor) -> Cursor | None:
        """Async :meth:`append_at`."""
        return await asyncio.to_thread(self.append_at, name, lines, at)

    async def areplace(self, name: str, lines: Sequence[bytes]) -> None:
        """Async :meth:`replace`."""
        await asyncio.to_thread(self.replace, name, lines)

    async def areplace_at(self, name: str, lines: Sequence[bytes], at: Cursor) -> bool:
        """Async :meth:`replace_at`."""
        return await asyncio.to_thread(self.replace_at, name, lines, at)

    async def acommit(self, name: str, side: str, change: Change) -> Committed | None:
        """Async :meth:`commit`."""
        return await asyncio.to_thread(self.commit, name, side, change)
