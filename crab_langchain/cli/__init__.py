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

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import click

__all__ = ["NEEDS_CLI_EXTRA", "PROG", "build_cli", "main"]

PROG = "crab-sessions"
NEEDS_CLI_EXTRA = f"{PROG} needs the 'cli' extra: pip install 'crab-langchain[cli]'"


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``crab-sessions`` with ``argv`` (default: the process's arguments).

    Without the ``cli`` extra (click) it says what to install and exits with status 1.
    """
    try:
        from crab_langchain.cli.app import run  # noqa: PLC0415 - click is an extra
    except ImportError as error:
        if error.name != "click":
            raise
        print(NEEDS_CLI_EXTRA, file=sys.stderr)
        raise SystemExit(1) from None
    run(argv)


def build_cli() -> click.Group:
    """The ``crab-sessions`` click group with every command (needs the ``cli`` extra)."""
    from crab_langchain.cli.app import build_cli as build  # noqa: PLC0415 - click is an extra

    return build()
