"""The names of a directory's logs, kept between look-ups: one scan, then a journal.

Finding a session by id needs the names of the files, and a scan of 20,000
of them costs about 30 ms. A directory whose stat has not changed needs no
new scan. One that changes (a server where other processes create sessions
all the time) used to be scanned on every look-up; now this library's own
changes are written to a journal beside the logs (``.crab_langchain.journal``,
one line each: ``~name`` as a change to log ``name`` begins, then ``+name``
once it is created, ``-name`` once deleted, ``=name`` otherwise), and a
reader adds what the journal says since its last scan to that scan's names.

The journal explains the directory only while nobody else changed it: a
directory changed after the journal's last line (its time stamp newer),
with no change of ours under way, was changed by someone else (crabtalk, a
copy by hand), and is scanned. Time stamps are coarse, though (a tick can
hide a change made beside one of ours), so a scan is trusted for
``SETTLED`` seconds only: a file another program makes is seen within that
time, one this library makes at once. A writer killed mid-change leaves
its change "under way" until that scan too.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

__all__ = [
    "CREATED",
    "DELETED",
    "DONE",
    "JOURNAL",
    "SETTLED",
    "UNDER_WAY",
    "DirStamp",
    "Listing",
    "Names",
    "Scan",
    "journal_line",
]

JOURNAL = ".crab_langchain.journal"
"""The journal's file name, beside the logs (not a log: it does not end in ``.jsonl``)."""
SETTLED = 2.0
"""Seconds: longer than any file system's time stamp tick (FAT's is 2 s)."""
_JOURNAL_LIMIT = 1 << 20  # bytes: past this, a scan starts the journal afresh
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


UNDER_WAY, CREATED, DELETED, DONE = b"~", b"+", b"-", b"="
"""A journal line's first byte: a change to log ``name`` begins; it was created; deleted;
done otherwise (rewritten in place, or failed)."""


def journal_line(sign: bytes, name: str) -> bytes:
    """The journal's line saying ``sign`` (:data:`UNDER_WAY` ...) of log ``name``."""
    return sign + name.encode("utf-8", "surrogateescape") + b"\n"


class DirStamp(NamedTuple):
    """What a directory's stat says of its entries."""

    device: int
    inode: int
    modified: int
    changed: int
    size: int

    @classmethod
    def of(cls, st: os.stat_result) -> DirStamp:
        return cls(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


class _JournalAt(NamedTuple):
    """Where a reader stands in the journal: which file, and how far it has read it."""

    device: int
    inode: int
    offset: int


_NO_JOURNAL = _JournalAt(0, 0, 0)


@dataclass(frozen=True)
class Listing:
    """A directory's log names: one scan's, with what the journal said since (``added``, ``gone``).

    Never changed once made: a reader that learns more makes a new one (sharing the scan).
    """

    stamp: DirStamp
    scan: Scan
    scanned: float
    """``time.monotonic()`` of the scan that first saw these names."""
    settled: bool
    journal: _JournalAt
    added: frozenset[str] = frozenset()
    gone: frozenset[str] = frozenset()
    open: frozenset[str] = frozenset()
    """Logs whose change the journal says is under way: the directory may show it already."""

    def ending(self, suffix: str) -> list[str]:
        """The names that end with ``suffix`` (every name for ``""``)."""
        scanned = self.scan.ending(suffix)
        if self.gone:
            scanned = [name for name in scanned if name not in self.gone]
        if not self.added:
            return scanned
        known = set(scanned)
        return scanned + sorted(n for n in self.added if n.endswith(suffix) and n not in known)


class Scan:
    """The names one scan found, and (built when first asked for) their index by suffix."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self._index: _SuffixIndex | None = None

    def ending(self, suffix: str) -> list[str]:
        """The names that end with ``suffix`` (every name for ``""``)."""
        if not suffix:
            return list(self.names)
        if self._index is None:
            self._index = _SuffixIndex(self.names)
        return self._index.ending(suffix)


class _SuffixIndex:
    """Names that end with a suffix, in O(log n): the reversed names, sorted.

    A session is found by the end of its file's name; at 20,000 sessions a
    pass over every name costs a millisecond, on each new history's first read.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self._reversed = sorted(name[::-1] for name in names)

    def ending(self, suffix: str) -> list[str]:
        key = suffix[::-1]
        found = []
        # By index, not islice: islice walks to the start, O(n) on every look-up.
        for at in range(bisect.bisect_left(self._reversed, key), len(self._reversed)):
            name = self._reversed[at]
            if not name.startswith(key):
                break
            found.append(name[::-1])
        return found


class Names:
    """The log names of directory ``root``: scanned (``scan``) when the journal cannot tell."""

    def __init__(self, root: str, scan: Callable[[], tuple[str, ...]]) -> None:
        self.root = root
        self.journal_path = os.path.join(root, JOURNAL)
        self._scan = scan
        self._listing: Listing | None = None

    def current(self) -> Listing | None:
        """Every log's name now (None: no directory)."""
        try:
            stamp = DirStamp.of(os.stat(self.root))
        except FileNotFoundError:
            return None
        listing = self._listing
        if listing is not None and listing.stamp == stamp and listing.settled:
            return listing
        now = time.monotonic()
        if listing is not None and now - listing.scanned < SETTLED:
            followed = self._followed(listing, stamp)
            if followed is not None:
                self._listing = followed
                return followed
        self._listing = self._scanned(listing, now)
        return self._listing

    def _followed(self, listing: Listing, stamp: DirStamp) -> Listing | None:
        """``listing`` with what the journal said since; None if it does not explain ``stamp``."""
        at = listing.journal
        try:
            fd = os.open(self.journal_path, os.O_RDONLY | _NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return listing if stamp == listing.stamp and at == _NO_JOURNAL else None
        except OSError:
            return None
        try:
            held = os.fstat(fd)
            if (held.st_dev, held.st_ino) != (at.device, at.inode) or held.st_size < at.offset:
                return None  # started afresh since: scan
            data = os.pread(fd, held.st_size - at.offset, at.offset)
        finally:
            os.close(fd)
        complete = data.rfind(b"\n") + 1
        followed = _taken(listing, data[:complete])
        if stamp != listing.stamp and held.st_mtime_ns < stamp.modified and not followed.open:
            return None  # changed after our last word, and none of ours is under way
        moved = _JournalAt(at.device, at.inode, at.offset + complete)
        if followed is listing and stamp == listing.stamp:
            return listing
        return replace(followed, stamp=stamp, settled=False, journal=moved)

    def _scanned(self, listing: Listing | None, now: float) -> Listing:
        """A scan's listing. The journal's end is taken first: what comes after, a reader adds
        (a name twice, at worst)."""
        journal = self._journal_end()
        stamp = DirStamp.of(os.stat(self.root))
        names = self._scan()
        if listing is not None and listing.stamp == stamp and listing.scan.names == names:
            settled = now - listing.scanned >= SETTLED
            return Listing(stamp, listing.scan, listing.scanned, settled, journal)
        return Listing(stamp, Scan(names), now, False, journal)

    def _journal_end(self) -> _JournalAt:
        try:
            st = os.stat(self.journal_path, follow_symlinks=False)
        except FileNotFoundError:
            return _NO_JOURNAL  # the first line makes one, and changes the stamp
        if st.st_size <= _JOURNAL_LIMIT:
            return _JournalAt(st.st_dev, st.st_ino, st.st_size)
        # Started afresh by removing it: a writer that opened it already appends to the
        # old file, after its change to the directory, which this scan (or the next) sees.
        with contextlib.suppress(OSError):
            os.unlink(self.journal_path)
        return _NO_JOURNAL


def _taken(listing: Listing, lines: bytes) -> Listing:
    """``listing`` with journal ``lines`` taken (``listing`` itself if there are none)."""
    if not lines:
        return listing
    added, gone, open_ = set(listing.added), set(listing.gone), set(listing.open)
    for line in lines.splitlines():
        sign, name = line[:1], line[1:].decode("utf-8", "surrogateescape")
        if sign == UNDER_WAY:
            open_.add(name)
            continue
        open_.discard(name)
        if not name.endswith(".jsonl"):
            continue  # a side log: a change of ours, no session's name
        if sign == CREATED:
            added.add(name)
            gone.discard(name)
        elif sign == DELETED:
            gone.add(name)
            added.discard(name)
    return replace(listing, added=frozenset(added), gone=frozenset(gone), open=frozenset(open_))
