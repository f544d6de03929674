"""``crab-sessions copy``: sessions from one storage to another, line for line."""

from __future__ import annotations

import json
import os
from collections import Counter
from contextlib import ExitStack
from typing import Any

import click

from crab_langchain import display
from crab_langchain.cli.common import (
    CliError,
    Given,
    hidden,
    is_server,
    local_path,
    not_found,
    open_url,
    plural,
    server_errors,
    usage_error,
    warnings_to_stderr,
)
from crab_langchain.models import (
    SessionFormatError,
)
from crab_langchain.storage import (
    DirectoryStorage,
    SessionStorage,
    public_url,
)
from crab_langchain.store import SessionStore
from crab_langchain.transfer import CopyResult, copy_sessions


def add_copy(group: click.Group) -> None:
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
    @click.option(
        "--force",
        is_flag=True,
        help="Replace a session that differs in DST (atomically) instead of leaving it.",
    )
    @click.option("--json", "as_json", is_flag=True, help="A JSON array of results instead.")
    @click.pass_obj
    def copy_command(
        given: Given,
        *,
        source: str,
        target: str,
        session_id: str | None,
        agent: str | None,
        prefix: str | None,
        dst_prefix: str | None,
        force: bool,
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
        is reported and left as it is (with --force: replaced, atomically).
        Prints one line per session and a summary (on stderr); exits with
        status 1 if any session failed.
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
            force=force,
        )


def run_copy(
    source: str,
    target: str,
    *,
    session_id: str | None,
    agent: str,
    prefix: str | None,
    dst_prefix: str | None,
    as_json: bool,
    force: bool = False,
) -> None:
    """Copy SRC's sessions (or the one ``session_id`` names) to DST; exit 1 if any failed."""
    refusals: tuple[type[Exception], ...] = (CliError, ConnectionError, *server_errors())
    try:
        failed = _copy(
            source,
            target,
            session_id=session_id,
            agent=agent,
            prefixes=(prefix, dst_prefix),
            as_json=as_json,
            force=force,
        )
    except refusals as error:
        raise CliError(hidden(str(error), (source, target))) from None
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
    force: bool,
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
        with warnings_to_stderr():  # a torn tail in SRC: said before the summary
            names = _copy_names(src, single, session_id, agent)
            rows = _copy_all(src, dst, names, as_json=as_json, force=force)
    count = Counter(row["outcome"] for row in rows)
    click.echo(
        f"copied {count['copied']}, appended {count['appended']}, "
        + (f"replaced {count['replaced']}, " if force else "")
        + f"unchanged {count['unchanged']}, failed {count['failed']}",
        err=True,
    )
    return count["failed"]


def _side_prefixes(
    source: str, target: str, prefix: str | None, dst_prefix: str | None
) -> tuple[str | None, str | None]:
    """The key prefix for SRC and for DST: None for a directory (which has none)."""
    for option, value in (("--prefix", prefix), ("--dst-prefix", dst_prefix)):
        if value == "":
            raise usage_error(f"{option} must not be empty")
    src_redis, dst_redis = is_server(source), is_server(target)
    if dst_prefix is not None and not dst_redis:
        raise CliError(
            f"--dst-prefix is for a Redis or PostgreSQL DST, and {public_url(target)} is not one"
        )
    if prefix is not None and not (src_redis or dst_redis):
        raise CliError(
            "--prefix is for Redis or PostgreSQL, and neither SRC nor DST is a server URL"
        )
    return (
        prefix if src_redis else None,
        (dst_prefix if dst_prefix is not None else prefix) if dst_redis else None,
    )


def _copy_source(text: str, prefix: str | None) -> tuple[SessionStorage, str | None]:
    """SRC's storage, and the log's name when SRC is one session file."""
    path = local_path(text)
    if path is None:
        return open_url(text, prefix), None
    if path.is_file():
        if path.suffix != ".jsonl":
            raise CliError(f"{path}: not a session file (*.jsonl)")
        return open_url(str(path.parent), None), path.name
    if not path.is_dir():
        raise CliError(f"no such sessions directory or session file: {path}")
    return open_url(text, None), None


def _copy_target(text: str, prefix: str | None) -> SessionStorage:
    """DST's storage; a directory that does not exist yet is made by the first copy."""
    path = local_path(text)
    if path is not None and path.exists() and not path.is_dir():
        raise CliError(f"{path}: not a directory (DST is a sessions directory or a Redis URL)")
    storage = open_url(text, prefix)
    storage.setup()  # PostgreSQL's tables, made where they are missing
    return storage


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
            raise usage_error("--id picks a session of a directory or Redis; SRC is one file")
        return [single]
    if session_id is None:
        return sorted(storage.names())
    try:
        name = SessionStore(backend=storage, entry_points=False).find(session_id, agent)
    except ValueError as error:  # a malformed header among the candidates, a bad agent name
        raise CliError(str(error)) from None
    if name is None:
        detail = f"no session of agent {agent!r} with that id in {storage.describe()}"
        raise not_found(session_id, detail)
    return [name]


def _copy_all(
    src: SessionStorage, dst: SessionStorage, names: list[str], *, as_json: bool, force: bool
) -> list[dict[str, Any]]:
    """Copy ``names``, printing as each is done; what happened to each.

    Storages describe their places without a URL's password.
    """
    if not names:
        click.echo(f"no sessions in {src.describe()}", err=True)
    rows = []
    for name in names:
        (result,) = copy_sessions(src, dst, [name], force=force)  # one by one, each shown
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
        done = f"copied {plural(lines, 'line')}"
    elif outcome == "appended":
        done = f"appended {plural(row['written'], 'new line')} ({lines} in all)"
    elif outcome == "replaced":
        done = f"replaced by {plural(lines, 'line')}"
    else:
        done = f"unchanged ({plural(lines, 'line')})"
    return f"{row['name']}: {done}"
