"""What every command shares: where the sessions are, finding one, printing errors."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import click

from crab_langchain import display
from crab_langchain.cli import PROG
from crab_langchain.log import SessionLog
from crab_langchain.storage import (
    POSTGRES_SCHEMES,
    REDIS_SCHEMES,
    DirectoryStorage,
    SessionStorage,
    StorageUnavailableError,
    open_storage,
    public_url,
)
from crab_langchain.storage.base import url_scheme, url_secrets
from crab_langchain.store import SessionInfo, SessionStore, default_root

PROGRESS_MIN = 20  # files: below this a progress bar only flickers


T = TypeVar("T")


class CliError(Exception):
    """A problem to report to the user: one line on stderr, exit status 1."""


def fail(message: str) -> None:
    print(f"{PROG}: error: {display.one_line(message)}", file=sys.stderr)
    raise SystemExit(1)


def os_error_text(error: OSError) -> str:
    if error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def warn(message: str) -> None:
    click.echo(f"{PROG}: warning: {display.one_line(message)}", err=True)


@contextmanager
def warnings_to_stderr(*, quiet: bool = False) -> Iterator[None]:
    """Warnings raised inside (a torn tail, a skipped file): one line each on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for warning in [] if quiet else caught:
                warn(str(warning.message))


ROOT_HELP = (
    "Sessions directory, a Redis URL (redis://, rediss://, unix://; a server or a cluster)"
    " or a PostgreSQL URL (postgresql://)"
    " (default: $CRABTALK_HOME/sessions, else ~/.crabtalk/sessions)."
)


PREFIX_HELP = "Redis key prefix, or PostgreSQL schema, with a server --root (default: crab)."


COMMAND_ROOT_HELP = ROOT_HELP + " Also accepted before the command."


COMMAND_PREFIX_HELP = PREFIX_HELP + " Also accepted before the command."


GivenRoot = Path | str | None  # a directory, a Redis URL, or not given


@dataclass(frozen=True)
class Given:
    """What the options before the command said: ``--root`` and ``--prefix``."""

    root: GivenRoot = None
    prefix: str | None = None


@dataclass(frozen=True)
class Root:
    """Where the sessions are: a directory (``path``), or a server ``url`` and ``prefix``
    (a Redis key prefix, a PostgreSQL schema)."""

    path: Path | None = None
    url: str | None = None
    prefix: str | None = None

    def __str__(self) -> str:
        return str(self.path) if self.url is None else public_url(self.url)


def dir_type() -> click.Path:
    return click.Path(file_okay=False, path_type=Path)


def root_type() -> click.Path:
    """``--root``'s type: a Redis URL as it is, anything else a directory as before."""

    class RootType(click.Path):
        def convert(
            self, value: Any, param: click.Parameter | None, ctx: click.Context | None
        ) -> Any:
            if isinstance(value, str) and is_server(value):
                return value
            if isinstance(value, str) and "://" in value:
                local = local_path(value)  # a file:// URL; any other scheme is refused, named
                if local is None:
                    open_url(value, None)  # raises, naming the scheme (never the URL)
                value = local
            return super().convert(value, param, ctx)

    return RootType(file_okay=False, path_type=Path)


def root_options(command: Callable[..., None]) -> Callable[..., None]:
    """A command's own ``--root`` and ``--prefix`` (they win over the group's)."""
    command = click.option("--prefix", "own_prefix", metavar="P", help=COMMAND_PREFIX_HELP)(command)
    return click.option(
        "--root", "own_root", type=root_type(), metavar="DIR|URL", help=COMMAND_ROOT_HELP
    )(command)


def resolve_root(given: Given, own_root: GivenRoot, own_prefix: str | None) -> Root:
    """The sessions' place: the command's own options, else the group's, else the default."""
    root = own_root if own_root is not None else given.root
    prefix = own_prefix if own_prefix is not None else given.prefix
    if prefix == "":
        raise usage_error("--prefix must not be empty")
    if isinstance(root, str):
        return Root(url=root, prefix=prefix)
    path = root or default_root()
    if prefix is not None:
        raise CliError(f"--prefix is for a server --root, and {path} is a directory")
    return Root(path=path)


class Log(SessionLog):
    """A session log as the command line was given it: ``where`` is how to name it to people.

    For a file, the path as typed; for an id, the storage's location of its log.
    """

    def __init__(self, storage: SessionStorage, name: str, where: str) -> None:
        super().__init__(storage, name)
        self.where = where


def file_log(path: Path) -> Log:
    return Log(DirectoryStorage(path.parent), path.name, str(path))


def existing_root(root: Path) -> Path:
    if not root.is_dir():
        raise CliError(f"no sessions directory at {root} (pass --root DIR)")
    return root


@contextmanager
def opened(root: Root, *, create: bool = False) -> Iterator[SessionStorage]:
    """The storage at ``root`` for the block inside; its server's errors as one line.

    A directory must exist unless ``create``. A Redis URL's password never
    shows in an error.
    """
    if root.url is None:
        assert root.path is not None
        yield DirectoryStorage((root.path if create else existing_root(root.path)).expanduser())
        return
    try:
        storage = open_url(root.url, root.prefix)
        try:
            yield storage
        finally:
            storage.close()
    except server_errors() as error:
        raise CliError(hidden(f"{error}", [root.url])) from None


def server_errors() -> tuple[type[Exception], ...]:
    """What a server's failure raises: the seam's errors, and redis-py's own."""
    found: tuple[type[Exception], ...] = (StorageUnavailableError,)
    try:
        from redis.exceptions import RedisError  # noqa: PLC0415 - the 'redis' extra
    except ImportError:
        pass
    else:
        found += (RedisError,)
    try:
        from crab_langchain.storage.postgres import StorageNotSetUpError  # noqa: PLC0415
    except ImportError:
        pass
    else:
        found += (StorageNotSetUpError,)
    return found


def listed(
    store: SessionStore,
    *,
    agent: str | None = None,
    created_by: str | None = None,
    quiet: bool = False,
) -> list[SessionInfo]:
    """``store.list_sessions``; its warnings about skipped files one line each on stderr."""
    with warnings_to_stderr(quiet=quiet):
        return store.list_sessions(agent=agent, created_by=created_by)


@contextmanager
def located(root: Root, target: str, agent: str | None) -> Iterator[Log]:
    """The session ``target`` names: a file, else a session id at ``root``."""
    path = Path(target).expanduser()
    if path.is_file():
        yield file_log(path)
        return
    if path.exists():
        raise CliError(f"{path}: not a session file")
    if root.path is not None and not root.path.is_dir():
        raise not_found(target, f"no sessions directory at {root.path}")
    with opened(root) as storage:
        name = find_session(storage, target, agent)
        yield Log(storage, name, storage.location(name))


def find_session(storage: SessionStorage, target: str, agent: str | None) -> str:
    """The log holding session id ``target`` (of ``agent``, or of the only agent having it)."""
    store = SessionStore(backend=storage, entry_points=False)
    if agent is not None:
        try:
            name = store.find(target, agent)
        except ValueError as error:
            raise CliError(str(error)) from None
        if name is None:
            detail = f"no session of agent {agent!r} with that id in {storage.describe()}"
            raise not_found(target, detail)
        return name
    found = [info for info in listed(store, quiet=True) if info.session_id == target]
    if not found:
        raise not_found(target, f"no session with that id in {storage.describe()}")
    agents = sorted({info.agent for info in found})
    if len(agents) > 1:
        raise CliError(
            f"session {target!r} exists for several agents ({', '.join(agents)}): pass --agent"
        )
    return found[-1].name  # several logs of one agent: the oldest, as find() picks


def not_found(target: str, detail: str) -> CliError:
    looks_like_path = target.endswith(".jsonl") or os.sep in target
    what = "no such file" if looks_like_path else "no such session"
    return CliError(f"{what}: {target!r} ({detail})")


def session_files(root: Path | None, paths: Sequence[Path]) -> list[Path]:
    """The files ``paths`` name (a directory: its ``*.jsonl``), or all of ``root``'s."""
    if not paths:
        assert root is not None  # a Redis root: its sessions are not files
        paths = [existing_root(root)]
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.glob("*.jsonl") if p.is_file())
        else:
            files.append(path)
    return files


def progress(items: Sequence[T], label: str) -> Iterator[T]:
    """Iterate ``items``, with a progress bar on a terminal when there are many."""
    if len(items) < PROGRESS_MIN or not sys.stderr.isatty():
        yield from items
        return
    with click.progressbar(items, label=label, file=sys.stderr) as bar:
        yield from bar


def is_server(text: str) -> bool:
    """Whether ``text`` is a server's URL (Redis or PostgreSQL), whose sessions have a prefix."""
    return url_scheme(text) in (*REDIS_SCHEMES, *POSTGRES_SCHEMES)


def local_path(text: str) -> Path | None:
    """The local path ``text`` names (a path or a ``file://`` URL); None for other URLs."""
    if url_scheme(text) == "file":
        try:
            return Path(unquote(urlsplit(text).path))  # as open_storage reads it
        except ValueError as error:
            raise CliError(f"{public_url(text)}: {error}") from None
    return None if "://" in text else Path(text).expanduser()


def hidden(message: str, urls: Sequence[str]) -> str:
    """``message`` with the passwords of ``urls`` shown as ``***`` where a URL holds them."""
    for url in urls:
        for secret in sorted(url_secrets(url), key=len, reverse=True):
            message = message.replace(secret, "***")
    return message


def usage_error(message: str) -> click.UsageError:
    return click.UsageError(message, ctx=click.get_current_context(silent=True))


def open_url(text: str, prefix: str | None) -> SessionStorage:
    """``open_storage(text)``; a URL it cannot open is a one-line error without its password."""
    path = local_path(text)
    try:
        return open_storage(text if path is None else path, prefix=prefix)
    except (ValueError, ImportError) as error:  # the scheme, or a URL redis-py refused
        raise CliError(hidden(str(error), [text])) from None


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
