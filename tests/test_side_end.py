"""A cold read of a thread's newest checkpoint reads the side log from its end.

A put writes a snapshot record before a root checkpoint's record when the last
one is ``SNAPSHOT_EVERY`` lines back; a cold ``get_tuple`` reads the end of the
side log from its last snapshot on (``SideIndex.resumed``) instead of every
record. These tests hold that what it reads does not grow with the checkpoints
before it, and that what it gives is what reading the whole side log gives.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import chat_agent, human, summarizing_agent
from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage
from langgraph.checkpoint.base import CheckpointTuple
from side_logs import put_counter_steps

from crab_langchain import SessionStore
from crab_langchain.checkpoint import CrabSaver, threads
from crab_langchain.checkpoint.sidelog import SNAPSHOT_PREFIX, BadRecordWarning
from crab_langchain.storage import Chunk, Cursor, DirectoryStorage, Tail

THREAD = "alice-1"
CONFIG: Any = {"configurable": {"thread_id": THREAD}}


class CountingDirectory(DirectoryStorage):
    """A directory that counts the bytes of side-log lines it hands out."""

    side_bytes = 0

    def read(self, name: str, cursor: Cursor | None) -> Chunk | None:
        chunk = super().read(name, cursor)
        if chunk is not None and name.endswith(".checkpoints"):
            CountingDirectory.side_bytes += sum(len(line) for _, line in chunk.lines)
        return chunk

    def read_tail(self, name: str, count: int) -> Tail:
        tail = super().read_tail(name, count)
        if name.endswith(".checkpoints"):
            CountingDirectory.side_bytes += len(tail.header) + sum(
                len(line) for _, line in tail.lines
            )
        return tail


def cold_read(root: Path) -> tuple[CheckpointTuple, int]:
    """A new saver's ``get_tuple`` of the newest checkpoint, and the side-log bytes it read."""
    CountingDirectory.side_bytes = 0
    saver = CrabSaver(SessionStore(backend=CountingDirectory(root), entry_points=False))
    found = saver.get_tuple(CONFIG)
    assert found is not None
    return found, CountingDirectory.side_bytes


def test_a_cold_read_costs_the_same_after_10000_checkpoints_as_after_1000(tmp_path: Path):
    read = {}
    for steps in (1_000, 10_000):
        root = tmp_path / str(steps)
        put_counter_steps(CrabSaver(SessionStore(root, entry_points=False)), steps)
        found, side_bytes = cold_read(root)
        assert found.checkpoint["channel_values"]["counter"] == steps
        assert len(found.checkpoint["channel_values"]["messages"]) == 200
        read[steps] = side_bytes
        whole = sum(p.stat().st_size for p in root.glob("*.checkpoints"))
        assert side_bytes < whole / (5 if steps == 1_000 else 50)  # not the side log, its end
    assert read[10_000] <= read[1_000] * 1.2  # does not grow with what came before


# --- what the end gives is what the whole gives ---------------------------------------


def both_ways(saver_of: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """``get_tuple`` of a new saver reading the side log's end, and of one reading it whole."""
    from_end = saver_of().get_tuple(CONFIG)
    with monkeypatch.context() as patched:
        patched.setattr(threads, "_TAIL_LINES", (10**9,))  # the end is then the whole log
        whole = saver_of().get_tuple(CONFIG)
    return from_end, whole


def same(one: CheckpointTuple | None, other: CheckpointTuple | None) -> None:
    assert one is not None
    assert other is not None
    assert one.config == other.config
    assert one.parent_config == other.parent_config
    assert one.metadata == other.metadata
    assert one.pending_writes == other.pending_writes
    mine, theirs = dict(one.checkpoint), dict(other.checkpoint)
    assert mine.pop("channel_values") == theirs.pop("channel_values")
    assert mine == theirs


def scenarios(backend: Any) -> Iterator[tuple[str, Any]]:
    """(name, a saver factory) after each way of writing a thread that bears on reading it."""

    def saver_of() -> CrabSaver:
        return CrabSaver(backend.store())

    agent = chat_agent(saver_of(), turns=40)
    for turn in range(20):
        agent.invoke(human(f"question {turn}"), CONFIG)
    yield "agent turns", saver_of
    history = backend.store().get_session_history(THREAD)
    history.add_messages([HumanMessage("from a chat"), AIMessage("from a chat too")])
    yield "another door appended", saver_of
    for turn in range(20, 30):
        agent.invoke(human(f"question {turn}"), CONFIG)
    yield "agent turns after it", saver_of
    state = agent.get_state(CONFIG).values["messages"]
    agent.update_state(CONFIG, {"messages": [RemoveMessage(id=state[3].id)]})
    yield "a rewrite (a message removed)", saver_of
    for turn in range(30, 35):
        agent.invoke(human(f"question {turn}"), CONFIG)
    yield "agent turns in the new epoch", saver_of


@pytest.mark.parametrize("backend", ["directory", "redis"], indirect=True)
def test_the_end_of_the_side_log_gives_what_the_whole_gives(backend, monkeypatch):
    for name, saver_of in scenarios(backend):
        from_end, whole = both_ways(saver_of, monkeypatch)
        assert from_end is not None, name
        same(from_end, whole)


def test_a_summarizing_agent_reads_the_same_both_ways(tmp_path: Path, monkeypatch):
    def saver_of() -> CrabSaver:
        return CrabSaver(SessionStore(tmp_path, entry_points=False))

    agent = summarizing_agent(saver_of(), turns=60)
    for turn in range(50):
        agent.invoke(human(f"question {turn}"), CONFIG)
        if turn % 10 == 9:
            same(*both_ways(saver_of, monkeypatch))


def test_snapshots_are_written_and_read_and_pruning_drops_them(tmp_path: Path):
    saver = CrabSaver(SessionStore(tmp_path, entry_points=False))
    put_counter_steps(saver, 300)
    (side,) = tmp_path.glob("*.checkpoints")
    lines = side.read_bytes().splitlines()
    snapshots = [n for n, line in enumerate(lines) if line.startswith(SNAPSHOT_PREFIX)]
    assert len(snapshots) >= 300 // 64 - 1
    assert all(b - a >= 64 for a, b in itertools.pairwise(snapshots))
    newest = cold_read(tmp_path)[0]
    saver.prune([THREAD], strategy="keep_latest")
    assert not any(line.startswith(SNAPSHOT_PREFIX) for line in side.read_bytes().splitlines())
    same(cold_read(tmp_path)[0], newest)


def test_a_side_log_with_no_snapshot_is_read_whole(tmp_path: Path):
    """An older release's side log (no snapshot in it) reads as it did."""
    saver = CrabSaver(SessionStore(tmp_path, entry_points=False))
    put_counter_steps(saver, 400)
    (side,) = tmp_path.glob("*.checkpoints")
    kept = [line for line in side.read_bytes().splitlines() if not line.startswith(SNAPSHOT_PREFIX)]
    expected = cold_read(tmp_path)[0]
    side.write_bytes(b"".join(line + b"\n" for line in kept))
    found, side_bytes = cold_read(tmp_path)
    same(found, expected)
    assert side_bytes >= side.stat().st_size - 1_000  # the whole of it


async def test_the_async_cold_read_reads_the_end_too(tmp_path: Path):
    put_counter_steps(CrabSaver(SessionStore(tmp_path, entry_points=False)), 2_000)
    CountingDirectory.side_bytes = 0
    saver = CrabSaver(SessionStore(backend=CountingDirectory(tmp_path), entry_points=False))
    found = await saver.aget_tuple(CONFIG)
    assert found is not None
    assert found.checkpoint["channel_values"]["counter"] == 2_000
    whole = sum(p.stat().st_size for p in tmp_path.glob("*.checkpoints"))
    assert CountingDirectory.side_bytes < whole / 10


def test_a_put_after_a_cold_read_reads_the_rest_first(tmp_path: Path):
    """What a put decides on is the whole side log: a partial one is read whole before it."""
    put_counter_steps(CrabSaver(SessionStore(tmp_path, entry_points=False)), 300)
    saver = CrabSaver(SessionStore(tmp_path, entry_points=False))
    found = saver.get_tuple(CONFIG)
    assert found is not None
    agent = chat_agent(saver, turns=2)
    agent.invoke(human("after the cold read"), CONFIG)
    listed = list(saver.list(CONFIG))
    assert len(listed) == 301 + 3  # every checkpoint, and the turn's: its input and two steps
    texts = [m.content for m in agent.get_state(CONFIG).values["messages"]]
    assert len(texts) == 202
    assert texts[:2] == ["q0", "a1"]
    assert texts[-2] == "after the cold read"


def test_the_newest_ten_are_listed_from_the_end_as_the_whole_lists_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """``get_state_history(limit=10)`` after a restart: the end of the side log, no more."""

    def saver_of() -> CrabSaver:
        return CrabSaver(SessionStore(backend=CountingDirectory(tmp_path), entry_points=False))

    agent = chat_agent(saver_of(), turns=200)
    for turn in range(150):
        agent.invoke(human(f"question {turn}"), CONFIG)
    root: Any = {"configurable": {"thread_id": THREAD, "checkpoint_ns": ""}}
    asked: list[dict[str, Any]] = [
        {"limit": 10},
        {"limit": 3, "before": {"configurable": {"checkpoint_id": "1f1"}}},
        {"limit": 5, "filter": {"source": "loop"}},
        {"limit": 2000},  # more than the end holds: the whole
    ]
    whole_size = sum(p.stat().st_size for p in tmp_path.glob("*.checkpoints"))
    for kwargs in asked:
        CountingDirectory.side_bytes = 0
        from_end = list(saver_of().list(root, **kwargs))
        read = CountingDirectory.side_bytes
        with monkeypatch.context() as patched:
            patched.setattr(threads, "_TAIL_LINES", (10**9,))
            whole = list(saver_of().list(root, **kwargs))
        assert len(from_end) == len(whole), kwargs
        for one, other in zip(from_end, whole, strict=True):
            same(one, other)
        if kwargs["limit"] == 10:
            assert read < whole_size / 5  # the newest ten, from the end
    history = [s.config for s in agent.get_state_history(CONFIG, limit=10)]
    assert len(history) == 10


def test_a_bad_line_read_on_from_the_end_is_named_where_it_is(tmp_path: Path):
    """A tail's lines are not numbered as the log's (a directory cannot tell without
    reading it all): a line that is not a record, read on after a cold read from
    the end, sends the reader to the whole log, whose warning names its true place."""
    put_counter_steps(CrabSaver(SessionStore(tmp_path, entry_points=False)), 300)
    saver = CrabSaver(SessionStore(backend=CountingDirectory(tmp_path), entry_points=False))
    assert saver.get_tuple(CONFIG) is not None  # from the end
    (side,) = tmp_path.glob("*.checkpoints")
    with side.open("ab") as file:
        file.write(b'{"something":"else"}\n')
    lines = len(side.read_bytes().splitlines())
    CountingDirectory.side_bytes = 0
    with pytest.warns(BadRecordWarning, match=rf"\.checkpoints:{lines}: not a checkpoint record"):
        found = saver.get_tuple(CONFIG)
    assert found is not None
    assert found.checkpoint["channel_values"]["counter"] == 300
    assert CountingDirectory.side_bytes > side.stat().st_size // 2  # read whole, after all
