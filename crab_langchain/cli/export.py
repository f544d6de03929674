"""``crab-sessions export`` and ``import``: a working context as JSON, and back."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import click
import pydantic
from langchain_core.messages import (
    BaseMessage,
    convert_to_messages,
    convert_to_openai_messages,
    messages_from_dict,
    messages_to_dict,
)

from crab_langchain.cli.common import (
    CliError,
    Given,
    GivenRoot,
    Log,
    Root,
    located,
    opened,
    resolve_root,
    root_options,
    warnings_to_stderr,
)
from crab_langchain.context import read_context
from crab_langchain.convert import is_auto_injected, to_crab_message
from crab_langchain.store import SessionStore


def add_export(group: click.Group) -> None:
    @group.command("export")
    @click.argument("target", metavar="ID|PATH")
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(["langchain", "openai"]),
        default="langchain",
        show_default=True,
        help="langchain: messages_to_dict output; openai: OpenAI chat messages.",
    )
    @click.option(
        "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Default: stdout."
    )
    @click.option("--agent", help="The agent, when several have a session with this id.")
    @root_options
    @click.pass_obj
    def export_command(
        given: Given,
        *,
        own_root: GivenRoot,
        own_prefix: str | None,
        target: str,
        fmt: str,
        output: Path | None,
        agent: str | None,
    ) -> None:
        """Export a session's working context as JSON.

        The working context is what a chain reads: after a compaction marker,
        the summary and what follows. Plugins are not asked to inject anything.
        "langchain" is a list that 'crab-sessions import' and
        FileChatMessageHistory read back. ID|PATH is a session file, or a
        session id looked up in --root.
        """
        with located(resolve_root(given, own_root, own_prefix), target, agent) as log:
            run_export(log, fmt, output)


def add_import(group: click.Group) -> None:
    @group.command("import")
    @click.argument("source", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--agent", default="crab", show_default=True, help="Agent of the new session.")
    @click.option("--id", "session_id", required=True, help="Id of the new session.")
    @click.option("--created-by", default="user", show_default=True, help="Origin of the session.")
    @root_options
    @click.pass_obj
    def import_command(
        given: Given,
        *,
        own_root: GivenRoot,
        own_prefix: str | None,
        source: Path,
        agent: str,
        session_id: str,
        created_by: str,
    ) -> None:
        """Import FILE's messages into a new session in --root.

        FILE is JSON: a FileChatMessageHistory file (a list of
        {"type": ..., "data": ...}, as messages_to_dict writes), or a list of
        message dicts LangChain accepts ({"role": "user", "content": "hi"}).
        An existing session is never touched: its id is an error.
        """
        root = resolve_root(given, own_root, own_prefix)
        run_import(root, source, agent, session_id, created_by)


def run_export(log: Log, fmt: str, output: Path | None) -> None:
    """Write the working context of ``log`` as LangChain or OpenAI message JSON."""
    with warnings_to_stderr():
        messages = read_context(log).messages  # read through the log layer: no plugin runs
    data = (
        messages_to_dict(messages) if fmt == "langchain" else convert_to_openai_messages(messages)
    )
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    own = log.path
    if own is not None and output.exists() and output.resolve() == own.resolve():
        raise CliError(f"{output}: is the session being exported; not overwriting it")
    _write_atomically(output, text)
    click.echo(f"exported {len(messages)} messages from {log.where} to {output}", err=True)


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a failure leaves the old file)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise CliError(f"{path}: cannot write: {error.strerror or error}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_messages(source: Path) -> list[BaseMessage]:
    """The messages of a JSON file: ``messages_to_dict`` output or LangChain message dicts."""
    try:
        data = json.loads(source.read_bytes())
    except OSError as error:
        raise CliError(f"{source}: {error.strerror or error}") from None
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
        raise CliError(f"{source}: not JSON: {error}") from None
    if not isinstance(data, list):
        raise CliError(f"{source}: expected a JSON list of messages, got {_json_type(data)}")
    if not data:
        raise CliError(f"{source}: holds no messages; nothing to import")
    return [_message(source, index, item) for index, item in enumerate(data)]


def _message(source: Path, index: int, item: Any) -> BaseMessage:
    try:
        if isinstance(item, dict) and set(item) == {"type", "data"}:
            message = messages_from_dict([item])[0]
        else:
            message = convert_to_messages([item])[0]
        to_crab_message(message)  # raises now if it cannot be stored, naming the field
    except (ValueError, TypeError, KeyError, NotImplementedError) as error:
        raise CliError(f"{source}: item at index {index}: {_reason(error)}") from None
    return message


def _reason(error: Exception) -> str:
    if isinstance(error, pydantic.ValidationError):
        detail = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in detail["loc"])
        return f"{error.title}: {where}: {detail['msg']}"
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _json_type(value: Any) -> str:
    names = {dict: "an object", str: "a string", bool: "a boolean", int: "a number"}
    return names.get(type(value), "a number" if isinstance(value, float) else "null")


def run_import(root: Root, source: Path, agent: str, session_id: str, created_by: str) -> None:
    """Create session ``(agent, session_id)`` at ``root`` from the messages of ``source``."""
    messages = load_messages(source)
    if all(is_auto_injected(message) for message in messages):
        raise CliError(f"{source}: every message is auto-injected; nothing to store")
    with opened(root, create=True) as storage:
        store = SessionStore(backend=storage, entry_points=False)
        try:
            history = store.create_session(session_id, agent=agent, created_by=created_by)
        except ValueError as error:  # an agent name that cannot name a file
            raise CliError(str(error)) from None
        except FileExistsError as error:
            raise CliError(f"{error}; not touching it") from None
        history.add_messages(messages)
        stored = len(history.stored_messages())
        where = history.location
    dropped = (
        f" ({len(messages) - stored} auto-injected left out)" if stored < len(messages) else ""
    )
    click.echo(f"imported {stored} messages into {where}{dropped}")
