"""``crab-sessions verify`` and ``repair``: check sessions line by line; mend torn tails."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from crab_langchain import display
from crab_langchain.cli import PROG
from crab_langchain.cli.common import (
    CliError,
    Given,
    GivenRoot,
    Root,
    T,
    find_session,
    opened,
    progress,
    resolve_root,
    root_options,
    session_files,
)
from crab_langchain.storage import (
    DirectoryStorage,
    TornTailWarning,
)
from crab_langchain.verify import LogReport, verify_file, verify_log


def add_verify(group: click.Group) -> None:
    @group.command("verify")
    @click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
    @root_options
    @click.pass_obj
    def verify_command(
        given: Given, *, own_root: GivenRoot, own_prefix: str | None, paths: tuple[Path, ...]
    ) -> None:
        """Check sessions: the header, every line, the tail.

        PATHS are files, directories or session ids (default: every *.jsonl in
        the sessions directory, or every session in a Redis --root). Prints "WHERE: ok (N
        lines)" or one "WHERE:LINE: reason" per problem, and exits with status
        1 if there is any problem. Never writes.
        """
        run_verify(resolve_root(given, own_root, own_prefix), paths)


def add_repair(group: click.Group) -> None:
    @group.command("repair")
    @click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
    @root_options
    @click.pass_obj
    def repair_command(
        given: Given, *, own_root: GivenRoot, own_prefix: str | None, paths: tuple[Path, ...]
    ) -> None:
        """Move torn tails aside: an incomplete last line goes to <file>.torn.

        A writer that died mid-append leaves such a line; every complete line
        stays. Waits for a writer that is still writing. Other problems are
        reported, not changed (exit status 1 while any remain). PATHS as for
        verify. Files only: Redis stores whole lines, so nothing is torn there.
        """
        run_repair(resolve_root(given, own_root, own_prefix), paths)


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
    with opened(root) as storage:
        names = [find_session(storage, id_, None) for id_ in ids] or sorted(storage.names())
        _verify(names, lambda name: verify_log(storage, name), noun="sessions")


def _ids_as_files(root: Root, paths: Sequence[Path]) -> list[Path]:
    """``paths``, each that is no file or directory taken for a session id in ``root``'s."""
    if root.path is None or not any(_is_session_id(path) for path in paths):
        return list(paths)
    with opened(root) as storage:
        return [
            Path(storage.location(find_session(storage, str(path), None)))
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
    found = [check(item) for item in progress(items, "verifying")]
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
    for path in progress(files, "repairing"):
        lines, sound = _repair_one(path)
        unsound += not sound
        for line in lines:
            click.echo(display.one_line(line))
    if unsound:
        raise SystemExit(1)
