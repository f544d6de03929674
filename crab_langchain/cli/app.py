"""The ``crab-sessions`` click group: every command, and running it with one error printer."""

from __future__ import annotations

from collections.abc import Sequence

import click

from crab_langchain.cli import PROG
from crab_langchain.cli.checkpoints import add_import_checkpoints
from crab_langchain.cli.common import (
    PREFIX_HELP,
    ROOT_HELP,
    CliError,
    Given,
    GivenRoot,
    fail,
    os_error_text,
    root_type,
)
from crab_langchain.cli.copy import add_copy
from crab_langchain.cli.delete import add_delete
from crab_langchain.cli.demo import add_demo
from crab_langchain.cli.export import add_export, add_import
from crab_langchain.cli.listing import add_list
from crab_langchain.cli.show import add_show
from crab_langchain.cli.verify import add_repair, add_verify
from crab_langchain.models import (
    SessionFormatError,
)

__all__ = ["build_cli", "run"]


def run(argv: Sequence[str] | None = None) -> None:
    """Run ``crab-sessions`` with ``argv``; a problem is one line on stderr and exit status 1."""
    try:
        build_cli().main(args=None if argv is None else list(argv), prog_name=PROG)
    except CliError as error:
        fail(str(error))
    except SessionFormatError as error:
        fail(f"{error} (see: {PROG} verify)")
    except OSError as error:
        fail(os_error_text(error))
    except (ValueError, TypeError, LookupError, RuntimeError) as error:
        # Anything else a command meets (a name that is no session's, a value it cannot
        # take): said in one line, as every other error, never as a traceback.
        fail(f"{type(error).__name__}: {error}")


def build_cli() -> click.Group:
    """The ``crab-sessions`` click group with every command."""

    @click.group(
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
        epilog="Run 'crab-sessions COMMAND --help' for a command's options.",
    )
    @click.option("--root", type=root_type(), metavar="DIR|URL", help=ROOT_HELP)
    @click.option("--prefix", metavar="P", help=PREFIX_HELP)
    @click.version_option(package_name="crab-langchain", prog_name=PROG)
    @click.pass_context
    def group(ctx: click.Context, root: GivenRoot, prefix: str | None) -> None:
        """Look at, check and move crabtalk sessions (JSONL lines).

        Works on a sessions directory as SessionStore keeps it, on sessions
        in Redis or Redis Cluster: --root redis://HOST:PORT/DB (rediss:// for
        TLS, unix:// for a socket), with --prefix P for the key prefix
        (default: crab), or in PostgreSQL: --root postgresql://USER@HOST/DB,
        with --prefix P for the schema (default: crab). list, show, export,
        import, verify and delete work on each; repair mends torn tails of
        files, which a server never has. import-checkpoints moves LangGraph
        threads in from SqliteSaver or PostgresSaver. Errors are
        one line on stderr; the exit status is 1 for a problem with the
        sessions and 2 for a wrong command line.
        """
        ctx.obj = Given(root, prefix)

    commands = (
        add_list,
        add_show,
        add_export,
        add_import,
        add_verify,
        add_repair,
        add_copy,
        add_import_checkpoints,
        add_delete,
        add_demo,
    )
    for add in commands:
        add(group)
    return group
