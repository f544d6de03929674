"""``crab-sessions demo``: a short offline chain, and the session it wrote."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from crab_langchain.cli.common import CliError, Given, dir_type, file_log
from crab_langchain.cli.show import run_show
from crab_langchain.storage import (
    DirectoryStorage,
)


def add_demo(group: click.Group) -> None:
    @group.command("demo")
    @click.option(
        "--root",
        "own_root",
        type=dir_type(),
        metavar="DIR",
        help="Sessions directory (default: a new temp dir).",
    )
    @click.pass_obj
    def demo_command(given: Given, *, own_root: Path | None) -> None:
        """Run a short offline chain and show the session it wrote.

        A fake chat model (no network, no API key) answers three turns with a
        tool call; a plugin injects a recall message before each run, which is
        never stored. Prints where the session landed, its transcript and its
        JSONL.
        """
        root = own_root if own_root is not None else given.root
        if isinstance(root, str) or given.prefix is not None:
            raise CliError("demo writes its session to a directory: give --root DIR, not Redis")
        run_demo(root)


def _check_writable(root: Path) -> None:
    """Fail with one line now if sessions cannot be written to ``root`` (not mid-chain)."""
    try:
        with DirectoryStorage(root).creation_lock():  # makes the directory and a file in it
            pass
    except OSError as error:
        raise CliError(f"{root}: cannot write sessions there: {error.strerror or error}") from None


def run_demo(root: Path | None) -> None:
    """Run :func:`crab_langchain.demo.run` and show the session it wrote."""
    from crab_langchain import demo  # noqa: PLC0415 - imports langchain's prompt machinery

    root = root or Path(tempfile.mkdtemp(prefix="crab-demo-"))
    _check_writable(root)
    path = demo.run(root)
    sys.stdout.flush()  # demo.run prints with print(): keep the order
    data = path.read_bytes()
    leaked = b"Recall:" in data
    click.echo(f"\nsession file: {path}")
    click.echo(
        "recall messages in the file: "
        + ("FOUND (they should never be stored)" if leaked else "none (injected, never stored)")
    )
    click.echo("\ntranscript:")
    run_show(file_log(path), tail=None, follow=False, raw=False)
    click.echo("\nJSONL:")
    click.echo(data.decode("utf-8"), nl=False)
