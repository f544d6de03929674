"""``crab-sessions``: list, show, export, import, verify, repair and copy sessions.

The console script (and ``python -m crab_langchain``). It needs the ``cli``
extra (click); the library itself never imports this module. Commands work on
the sessions at ``--root``: a sessions directory (by default the store's,
``$CRABTALK_HOME/sessions`` or ``~/.crabtalk/sessions``) or a Redis URL
(``redis://``, ``rediss://``, ``unix://``; a single server or a cluster),
whose keys start with ``--prefix`` (default ``crab``). Every command reaches
the sessions through the same storage seam, whichever they live in;
``repair`` mends files only. A URL is never printed with its password.
Errors are one line on stderr and a non-zero exit status: 1 for a problem
with the sessions, 2 for a wrong command line. ``copy`` names both of its
places itself.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import pydantic
from langchain_core.messages import (
    BaseMessage,
    convert_to_messages,
    convert_to_openai_messages,
    messages_from_dict,
    messages_to_dict,
)

from crab_langchain import display
from crab_langchain.convert import from_crab_message, is_auto_injected, to_crab_message
from crab_langchain.history import CrabChatMessageHistory, read_meta
from crab_langchain.hooks import make_plugin_manager
from crab_langchain.models import (
    CompactMarker,
    RunEvent,
    Session,
    SessionFormatError,
    SessionMeta,
    parse_entry,
)
from crab_langchain.naming import session_id_of
from crab_langchain.storage import (
    REDIS_SCHEMES,
    Chunk,
    Cursor,
    DirectoryStorage,
    SessionStorage,
    StorageUnavailableError,
    TornTailWarning,
    open_storage,
    public_url,
)
from crab_langchain.storage.base import url_scheme, url_secrets
from crab_langchain.store import SessionInfo, SessionStore, default_root
from crab_langchain.transfer import CopyResult, copy_sessions
from crab_langchain.verify import LogReport, verify_file, verify_log

try:
    import click
except ImportError:  # without the 'cli' extra: main() says what to install
    click = None  # type: ignore[assignment]

__all__ = ["CliError", "build_cli", "main"]

PROG = "crab-sessions"
NEEDS_CLI_EXTRA = f"{PROG} needs the 'cli' extra: pip install 'crab-langchain[cli]'"
POLL_SECONDS = 0.2
PROGRESS_MIN = 20  # files: below this a progress bar only flickers
_NOT_MESSAGES = (b'{"compact":', b'{"event":')

T = TypeVar("T")


class CliError(Exception):
    """A problem to report to the user: one line on stderr, exit status 1."""


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``crab-sessions`` with ``argv`` (default: the process's arguments)."""
    if click is None:
        print(NEEDS_CLI_EXTRA, file=sys.stderr)
        raise SystemExit(1)
    try:
        build_cli().main(args=None if argv is None else list(argv), prog_name=PROG)
    except CliError as error:
        _fail(str(error))
    except SessionFormatError as error:
        _fail(f"{error} (see: {PROG} verify)")
    except OSError as error:
        _fail(_os_error_text(error))


def _fail(message: str) -> None:
    print(f"{PROG}: error: {display.one_line(message)}", file=sys.stderr)
    raise SystemExit(1)


def _os_error_text(error: OSError) -> str:
    if error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def _warn(message: str) -> None:
    click.echo(f"{PROG}: warning: {display.one_line(message)}", err=True)


@contextmanager
def _warnings_to_stderr(*, quiet: bool = False) -> Iterator[None]:
    """Warnings raised inside (a torn tail, a skipped file): one line each on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for warning in [] if quiet else caught:
                _warn(str(warning.message))


# --- the command line: declarations only; the work is in the run_* functions ---

_ROOT_HELP = (
    "Sessions directory, or a Redis URL (redis://, rediss://, unix://; a server or a cluster)"
    " (default: $CRABTALK_HOME/sessions, else ~/.crabtalk/sessions)."
)
_PREFIX_HELP = "Redis key prefix, with a Redis --root (default: crab)."
_COMMAND_ROOT_HELP = _ROOT_HELP + " Also accepted before the command."
_COMMAND_PREFIX_HELP = _PREFIX_HELP + " Also accepted before the command."

GivenRoot = Path | str | None  # a directory, a Redis URL, or not given


@dataclass(frozen=True)
class _Given:
    """What the options before the command said: ``--root`` and ``--prefix``."""

    root: GivenRoot = None
    prefix: str | None = None


@dataclass(frozen=True)
class Root:
    """Where the sessions are: a directory (``path``), or a Redis ``url`` and key ``prefix``."""

    path: Path | None = None
    url: str | None = None
    prefix: str | None = None

    def __str__(self) -> str:
        return str(self.path) if self.url is None else public_url(self.url)


def build_cli() -> click.Group:
    """The ``crab-sessions`` click group with every command."""

    @click.group(
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
        epilog="Run 'crab-sessions COMMAND --help' for a command's options.",
    )
    @click.option("--root", type=_root_type(), metavar="DIR|URL", help=_ROOT_HELP)
    @click.option("--prefix", metavar="P", help=_PREFIX_HELP)
    @click.version_option(package_name="crab-langchain", prog_name=PROG)
    @click.pass_context
    def group(ctx: click.Context, root: GivenRoot, prefix: str | None) -> None:
        """Look at, check and move crabtalk sessions (JSONL lines).

        Works on a sessions directory as SessionStore keeps it, or on sessions
        in Redis or Redis Cluster: --root redis://HOST:PORT/DB (rediss:// for
        TLS, unix:// for a socket), with --prefix P for the key prefix
        (default: crab). list, show, export, import and verify work on either;
        repair mends torn tails of files, which Redis never has. Errors are
        one line on stderr; the exit status is 1 for a problem with the
        sessions and 2 for a wrong command line.
        """
        ctx.obj = _Given(root, prefix)

    commands = (
        _add_list,
        _add_show,
        _add_export,
        _add_import,
        _add_verify,
        _add_repair,
        _add_copy,
        _add_demo,
    )
    for add in commands:
        add(group)
    return group


def _dir_type() -> click.Path:
    return click.Path(file_okay=False, path_type=Path)


def _root_type() -> click.Path:
    """``--root``'s type: a Redis URL as it is, anything else a directory as before."""

    class RootType(click.Path):
        def convert(
            self, value: Any, param: click.Parameter | None, ctx: click.Context | None
        ) -> Any:
            if isinstance(value, str) and _is_redis(value):
                return value
            if isinstance(value, str) and "://" in value:
                local = _local_path(value)  # a file:// URL; any other scheme is refused, named
                if local is None:
                    _open(value, None)  # raises, naming the scheme (never the URL)
                value = local
            return super().convert(value, param, ctx)

    return RootType(file_okay=False, path_type=Path)


def _root_options(command: Callable[..., None]) -> Callable[..., None]:
    """A command's own ``--root`` and ``--prefix`` (they win over the group's)."""
    command = click.option("--prefix", "own_prefix", metavar="P", help=_COMMAND_PREFIX_HELP)(
        command
    )
    return click.option(
        "--root", "own_root", type=_root_type(), metavar="DIR|URL", help=_COMMAND_ROOT_HELP
    )(command)


def _root(given: _Given, own_root: GivenRoot, own_prefix: str | None) -> Root:
    """The sessions' place: the command's own options, else the group's, else the default."""
    root = own_root if own_root is not None else given.root
    prefix = own_prefix if own_prefix is not None else given.prefix
    if prefix == "":
        raise _usage_error("--prefix must not be empty")
    if isinstance(root, str):
        return Root(url=root, prefix=prefix)
    path = root or default_root()
    if prefix is not None:
        raise CliError(f"--prefix is for a Redis --root, and {path} is a directory")
    return Root(path=path)


def _add_list(group: click.Group) -> None:
    @group.command("list")
    @click.option("--agent", help="Only sessions of this agent.")
    @click.option("--created-by", help="Only sessions created by this origin (e.g. user).")
    @click.option("--json", "as_json", is_flag=True, help="A JSON array instead of a table.")
    @_root_options
    @click.pass_obj
    def list_command(
        given: _Given,
        *,
        own_root: GivenRoot,
        own_prefix: str | None,
        agent: str | None,
        created_by: str | None,
        as_json: bool,
    ) -> None:
        """List sessions, newest first.

        Columns: agent, created_by, created_at, messages, size, id. "messages"
        is the number of message lines in the session (blank lines and
        compaction markers not counted; archived messages before a marker
        are). "size" is a file's size, or for Redis the bytes its lines would
        take in a file. --json gives the same fields as keys (size in bytes,
        plus title, location, and path: null on Redis).
        """
        run_list(_root(given, own_root, own_prefix), agent, created_by, as_json=as_json)


def _add_show(group: click.Group) -> None:
    @group.command("show")
    @click.argument("target", metavar="ID|PATH")
    @click.option("--agent", help="The agent, when several have a session with this id.")
    @click.option(
        "--tail",
        type=click.IntRange(min=0),
        metavar="N",
        help="Only the last N entries (messages and compaction markers).",
    )
    @click.option("--follow", "-f", is_flag=True, help="Keep printing new messages (Ctrl-C stops).")
    @click.option("--jsonl", "raw", is_flag=True, help="Print the session's raw lines.")
    @_root_options
    @click.pass_obj
    def show_command(
        given: _Given,
        *,
        own_root: GivenRoot,
        own_prefix: str | None,
        target: str,
        agent: str | None,
        tail: int | None,
        follow: bool,
        raw: bool,
    ) -> None:
        """Print a session's transcript: every message it holds, one a line.

        Archived messages before a compaction marker are shown too, then the
        marker. With --jsonl the raw lines (the header first, so with --tail
        the output is still a session file). --follow watches the session as
        another process appends to it. ID|PATH is a session file, or a session
        id looked up in --root.
        """
        with _located(_root(given, own_root, own_prefix), target, agent) as log:
            run_show(log, tail=tail, follow=follow, raw=raw)


def _add_export(group: click.Group) -> None:
    @group.command("export")
    @click.argument("target", metavar="ID|PATH")
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(["langchain", "openai"]),
        required=True,
        help="langchain: messages_to_dict output; openai: OpenAI chat messages.",
    )
    @click.option(
        "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Default: stdout."
    )
    @click.option("--agent", help="The agent, when several have a session with this id.")
    @_root_options
    @click.pass_obj
    def export_command(
        given: _Given,
        *,
        own_root: GivenRoot,
        own_prefix: str | None,
        target: str,
        fmt: str,
        output: Path | None,
        agent: str | None,
    ) -> None:
        """Export a session's working context as JSON.

        The working context is what a chain reads: after a compaction marker,
        the summary and what follows. Plugins are not asked to inject anything.
        "langchain" is a list that 'crab-sessions import' and
        FileChatMessageHistory read back. ID|PATH is a session file, or a
        session id looked up in --root.
        """
        with _located(_root(given, own_root, own_prefix), target, agent) as log:
            run_export(log, fmt, output)


def _add_import(group: click.Group) -> None:
    @group.command("import")
    @click.argument("source", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--agent", default="crab", show_default=True, help="Agent of the new session.")
    @click.option("--id", "session_id", required=True, help="Id of the new session.")
    @click.option("--created-by", default="user", show_default=True, help="Origin of the session.")
    @_root_options
    @click.pass_obj
    def import_command(
        given: _Given,
        *,
        own_root: GivenRoot,
        own_prefix: str | None,
        source: Path,
        agent: str,
        session_id: str,
        created_by: str,
    ) -> None:
        """Import FILE's messages into a new session in --root.

        FILE is JSON: a FileChatMessageHistory file (a list of
        {"type": ..., "data": ...}, as messages_to_dict writes), or a list of
        message dicts LangChain accepts ({"role": "user", "content": "hi"}).
        An existing session is never touched: its id is an error.
        """
        root = _root(given, own_root, own_prefix)
        run_import(root, source, agent, session_id, created_by)


def _add_verify(group: click.Group) -> None:
    @group.command("verify")
    @click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
    @_root_options
    @click.pass_obj
    def verify_command(
        given: _Given, *, own_root: GivenRoot, own_prefix: str | None, paths: tuple[Path, ...]
    ) -> None:
        """Check sessions: the header, every line, the tail.

        PATHS are files, directories or session ids (default: every *.jsonl in
        the sessions directory, or every session in a Redis --root). Prints "WHERE: ok (N
        lines)" or one "WHERE:LINE: reason" per problem, and exits with status
        1 if there is any problem. Never writes.
        """
        run_verify(_root(given, own_root, own_prefix), paths)


def _add_repair(group: click.Group) -> None:
    @group.command("repair")
    @click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
    @_root_options
    @click.pass_obj
    def repair_command(
        given: _Given, *, own_root: GivenRoot, own_prefix: str | None, paths: tuple[Path, ...]
    ) -> None:
        """Move torn tails aside: an incomplete last line goes to <file>.torn.

        A writer that died mid-append leaves such a line; every complete line
        stays. Waits for a writer that is still writing. Other problems are
        reported, not changed (exit status 1 while any remain). PATHS as for
        verify. Files only: Redis stores whole lines, so nothing is torn there.
        """
        run_repair(_root(given, own_root, own_prefix), paths)


def _add_copy(group: click.Group) -> None:
    @group.command("copy")
    @click.argument("source", metavar="SRC")
    @click.argument("target", metavar="DST")
    @click.option(
        "--id", "session_id", metavar="ID", help="Copy only this session (default: every one)."
    )
    @click.option(
        "--agent", metavar="AGENT", help="With --id: the session's agent [default: crab]."
    )
    @click.option(
        "--prefix",
        metavar="P",
        help="Redis key prefix, for SRC and DST alike [default: crab].",
    )
    @click.option(
        "--dst-prefix", metavar="P", help="Redis key prefix for DST (default: as --prefix)."
    )
    @click.option("--json", "as_json", is_flag=True, help="A JSON array of results instead.")
    @click.pass_obj
    def copy_command(
        given: _Given,
        *,
        source: str,
        target: str,
        session_id: str | None,
        agent: str | None,
        prefix: str | None,
        dst_prefix: str | None,
        as_json: bool,
    ) -> None:
        """Copy sessions from SRC to DST, line for line (byte-identical).

        SRC and DST are each a sessions directory (a path or a file:// URL) or
        a Redis URL (redis://, rediss://, unix://; a single server or a
        cluster). SRC may also be one session file (*.jsonl). Every line is
        checked before anything is written, so a malformed session is
        reported (FILE:LINE) and not copied. Copying again is safe: a session
        already in DST with the same lines is left unchanged, one that holds
        the start of SRC's gets the new lines appended, and one that differs
        is reported and left as it is. Prints one line per session and a
        summary (on stderr); exits with status 1 if any session failed.
        --root is not used: SRC and DST say where (--prefix before the command
        is a default for --prefix).

        \b
        Examples:
          crab-sessions copy ~/.crabtalk/sessions redis://localhost:6379/0
          crab-sessions copy redis://localhost:6379/0 ./backup --id 12 --agent crab
          crab-sessions copy redis://a:6379 redis://b:6379 --prefix crab --dst-prefix team
        """
        if agent is not None and session_id is None:
            raise click.UsageError("--agent picks the session of --id: give --id too")
        run_copy(
            source,
            target,
            session_id=session_id,
            agent=agent or "crab",
            prefix=prefix if prefix is not None else given.prefix,
            dst_prefix=dst_prefix,
            as_json=as_json,
        )


def _add_demo(group: click.Group) -> None:
    @group.command("demo")
    @click.option(
        "--root",
        "own_root",
        type=_dir_type(),
        metavar="DIR",
        help="Sessions directory (default: a new temp dir).",
    )
    @click.pass_obj
    def demo_command(given: _Given, *, own_root: Path | None) -> None:
        """Run a short offline chain and show the session it wrote.

        A fake chat model (no network, no API key) answers three turns with a
        tool call; a plugin injects a recall message before each run, which is
        never stored. Prints where the session landed, its transcript and its
        JSONL.
        """
        root = own_root if own_root is not None else given.root
        if isinstance(root, str) or given.prefix is not None:
            raise CliError("demo writes its session to a directory: give --root DIR, not Redis")
        run_demo(root)


# --- finding sessions -------------------------------------------------------------


@dataclass(frozen=True)
class Log:
    """One session log: its storage, its name there, and where it is, for people."""

    storage: SessionStorage
    name: str
    where: str


def _file_log(path: Path) -> Log:
    return Log(DirectoryStorage(path.parent), path.name, str(path))


def _existing_root(root: Path) -> Path:
    if not root.is_dir():
        raise CliError(f"no sessions directory at {root} (pass --root DIR)")
    return root


@contextmanager
def _opened(root: Root, *, create: bool = False) -> Iterator[SessionStorage]:
    """The storage at ``root`` for the block inside; its server's errors as one line.

    A directory must exist unless ``create``. A Redis URL's password never
    shows in an error.
    """
    if root.url is None:
        assert root.path is not None
        yield DirectoryStorage((root.path if create else _existing_root(root.path)).expanduser())
        return
    try:
        storage = _open(root.url, root.prefix)
        try:
            yield storage
        finally:
            storage.close()
    except _server_errors() as error:
        raise CliError(_hidden(f"{error}", [root.url])) from None


def _server_errors() -> tuple[type[Exception], ...]:
    """What a Redis server's failure raises: the seam's error, and redis-py's own."""
    try:
        from redis.exceptions import RedisError  # noqa: PLC0415 - the 'redis' extra
    except ImportError:
        return (StorageUnavailableError,)
    return (StorageUnavailableError, RedisError)


def _listed(
    store: SessionStore,
    *,
    agent: str | None = None,
    created_by: str | None = None,
    quiet: bool = False,
) -> list[SessionInfo]:
    """``store.list_sessions``; its warnings about skipped files one line each on stderr."""
    with _warnings_to_stderr(quiet=quiet):
        return store.list_sessions(agent=agent, created_by=created_by)


@contextmanager
def _located(root: Root, target: str, agent: str | None) -> Iterator[Log]:
    """The session ``target`` names: a file, else a session id at ``root``."""
    path = Path(target).expanduser()
    if path.is_file():
        yield _file_log(path)
        return
    if path.exists():
        raise CliError(f"{path}: not a session file")
    if root.path is not None and not root.path.is_dir():
        raise _not_found(target, f"no sessions directory at {root.path}")
    with _opened(root) as storage:
        name = _find(storage, target, agent)
        yield Log(storage, name, storage.location(name))


def _find(storage: SessionStorage, target: str, agent: str | None) -> str:
    """The log holding session id ``target`` (of ``agent``, or of the only agent having it)."""
    store = SessionStore(backend=storage, entry_points=False)
    if agent is not None:
        try:
            name = store.find(target, agent)
        except ValueError as error:
            raise CliError(str(error)) from None
        if name is None:
            detail = f"no session of agent {agent!r} with that id in {storage.describe()}"
            raise _not_found(target, detail)
        return name
    found = [info for info in _listed(store, quiet=True) if info.session_id == target]
    if not found:
        raise _not_found(target, f"no session with that id in {storage.describe()}")
    agents = sorted({info.agent for info in found})
    if len(agents) > 1:
        raise CliError(
            f"session {target!r} exists for several agents ({', '.join(agents)}): pass --agent"
        )
    return found[-1].name  # several logs of one agent: the oldest, as find() picks


def _not_found(target: str, detail: str) -> CliError:
    looks_like_path = target.endswith(".jsonl") or os.sep in target
    what = "no such file" if looks_like_path else "no such session"
    return CliError(f"{what}: {target!r} ({detail})")


def session_files(root: Path | None, paths: Sequence[Path]) -> list[Path]:
    """The files ``paths`` name (a directory: its ``*.jsonl``), or all of ``root``'s."""
    if not paths:
        assert root is not None  # a Redis root: its sessions are not files
        paths = [_existing_root(root)]
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.glob("*.jsonl") if p.is_file())
        else:
            files.append(path)
    return files


def _progress(items: Sequence[T], label: str) -> Iterator[T]:
    """Iterate ``items``, with a progress bar on a terminal when there are many."""
    if len(items) < PROGRESS_MIN or not sys.stderr.isatty():
        yield from items
        return
    with click.progressbar(items, label=label, file=sys.stderr) as bar:
        yield from bar


# --- list -------------------------------------------------------------------------


def message_count(storage: SessionStorage, name: str) -> int | None:
    """Message lines of log ``name``, without parsing JSON; None if unreadable.

    Messages are the complete, non-blank lines after the header that are not
    compaction markers.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TornTailWarning)  # verify's business, not list's
            chunk = storage.read(name, None)
    except StorageUnavailableError:
        raise
    except OSError:
        return None  # deleted since listed: show it, count unknown
    lines = [] if chunk is None else chunk.lines
    return sum(1 for n, line in lines if n > 1 and _may_be_message(line))


def _may_be_message(line: bytes) -> bool:
    """Whether a body line may be a message: crabtalk writes a marker's or an event's key first."""
    return not line.startswith(_NOT_MESSAGES) and bool(line.strip())


def _session_row(storage: SessionStorage, info: SessionInfo) -> dict[str, Any]:
    return {
        "agent": info.agent,
        "created_by": info.created_by,
        "created_at": info.created_at.isoformat(),
        "messages": message_count(storage, info.name),
        "size": info.size,
        "session_id": info.session_id,
        "title": info.title,
        "path": None if info.path is None else str(info.path),
        "location": storage.location(info.name),
    }


def run_list(root: Root, agent: str | None, created_by: str | None, *, as_json: bool) -> None:
    """Print the sessions at ``root`` as a table or a JSON array."""
    with _opened(root) as storage:
        store = SessionStore(backend=storage, entry_points=False)
        infos = _listed(store, agent=agent, created_by=created_by)
        rows = [_session_row(storage, info) for info in _progress(infos, "reading sessions")]
        if as_json:
            click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        elif not rows:
            click.echo(f"no sessions in {storage.describe()}", err=True)
        else:
            click.echo(_table(rows))


_COLUMNS = (
    ("AGENT", "agent"),
    ("CREATED_BY", "created_by"),
    ("CREATED_AT", "created_at"),
    ("MESSAGES", "messages"),
    ("SIZE", "size"),
    ("ID", "session_id"),
    ("TITLE", "title"),
)
_NUMERIC = {"messages", "size"}


def _cell(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if value is None:
        return "" if key == "title" else "?"
    if key == "size":
        return display.human_size(value)
    if key == "created_at":  # seconds are enough to tell sessions apart here
        return datetime.fromisoformat(value).isoformat(sep=" ", timespec="seconds")
    return display.one_line(str(value))


def _table(rows: list[dict[str, Any]]) -> str:
    cells = [[title for title, _ in _COLUMNS]]
    cells += [[_cell(row, key) for _, key in _COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
    lines = []
    for line in cells:
        padded = [
            text.rjust(width) if key in _NUMERIC else text.ljust(width)
            for text, width, (_, key) in zip(line, widths, _COLUMNS, strict=True)
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


# --- show -------------------------------------------------------------------------


def _read(log: Log, cursor: Cursor | None) -> Chunk | None:
    """New complete lines; a torn tail is reported once, never returned."""
    with _warnings_to_stderr():
        try:
            return log.storage.read(log.name, cursor)
        except FileNotFoundError:
            gone = "no such file" if log.storage.path(log.name) else "no such session"
            raise CliError(f"{log.storage.location(log.name)}: {gone} (deleted?)") from None


def _entry_text(where: str, number: int, line: bytes, tool_names: dict[str, str]) -> str:
    """Line ``number`` for people; ``tool_names`` learns the tools each run started."""
    try:
        entry = parse_entry(line)
    except SessionFormatError as error:
        raise error.at(where, number) from None
    if isinstance(entry, CompactMarker):
        return display.compact_line(entry.compact, entry.title)
    if isinstance(entry, RunEvent):
        tool_names.update(display.tool_names_started(entry))
        return display.event_line(entry, tool_names)
    return display.message_line(from_crab_message(entry))


def _header_text(log: Log, line: bytes, messages: int) -> str:
    try:
        meta = SessionMeta.from_line(line)
    except SessionFormatError as error:
        raise error.at(log.where, 1) from None
    facts = [
        f"session {session_id_of(log.name, meta)!r}",
        f"agent {meta.agent!r}",
        f"created by {meta.created_by!r}",
        meta.created_at_text or meta.created_at.isoformat(),
    ]
    title = meta.extra.get("title")
    if isinstance(title, str) and title:
        facts.append(f"title {title!r}")
    facts.append(f"{messages} message{'s' if messages != 1 else ''}")
    return display.one_line(f"# {' · '.join(facts)} · {log.where}")


def _render(
    log: Log,
    lines: list[tuple[int, bytes]],
    *,
    raw: bool,
    tail: int | None,
    tool_names: dict[str, str],
) -> None:
    """Print a chunk read from line 1: the header, then the (last ``tail``) entries."""
    if not lines or lines[0][0] != 1:
        raise SessionFormatError("no header line", path=log.where, line=1)
    header, body = lines[0][1], lines[1:]
    hidden = 0 if tail is None else max(len(body) - tail, 0)
    if raw:
        click.echo(header)
    else:
        count = sum(1 for _, line in body if _may_be_message(line))
        click.echo(_header_text(log, header, count))
        if hidden:
            click.echo(display.hidden_line(hidden))
    _print_entries(log, body[hidden:], raw=raw, tool_names=tool_names)


def _print_entries(
    log: Log, lines: list[tuple[int, bytes]], *, raw: bool, tool_names: dict[str, str]
) -> None:
    """Print each line; ``tool_names`` carries the tools started so far to later lines."""
    for number, line in lines:
        click.echo(line if raw else _entry_text(log.where, number, line, tool_names))


def run_show(log: Log, *, tail: int | None, follow: bool, raw: bool) -> None:
    """Print the session ``log``; with ``follow``, keep printing what is appended."""
    chunk = _read(log, None)
    assert chunk is not None  # no cursor: always a chunk
    tool_names: dict[str, str] = {}
    _render(log, chunk.lines, raw=raw, tail=tail, tool_names=tool_names)
    if follow:
        _follow(log, chunk.cursor, raw=raw, tool_names=tool_names)


def _follow(log: Log, cursor: Cursor, *, raw: bool, tool_names: dict[str, str]) -> None:
    """Poll ``log`` past ``cursor``, printing only what is new, until Ctrl-C."""
    try:
        while True:
            time.sleep(POLL_SECONDS)
            chunk = _read(log, cursor)
            if chunk is None:
                continue
            if chunk.reset:
                _warn(f"{log.where} was replaced; showing it again from the start")
                tool_names.clear()
                _render(log, chunk.lines, raw=raw, tail=None, tool_names=tool_names)
            else:
                _print_entries(log, chunk.lines, raw=raw, tool_names=tool_names)
            cursor = chunk.cursor
    except KeyboardInterrupt:
        return  # the way to stop following: not an error


# --- export and import ------------------------------------------------------------


def _history(log: Log) -> CrabChatMessageHistory:
    """A history on ``log``, as ``from_file`` opens a file; no entry-point plugins.

    A read-only tool should not run third-party hooks.
    """
    meta = read_meta(log.storage, log.name)
    session = Session(
        id=session_id_of(log.name, meta),
        agent=meta.agent,
        created_by=meta.created_by,
        created_at=meta.created_at,
        file_path=log.storage.path(log.name),
    )
    plugins = make_plugin_manager(entry_points=False)
    return CrabChatMessageHistory(session, storage=log.storage, name=log.name, plugins=plugins)


def run_export(log: Log, fmt: str, output: Path | None) -> None:
    """Write the working context of ``log`` as LangChain or OpenAI message JSON."""
    with _warnings_to_stderr():
        messages = _history(log).stored_messages()
    data = (
        messages_to_dict(messages) if fmt == "langchain" else convert_to_openai_messages(messages)
    )
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    own = log.storage.path(log.name)
    if own is not None and output.exists() and output.resolve() == own.resolve():
        raise CliError(f"{output}: is the session being exported; not overwriting it")
    _write_atomically(output, text)
    click.echo(f"exported {len(messages)} messages from {log.where} to {output}", err=True)


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a failure leaves the old file)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise CliError(f"{path}: cannot write: {error.strerror or error}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_messages(source: Path) -> list[BaseMessage]:
    """The messages of a JSON file: ``messages_to_dict`` output or LangChain message dicts."""
    try:
        data = json.loads(source.read_bytes())
    except OSError as error:
        raise CliError(f"{source}: {error.strerror or error}") from None
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
        raise CliError(f"{source}: not JSON: {error}") from None
    if not isinstance(data, list):
        raise CliError(f"{source}: expected a JSON list of messages, got {_json_type(data)}")
    if not data:
        raise CliError(f"{source}: holds no messages; nothing to import")
    return [_message(source, index, item) for index, item in enumerate(data)]


def _message(source: Path, index: int, item: Any) -> BaseMessage:
    try:
        if isinstance(item, dict) and set(item) == {"type", "data"}:
            message = messages_from_dict([item])[0]
        else:
            message = convert_to_messages([item])[0]
        to_crab_message(message)  # raises now if it cannot be stored, naming the field
    except (ValueError, TypeError, KeyError, NotImplementedError) as error:
        raise CliError(f"{source}: item at index {index}: {_reason(error)}") from None
    return message


def _reason(error: Exception) -> str:
    if isinstance(error, pydantic.ValidationError):
        detail = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in detail["loc"])
        return f"{error.title}: {where}: {detail['msg']}"
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _json_type(value: Any) -> str:
    names = {dict: "an object", str: "a string", bool: "a boolean", int: "a number"}
    return names.get(type(value), "a number" if isinstance(value, float) else "null")


def run_import(root: Root, source: Path, agent: str, session_id: str, created_by: str) -> None:
    """Create session ``(agent, session_id)`` at ``root`` from the messages of ``source``."""
    messages = load_messages(source)
    if all(is_auto_injected(message) for message in messages):
        raise CliError(f"{source}: every message is auto-injected; nothing to store")
    with _opened(root, create=True) as storage:
        store = SessionStore(backend=storage, entry_points=False)
        try:
            history = store.create_session(session_id, agent=agent, created_by=created_by)
        except ValueError as error:  # an agent name that cannot name a file
            raise CliError(str(error)) from None
        except FileExistsError as error:
            raise CliError(f"{error}; not touching it") from None
        history.add_messages(messages)
        stored = len(history.stored_messages())
        where = history.location
    dropped = (
        f" ({len(messages) - stored} auto-injected left out)" if stored < len(messages) else ""
    )
    click.echo(f"imported {stored} messages into {where}{dropped}")


# --- verify and repair ------------------------------------------------------------


def _report_lines(report: LogReport) -> list[str]:
    if report.ok:
        return [f"{report.where}: ok ({report.lines} lines)"]
    return [
        display.one_line(
            f"{report.where}:{line}: {reason}" if line is not None else f"{report.where}: {reason}"
        )
        for line, reason in report.problems
    ]


def run_verify(root: Root, paths: Sequence[Path]) -> None:
    """Check the sessions ``paths`` name (default: every one at ``root``); exit 1 on a problem.

    Each of ``paths`` is a file, a directory, or a session id at ``root``.
    """
    ids = [str(path) for path in paths if _is_session_id(path)]
    if root.url is None or len(ids) < len(paths):
        _verify(session_files(root.path, _ids_as_files(root, paths)), verify_file, noun="files")
        return
    with _opened(root) as storage:
        names = [_find(storage, id_, None) for id_ in ids] or sorted(storage.names())
        _verify(names, lambda name: verify_log(storage, name), noun="sessions")


def _ids_as_files(root: Root, paths: Sequence[Path]) -> list[Path]:
    """``paths``, each that is no file or directory taken for a session id in ``root``'s."""
    if root.path is None or not any(_is_session_id(path) for path in paths):
        return list(paths)
    with _opened(root) as storage:
        return [
            Path(storage.location(_find(storage, str(path), None)))
            if _is_session_id(path)
            else path
            for path in paths
        ]


def _is_session_id(given: Path) -> bool:
    """Whether a PATHS argument is a session id: no such file, and not written as a path."""
    text = str(given)
    return not given.exists() and not text.endswith(".jsonl") and os.sep not in text


def _verify(items: Sequence[T], check: Callable[[T], LogReport | None], *, noun: str) -> None:
    """Print ``check``'s report on each of ``items``, and a summary; exit 1 on any problem."""
    if not items:
        click.echo(f"no session{' files' if noun == 'files' else 's'} to verify", err=True)
        return
    found = [check(item) for item in _progress(items, "verifying")]
    reports = [report for report in found if report is not None]
    for report in reports:
        for line in _report_lines(report):
            click.echo(line)
    bad = sum(1 for report in reports if not report.ok)
    click.echo(f"{len(reports)} {noun} checked, {bad} with problems", err=True)
    if any(report.torn_bytes for report in reports):
        click.echo(f"'{PROG} repair' moves torn tails aside, keeping every complete line", err=True)
    if bad:
        raise SystemExit(1)


def _repair_one(path: Path) -> tuple[list[str], bool]:
    """Repair ``path``'s tail: lines saying what happened, and whether the file is sound now."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TornTailWarning)  # we say it ourselves
            moved = DirectoryStorage(path.parent).repair(path.name)
    except EOFError:
        return [f"{path}: cannot repair: no complete header line (see: {PROG} verify)"], False
    except OSError as error:
        return [f"{path}: cannot repair: {error.strerror or error}"], False
    lines = [f"{path}: moved {moved} torn bytes to {path.name}.torn"] if moved else []
    remaining = verify_file(path)
    if remaining.ok:
        return lines or [f"{path}: ok"], True
    count = len(remaining.problems)
    lines.append(f"{path}: {count} other problem{'s' if count != 1 else ''} left as they are:")
    return lines + [f"  {line}" for line in _report_lines(remaining)], False


def run_repair(root: Root, paths: Sequence[Path]) -> None:
    """Move torn tails of the files ``paths`` name aside; exit 1 if any still has problems."""
    if root.url is not None and not paths:
        raise CliError(
            f"repair mends torn tails of session files; {root} is Redis, which stores whole "
            f"lines only, so nothing is ever torn there (check it with: {PROG} verify)"
        )
    files = session_files(root.path, _ids_as_files(root, paths))
    if not files:
        click.echo("no session files to repair", err=True)
        return
    unsound = 0
    for path in _progress(files, "repairing"):
        lines, sound = _repair_one(path)
        unsound += not sound
        for line in lines:
            click.echo(display.one_line(line))
    if unsound:
        raise SystemExit(1)


# --- copy -------------------------------------------------------------------------


def run_copy(
    source: str,
    target: str,
    *,
    session_id: str | None,
    agent: str,
    prefix: str | None,
    dst_prefix: str | None,
    as_json: bool,
) -> None:
    """Copy SRC's sessions (or the one ``session_id`` names) to DST; exit 1 if any failed."""
    try:
        failed = _copy(
            source,
            target,
            session_id=session_id,
            agent=agent,
            prefixes=(prefix, dst_prefix),
            as_json=as_json,
        )
    except (CliError, ConnectionError) as error:  # ConnectionError: StorageUnavailableError
        raise CliError(_hidden(str(error), (source, target))) from None
    if failed:
        raise SystemExit(1)


def _copy(
    source: str,
    target: str,
    *,
    session_id: str | None,
    agent: str,
    prefixes: tuple[str | None, str | None],
    as_json: bool,
) -> int:
    """Open both sides, copy, print what happened; the number of sessions that failed."""
    src_prefix, dst_prefix = _side_prefixes(source, target, *prefixes)
    with ExitStack() as stack:
        src, single = _copy_source(source, src_prefix)
        stack.callback(src.close)
        dst = _copy_target(target, dst_prefix)
        stack.callback(dst.close)
        if _same_place(src, dst):
            raise CliError(f"SRC and DST are the same place ({src.describe()}); nothing to copy")
        with _warnings_to_stderr():  # a torn tail in SRC: said before the summary
            names = _copy_names(src, single, session_id, agent)
            rows = _copy_all(src, dst, names, as_json=as_json)
    count = Counter(row["outcome"] for row in rows)
    click.echo(
        f"copied {count['copied']}, appended {count['appended']}, "
        f"unchanged {count['unchanged']}, failed {count['failed']}",
        err=True,
    )
    return count["failed"]


def _is_redis(text: str) -> bool:
    return url_scheme(text) in REDIS_SCHEMES


def _local_path(text: str) -> Path | None:
    """The local path ``text`` names (a path or a ``file://`` URL); None for other URLs."""
    if url_scheme(text) == "file":
        try:
            return Path(unquote(urlsplit(text).path))  # as open_storage reads it
        except ValueError as error:
            raise CliError(f"{public_url(text)}: {error}") from None
    return None if "://" in text else Path(text).expanduser()


def _hidden(message: str, urls: Sequence[str]) -> str:
    """``message`` with the passwords of ``urls`` shown as ``***`` where a URL holds them."""
    for url in urls:
        for secret in sorted(url_secrets(url), key=len, reverse=True):
            message = message.replace(secret, "***")
    return message


def _side_prefixes(
    source: str, target: str, prefix: str | None, dst_prefix: str | None
) -> tuple[str | None, str | None]:
    """The key prefix for SRC and for DST: None for a directory (which has none)."""
    for option, value in (("--prefix", prefix), ("--dst-prefix", dst_prefix)):
        if value == "":
            raise _usage_error(f"{option} must not be empty")
    src_redis, dst_redis = _is_redis(source), _is_redis(target)
    if dst_prefix is not None and not dst_redis:
        raise CliError(f"--dst-prefix is for a Redis DST, and {public_url(target)} is not one")
    if prefix is not None and not (src_redis or dst_redis):
        raise CliError("--prefix is for Redis, and neither SRC nor DST is a Redis URL")
    return (
        prefix if src_redis else None,
        (dst_prefix if dst_prefix is not None else prefix) if dst_redis else None,
    )


def _usage_error(message: str) -> click.UsageError:
    return click.UsageError(message, ctx=click.get_current_context(silent=True))


def _open(text: str, prefix: str | None) -> SessionStorage:
    """``open_storage(text)``; a URL it cannot open is a one-line error without its password."""
    path = _local_path(text)
    try:
        return open_storage(text if path is None else path, prefix=prefix)
    except (ValueError, ImportError) as error:  # the scheme, or a URL redis-py refused
        raise CliError(_hidden(str(error), [text])) from None


def _copy_source(text: str, prefix: str | None) -> tuple[SessionStorage, str | None]:
    """SRC's storage, and the log's name when SRC is one session file."""
    path = _local_path(text)
    if path is None:
        return _open(text, prefix), None
    if path.is_file():
        if path.suffix != ".jsonl":
            raise CliError(f"{path}: not a session file (*.jsonl)")
        return _open(str(path.parent), None), path.name
    if not path.is_dir():
        raise CliError(f"no such sessions directory or session file: {path}")
    return _open(text, None), None


def _copy_target(text: str, prefix: str | None) -> SessionStorage:
    """DST's storage; a directory that does not exist yet is made by the first copy."""
    path = _local_path(text)
    if path is not None and path.exists() and not path.is_dir():
        raise CliError(f"{path}: not a directory (DST is a sessions directory or a Redis URL)")
    return _open(text, prefix)


def _same_place(a: SessionStorage, b: SessionStorage) -> bool:
    if isinstance(a, DirectoryStorage) and isinstance(b, DirectoryStorage):
        return os.path.realpath(a.root) == os.path.realpath(b.root)
    return a.describe() == b.describe()


def _copy_names(
    storage: SessionStorage, single: str | None, session_id: str | None, agent: str
) -> list[str]:
    """The logs to copy: SRC's one file, the session ``session_id`` names, or all."""
    if single is not None:
        if session_id is not None:
            raise _usage_error("--id picks a session of a directory or Redis; SRC is one file")
        return [single]
    if session_id is None:
        return sorted(storage.names())
    try:
        name = SessionStore(backend=storage, entry_points=False).find(session_id, agent)
    except ValueError as error:  # a malformed header among the candidates, a bad agent name
        raise CliError(str(error)) from None
    if name is None:
        detail = f"no session of agent {agent!r} with that id in {storage.describe()}"
        raise _not_found(session_id, detail)
    return [name]


def _copy_all(
    src: SessionStorage, dst: SessionStorage, names: list[str], *, as_json: bool
) -> list[dict[str, Any]]:
    """Copy ``names``, printing as each is done; what happened to each.

    Storages describe their places without a URL's password.
    """
    if not names:
        click.echo(f"no sessions in {src.describe()}", err=True)
    rows = []
    for name in names:
        (result,) = copy_sessions(src, dst, [name])  # one by one: each line shows when done
        rows.append(_copy_row(src, dst, name, result))
        if not as_json:
            click.echo(display.one_line(_copy_line(rows[-1])))
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
    return rows


def _copy_row(
    src: SessionStorage, dst: SessionStorage, name: str, result: CopyResult | Exception
) -> dict[str, Any]:
    """What happened to one session, as ``--json`` prints it."""
    row: dict[str, Any] = {
        "name": name,
        "source": src.location(name),
        "destination": dst.location(name),
    }
    if isinstance(result, CopyResult):
        done = {"outcome": result.outcome, "lines": result.lines, "written": result.written}
        return {**row, **done, "at": None, "error": None}
    at, reason = _copy_error(src, name, result)
    return {**row, "outcome": "failed", "lines": None, "written": 0, "at": at, "error": reason}


def _copy_error(src: SessionStorage, name: str, error: Exception) -> tuple[str, str]:
    """Where a session's copy failed (a location, with the line if known) and why."""
    if isinstance(error, SessionFormatError):
        place = error.path or src.location(name)
        return (place if error.line is None else f"{place}:{error.line}"), error.reason
    if isinstance(error, OSError) and error.filename is not None:
        return str(error.filename), error.strerror or str(error)
    return src.location(name), str(error)


def _copy_line(row: dict[str, Any]) -> str:
    outcome, lines = row["outcome"], row["lines"]
    if outcome == "failed":
        return f"{row['at']}: error: {row['error']}"
    if outcome == "copied":
        done = f"copied {_plural(lines, 'line')}"
    elif outcome == "appended":
        done = f"appended {_plural(row['written'], 'new line')} ({lines} in all)"
    else:
        done = f"unchanged ({_plural(lines, 'line')})"
    return f"{row['name']}: {done}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


# --- demo -------------------------------------------------------------------------


def _check_writable(root: Path) -> None:
    """Fail with one line now if sessions cannot be written to ``root`` (not mid-chain)."""
    try:
        with DirectoryStorage(root).creation_lock():  # makes the directory and a file in it
            pass
    except OSError as error:
        raise CliError(f"{root}: cannot write sessions there: {error.strerror or error}") from None


def run_demo(root: Path | None) -> None:
    """Run :func:`crab_langchain.demo.run` and show the session it wrote."""
    from crab_langchain import demo  # noqa: PLC0415 - imports langchain's prompt machinery

    root = root or Path(tempfile.mkdtemp(prefix="crab-demo-"))
    _check_writable(root)
    path = demo.run(root)
    sys.stdout.flush()  # demo.run prints with print(): keep the order
    data = path.read_bytes()
    leaked = b"Recall:" in data
    click.echo(f"\nsession file: {path}")
    click.echo(
        "recall messages in the file: "
        + ("FOUND (they should never be stored)" if leaked else "none (injected, never stored)")
    )
    click.echo("\ntranscript:")
    run_show(_file_log(path), tail=None, follow=False, raw=False)
    click.echo("\nJSONL:")
    click.echo(data.decode("utf-8"), nl=False)
