"""The storage seam: where the lines of session logs live.

A session log is a sequence of lines, the header first. Storage knows bytes
and lines only: no JSON, no LangChain. The directory of JSONL files is one
implementation; a shared backend implements the same few operations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Chunk", "Cursor", "SessionStorage", "TornTailWarning"]


class TornTailWarning(UserWarning):
    """A log ends in an incomplete line: a writer died mid-append."""


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


@dataclass
class Chunk:
    """Lines read past a cursor: ``(line number, bytes)``, blank lines left out."""

    lines: list[tuple[int, bytes]]
    cursor: Cursor
    reset: bool = False
    """True when ``lines`` start at line 1 (first read, or the log was replaced)."""


class SessionStorage(ABC):
    """A flat namespace of session logs, addressed by name (``*.jsonl``)."""

    @abstractmethod
    def location(self, name: str) -> str:
        """A human-readable place for messages: a path, a URL."""

    @abstractmethod
    def path(self, name: str) -> Path | None:
        """The local file holding the log, if there is one."""

    @abstractmethod
    def names(self) -> list[str]:
        """Names of all logs, in no particular order."""

    @abstractmethod
    def exists(self, name: str) -> bool:
        """Whether log ``name`` exists."""

    @abstractmethod
    def read_header(self, name: str) -> bytes:
        """The first line, without its newline. ``FileNotFoundError`` if absent."""

    @abstractmethod
    def create(self, name: str, header: bytes) -> None:
        """Create a log holding just ``header``; ``FileExistsError`` if it exists.

        Readers never see a log without its header.
        """

    @abstractmethod
    def read(self, name: str, cursor: Cursor | None) -> Chunk | None:
        """Complete lines after ``cursor`` (all of them if None or stale).

        Returns None when nothing changed since ``cursor``. An incomplete last
        line is not returned (it may still be being written).
        """

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
    def replace(self, name: str, lines: Sequence[bytes]) -> None:
        """Replace the whole log atomically: readers see the old or the new one."""

    @abstractmethod
    def delete(self, name: str) -> bool:
        """Remove a log; False if there was none."""

    @abstractmethod
    def creation_lock(self) -> AbstractContextManager[None]:
        """Serialize finding-or-creating logs across threads and processes."""
