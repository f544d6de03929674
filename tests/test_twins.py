"""Sync and async twins: they agree, and the async ones never hold up the event loop.

A sync caller in a slow storage call (a slow disk, a far server) must not
stall coroutines on the same history: the loop keeps ticking, and they
finish while it is still inside that call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from crab_langchain import DirectoryStorage, SessionStore, hookimpl
from crab_langchain.storage import Cursor

TICK = 0.005


class SlowAppends(DirectoryStorage):
    """A directory whose ``append`` waits, when asked, until it is let go.

    It says it is natively async, so the history's async calls reach its
    (thread-backed) async twins directly, as they would a Redis client.
    """

    native_async = True

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.hold = threading.Event()
        self.inside = threading.Event()
        self.release = threading.Event()

    def append(
        self, name: str, lines: Sequence[bytes], after: Cursor | None = None
    ) -> Cursor | None:
        if self.hold.is_set() and threading.current_thread() is not threading.main_thread():
            self.hold.clear()
            self.inside.set()
            self.release.wait(10)
        return super().append(name, lines, after)


@contextlib.asynccontextmanager
async def watched_loop() -> AsyncIterator[list[float]]:
    """The times at which a timer on the loop ticked, every TICK seconds, while inside."""
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticking() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(TICK)

    ticker = asyncio.create_task(ticking())
    try:
        yield ticks
    finally:
        stop.set()
        await ticker


def longest_gap(ticks: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(ticks)), default=0.0)


async def test_async_calls_go_on_while_a_sync_writer_is_inside_a_slow_append(tmp_path: Path):
    storage = SlowAppends(tmp_path)
    store = SessionStore(backend=storage, entry_points=False)
    history = store.get_session_history("s")
    history.add_messages([HumanMessage("first")])
    storage.hold.set()
    writer = threading.Thread(target=history.add_messages, args=([HumanMessage("sync")],))
    writer.start()
    assert storage.inside.wait(10), "the sync writer never reached storage"
    try:
        async with watched_loop() as ticks:
            await asyncio.wait_for(history.aadd_messages([AIMessage("async")]), 5)
            read = await asyncio.wait_for(history.aget_messages(), 5)
            await asyncio.wait_for(history.aclear(), 5)
            await asyncio.wait_for(history.aadd_messages([AIMessage("after clear")]), 5)
            assert writer.is_alive(), "the sync writer must still be inside its slow append"
            await asyncio.sleep(10 * TICK)
    finally:
        storage.release.set()
        writer.join(10)
    assert [m.content for m in read] == ["first", "async"]
    assert len(ticks) >= 10
    assert longest_gap(ticks) < 0.5, "the event loop stalled"
    assert [m.content for m in history.messages] == ["after clear", "sync"]


@pytest.mark.parametrize("size", [1, 3, 1500])
async def test_async_twins_give_what_the_sync_ones_give(tmp_path: Path, size: int):
    batch: list[Any] = [
        HumanMessage(f"q{n}") if n % 2 == 0 else AIMessage(f"a{n}") for n in range(size)
    ]
    sync = SessionStore(tmp_path / "sync", entry_points=False).get_session_history("s")
    asyn = SessionStore(tmp_path / "async", entry_points=False).get_session_history("s")
    sync.add_messages(batch)
    await asyn.aadd_messages(batch)
    assert await asyn.aget_messages() == sync.messages == batch
    reader = SessionStore(tmp_path / "async", entry_points=False).get_session_history("s")
    assert await reader.aget_messages() == batch
    assert body(tmp_path / "sync") == body(tmp_path / "async")
    sync.clear()
    await asyn.aclear()
    assert await asyn.aget_messages() == sync.messages == []
    assert body(tmp_path / "sync") == body(tmp_path / "async") == []


def body(root: Path) -> list[bytes]:
    """The lines after the header of the one session file in ``root``."""
    (path,) = root.glob("*.jsonl")
    return path.read_bytes().splitlines()[1:]


class SlowRecall:
    """An inject plugin whose recall, in the worker thread only, waits until let go."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()

    @hookimpl
    def crab_inject_messages(self) -> list[BaseMessage]:
        if threading.current_thread() is not threading.main_thread():
            self.inside.set()
            self.release.wait(10)
        return [HumanMessage("recalled")]


async def test_async_calls_go_on_while_a_sync_reader_waits_on_a_slow_plugin(tmp_path: Path):
    plugin = SlowRecall()
    history = SessionStore(tmp_path, [plugin], entry_points=False).get_session_history("s")
    history.add_messages([HumanMessage("first")])
    reader = threading.Thread(target=lambda: history.messages)
    reader.start()
    assert plugin.inside.wait(10), "the sync reader never asked the plugin"
    try:
        async with watched_loop() as ticks:
            await asyncio.wait_for(history.aadd_messages([AIMessage("async")]), 5)
            read = await asyncio.wait_for(history.aget_messages(), 5)
            assert reader.is_alive(), "the sync reader must still be waiting on the plugin"
    finally:
        plugin.release.set()
        reader.join(10)
    assert [m.content for m in read] == ["first", "async", "recalled"]
    assert longest_gap(ticks) < 0.5, "the event loop stalled"
