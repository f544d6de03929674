"""``crab-sessions show``: a session's transcript (and ``--follow``)."""

from __future__ import annotations

import time

import click

from crab_langchain import display
from crab_langchain.cli.common import (
    CliError,
    Given,
    GivenRoot,
    Log,
    located,
    resolve_root,
    root_options,
    warn,
    warnings_to_stderr,
)
from crab_langchain.convert import from_crab_message
from crab_langchain.log import is_message_line, split_header
from crab_langchain.models import (
    CompactMarker,
    RunEvent,
    SessionFormatError,
    SessionMeta,
    parse_entry,
)
from crab_langchain.naming import session_id_of
from crab_langchain.storage import (
    Chunk,
    Cursor,
)

POLL_SECONDS = 0.2


def add_show(group: click.Group) -> None:
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
    @root_options
    @click.pass_obj
    def show_command(
        given: Given,
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
        with located(resolve_root(given, own_root, own_prefix), target, agent) as log:
            run_show(log, tail=tail, follow=follow, raw=raw)


def _read(log: Log, cursor: Cursor | None) -> Chunk | None:
    """New complete lines; a torn tail is reported once, never returned."""
    with warnings_to_stderr():
        try:
            return log.read(cursor)
        except FileNotFoundError:
            gone = "no such file" if log.path else "no such session"
            raise CliError(f"{log.location}: {gone} (deleted?)") from None


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
    header, body = split_header(log.where, lines)
    hidden = 0 if tail is None else max(len(body) - tail, 0)
    if raw:
        click.echo(header)
    else:
        count = sum(1 for _, line in body if is_message_line(line))
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
                warn(f"{log.where} was replaced; showing it again from the start")
                tool_names.clear()
                _render(log, chunk.lines, raw=raw, tail=None, tool_names=tool_names)
            else:
                _print_entries(log, chunk.lines, raw=raw, tool_names=tool_names)
            cursor = chunk.cursor
    except KeyboardInterrupt:
        return  # the way to stop following: not an error
