"""``crab-sessions delete``: sessions by id or pattern, each with the logs kept beside it."""

from __future__ import annotations

import fnmatch

import click

from crab_langchain.cli.common import (
    CliError,
    Given,
    GivenRoot,
    Root,
    listed,
    opened,
    plural,
    resolve_root,
    root_options,
)
from crab_langchain.store import SessionInfo, SessionStore


def add_delete(group: click.Group) -> None:
    @group.command("delete")
    @click.argument("targets", nargs=-1, required=True, metavar="ID...")
    @click.option("--agent", help="Only sessions of this agent (default: any agent's).")
    @root_options
    @click.pass_obj
    def delete_command(
        given: Given,
        *,
        own_root: GivenRoot,
        own_prefix: str | None,
        targets: tuple[str, ...],
        agent: str | None,
    ) -> None:
        """Delete sessions, each with its side log (a checkpointer's).

        Each ID is a session id or a shell-style pattern ('tg-*'). Every one
        must match a session, or nothing is deleted. Prints each session
        deleted, and their number (on stderr).
        """
        run_delete(resolve_root(given, own_root, own_prefix), targets, agent)


def run_delete(root: Root, targets: tuple[str, ...], agent: str | None) -> None:
    """Delete the sessions at ``root`` that ``targets`` match; refuse if one matches none."""
    with opened(root) as storage:
        store = SessionStore(backend=storage, entry_points=False)
        chosen = _matching(listed(store, agent=agent), targets, agent)
        for info in chosen:
            store.delete_session(info.session_id, info.agent)
            click.echo(
                f"deleted {info.session_id!r} of {info.agent!r}: {storage.location(info.name)}"
            )
    click.echo(f"deleted {plural(len(chosen), 'session')}", err=True)


def _matching(
    infos: list[SessionInfo], targets: tuple[str, ...], agent: str | None
) -> list[SessionInfo]:
    chosen: dict[str, SessionInfo] = {}
    for target in targets:
        found = [info for info in infos if fnmatch.fnmatchcase(info.session_id, target)]
        if not found:
            whose = f" of agent {agent!r}" if agent is not None else ""
            raise CliError(f"no session{whose} matches {target!r}; nothing deleted")
        chosen.update((info.name, info) for info in found)
    return list(chosen.values())
