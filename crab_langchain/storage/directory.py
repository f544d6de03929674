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
from pathlib import Path
from typing import Literal

from crab_langchain.storage.base import Appended, Chunk, Cursor, SessionStorage, TornTailWarning

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["DirectoryStorage", "Durability"]

Durability = Literal["flush", "fsync"]

_INDEX_LOCK = ".crab_langchain.lock"
_TAIL_BLOCK = 65536


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
        if cursor is not None:
            stat = os.stat(path)
            if (stat.st_dev, stat.st_ino) == cursor.identity and stat.st_size == cursor.offset:
                return None
        with open(path, "rb") as file:
            stat = os.fstat(file.fileno())
            identity = (stat.st_dev, stat.st_ino)
            reset = cursor is None or cursor.identity != identity or stat.st_size < cursor.offset
            start, first = (0, 0) if reset or cursor is None else (cursor.offset, cursor.lines)
            file.seek(start)
            data = file.read()
            complete = data.rfind(b"\n") + 1
            if complete < len(data):
                self._warn_if_torn(path, file.fileno(), identity, start + complete)
        return _chunk(data[:complete], start, first, identity, reset)

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

    def append(self, name: str, lines: Sequence[bytes]) -> Appended:
        path = self._path(name)
        data = b"".join(line + b"\n" for line in lines)
        with self._locked(path) as (fd, identity):
            size = self._repair_tail(path, fd, os.fstat(fd).st_size)
            try:
                _write_all(fd, data, path)
                if self.durability == "fsync":
                    os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)  # leave no part of the block behind
                raise
        return Appended(start=size, end=size + len(data), identity=identity)

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


def _chunk(data: bytes, start: int, first: int, identity: object, reset: bool) -> Chunk:
    lines = data.split(b"\n")
    lines.pop()  # what follows the last newline: nothing
    numbered = [(first + i + 1, line) for i, line in enumerate(lines) if line.strip()]
    cursor = Cursor(offset=start + len(data), lines=first + len(lines), identity=identity)
    return Chunk(lines=numbered, cursor=cursor, reset=reset)


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
