"""Check sessions line by line, reporting every problem with its line number.

Unlike opening a session as a history (which stops at the first malformed
line), :func:`verify_file` and :func:`verify_log` read the raw lines and keep
going, so one run lists all that is wrong with a session. They never write.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from crab_langchain.log import header_identity, split_header
from crab_langchain.models import SessionFormatError, SessionMeta, parse_entry
from crab_langchain.storage import COMPANION_KINDS, SessionStorage, companion_name, owner_of

__all__ = ["FileReport", "LogReport", "line_problem", "verify_file", "verify_log"]


@dataclass
class LogReport:
    """What :func:`verify_log` found in one session, stored ``where`` (a path, a server key).

    ``lines`` counts the complete lines (the header included). ``problems``
    holds ``(line number, reason)``; the line is None for a problem of the
    whole session (it cannot be read). ``torn_bytes`` is the size of an
    incomplete last line (a writer died mid-append), also listed as a problem.
    """

    where: str
    lines: int = 0
    problems: list[tuple[int | None, str]] = field(default_factory=list)
    torn_bytes: int = 0

    @property
    def ok(self) -> bool:
        """True when the session has no problem at all."""
        return not self.problems


class FileReport(LogReport):
    """What :func:`verify_file` found in one file."""

    @property
    def path(self) -> Path:
        """The file checked."""
        return Path(self.where)


def verify_file(path: str | os.PathLike[str]) -> FileReport:
    """Check the header, every line and the tail of the session file ``path``."""
    report = FileReport(os.fspath(path))
    try:
        with open(report.path, "rb") as file:
            for number, line in enumerate(file, start=1):
                if not line.endswith(b"\n"):
                    _torn(report, number, len(line))
                    break
                report.lines = number
                _check_line(report, number, line[:-1])
    except OSError as error:
        report.problems.append((None, error.strerror or str(error)))
        return report
    if report.lines == 0 and not report.torn_bytes:
        report.problems.append((1, "empty file: no header line"))
    for kind in COMPANION_KINDS if report.path.name.endswith(".jsonl") else ():
        companion = report.path.with_name(companion_name(report.path.name, kind))
        if companion.exists():
            header = _first_line(report.path)
            _check_companion(report, companion.name, _file_lines(companion), header)
    return report


def verify_log(storage: SessionStorage, name: str) -> LogReport | None:
    """Check log ``name``'s header and every line, as :func:`verify_file` checks a file.

    None if the log is gone (it expired or was deleted since it was listed).
    A server holds whole lines only, so there is no tail to check there.
    """
    report = LogReport(storage.location(name))
    try:
        chunk = storage.read(name, None)
    except FileNotFoundError:
        return None
    numbered = [] if chunk is None else chunk.lines
    report.lines = 0 if chunk is None else chunk.cursor.lines
    try:
        split_header(report.where, numbered)
    except SessionFormatError as error:
        report.problems.append((1, error.reason))
    for number, line in numbered:
        _check_line(report, number, line)
    for kind in COMPANION_KINDS if name.endswith(".jsonl") else ():
        companion = companion_name(name, kind)
        try:
            chunk = storage.read(companion, None)
        except FileNotFoundError:
            continue
        header = numbered[0][1] if numbered and numbered[0][0] == 1 else None
        _check_companion(report, companion, [] if chunk is None else chunk.lines, header)
    return report


def _first_line(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as file:
            line = file.readline()
    except OSError:
        return None
    return line[:-1] if line.endswith(b"\n") else None


def _file_lines(path: Path) -> list[tuple[int, bytes]]:
    """The lines of file ``path``, numbered (an incomplete last one too)."""
    *complete, tail = path.read_bytes().split(b"\n")
    return list(enumerate([*complete, tail] if tail else complete, start=1))


_SIDE_RECORDS = {"checkpoint", "writes", "intent", "archive", "blobs", "written", "snapshot"}


def _check_companion(
    report: LogReport, name: str, lines: list[tuple[int, bytes]], session_header: bytes | None
) -> None:
    """Problems of a log kept beside the session (a checkpointer's side log).

    Its header must name this session (and, where it says, this incarnation
    of it); every other line must be one record. Its problems are the
    session's, each naming the companion and its line.
    """
    for number, line in lines:
        reason = _side_line_problem(number, line, name, session_header)
        if reason is not None:
            report.problems.append((None, f"{name}:{number}: {reason}"))


def _side_line_problem(
    number: int, line: bytes, name: str, session_header: bytes | None
) -> str | None:
    try:
        fields = json.loads(line)
    except (ValueError, RecursionError):
        return "not a JSON object"
    if not isinstance(fields, dict):
        return "not a JSON object"
    if number == 1:
        owner = owner_of(name)
        if fields.get("crab_checkpoints") != 1:
            return "not a checkpointer's side log"
        if owner is not None and fields.get("session") != owner[0]:
            return f"the side log of another session ({str(fields.get('session'))[:100]!r})"
        identity = fields.get("identity")
        if (
            identity is not None
            and session_header is not None
            and identity != header_identity(session_header)
        ):
            return "the side log of an earlier session of this name (its identity differs)"
        return None
    kinds = list(fields)
    if len(kinds) != 1 or kinds[0] not in _SIDE_RECORDS or not isinstance(fields[kinds[0]], dict):
        return f"not a checkpoint record (keys {sorted(kinds)[:5]})"
    return None


def line_problem(number: int, line: bytes) -> str | None:
    """Why line ``number`` is not a header (line 1) or an entry crabtalk reads; None if it is.

    Blank lines are fine: crabtalk's reader skips them, so do we.
    """
    if b"\n" in line:  # only a server's item can: it would be two lines in a file
        return "holds a line break"
    try:
        if number == 1:
            SessionMeta.from_line(line)
        elif line.strip():
            parse_entry(line)
    except SessionFormatError as error:
        return error.reason
    return None


def _check_line(report: LogReport, number: int, line: bytes) -> None:
    reason = line_problem(number, line)
    if reason is not None:
        report.problems.append((number, reason))


def _torn(report: LogReport, number: int, size: int) -> None:
    report.torn_bytes = size
    what = "no complete header line" if number == 1 else "incomplete last line"
    report.problems.append((number, f"{what} ({size} bytes, no newline): a writer died mid-append"))
