"""Moving sessions between storages (a directory, Redis) line for line.

A session is the same lines wherever it lives, so a copy moves bytes, never
messages: what arrives is byte-identical to what left, header first. Every
line is checked against the format before anything is written, so a
malformed session stops with the place of its bad line and leaves the
destination as it was. Copying again is safe: a session already there with
the same lines is left alone, one that holds the first part of the source
(the source grew since) gets the rest appended, and one that differs is
reported and never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from crab_langchain.log import meta_of, split_header
from crab_langchain.models import SessionFormatError
from crab_langchain.storage import COMPANION_KINDS, SessionStorage, companion_name
from crab_langchain.storage.base import is_json_object
from crab_langchain.verify import line_problem

__all__ = ["CopyResult", "SessionConflictError", "copy_session", "copy_sessions"]

Outcome = Literal["copied", "appended", "replaced", "unchanged"]


class SessionConflictError(FileExistsError):
    """The destination holds a different session under the same name; it is left as it is."""


@dataclass(frozen=True)
class CopyResult:
    """What copying one session did: ``outcome`` and how many lines were written."""

    name: str
    outcome: Outcome
    lines: int
    written: int


def copy_session(
    source: SessionStorage, target: SessionStorage, name: str, *, force: bool = False
) -> CopyResult:
    """Copy session log ``name`` from ``source`` to ``target``, line for line.

    The logs kept beside it (a checkpointer's side log) go along, after it.
    With ``force``, a log that differs in ``target`` is replaced (atomically:
    a reader sees the old lines or the new ones).

    Raises ``FileNotFoundError`` if ``source`` has no such log,
    :class:`~crab_langchain.SessionFormatError` (naming the line) if a line
    of it is malformed, and :class:`SessionConflictError` if ``target`` holds
    other lines under that name (without ``force``). In each case ``target``
    is unchanged.
    """
    lines = _checked_lines(source, name)
    companions = [
        (companion, _companion_lines(source, companion))
        for companion in (companion_name(name, kind) for kind in COMPANION_KINDS)
        if source.exists(companion)
    ]
    created = meta_of(source, name, lines[0]).created_at.timestamp()
    result = _copy_lines(target, name, lines, created, force=force)
    for companion, companion_lines in companions:
        _copy_lines(target, companion, companion_lines, created, force=force)
    return result


def _copy_lines(
    target: SessionStorage, name: str, lines: list[bytes], created: float, *, force: bool
) -> CopyResult:
    """Make log ``name`` of ``target`` hold ``lines``: create it, add what it lacks, or refuse."""
    if not target.exists(name):
        target.create(name, lines[0], created=created)
        if len(lines) > 1:
            target.append(name, lines[1:])
        return CopyResult(name, "copied", len(lines), len(lines))
    present = _lines_of(target, name)
    if present == lines:
        return CopyResult(name, "unchanged", len(lines), 0)
    if len(present) < len(lines) and lines[: len(present)] == present:
        target.append(name, lines[len(present) :])
        return CopyResult(name, "appended", len(lines), len(lines) - len(present))
    if force:
        target.replace(name, lines)
        return CopyResult(name, "replaced", len(lines), len(lines))
    raise SessionConflictError(
        17, "a different session has this name there; left as it is", target.location(name)
    )


def copy_sessions(
    source: SessionStorage,
    target: SessionStorage,
    names: Sequence[str] | None = None,
    *,
    force: bool = False,
) -> list[CopyResult | Exception]:
    """Copy ``names`` (every session by default); one result or error per session.

    ``force``: see :func:`copy_session`.

    An error with one session (malformed, a conflict) does not stop the
    others; connection errors do.
    """
    results: list[CopyResult | Exception] = []
    for name in sorted(source.names()) if names is None else names:
        try:
            results.append(copy_session(source, target, name, force=force))
        except (SessionFormatError, FileNotFoundError, SessionConflictError) as error:
            results.append(error)
    return results


def _lines_of(storage: SessionStorage, name: str) -> list[bytes]:
    chunk = storage.read(name, None)
    return [] if chunk is None else [line for _, line in chunk.lines]


def _companion_lines(storage: SessionStorage, name: str) -> list[bytes]:
    """A companion log's lines, each checked to be one JSON object."""
    chunk = storage.read(name, None)
    numbered = [] if chunk is None else chunk.lines
    for number, line in numbered:
        if not is_json_object(line):
            raise SessionFormatError("not a JSON object", path=storage.location(name), line=number)
    return [line for _, line in numbered]


def _checked_lines(storage: SessionStorage, name: str) -> list[bytes]:
    """The log's lines, each checked to be a header or an entry crabtalk reads."""
    chunk = storage.read(name, None)
    numbered = [] if chunk is None else chunk.lines
    location = storage.location(name)
    split_header(location, numbered)
    for number, line in numbered:
        reason = line_problem(number, line)
        if reason is not None:
            raise SessionFormatError(reason, path=location, line=number)
    return [line for _, line in numbered]
