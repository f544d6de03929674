"""Session logs as JSONL files in one directory, as crabtalk keeps them.

Beside each session file ``<name>`` lives a small hidden lock file,
``.<name>.lock``, that crabtalk never reads. It serves three purposes:

- **Locking.** Writers hold an exclusive ``flock`` on it, readers a shared one.
  So a reader never sees part of a call that a live writer is still
  writing, and two writers never interleave. We lock a file of our own rather
  than the session file because a replacement (``clear``) swaps the session
  file's inode, and a lock must outlive that. We use the operating system's
  lock rather than filelock or portalocker: no runtime dependency (the core
  has exactly three), and the kernel drops it when a process dies, so a
  SIGKILLed writer leaves no stale lock behind.
- **All or nothing.** Before appending a block (one ``add_messages`` call)
  the writer records where the block starts and ends; after the block it
  clears the record. A writer that dies in between leaves the record: readers
  then stop at the block's start, and the next writer moves what part of the
  block landed to ``<name>.torn`` and truncates the file back. A record of a
  few bytes keeps the session file crabtalk's format (no marker lines) and an
  append O(its own bytes).
- **Incarnation.** The record also holds a random token that a replacement
  or re-creation renews. A reader's cursor carries it, so a reader notices a
  replaced file even when the new file reuses the old inode number and the
  bytes before the reader's position match; inode numbers repeat, tokens do not.

The record is 32 bytes at the start of the lock file, rewritten in place
(one ``pwrite``, well within a page). Advisory locks are not reliable over
NFS: share sessions between machines through a shared backend. Nothing here
follows a symbolic link: a session, ``.torn``, lock or temporary file that
is one is refused by name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

from crab_langchain.storage.base import (
    COMPANION_KINDS,
    Change,
    Chunk,
    Committed,
    Cursor,
    SessionStorage,
    Tail,
    TornTailWarning,
    check_name,
    companion_name,
    is_json_object,
    numbered_lines,
    owner_of,
)
from crab_langchain.storage.listing import (
    CREATED,
    DELETED,
    DONE,
    JOURNAL,
    UNDER_WAY,
    Names,
    journal_line,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["DirectoryStorage", "Durability", "lock_file_name"]

Durability = Literal["flush", "fsync"]

_INDEX_LOCK = ".crab_langchain.lock"
_OPEN_LOGS = 32  # sessions whose descriptors are kept open, per storage
_TAIL_BLOCK = 65536
_READ_BLOCK = 1 << 30  # bytes asked of one pread
_CHECKED_TAIL = 256
_UNCOUNTED = 1 << 40  # the first number of a tail read's lines (see read_tail)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def lock_file_name(name: str) -> str:
    """The lock (and write-record) file kept beside session file ``name``."""
    return f".{name}.lock"


def _legacy_hold_name(name: str) -> str:
    """The file earlier versions locked while a checkpoint saver wrote ``name``."""
    return f".{name}.hold"


class _Record(NamedTuple):
    """What a session's lock file says: its incarnation, and an unfinished append if any."""

    token: bytes  # 8 random bytes; empty before a rewrite or creation by us
    start: int  # where the unfinished block starts; 0 with ``end`` 0: none
    end: int

    @property
    def pending(self) -> bool:
        return self.end > 0

    def encode(self) -> bytes:
        return _RECORD.pack(_MAGIC, self.token, self.start, self.end)

    @classmethod
    def decode(cls, data: bytes) -> _Record:
        if len(data) != _RECORD.size or not data.startswith(_MAGIC):
            return _NO_RECORD  # an empty (new) lock file, or one we did not write
        _, token, start, end = _RECORD.unpack(data)
        return cls(token.rstrip(b"\0"), start, end)


# magic, token, start, end: fixed size, so one pwrite replaces it whole.
_RECORD = struct.Struct("<8s8sQQ")
_MAGIC = b"crabrec1"
_NO_RECORD = _Record(b"", 0, 0)


class _Check(NamedTuple):
    """What must still hold for a cursor to continue in the same file.

    The token and inode say which file it is; the header and the bytes before
    the offset guard against writers that know nothing of our lock file
    (crabtalk's ``persist()`` rewrites a file in place).
    """

    mtime_ns: int
    header: bytes
    tail: bytes
    unterminated: bool = False  # the last line read had no newline (yet)


_STORAGES: weakref.WeakSet[DirectoryStorage] = weakref.WeakSet()


def _reset_in_child() -> None:
    for storage in list(_STORAGES):
        storage._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


class _OpenLog:
    """The descriptors kept open for one session: its lock file, and the log for appending.

    A ``flock`` belongs to an open file description, so threads sharing these
    descriptors would not exclude each other: ``lock`` serializes them.
    """

    __slots__ = ("append_fd", "lock", "lock_fd")

    def __init__(self, lock_fd: int) -> None:
        self.lock_fd = lock_fd
        self.append_fd = -1
        self.lock = threading.Lock()

    def close(self) -> None:
        for fd in (self.append_fd, self.lock_fd):
            if fd >= 0:
                os.close(fd)
        self.append_fd = self.lock_fd = -1

    def close_append(self) -> None:
        if self.append_fd >= 0:
            os.close(self.append_fd)
            self.append_fd = -1

    def record(self) -> _Record:
        return _Record.decode(os.pread(self.lock_fd, _RECORD.size, 0))


class DirectoryStorage(SessionStorage):
    """Logs as ``<root>/<name>`` files.

    ``durability="flush"`` hands every append to the operating system before
    returning (it survives the process dying); ``"fsync"`` also waits for the
    disk (it survives the machine losing power). Files are created ``0600``,
    the directory (and any parent it creates) ``0700``. A directory other
    users may write to gets a warning.
    """

    def __init__(self, root: str | os.PathLike[str], *, durability: Durability = "flush"):
        if durability not in ("flush", "fsync"):
            raise ValueError(f"durability must be 'flush' or 'fsync', not {durability!r}")
        self.root = Path(root)
        self.durability = durability
        self._warned: set[tuple[object, int]] = set()
        self._checked_root = False
        self._paths: dict[str, str] = {}
        self._open: OrderedDict[str, _OpenLog] = OrderedDict()
        self._open_lock = threading.Lock()
        self._names = Names(str(self.root), self._scan)
        _STORAGES.add(self)

    def close(self) -> None:
        """Close the descriptors kept open (reopened when needed)."""
        with self._open_lock:
            logs, self._open = list(self._open.values()), OrderedDict()
        for log in logs:
            with log.lock:
                log.close()

    def _close_idle(self) -> None:
        """Close the kept descriptors no thread is using now (out of descriptors: make room)."""
        with self._open_lock:
            logs = list(self._open.items())
        for name, log in logs:
            if log.lock.acquire(blocking=False):  # in use (perhaps by the caller): kept
                try:
                    log.close()
                finally:
                    log.lock.release()
                with self._open_lock:
                    if self._open.get(name) is log:
                        del self._open[name]

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return f"DirectoryStorage({str(self.root)!r}, durability={self.durability!r})"

    def describe(self) -> str:
        return str(self.root)

    # --- names and places ---------------------------------------------------

    def _path(self, name: str) -> Path:
        return Path(self._file(name))

    def _file(self, name: str) -> str:
        """The path of log ``name`` as a string; ``ValueError`` unless a plain file name."""
        path = self._paths.get(name)
        if path is not None:
            return path
        if len(self._paths) > 4096:  # names come from callers: keep the memo bounded
            self._paths.clear()
        path = self._paths[check_name(name)] = os.path.join(self.root, name)
        return path

    def location(self, name: str) -> str:
        return self._file(name)

    def path(self, name: str) -> Path | None:
        return self._path(name)

    def names(self, *, suffix: str = "") -> list[str]:
        listing = self._names.current()
        return [] if listing is None else listing.ending(suffix)

    @contextlib.contextmanager
    def _changing(self, name: str, done: bytes) -> Iterator[None]:
        """Tell the journal that log ``name`` changes, then (unless it fails) ``done``.

        See :mod:`~crab_langchain.storage.listing`: readers who see the
        directory change meanwhile know it is ours, and learn its name at once.
        """
        self._note(UNDER_WAY, name)
        sign = DONE
        try:
            yield
            sign = done
        finally:
            self._note(sign, name)

    def _note(self, sign: bytes, name: str) -> None:
        """Append one line to the journal. One that cannot be written costs readers a
        scan, not a session: the directory's own time stamp says it changed."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        try:
            fd = _open_file(os.path.join(self.root, JOURNAL), flags)
        except OSError:
            return
        try:
            os.write(fd, journal_line(sign, name))  # one write: appended whole
        except OSError:
            pass
        finally:
            os.close(fd)

    def _scan(self) -> tuple[str, ...]:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return ()
        self._check_root()
        return tuple(
            e.name
            for e in entries
            if e.name.endswith(".jsonl")
            and "\n" not in e.name  # no session can have it: check_name refuses it
            and e.is_file(follow_symlinks=False)
        )

    # --- reading --------------------------------------------------------------

    def sizes(self, names: Sequence[str]) -> list[int | None]:
        found: list[int | None] = []
        for name in names:
            try:
                found.append(os.stat(self._file(name), follow_symlinks=False).st_size)
            except FileNotFoundError:
                found.append(None)
        return found

    def exists(self, name: str) -> bool:
        try:
            return stat.S_ISREG(os.stat(self._file(name), follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return False

    def read_header(self, name: str) -> bytes:
        path = self._file(name)
        fd = _open_file(path, os.O_RDONLY)
        with open(fd, "rb") as file:
            line = file.readline()
        if line.endswith(b"\n"):
            return line[:-1]
        if is_json_object(line):
            return line  # the whole file is one line without its newline
        raise EOFError(f"{path}: no complete header line")

    def read(self, name: str, cursor: Cursor | None) -> Chunk | None:
        path = self._file(name)
        if cursor is not None and self._unchanged_since(name, path, cursor):
            return None
        while True:
            with self._held(name, exclusive=False) as log:
                record = log.record() if log is not None else _NO_RECORD
                now = os.stat(path, follow_symlinks=False)
                if cursor is not None and _unchanged(now, record, cursor):
                    return None
                fd = _open_file(path, os.O_RDONLY)
                try:
                    chunk = self._read_open(path, fd, record, cursor)
                finally:
                    os.close(fd)
            # Without a lock file (a file crabtalk wrote) no writer of ours was at work,
            # unless one made it while we read: then read again, under its lock.
            if log is not None or not os.path.lexists(self._lock_path(name)):
                return chunk

    def read_tail(self, name: str, count: int) -> Tail:
        # Read back from the end in growing blocks: what a long side log's newest
        # records cost is theirs, not the log's. A file does not say how many lines
        # it has, so a tail that is not the whole file is numbered from _UNCOUNTED on.
        # A file with an unfinished block, a torn or unterminated last line, or no lock
        # file of ours is read whole.
        tail = self._tail(name, count)
        return super().read_tail(name, count) if tail is None else tail

    def _tail(self, name: str, count: int) -> Tail | None:
        path = self._file(name)
        with self._held(name, exclusive=False) as log:
            if log is None or log.record().pending:
                return None
            fd = _open_file(path, os.O_RDONLY)
            try:
                found = _tail_of(fd, count)
                if found is None:
                    return None
                header, lines, size, whole = found
                held = os.fstat(fd)
                identity = (held.st_dev, held.st_ino, log.record().token)
                end = os.pread(fd, min(_CHECKED_TAIL, size), max(0, size - _CHECKED_TAIL))
            finally:
                os.close(fd)
        # Numbered far past any line a whole read numbers (unless it is whole): a
        # reader never takes a line of one numbering for a line of the other.
        first = 2 if whole else _UNCOUNTED
        numbered = numbered_lines(lines, first)
        last = first - 1 + len(lines)
        check = _Check(held.st_mtime_ns, header + b"\n", end)
        return Tail(header, numbered, Cursor(size, last, identity, check), whole)

    def _unchanged_since(self, name: str, path: str, cursor: Cursor) -> bool:
        """Whether nothing changed since ``cursor``: a chat turn's read, without the lock.

        The token is read without the lock. A replacement writes its new
        token after moving the new file in, so a read racing one can at worst
        answer "unchanged" for a file that was just replaced, as if it had
        come a moment earlier; the next read sees the new token.
        """
        with self._open_lock:
            log = self._open.get(name)
        if log is None or log.lock_fd < 0:
            return False
        try:
            record = log.record()
        except OSError:  # closed by another thread meanwhile: take the locked path
            return False
        return _unchanged(os.stat(path, follow_symlinks=False), record, cursor)

    def _read_open(self, path: str, fd: int, record: _Record, cursor: Cursor | None) -> Chunk:
        """Read the file open as ``fd`` (no writer at work) on from ``cursor`` if it continues."""
        held = os.fstat(fd)
        identity = (held.st_dev, held.st_ino, record.token)
        size = held.st_size
        if record.pending and size < record.end:
            self._warn_torn(path, identity, record.start, "unfinished add_messages call")
            size = record.start  # a writer died inside its block: none of it counts
        # Changed but no longer: rewritten in place (crabtalk's persist()), not appended to.
        resume = (
            cursor is not None and size != cursor.offset and _continues(fd, identity, size, cursor)
        )
        start, first = (cursor.offset, cursor.lines) if cursor and resume else (0, 0)
        data = _pread_all(fd, size - start, start)
        known = cursor.check if cursor and resume and isinstance(cursor.check, _Check) else None
        if known is not None and known.unterminated and data.startswith(b"\n"):
            data, start = data[1:], start + 1  # the newline a writer added to our last line
        complete = data.rfind(b"\n") + 1
        unterminated = complete < len(data) and is_json_object(data[complete:])
        if complete < len(data) and not unterminated:
            self._warn_torn(path, identity, start + complete, "incomplete last line")
        taken = len(data) if unterminated else complete
        check = _next_check(known, data[:taken], held.st_mtime_ns, unterminated)
        return _chunk(data[:taken], start, first, identity, check, reset=not resume)

    def _warn_torn(self, path: str, identity: object, offset: int, what: str) -> None:
        if (identity, offset) in self._warned:
            return
        self._warned.add((identity, offset))
        warnings.warn(
            f"{path}: {what} after byte {offset} (a writer died mid-append); every complete "
            f"call is kept, the rest moves to {os.path.basename(path)}.torn on the next write",
            TornTailWarning,
            stacklevel=5,
        )

    # --- writing --------------------------------------------------------------

    def create(self, name: str, header: bytes, *, created: float | None = None) -> None:
        path = self._file(name)
        self._ensure_root()
        with self._changing(name, CREATED):
            tmp = os.path.join(self.root, f".{name}.{os.urandom(6).hex()}.new")
            fd = _open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                _write_synced(fd, header + b"\n", path)
                os.link(tmp, path)  # atomic, and fails if the name is taken
            finally:
                os.unlink(tmp)
            with self._held(name, exclusive=True) as log:
                assert log is not None
                _set_record(log, _Record(_new_token(), 0, 0), fsync=True)
            _fsync_dir(self.root)

    def append(
        self, name: str, lines: Sequence[bytes], after: Cursor | None = None
    ) -> Cursor | None:
        return self._append(name, lines, after, only_at=False)

    def append_at(self, name: str, lines: Sequence[bytes], at: Cursor) -> Cursor | None:
        return self._append(name, lines, at, only_at=True)

    def _append(
        self, name: str, lines: Sequence[bytes], after: Cursor | None, *, only_at: bool
    ) -> Cursor | None:
        log = self._acquire(name, exclusive=True, verified=False)
        assert log is not None  # writers always get their lock file
        try:
            return self._append_locked(name, log, lines, after, only_at=only_at)
        finally:
            _release(log)

    def _append_locked(
        self,
        name: str,
        log: _OpenLog,
        lines: Sequence[bytes],
        after: Cursor | None,
        *,
        only_at: bool,
    ) -> Cursor | None:
        path = self._file(name)
        block = b"".join(line + b"\n" for line in lines)
        fd, held = self._append_fd(log, path)
        record = log.record()
        identity = (held.st_dev, held.st_ino, record.token)
        size = self._finish_unfinished(path, log, fd, record, held.st_size)
        vouched = _at_end_of(held, identity, after) and size == held.st_size
        if not vouched:  # the file may not end with a newline: look
            size, block = self._mend_tail(path, fd, size, block)
        follows = vouched or _continues(fd, identity, size, after, exact=True)
        if only_at and not follows:
            return None  # moved since: nothing written
        data = b"\n" + block if vouched and _unterminated(after) else block
        self._write_block(path, log, fd, _Record(record.token, size, size + len(data)), data)
        mtime_ns = os.fstat(fd).st_mtime_ns
        if not follows or after is None or not isinstance(after.check, _Check):
            return None
        check = _next_check(after.check, data, mtime_ns, unterminated=False)
        return Cursor(size + len(data), after.lines + len(lines), identity, check)

    def _write_block(
        self, path: str, log: _OpenLog, fd: int, pending: _Record, data: bytes
    ) -> None:
        """Write ``data`` at the end, recorded as ``pending`` until all of it is there."""
        _set_record(log, pending, fsync=self.durability == "fsync")
        try:
            _write_all(fd, data, path)
            if self.durability == "fsync":
                os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, pending.start)  # leave no part of the block behind
            _set_record(log, _Record(pending.token, 0, 0), fsync=False)
            raise
        _set_record(log, _Record(pending.token, 0, 0), fsync=False)

    def replace(self, name: str, lines: Sequence[bytes]) -> None:
        self._replace(name, lines, None)

    def replace_at(self, name: str, lines: Sequence[bytes], at: Cursor) -> bool:
        return self._replace(name, lines, at)

    def _replace(self, name: str, lines: Sequence[bytes], at: Cursor | None) -> bool:
        with self._held(name, exclusive=True) as log:
            assert log is not None
            return self._replace_locked(name, log, lines, at)

    def _replace_locked(
        self, name: str, log: _OpenLog, lines: Sequence[bytes], at: Cursor | None
    ) -> bool:
        path = self._file(name)
        data = b"".join(line + b"\n" for line in lines)
        if not os.path.lexists(path):
            raise FileNotFoundError(errno.ENOENT, "no such session file", path)
        if at is not None and not self._ends_at(path, log, at):
            return False
        with self._changing(name, DONE):
            self._write_over(name, path, data)
        log.close_append()  # it holds the replaced file
        _set_record(log, _Record(_new_token(), 0, 0), fsync=True)
        return True

    def _write_over(self, name: str, path: str, data: bytes) -> None:
        """Put ``data`` in place of file ``path`` at once (the session's lock held)."""
        # One rewrite at a time holds the lock, so the temporary file can have a
        # fixed name: one that a killed rewrite left is simply replaced.
        tmp = os.path.join(self.root, f".{name}.new")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        try:
            _write_synced(_open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), data, path)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.root)

    def commit(self, name: str, side: str, change: Change) -> Committed | None:
        # The session's own lock for the whole change: its other writers (a put, a
        # history's append) wait, so the checks still hold when the writes land.
        # The side log's records go through its own lock, as every writer's do.
        with self._held(name, exclusive=True) as log:
            assert log is not None
            if not self.exists(side):  # checked first: nothing is written without it
                raise FileNotFoundError(errno.ENOENT, "no such log", self._file(side))
            if change.at is not None and not self._ends_at(self._file(name), log, change.at):
                return None
            if change.side_at is not None and not change.passes(self.read(side, change.side_at)):
                return None
            if change.side_replace:
                assert change.side_at is not None  # Change checks
                if not self.replace_at(side, change.before, change.side_at):
                    return None
            elif change.before:
                self.append(side, change.before)
            session = change.at
            if change.lines and change.replace:
                self._replace_locked(name, log, change.lines, None)
                session = None  # a new file: its cursor comes from reading it
            elif change.lines:
                session = self._append_locked(name, log, change.lines, change.at, only_at=True)
            if change.after:
                self.append(side, change.after)
        read_from = None if change.side_replace else change.side_at
        return Committed(session, self.read(side, read_from))

    def _ends_at(self, path: str, log: _OpenLog, at: Cursor) -> bool:
        """Whether the file (locked) still ends where ``at`` read it: nothing written since.

        A dead writer's unfinished block or torn tail is set aside first, as
        an append does: it is not a write, and would never go away.
        """
        fd, held = self._append_fd(log, path)
        record = log.record()
        size = self._finish_unfinished(path, log, fd, record, held.st_size)
        size, _ = self._mend_tail(path, fd, size, b"")
        return _continues(fd, (held.st_dev, held.st_ino, record.token), size, at, exact=True)

    def delete(self, name: str) -> bool:
        path = self._path(name)
        with self._changing(name, DELETED):
            return self._delete(name, path)

    def _delete(self, name: str, path: Path) -> bool:
        try:
            with self._held(name, exclusive=True):
                # Its companions first, under its lock: a commit (which takes it) never
                # finds the session without its side log, nor makes one for it after.
                if owner_of(name) is None:
                    for kind in COMPANION_KINDS:
                        self.delete(companion_name(name, kind))
                path.unlink()
                for leftover in (path.name + ".torn", _legacy_hold_name(name)):
                    with contextlib.suppress(FileNotFoundError):
                        path.with_name(leftover).unlink()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._lock_path(name))  # waiters notice and reopen (_held)
        except FileNotFoundError:
            return False
        finally:
            self._forget(name)
        _fsync_dir(self.root)
        return True

    def repair(self, name: str) -> int:
        """Set an unfinished call or a torn last line aside now; return how many bytes moved.

        They go to ``<name>.torn``. Appending does this too; this is for tools
        that check files. Waits for a writer at work (its block is unfinished,
        not torn).
        """
        path = self._file(name)
        with self._held(name, exclusive=True) as log:
            assert log is not None
            fd, held = self._append_fd(log, path)
            before = held.st_size
            size = self._finish_unfinished(path, log, fd, log.record(), before)
            size = self._mend_tail(path, fd, size, b"")[0]
            return before - size

    @contextlib.contextmanager
    def creation_lock(self) -> Iterator[None]:
        self._ensure_root()
        fd = _open_file(os.path.join(self.root, _INDEX_LOCK), os.O_RDWR | os.O_CREAT)
        try:
            _lock(fd, exclusive=True)
            yield
        finally:
            os.close(fd)

    # --- locking ---------------------------------------------------------------

    def _lock_path(self, name: str) -> str:
        return os.path.join(self.root, lock_file_name(check_name(name)))

    @contextlib.contextmanager
    def _held(
        self, name: str, *, exclusive: bool, verified: bool = True
    ) -> Iterator[_OpenLog | None]:
        """:meth:`_acquire` for the block inside, then :func:`_release`."""
        log = self._acquire(name, exclusive=exclusive, verified=verified)
        try:
            yield log
        finally:
            if log is not None:
                _release(log)

    def _acquire(self, name: str, *, exclusive: bool, verified: bool = True) -> _OpenLog | None:
        """Lock session ``name``: shared to read, exclusive to write (undo: :func:`_release`).

        Returns None to a reader where there is no lock file (no writer of
        ours has been here) or none can be opened (a read-only directory). A
        lock file deleted with its session while we waited is noticed and the
        new one taken, unless ``verified`` is False: then the caller checks
        (see :meth:`_append_fd`). (No context manager here: on a chat turn's
        append, a generator would cost more than the locking.)
        """
        while True:
            log = self._open_log(name, create=exclusive)
            if log is None:
                return None
            log.lock.acquire()
            if log.lock_fd < 0:  # closed by close() or eviction meanwhile
                log.lock.release()
                continue
            try:
                _lock(log.lock_fd, exclusive=exclusive)
            except BaseException:
                log.lock.release()
                raise
            if not verified or _linked(log.lock_fd):  # not deleted while we waited
                return log
            _release(log)
            with log.lock:
                log.close()  # the session was deleted while we waited: take the new one
            self._forget(name)

    def _open_log(self, name: str, *, create: bool) -> _OpenLog | None:
        with self._open_lock:
            log = self._open.get(name)
            if log is not None:
                self._open.move_to_end(name)
                return log
        lock_fd = self._open_lock_file(name, create=create)
        if lock_fd is None:
            return None
        with self._open_lock:
            log = self._open.get(name)
            if log is not None:  # another thread opened it meanwhile
                os.close(lock_fd)
                return log
            log = self._open[name] = _OpenLog(lock_fd)
            evicted = self._open.popitem(last=False)[1] if len(self._open) > _OPEN_LOGS else None
        if evicted is not None:
            with evicted.lock:
                evicted.close()
        return log

    def _open_lock_file(self, name: str, *, create: bool) -> int | None:
        path = self._lock_path(name)
        if create:
            self._ensure_root()
            if not os.path.lexists(self._file(name)):  # no session: leave no stray lock file
                raise FileNotFoundError(errno.ENOENT, "no such session file", self._file(name))
            return _open_file(path, os.O_RDWR | os.O_CREAT)
        try:
            return _open_file(path, os.O_RDWR)
        except FileNotFoundError:
            return None  # no writer of ours has been here: read as crabtalk does
        except PermissionError:
            with contextlib.suppress(FileNotFoundError, PermissionError):
                return _open_file(path, os.O_RDONLY)  # a shared flock needs no write access
            return None
        except OSError as error:
            if error.errno == errno.EROFS:
                return None
            raise

    def _append_fd(self, log: _OpenLog, path: str) -> tuple[int, os.stat_result]:
        """The descriptor appending to the file now at ``path``, and its ``fstat`` (locked).

        A cached descriptor still open on the file at ``path`` pins its inode,
        so the session was not deleted since, and neither was the lock file
        held: only when the descriptor must be reopened is the lock checked.
        """
        if log.append_fd >= 0:
            held = os.fstat(log.append_fd)
            if _is_at(held, path):
                return log.append_fd, held
            log.close_append()  # replaced or deleted meanwhile
        if not _linked(log.lock_fd):
            raise FileNotFoundError(
                errno.ENOENT, "session file was deleted while waiting for its lock", path
            )
        try:
            log.append_fd = _open_file(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT, "session file was deleted while waiting for its lock", path
            ) from None
        return log.append_fd, os.fstat(log.append_fd)

    def _forget(self, name: str) -> None:
        with self._open_lock:
            log = self._open.pop(name, None)
        if log is not None:
            with log.lock:
                log.close()

    def _after_fork(self) -> None:
        """In a forked child: drop the parent's descriptors and locks.

        Not ``log.lock``: a parent thread may have held it at the fork, and
        would never release it here. The flocks stay the parent's.
        """
        for log in self._open.values():
            for fd in (log.lock_fd, log.append_fd):
                with contextlib.suppress(OSError):
                    if fd >= 0:
                        os.close(fd)
        self._open = OrderedDict()
        self._open_lock = threading.Lock()

    # --- mending ----------------------------------------------------------------

    def _finish_unfinished(
        self, path: str, log: _OpenLog, fd: int, record: _Record, size: int
    ) -> int:
        """Undo the block of a writer that died mid-append (the lock held); the new size."""
        if not record.pending:
            return size
        if size < record.end and size > record.start:
            self._set_aside(path, fd, record.start, size, "of an unfinished add_messages call")
            size = record.start
        _set_record(log, _Record(record.token, 0, 0), fsync=False)
        return size

    def _mend_tail(self, path: str, fd: int, size: int, block: bytes) -> tuple[int, bytes]:
        """Make the file end in a newline before ``block``: ``(size, what to write)``.

        A last line that is whole but for its newline (a file written with
        ``"\\n".join``) gets the newline; a torn one moves to ``<name>.torn``.
        """
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size, block
        keep = _after_last_newline(fd, size)
        if is_json_object(_pread_all(fd, size - keep, keep)):
            return size, b"\n" + block
        if keep == 0:
            raise EOFError(f"{path}: no complete header line; not appending")
        self._set_aside(path, fd, keep, size, "torn")
        return keep, block

    def _set_aside(self, path: str, fd: int, start: int, end: int, what: str) -> None:
        """Move bytes ``start..end`` of the file to ``<name>.torn``, then cut them off."""
        torn = _pread_all(fd, end - start, start)
        side = path + ".torn"
        side_fd = _open_file(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            before = os.fstat(side_fd).st_size
            try:
                _write_all(side_fd, torn + b"\n", side)
                os.fsync(side_fd)
            except BaseException:
                # No partial copy: the bytes stay where they are, and a new side file goes.
                os.ftruncate(side_fd, before)
                if before == 0:
                    os.unlink(side)
                raise
        finally:
            os.close(side_fd)
        os.ftruncate(fd, start)
        warnings.warn(
            f"{path}: moved {len(torn)} bytes {what} after byte {start} to {side}",
            TornTailWarning,
            stacklevel=6,
        )

    # --- the directory ------------------------------------------------------------

    def _ensure_root(self) -> None:
        if not self.root.is_dir():
            _make_private_dirs(self.root)
        self._check_root()

    def _check_root(self) -> None:
        """Warn once if users other than the owner may write to the directory."""
        if self._checked_root or os.name != "posix":
            return
        self._checked_root = True
        with contextlib.suppress(OSError):
            mode = os.stat(self.root).st_mode
            if mode & (stat.S_IWGRP | stat.S_IWOTH):
                warnings.warn(
                    f"{self.root}: other users can write to this sessions directory, "
                    f"so they can plant or replace files in it; fix: chmod 700 {self.root}",
                    UserWarning,
                    stacklevel=4,
                )


def _make_private_dirs(root: Path) -> None:
    """Create ``root`` and each missing parent ``0700`` (``$CRABTALK_HOME`` included)."""
    missing = []
    path = root
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)


def _open_file(path: str, flags: int) -> int:
    """``os.open`` that never follows a symbolic link: one there is refused by name.

    Out of descriptors (EMFILE, ENFILE), it closes those every storage keeps
    open for reuse and tries once more.
    """
    try:
        return _open_nofollow(path, flags)
    except OSError as error:
        if error.errno not in (errno.EMFILE, errno.ENFILE):
            raise
    for storage in list(_STORAGES):
        storage._close_idle()
    return _open_nofollow(path, flags)


def _open_nofollow(path: str, flags: int) -> int:
    try:
        return os.open(path, flags | _NOFOLLOW | _CLOEXEC, 0o600)
    except OSError as error:
        if error.errno == errno.ELOOP or (
            error.errno in (errno.EEXIST, errno.EACCES) and os.path.islink(path)
        ):
            raise OSError(
                errno.ELOOP, "is a symbolic link; refusing to follow it (use the real path)", path
            ) from None
        raise


def _is_at(held: os.stat_result, path: str) -> bool:
    """Whether ``held`` (an open file's ``fstat``: it pins the inode) is the file at ``path``."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _linked(fd: int) -> bool:
    """Whether the file open as ``fd`` still has a name (was not deleted)."""
    return os.fstat(fd).st_nlink > 0


def _set_record(log: _OpenLog, record: _Record, *, fsync: bool) -> None:
    os.pwrite(log.lock_fd, record.encode(), 0)
    if fsync:
        os.fsync(log.lock_fd)


def _new_token() -> bytes:
    return os.urandom(8)


def _chunk(
    data: bytes, start: int, first: int, identity: object, check: _Check, *, reset: bool
) -> Chunk:
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()  # what follows the last newline: nothing
    numbered = numbered_lines(lines, first + 1)
    cursor = Cursor(start + len(data), first + len(lines), identity, check)
    return Chunk(lines=numbered, cursor=cursor, reset=reset)


def _unchanged(now: os.stat_result, record: _Record, cursor: Cursor) -> bool:
    check = cursor.check
    return (
        isinstance(check, _Check)
        and (now.st_dev, now.st_ino, record.token) == cursor.identity
        and now.st_size == cursor.offset
        and now.st_mtime_ns == check.mtime_ns
        and not record.pending
    )


def _at_end_of(held: os.stat_result, identity: object, cursor: Cursor | None) -> bool:
    """Whether ``cursor`` ends where the file ``held`` ends, untouched since it was taken.

    It then vouches for the file's bytes: nothing to re-read or check.
    """
    check = cursor.check if cursor is not None else None
    return (
        cursor is not None
        and isinstance(check, _Check)
        and identity == cursor.identity
        and held.st_size == cursor.offset
        and held.st_mtime_ns == check.mtime_ns
    )


def _unterminated(cursor: Cursor | None) -> bool:
    check = cursor.check if cursor is not None else None
    return isinstance(check, _Check) and check.unterminated


def _continues(
    fd: int, identity: object, size: int, cursor: Cursor | None, *, exact: bool = False
) -> bool:
    """Whether the file open as ``fd`` is the one ``cursor`` read, grown or not."""
    check = cursor.check if cursor is not None else None
    if cursor is None or not isinstance(check, _Check) or identity != cursor.identity:
        return False
    if size < cursor.offset or (exact and size != cursor.offset):
        return False
    tail_at = cursor.offset - len(check.tail)
    return (
        os.pread(fd, len(check.header), 0) == check.header
        and os.pread(fd, len(check.tail), tail_at) == check.tail
    )


def _next_check(known: _Check | None, data: bytes, mtime_ns: int, unterminated: bool) -> _Check:
    if known is None:
        end = data.find(b"\n") + 1 or len(data)
        return _Check(mtime_ns, data[:end], data[-_CHECKED_TAIL:], unterminated)
    tail = (known.tail + data)[-_CHECKED_TAIL:]
    return _Check(mtime_ns, known.header, tail, unterminated)


def _tail_of(fd: int, count: int) -> tuple[bytes, list[bytes], int, bool] | None:
    """``(header, last lines, size, whole)`` of the file open as ``fd``; None if it
    does not end with a newline (or has no header line): then it is read whole."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, min(size, _TAIL_BLOCK), 0)
    header_end = head.find(b"\n")
    if header_end < 0 or os.pread(fd, 1, size - 1) != b"\n":
        return None
    start, block = size, _TAIL_BLOCK
    data = b""
    while start > header_end + 1 and data.count(b"\n") <= count:
        step = min(block, start - header_end - 1)
        start -= step
        data = _pread_all(fd, step, start) + data
        block *= 4
    lines = data.split(b"\n")[:-1]
    whole = start == header_end + 1
    if not whole:
        lines = lines[1:][-count:]  # the first is cut off where the read began
    return head[:header_end], lines, size, whole


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes from ``offset`` (fewer if the file ends first): one ``pread`` returns
    at most 2 GiB on Linux, and any may return short."""
    parts = []
    while size > 0:
        part = os.pread(fd, min(size, _READ_BLOCK), offset)
        if not part:
            break
        parts.append(part)
        size, offset = size - len(part), offset + len(part)
    return b"".join(parts)


def _after_last_newline(fd: int, size: int) -> int:
    end = size
    while end > 0:
        begin = max(0, end - _TAIL_BLOCK)
        found = os.pread(fd, end - begin, begin).rfind(b"\n")
        if found >= 0:
            return begin + found + 1
        end = begin
    return 0


def _write_all(fd: int, data: bytes, path: str | Path) -> None:
    try:
        written = os.write(fd, data)
        if written == len(data):
            return
        view = memoryview(data)[written:]  # a short write (rare): go on with the rest
        while view:
            view = view[os.write(fd, view) :]
    except OSError as error:
        raise OSError(error.errno, f"cannot write: {error.strerror}", str(path)) from error


def _write_synced(fd: int, data: bytes, path: str) -> None:
    """Write ``data`` to the new file open as ``fd``, fsync it and close it."""
    try:
        _write_all(fd, data, path)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # pragma: no cover - directories cannot be opened on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(fd: int, *, exclusive: bool) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    else:  # pragma: no cover - Windows: no shared locks there, readers lock alone
        import msvcrt  # noqa: PLC0415 - Windows only

        msvcrt.locking(fd, msvcrt.LK_LOCK, 1)


def _release(log: _OpenLog) -> None:
    """Undo :meth:`DirectoryStorage._acquire`: the ``flock``, then the thread lock."""
    try:
        _unlock(log.lock_fd)
    finally:
        log.lock.release()


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:  # pragma: no cover - Windows
        import msvcrt  # noqa: PLC0415 - Windows only

        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
