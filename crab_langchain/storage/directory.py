"""Session logs as JSONL files in one directory, as crabtalk keeps them.

Writers append under an advisory lock on the session file itself. We use the
operating system's lock (``fcntl.flock``; ``msvcrt.locking`` on Windows)
rather than filelock or portalocker: it adds no runtime dependency (the core
has exactly three), the kernel drops it when a process dies (a SIGKILLed
writer leaves no stale lock behind), and it needs no lock file beside every
session in a directory that crabtalk also reads. Advisory locks are not
reliable over NFS: share sessions between machines through a shared backend.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from crab_langchain.storage.base import Chunk, Cursor, SessionStorage, TornTailWarning

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["DirectoryStorage", "Durability"]

Durability = Literal["flush", "fsync"]

_INDEX_LOCK = ".crab_langchain.lock"
_TAIL_BLOCK = 65536
_CHECKED_TAIL = 256


@dataclass(frozen=True)
class _Check:
    """What must still hold for a cursor to continue in the same file.

    The inode alone is not enough: replaced files free their inodes and new
    files get them back, and crabtalk's ``persist()`` rewrites a file in place.
    So a reader also checks that the header and the bytes just before its
    offset are still what it read.
    """

    mtime_ns: int
    header: bytes
    tail: bytes


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

    def __repr__(self) -> str:
        return f"DirectoryStorage({str(self.root)!r}, durability={self.durability!r})"

    # --- names and places ---------------------------------------------------

    def _path(self, name: str) -> Path:
        if not name or name in (".", "..") or "\0" in name or os.path.basename(name) != name:
            raise ValueError(f"not a plain file name: {name!r}")
        if os.sep != "/" and "/" in name:  # pragma: no cover - Windows
            raise ValueError(f"not a plain file name: {name!r}")
        return self.root / name

    def location(self, name: str) -> str:
        return str(self._path(name))

    def path(self, name: str) -> Path | None:
        return self._path(name)

    def names(self) -> list[str]:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        return [e.name for e in entries if e.name.endswith(".jsonl") and e.is_file()]

    # --- reading --------------------------------------------------------------

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def read_header(self, name: str) -> bytes:
        with open(self._path(name), "rb") as file:
            line = file.readline()
        if not line.endswith(b"\n"):
            raise EOFError(f"{self._path(name)}: no complete header line")
        return line[:-1]

    def read(self, name: str, cursor: Cursor | None) -> Chunk | None:
        path = self._path(name)
        if cursor is not None and _unchanged(os.stat(path), cursor):
            return None
        with open(path, "rb") as file:
            fd = file.fileno()
            stat = os.fstat(fd)
            identity = (stat.st_dev, stat.st_ino)
            resume = cursor is not None and _continues(fd, identity, stat.st_size, cursor)
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
        if (identity, offset) in self._warned or _writer_active(fd):
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

    def create(self, name: str, header: bytes) -> None:
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
        path = self._path(name)
        data = b"".join(line + b"\n" for line in lines)
        with self._locked(path) as (fd, identity):
            size = self._repair_tail(path, fd, os.fstat(fd).st_size)
            follows = after is not None and _continues(fd, identity, size, after, exact=True)
            try:
                _write_all(fd, data, path)
                if self.durability == "fsync":
                    os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)  # leave no part of the block behind
                raise
            mtime_ns = os.fstat(fd).st_mtime_ns
        if after is None or not follows or not isinstance(after.check, _Check):
            return None
        check = _next_check(after.check, data, mtime_ns)
        return Cursor(size + len(data), after.lines + len(lines), identity, check)

    def replace(self, name: str, lines: Sequence[bytes]) -> None:
        path = self._path(name)
        data = b"".join(line + b"\n" for line in lines)
        with self._locked(path):
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
            with self._locked(path):
                path.unlink()
                with contextlib.suppress(FileNotFoundError):
                    path.with_name(path.name + ".torn").unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.root)
        return True

    def repair(self, name: str) -> int:
        """Move a torn last line to ``<name>.torn`` now; return how many bytes moved.

        Appending repairs the tail too; this is for tools that check files.
        Waits for a writer that holds the lock (its line is not torn, only
        unfinished).
        """
        path = self._path(name)
        with self._locked(path) as (fd, _):
            size = os.fstat(fd).st_size
            return size - self._repair_tail(path, fd, size)

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
    def _locked(self, path: Path) -> Iterator[tuple[int, tuple[int, int]]]:
        """Hold the write lock of ``path``: the file now at that name, not a replaced one."""
        while True:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
            try:
                _lock(fd)
                held = os.fstat(fd)
                try:
                    now = os.stat(path)
                except FileNotFoundError:
                    raise FileNotFoundError(
                        2, "session file was deleted while waiting for its lock", str(path)
                    ) from None
                identity = (held.st_dev, held.st_ino)
                if identity == (now.st_dev, now.st_ino):
                    yield fd, identity
                    return
            finally:
                os.close(fd)  # closing releases the lock

    def _repair_tail(self, path: Path, fd: int, size: int) -> int:
        """Move an incomplete last line aside to ``<name>.torn``; return the new size."""
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size
        keep = _after_last_newline(fd, size)
        if keep == 0:
            raise EOFError(f"{path}: no complete header line; not appending")
        torn = os.pread(fd, size - keep, keep)
        side = path.with_name(path.name + ".torn")
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
    numbered = [(first + i + 1, line) for i, line in enumerate(lines) if line.strip()]
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
    fd: int, identity: object, size: int, cursor: Cursor, *, exact: bool = False
) -> bool:
    """Whether the file open as ``fd`` is the one ``cursor`` read, grown or not."""
    check = cursor.check
    if not isinstance(check, _Check) or identity != cursor.identity:
        return False
    if size < cursor.offset or (exact and size != cursor.offset):
        return False
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


def _write_all(fd: int, data: bytes, path: Path) -> None:
    view = memoryview(data)
    try:
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


def _writer_active(fd: int) -> bool:
    if fcntl is None:  # pragma: no cover - Windows
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False
