"""Check session files line by line, reporting every problem with its line number.

Unlike opening a file as a history (which stops at the first malformed line),
:func:`verify_file` reads the raw bytes and keeps going, so one run lists all
that is wrong with a file. It never writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from crab_langchain.models import SessionFormatError, SessionMeta, parse_entry

__all__ = ["FileReport", "verify_file"]


@dataclass
class FileReport:
    """What :func:`verify_file` found in one file.

    ``lines`` counts the complete lines (the header included). ``problems``
    holds ``(line number, reason)``; the line is None for a problem of the
    whole file (it cannot be read). ``torn_bytes`` is the size of an
    incomplete last line (a writer died mid-append), also listed as a problem.
    """

    path: Path
    lines: int = 0
    problems: list[tuple[int | None, str]] = field(default_factory=list)
    torn_bytes: int = 0

    @property
    def ok(self) -> bool:
        """True when the file has no problem at all."""
        return not self.problems


def verify_file(path: str | os.PathLike[str]) -> FileReport:
    """Check the header, every line and the tail of the session file ``path``."""
    report = FileReport(Path(path))
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
    return report


def _check_line(report: FileReport, number: int, line: bytes) -> None:
    try:
        if number == 1:
            SessionMeta.from_line(line)
        elif line.strip():  # crabtalk's reader skips blank lines, so do we
            parse_entry(line)
    except SessionFormatError as error:
        report.problems.append((number, error.reason))


def _torn(report: FileReport, number: int, size: int) -> None:
    report.torn_bytes = size
    what = "no complete header line" if number == 1 else "incomplete last line"
    report.problems.append((number, f"{what} ({size} bytes, no newline): a writer died mid-append"))
