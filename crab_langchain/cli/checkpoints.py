"""``crab-sessions import-checkpoints``: threads of ``SqliteSaver`` or ``PostgresSaver`` moved in.

The source is only read; each thread becomes a session (its conversation) and a
side log (the rest of its checkpoints) at ``--root``, through
:func:`~crab_langchain.checkpoint.moving.copy_threads`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import click

from crab_langchain.cli.common import (
    CliError,
    Given,
    GivenRoot,
    Root,
    hidden,
    opened,
    plural,
    resolve_root,
    root_options,
    server_errors,
)
from crab_langchain.storage import public_url
from crab_langchain.storage.base import url_scheme
from crab_langchain.store import SessionStore


def add_import_checkpoints(group: click.Group) -> None:
    @group.command("import-checkpoints")
    @click.option(
        "--from",
        "source",
        required=True,
        metavar="URL",
        help="The saver to read: sqlite:///path/to/checkpoints.db or postgresql://...",
    )
    @click.option(
        "--thread", "threads", multiple=True, metavar="ID", help="Only this thread (repeatable)."
    )
    @click.option("--agent", default="crab", show_default=True, help="The sessions' agent.")
    @root_options
    @click.pass_obj
    def import_checkpoints_command(
        given: Given,
        *,
        own_root: GivenRoot,
        own_prefix: str | None,
        source: str,
        threads: tuple[str, ...],
        agent: str,
    ) -> None:
        """Move LangGraph threads in from SqliteSaver or PostgresSaver.

        Every checkpoint of each thread (all threads unless --thread), with its
        metadata and pending writes, in order, keeping its id and time: the
        thread's get_state_history reads the same from CrabSaver afterwards.
        The source is only read; a thread already at --root is refused.

        \b
        Example:
          crab-sessions --root ./sessions import-checkpoints --from sqlite:///checkpoints.db
        """
        root = resolve_root(given, own_root, own_prefix)
        refusals: tuple[type[Exception], ...] = (ValueError, *server_errors())
        try:
            run_import(root, source, threads or None, agent)
        except refusals as error:
            raise CliError(hidden(str(error), [source, root.url or ""])) from None


def run_import(root: Root, source: str, threads: tuple[str, ...] | None, agent: str) -> None:
    """Copy ``threads`` (all if None) of the saver at ``source`` into a CrabSaver at ``root``."""
    from crab_langchain.checkpoint import CrabSaver  # noqa: PLC0415 - the langgraph extra
    from crab_langchain.checkpoint.moving import copy_threads  # noqa: PLC0415

    with _source_saver(source) as reader, opened(root, create=True) as storage:
        storage.setup()
        target = CrabSaver(SessionStore(backend=storage, entry_points=False), agent=agent)
        moved = copy_threads(reader, target, threads)
        for thread in moved:
            click.echo(
                f"{thread.thread_id}: {plural(thread.checkpoints, 'checkpoint')}, "
                f"{plural(thread.writes, 'pending write')}"
            )
    click.echo(f"imported {plural(len(moved), 'thread')} from {public_url(source)}", err=True)


@contextlib.contextmanager
def _source_saver(url: str) -> Iterator[Any]:
    """LangGraph's own saver for ``url``: SqliteSaver or PostgresSaver (their packages)."""
    scheme = url_scheme(url)
    if scheme == "sqlite":
        path = Path(unquote(urlsplit(url).path))
        if not path.is_file():
            raise CliError(f"no SQLite database at {path}")
        saver_class = _needs("langgraph.checkpoint.sqlite", "SqliteSaver", "sqlite")
        with contextlib.closing(sqlite3.connect(path, check_same_thread=False)) as conn:
            yield saver_class(conn)
        return
    if scheme in ("postgresql", "postgres"):
        saver_class = _needs("langgraph.checkpoint.postgres", "PostgresSaver", "postgres")
        with saver_class.from_conn_string(url) as saver:
            yield saver
        return
    raise CliError(f"--from takes sqlite:///PATH or postgresql://..., not {public_url(url)}")


def _needs(module: str, name: str, package: str) -> Any:
    try:
        found = __import__(module, fromlist=[name])
    except ImportError:
        raise CliError(
            f"reading {name} needs langgraph-checkpoint-{package}: "
            f"pip install langgraph-checkpoint-{package}"
        ) from None
    return getattr(found, name)
