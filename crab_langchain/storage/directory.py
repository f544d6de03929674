"""Session logs as JSONL files in one directory, as crabtalk keeps them.

Writers append under an advisory lock on the session file itself. We use the
operating system's lock (``fcntl.flock``; ``msvcrt.locking`` on Windows)
rather than filelock or portalocker: it adds no runtime dependency (the core
has exactly three), the kernel drops it when a process dies (a SIGKILLed
writer leaves no stale lock behind), and it needs no lock file beside every
session in a directory that crabtalk also reads. Advisory locks are not
reliable over NFS: share sessions between machines through a shared backend.

A ``flock`` belongs to an open file description, so threads sharing one
descriptor would not exclude each other: each cached descriptor also has a
thread lock, and a process that forked opens its own descriptors.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

from crab_langchain.storage.base import (
    Chunk,
    Cursor,
    SessionStorage,
    TornTailWarning,
    check_name,
    numbered_lines,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["DirectoryStorage", "Durability"]

Durability = Literal["flush", "fsync"]

_INDEX_LOCK = ".crab_langchain.lock"
_OPEN_LOGS = 32  # descriptors kept open for appending, per storage
_TAIL_BLOCK = 65536
_CHECKED_TAIL = 256


class _Check(NamedTuple):
    """What must still hold for a cursor to continue in the same file.

    The inode alone is not enough: replaced files free their inodes and new
    files get them back, and crabtalk's ``persist()`` rewrites a file in place.
    So a reader also checks that the header and the bytes just before its
    offset are still what it read.
    """

    mtime_ns: int
    header: bytes
    tail: bytes


_STORAGES: weakref.WeakSet[DirectoryStorage] = weakref.WeakSet()


def _reset_in_child() -> None:
    for storage in list(_STORAGES):
        storage._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


class _OpenLog:
    """A descriptor kept open for appending to one log, so a turn costs no open/close."""

    __slots__ = ("fd", "lock")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class DirectoryStorage(SessionStorage):
    """Logs as ``<root>/<name>`` files.

    ``durability="flush"`` hands every append to the operating system before
    returning (it survives the process dying); ``"fsync"`` also waits for the
    disk (it survives the machine losing power). Files are created ``0600``,
    the directory ``0700``.
    """

    def __init__(self, root: str | os.PathLike[str], *, durability: Durability = "flush"):
        if durability not in ("flush", "fsync"):
            raise ValueError(f"durability must be 'flush' or 'fsync', not {durability!r}")
        self.root = Path(root)
        self.durability = durability
        self._warned: set[tuple[object, int]] = set()
        self._paths: dict[str, str] = {}
        self._open: OrderedDict[str, _OpenLog] = OrderedDict()
        self._open_lock = threading.Lock()
        _STORAGES.add(self)

    def close(self) -> None:
        """Close the descriptors kept open for appending (reopened when needed)."""
        with self._open_lock:
            logs, self._open = list(self._open.values()), OrderedDict()
        for log in logs:
            with log.lock:
                log.close()

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
        path = self._paths[check_name(name)] = os.path.join(self.root, name)
        return path

    def location(self, name: str) -> str:
        return self._file(name)

    def path(self, name: str) -> Path | None:
        return self._path(name)

    def names(self, *, suffix: str = "") -> list[str]:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        return [
            e.name
            for e in entries
            if e.name.endswith(".jsonl") and e.name.endswith(suffix) and e.is_file()
        ]

    # --- reading --------------------------------------------------------------

    def sizes(self, names: Sequence[str]) -> list[int | None]:
        found: list[int | None] = []
        for name in names:
            try:
                found.append(os.stat(self._file(name)).st_size)
            except FileNotFoundError:
                found.append(None)
        return found

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def read_header(self, name: str) -> bytes:
        with open(self._path(name), "rb") as file:
            line = file.readline()
        if not line.endswith(b"\n"):
            raise EOFError(f"{self._path(name)}: no complete header line")
        return line[:-1]

    def read(self, name: str, cursor: Cursor | None) -> Chunk | None:
        if cursor is not None and _unchanged(os.stat(self._file(name)), cursor):
            return None
        path = self._path(name)
        with open(path, "rb") as file:
            fd = file.fileno()
            stat = os.fstat(fd)
            identity = (stat.st_dev, stat.st_ino)
            # Changed but no longer: rewritten in place, not appended to. Read it all.
            resume = (
                cursor is not None
                and stat.st_size != cursor.offset
                and _continues(fd, identity, stat.st_size, cursor)
            )
            start, first = (cursor.offset, cursor.lines) if cursor and resume else (0, 0)
            file.seek(start)
            data = file.read()
            complete = data.rfind(b"\n") + 1
            if complete < len(data):
                self._warn_if_torn(path, fd, identity, start + complete)
        known = cursor.check if cursor and resume and isinstance(cursor.check, _Check) else None
        check = _next_check(known, data[:complete], stat.st_mtime_ns)
        return _chunk(data[:complete], start, first, identity, check, reset=not resume)

    def _warn_if_torn(self, path: Path, fd: int, identity: object, offset: int) -> None:
        """Warn about an incomplete last line, unless a writer is busy writing it."""
        if (identity, offset) in self._warned or not _still_torn(fd):
            return
        self._warned.add((identity, offset))
        warnings.warn(
            f"{path}: incomplete last line after byte {offset} (a writer died mid-append); "
            f"every complete line is kept, the torn bytes move to {path.name}.torn "
            "on the next write",
            TornTailWarning,
            stacklevel=4,
        )

    # --- writing --------------------------------------------------------------

    def create(self, name: str, header: bytes, *, created: float | None = None) -> None:
        path = self._path(name)
        self._ensure_root()
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{name}.", suffix=".new")
        try:
            _write_all(fd, header + b"\n", path)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.link(tmp, path)  # atomic, and fails if the name is taken
        finally:
            if fd >= 0:
                os.close(fd)
            os.unlink(tmp)
        _fsync_dir(self.root)

    def append(
        self, name: str, lines: Sequence[bytes], after: Cursor | None = None
    ) -> Cursor | None:
        path = self._file(name)
        data = b"".join(line + b"\n" for line in lines)
        log, held = self._acquire(name, path)
        try:
            fd = log.fd
            identity, size = (held.st_dev, held.st_ino), held.st_size
            # A reader's cursor at the very end vouches for the last byte being a newline.
            follows = after is not None and _continues(
                fd, identity, size, after, exact=True, mtime_ns=held.st_mtime_ns
            )
            if not follows and size != (size := self._repair_tail(path, fd, size)):
                follows = after is not None and _continues(fd, identity, size, after, exact=True)
            try:
                _write_all(fd, data, path)
                if self.durability == "fsync":
                    os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)  # leave no part of the block behind
                raise
            mtime_ns = os.fstat(fd).st_mtime_ns
        finally:
            _release(log)
        if after is None or not follows or not isinstance(after.check, _Check):
            return None
        check = _next_check(after.check, data, mtime_ns)
        return Cursor(size + len(data), after.lines + len(lines), identity, check)

    def replace(self, name: str, lines: Sequence[bytes]) -> None:
        path = self._path(name)
        data = b"".join(line + b"\n" for line in lines)
        with self._locked(name):
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{name}.", suffix=".new")
            try:
                _write_all(fd, data, path)
                os.fsync(fd)
                os.close(fd)
                fd = -1
                os.replace(tmp, path)
            except BaseException:
                if fd >= 0:
                    os.close(fd)
                os.unlink(tmp)
                raise
            _fsync_dir(self.root)

    def delete(self, name: str) -> bool:
        path = self._path(name)
        try:
            with self._locked(name):
                path.unlink()
                with contextlib.suppress(FileNotFoundError):
                    path.with_name(path.name + ".torn").unlink()
        except FileNotFoundError:
            return False
        finally:
            self._forget(name)
        _fsync_dir(self.root)
        return True

    def repair(self, name: str) -> int:
        """Move a torn last line to ``<name>.torn`` now; return how many bytes moved.

        Appending repairs the tail too; this is for tools that check files.
        Waits for a writer that holds the lock (its line is not torn, only
        unfinished).
        """
        path = self._file(name)
        with self._locked(name) as (fd, held):
            return held.st_size - self._repair_tail(path, fd, held.st_size)

    @contextlib.contextmanager
    def creation_lock(self) -> Iterator[None]:
        self._ensure_root()
        fd = os.open(self.root / _INDEX_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _lock(fd)
            yield
        finally:
            os.close(fd)

    # --- helpers --------------------------------------------------------------

    def _ensure_root(self) -> None:
        if not self.root.is_dir():
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[tuple[int, os.stat_result]]:
        """Hold the write lock of log ``name``: the file now at that name, not a replaced one.

        Yields the descriptor (opened for appending) and its ``fstat``.
        """
        log, held = self._acquire(name, self._file(name))
        try:
            yield log.fd, held
        finally:
            _release(log)

    def _acquire(self, name: str, path: str) -> tuple[_OpenLog, os.stat_result]:
        """Lock log ``name`` (thread lock, then ``flock``); its descriptor and ``fstat``.

        The caller must :func:`_release` it. (No context manager on the
        append path: a generator costs more than the rest of the locking.)
        """
        while True:
            log = self._open_log(name, path)
            log.lock.acquire()
            if log.fd < 0:  # closed by close() or eviction meanwhile
                log.lock.release()
                continue
            _lock(log.fd)
            try:
                held = _stat_if_current(log.fd, path)
            except BaseException:
                _release(log)
                raise
            if held is not None:
                return log, held
            _release(log)
            with log.lock:
                log.close()  # the file was replaced: open the new one
            self._forget(name)

    def _open_log(self, name: str, path: str) -> _OpenLog:
        with self._open_lock:
            log = self._open.get(name)
            if log is not None:
                self._open.move_to_end(name)
                return log
            log = self._open[name] = _OpenLog(os.open(path, os.O_RDWR | os.O_APPEND))
            evicted = self._open.popitem(last=False)[1] if len(self._open) > _OPEN_LOGS else None
        if evicted is not None:
            with evicted.lock:
                evicted.close()
        return log

    def _forget(self, name: str) -> None:
        with self._open_lock:
            log = self._open.pop(name, None)
        if log is not None:
            with log.lock:
                log.close()

    def _after_fork(self) -> None:
        """In a forked child: drop the parent's descriptors, whose locks are the parent's."""
        for log in self._open.values():
            with contextlib.suppress(OSError):
                os.close(log.fd)  # not log.lock: a parent thread may have held it at fork
        self._open = OrderedDict()
        self._open_lock = threading.Lock()

    def _repair_tail(self, path: str, fd: int, size: int) -> int:
        """Move an incomplete last line aside to ``<name>.torn``; return the new size."""
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size
        keep = _after_last_newline(fd, size)
        if keep == 0:
            raise EOFError(f"{path}: no complete header line; not appending")
        torn = os.pread(fd, size - keep, keep)
        side = path + ".torn"
        side_fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            _write_all(side_fd, torn + b"\n", side)
            os.fsync(side_fd)
        finally:
            os.close(side_fd)
        os.ftruncate(fd, keep)
        warnings.warn(
            f"{path}: moved {len(torn)} torn bytes after byte {keep} to {side}",
            TornTailWarning,
            stacklevel=5,
        )
        return keep


def _chunk(
    data: bytes, start: int, first: int, identity: object, check: _Check, *, reset: bool
) -> Chunk:
    lines = data.split(b"\n")
    lines.pop()  # what follows the last newline: nothing
    numbered = numbered_lines(lines, first + 1)
    cursor = Cursor(start + len(data), first + len(lines), identity, check)
    return Chunk(lines=numbered, cursor=cursor, reset=reset)


def _unchanged(stat: os.stat_result, cursor: Cursor) -> bool:
    check = cursor.check
    return (
        isinstance(check, _Check)
        and (stat.st_dev, stat.st_ino) == cursor.identity
        and stat.st_size == cursor.offset
        and stat.st_mtime_ns == check.mtime_ns
    )


def _continues(
    fd: int,
    identity: object,
    size: int,
    cursor: Cursor,
    *,
    exact: bool = False,
    mtime_ns: int | None = None,
) -> bool:
    """Whether the file open as ``fd`` is the one ``cursor`` read, grown or not."""
    check = cursor.check
    if not isinstance(check, _Check) or identity != cursor.identity:
        return False
    if size < cursor.offset or (exact and size != cursor.offset):
        return False
    if mtime_ns == check.mtime_ns and size == cursor.offset:
        return True  # untouched since the cursor was taken (as `read` trusts too)
    tail_at = cursor.offset - len(check.tail)
    return (
        os.pread(fd, len(check.header), 0) == check.header
        and os.pread(fd, len(check.tail), tail_at) == check.tail
    )


def _next_check(known: _Check | None, data: bytes, mtime_ns: int) -> _Check:
    if known is None:
        end = data.find(b"\n") + 1
        return _Check(mtime_ns, data[:end], data[-_CHECKED_TAIL:])
    return _Check(mtime_ns, known.header, (known.tail + data)[-_CHECKED_TAIL:])


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
        view = memoryview(data)[written:]  # a short write (rare): go on with the rest
        while view:
            view = view[os.write(fd, view) :]
    except OSError as error:
        raise OSError(error.errno, f"cannot write: {error.strerror}", str(path)) from error


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # pragma: no cover - directories cannot be opened on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
    else:  # pragma: no cover - Windows
        import msvcrt  # noqa: PLC0415 - Windows only

        msvcrt.locking(fd, msvcrt.LK_LOCK, 1)


def _release(log: _OpenLog) -> None:
    """Undo :meth:`DirectoryStorage._acquire`: the ``flock``, then the thread lock."""
    try:
        _unlock(log.fd)
    finally:
        log.lock.release()


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:  # pragma: no cover - Windows
        import msvcrt  # noqa: PLC0415 - Windows only

        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _stat_if_current(fd: int, path: str) -> os.stat_result | None:
    """``fstat`` of the file open as ``fd``, if it is still the one at ``path``."""
    held = os.fstat(fd)
    try:
        now = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            2, "session file was deleted while waiting for its lock", path
        ) from None
    return held if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino) else None


def _still_torn(fd: int) -> bool:
    """Whether the file ends in an incomplete line that no writer is finishing.

    A reader can see a write half done. Under a shared lock no writer is at
    work, so a last line still incomplete then was left by one that died.
    """
    if fcntl is None:  # pragma: no cover - Windows
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a writer holds the lock: its line is unfinished, not torn
    try:
        size = os.fstat(fd).st_size
        return size > 0 and os.pread(fd, 1, size - 1) != b"\n"
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
