"""``crab-sessions list``: the sessions, newest first."""

from __future__ import annotations

import json
import warnings
from datetime import datetime
from typing import Any

import click

from crab_langchain import display
from crab_langchain.cli.common import (
    Given,
    GivenRoot,
    Root,
    listed,
    opened,
    progress,
    resolve_root,
    root_options,
)
from crab_langchain.log import is_message_line
from crab_langchain.storage import (
    SessionStorage,
    StorageUnavailableError,
    TornTailWarning,
)
from crab_langchain.store import SessionInfo, SessionStore

_NUMERIC = {"messages", "size"}

_COLUMNS = (
    ("AGENT", "agent"),
    ("CREATED_BY", "created_by"),
    ("CREATED_AT", "created_at"),
    ("MESSAGES", "messages"),
    ("SIZE", "size"),
    ("ID", "session_id"),
    ("TITLE", "title"),
)


def add_list(group: click.Group) -> None:
    @group.command("list")
    @click.option("--agent", help="Only sessions of this agent.")
    @click.option("--created-by", help="Only sessions created by this origin (e.g. user).")
    @click.option("--json", "as_json", is_flag=True, help="A JSON array instead of a table.")
    @root_options
    @click.pass_obj
    def list_command(
        given: Given,
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
        run_list(resolve_root(given, own_root, own_prefix), agent, created_by, as_json=as_json)


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
    return sum(1 for n, line in lines if n > 1 and is_message_line(line))


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
    with opened(root) as storage:
        store = SessionStore(backend=storage, entry_points=False)
        infos = listed(store, agent=agent, created_by=created_by)
        rows = [_session_row(storage, info) for info in progress(infos, "reading sessions")]
        if as_json:
            click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        elif not rows:
            click.echo(f"no sessions in {storage.describe()}", err=True)
        else:
            click.echo(_table(rows))


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
