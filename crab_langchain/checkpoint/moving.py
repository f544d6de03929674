"""Moving threads in: every checkpoint of another LangGraph saver, put again into a saver.

A thread moves checkpoint by checkpoint, oldest first, through the savers'
public interface only (``list``, ``put``, ``put_writes``), so any saver is a
source (``SqliteSaver``, ``PostgresSaver``, ``InMemorySaver``, a ``CrabSaver``)
and any a target. Each checkpoint keeps its id, timestamp, metadata, parent and
channel values, and its pending writes follow it, grouped by task in the order
the source lists them, so ``get_state_history`` reads the same on both sides.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, ChannelVersions, CheckpointTuple

__all__ = ["ThreadMoved", "copy_threads"]


@dataclass(frozen=True)
class ThreadMoved:
    """What :func:`copy_threads` put into the target for one thread."""

    thread_id: str
    checkpoints: int
    writes: int


def copy_threads(
    source: BaseCheckpointSaver[str],
    target: BaseCheckpointSaver[str],
    thread_ids: Iterable[str] | None = None,
) -> list[ThreadMoved]:
    """Copy threads, every checkpoint with its metadata and pending writes, into ``target``.

    The source is only read. A thread already in the target is refused
    before anything of it is written (delete it there first to copy it again).

    Args:
        source: the saver to read (any LangGraph checkpointer).
        target: the saver to write, e.g. a ``CrabSaver``.
        thread_ids: the threads to copy; None: every thread the source lists.

    Returns:
        One :class:`ThreadMoved` per thread, in the order copied.

    Raises:
        ValueError: a thread is already in the target, or not in the source.
    """
    wanted = list(thread_ids) if thread_ids is not None else _thread_ids(source)
    moved = []
    for thread_id in wanted:
        if target.get_tuple(_thread(thread_id)) is not None:
            raise ValueError(f"thread {thread_id!r} is already in the target; nothing of it copied")
        tuples = sorted(source.list(_thread(thread_id)), key=_order)
        if not tuples:
            raise ValueError(f"no thread {thread_id!r} in the source")
        writes = 0
        versions: dict[str, ChannelVersions] = {}
        for found in tuples:
            _put(target, found, versions)
            writes += _put_writes(target, found)
        moved.append(ThreadMoved(thread_id, len(tuples), writes))
    return moved


def _thread_ids(source: BaseCheckpointSaver[str]) -> list[str]:
    """Every thread of ``source``, in the order it first lists them."""
    seen: dict[str, None] = {}
    for found in source.list(None):
        seen.setdefault(str(found.config["configurable"]["thread_id"]), None)
    return list(seen)


def _thread(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}}


def _order(found: CheckpointTuple) -> tuple[str, str]:
    # Checkpoint ids grow with time (uuid6), so a parent sorts before its children.
    configurable = found.config["configurable"]
    return (str(configurable["checkpoint_id"]), str(configurable.get("checkpoint_ns", "")))


def _put(
    target: BaseCheckpointSaver[str],
    found: CheckpointTuple,
    versions: dict[str, ChannelVersions],
) -> None:
    """Put ``found`` into ``target`` under its parent; ``versions``: the channel versions of
    the checkpoints put so far, by id."""
    configurable = found.config["configurable"]
    parent = (found.parent_config or {}).get("configurable", {}).get("checkpoint_id")
    config: RunnableConfig = {
        "configurable": {
            "thread_id": configurable["thread_id"],
            "checkpoint_ns": configurable.get("checkpoint_ns", ""),
            **({"checkpoint_id": parent} if parent else {}),
        }
    }
    own = found.checkpoint["channel_versions"]
    before = versions.get(parent, {}) if parent else {}
    # As LangGraph puts them: the channels whose version moved since the parent.
    new = {channel: version for channel, version in own.items() if before.get(channel) != version}
    target.put(config, found.checkpoint, found.metadata, new)
    versions[found.checkpoint["id"]] = own


def _put_writes(target: BaseCheckpointSaver[str], found: CheckpointTuple) -> int:
    count = 0
    for task_id, writes in _by_task(found.pending_writes or []):
        target.put_writes(found.config, writes, task_id)
        count += len(writes)
    return count


def _by_task(
    pending: Iterable[tuple[str, str, object]],
) -> Iterator[tuple[str, list[tuple[str, object]]]]:
    grouped: dict[str, list[tuple[str, object]]] = {}
    for task_id, channel, value in pending:
        grouped.setdefault(task_id, []).append((channel, value))
    yield from grouped.items()
