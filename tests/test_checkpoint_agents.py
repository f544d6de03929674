"""CrabSaver against InMemorySaver, side by side, with real agents and graphs.

Each test runs the same scripted agent twice, once on LangGraph's
``InMemorySaver`` and once on ``CrabSaver``, and asserts equal states and
equal state histories (values, metadata, next, tasks and interrupts; ids and
times aside). Then it checks what the session file says.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from agents import (
    CONFIG,
    chat_agent,
    flaky_graph,
    hitl_agent,
    human,
    states,
    subgraph_graph,
    summarizing_agent,
    tool_agent,
)
from backends import Backend, backend  # noqa: F401 - the fixture
from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from crab_langchain import SessionStore
from crab_langchain.checkpoint import CrabSaver

TESTS = Path(__file__).parent


def crab(tmp_path: Path) -> CrabSaver:
    return CrabSaver(SessionStore(tmp_path / "sessions", entry_points=False))


def session_lines(saver: CrabSaver, thread_id: str = "alice-1") -> list[dict[str, Any]]:
    name = saver.store.find(thread_id)
    assert name is not None
    chunk = saver.store.storage.read(name, None)
    assert chunk is not None
    return [json.loads(line) for _, line in chunk.lines]


def both(build: Any, tmp_path: Path, drive: Any) -> tuple[Any, Any]:
    """Run ``drive(graph)`` on a graph built with each saver; return both graphs."""
    expected, actual = build(InMemorySaver()), build(crab(tmp_path))
    drive(expected)
    drive(actual)
    assert states(actual) == states(expected)
    return expected, actual


def test_plain_turns_equal_and_the_session_is_the_conversation(backend: Backend):
    store = backend.store()
    expected, actual = chat_agent(InMemorySaver()), chat_agent(CrabSaver(store))
    for graph in (expected, actual):
        for turn in range(3):
            graph.invoke(human(f"question {turn}"), CONFIG)
    assert states(actual) == states(expected)
    history = backend.store().get_session_history("alice-1")
    assert history.messages == actual.get_state(CONFIG).values["messages"]
    assert [m.content for m in history.messages][:2] == [
        "question 0",
        expected.get_state(CONFIG).values["messages"][1].content,
    ]


def test_parallel_tool_calls_equal(tmp_path: Path):
    def drive(graph: Any) -> None:
        graph.invoke(human("weather in Lisbon and Porto?"), CONFIG)
        graph.invoke(human("thanks"), CONFIG)

    _, actual = both(tool_agent, tmp_path, drive)
    roles = [line.get("role") for line in session_lines(actual.checkpointer)[1:]]
    assert roles == ["user", "assistant", "tool", "tool", "assistant", "user", "assistant"]


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
def test_each_durability_mode_equal(tmp_path: Path, durability: str):
    def drive(graph: Any) -> None:
        for turn in range(3):
            graph.invoke(human(f"q{turn}"), CONFIG, durability=durability)

    both(chat_agent, tmp_path, drive)


async def test_async_runs_equal(backend: Backend):
    store = backend.store()
    expected, actual = tool_agent(InMemorySaver()), tool_agent(CrabSaver(store))
    for graph in (expected, actual):
        await graph.ainvoke(human("weather?"), CONFIG)
        await graph.ainvoke(human("thanks"), CONFIG)
    assert states(actual) == states(expected)
    got = [s async for s in actual.aget_state_history(CONFIG)]
    assert len(got) == len(list(expected.get_state_history(CONFIG)))
    await close_async(store)


async def close_async(store: SessionStore) -> None:
    """Close the async Redis client this event loop opened (a directory has none)."""
    aclose = getattr(store.storage, "aclose", None)
    if aclose is not None:
        await aclose()


BLOCKING = (
    "names",
    "exists",
    "read_header",
    "read_headers",
    "create",
    "read",
    "append",
    "append_at",
    "commit",
)
BLOCKING_TOO = ("replace", "replace_at", "delete", "creation_lock")


STORAGE_CALLS = (*BLOCKING, *BLOCKING_TOO, "sizes")


def count_storage_calls(store: SessionStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every storage call made from now on, by name; a commit that wrote nothing as "moved"."""
    calls: list[str] = []
    inside = threading.local()  # a storage's own calls to itself are part of the outer one
    for method in STORAGE_CALLS:
        real = getattr(store.storage, method)

        def spy(*args: Any, __real: Any = real, __method: str = method, **kwargs: Any) -> Any:
            outer = not getattr(inside, "busy", False)
            inside.busy = True
            try:
                result = __real(*args, **kwargs)
            finally:
                inside.busy = not outer
            if outer:
                calls.append("moved" if __method == "commit" and result is None else __method)
            return result

        monkeypatch.setattr(store.storage, method, spy)
    return calls


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_an_agent_turn_is_eight_storage_calls_none_of_them_failed(
    backend: Backend, durability: str, monkeypatch: pytest.MonkeyPatch
):
    """No hold, no lease, no retry: a turn reads once and each put or write is one call.

    On Redis each storage call is one script, one round trip (counted at the client too);
    on PostgreSQL one transaction.
    """
    store = backend.store()
    agent = chat_agent(CrabSaver(store))
    agent.invoke(human("q0"), CONFIG, durability=durability)  # the thread's logs exist
    calls = count_storage_calls(store, monkeypatch)
    sent: list[str] = []
    if backend.kind == "postgres":  # each storage call one transaction
        for run in ("_run", "_arun"):
            real_run = getattr(store.storage, run)

            def counted_run(
                body: Any, __real: Any = real_run, __run: str = run, **options: Any
            ) -> Any:
                sent.append(__run)
                return __real(body, **options)

            monkeypatch.setattr(store.storage, run, counted_run)
    if backend.is_redis:
        client = store.storage.client  # type: ignore[attr-defined]
        real = client.execute_command

        def counted(*args: Any, **kwargs: Any) -> Any:
            sent.append(str(args[0]))
            return real(*args, **kwargs)

        monkeypatch.setattr(client, "execute_command", counted)
    agent.invoke(human("q1"), CONFIG, durability=durability)
    # get_tuple reads side log, session, side log; each of three puts is one commit, and
    # each of two put_writes one append. None found a log moved ("moved").
    expected = ["read"] * 3 + ["append"] * 2 + ["commit"] * 3
    assert sorted(calls) == sorted(expected), " ".join(calls)
    if backend.is_server:
        assert len(sent) == len(calls)
    messages = agent.get_state(CONFIG).values["messages"]
    assert [(m.type, m.content[:7]) for m in messages] == [
        ("human", "q0"),
        ("ai", "reply 0"),
        ("human", "q1"),
        ("ai", "reply 1"),
    ]


async def test_async_runs_do_no_blocking_storage_io_on_the_event_loop(
    backend: Backend, monkeypatch
):
    store = backend.store()
    agent = tool_agent(CrabSaver(store))
    await agent.ainvoke(human("weather?"), CONFIG)  # the thread's session is found or made
    loop_thread, on_loop = threading.get_ident(), []
    for method in BLOCKING + BLOCKING_TOO:
        real = getattr(store.storage, method)

        def spy(*args: Any, __real: Any = real, __method: str = method, **kwargs: Any) -> Any:
            if threading.get_ident() == loop_thread:
                on_loop.append(__method)
            return __real(*args, **kwargs)

        monkeypatch.setattr(store.storage, method, spy)
    await agent.ainvoke(human("thanks"), CONFIG)
    assert len((await agent.aget_state(CONFIG)).values["messages"]) == 7
    assert [s async for s in agent.aget_state_history(CONFIG)]
    assert on_loop == []
    await close_async(store)


HITL_FIRST_PART = """
import sys
sys.path.insert(0, sys.argv[2])
from agents import CONFIG, hitl_agent, human
from crab_langchain import SessionStore
from crab_langchain.checkpoint import CrabSaver
agent = hitl_agent(CrabSaver(SessionStore(sys.argv[1], entry_points=False)))
result = agent.invoke(human("weather in Lisbon and Porto?"), CONFIG)
assert "__interrupt__" in result, result
"""


@pytest.mark.parametrize(
    "decisions",
    [
        [{"type": "approve"}, {"type": "approve"}],
        [
            {"type": "edit", "edited_action": {"name": "weather", "args": {"city": "Faro"}}},
            {"type": "approve"},
        ],
        [{"type": "reject", "message": "not that one"}, {"type": "approve"}],
    ],
    ids=["approve", "edit", "reject"],
)
def test_human_in_the_loop_resumed_from_a_new_process(tmp_path: Path, decisions: list[Any]):
    root = tmp_path / "sessions"
    expected = hitl_agent(InMemorySaver())
    expected.invoke(human("weather in Lisbon and Porto?"), CONFIG)
    subprocess.run(
        [sys.executable, "-c", HITL_FIRST_PART, str(root), str(TESTS)], check=True, timeout=120
    )
    actual = hitl_agent(CrabSaver(SessionStore(root, entry_points=False)), resumed=True)
    assert states(actual) == states(expected)  # the pause, as read by another process
    for graph in (expected, actual):
        graph.invoke(Command(resume={"decisions": decisions}), CONFIG)
    assert states(actual) == states(expected)


def test_summarization_becomes_a_compaction_marker(tmp_path: Path):
    def drive(graph: Any) -> None:
        for turn in range(6):
            graph.invoke(human(f"q{turn}"), CONFIG)

    _, actual = both(summarizing_agent, tmp_path, drive)
    lines = session_lines(actual.checkpointer)
    markers = [line for line in lines if "compact" in line]
    assert markers, "no compaction marker written"
    assert markers[0]["compact"].startswith("Here is a summary of the conversation to date")
    assert markers[0]["title"] == "We spoke 5 times."  # the summary's, without LangChain's preface
    # Nothing was archived: the marker kept the file append-only.
    side = actual.checkpointer.store.storage.read(
        actual.checkpointer.store.find("alice-1") + ".checkpoints", None
    )
    assert b'"archive"' not in b"".join(line for _, line in side.lines)
    history = actual.checkpointer.store.get_session_history("alice-1")
    assert history.messages == actual.get_state(CONFIG).values["messages"]


def test_fork_through_update_state_on_an_older_checkpoint(tmp_path: Path):
    def drive(graph: Any) -> None:
        for turn in range(3):
            graph.invoke(human(f"q{turn}"), CONFIG)
        older = list(graph.get_state_history(CONFIG))[4].config
        forked = graph.update_state(older, {"messages": [HumanMessage("a new branch")]})
        graph.invoke(None, forked)

    _, actual = both(chat_agent, tmp_path, drive)
    texts = [line.get("content") for line in session_lines(actual.checkpointer)[1:]]
    assert "a new branch" in texts
    assert "q2" not in texts  # the session is the fork now; the old branch is archived
    side = actual.checkpointer.store.storage.read(
        actual.checkpointer.store.find("alice-1") + ".checkpoints", None
    )
    assert any(b'"archive"' in line and b'"q2"' in line for _, line in side.lines)


def test_removing_an_old_message_is_kept_in_the_archive(tmp_path: Path):
    def drive(graph: Any) -> None:
        for turn in range(2):
            graph.invoke(human(f"q{turn}"), CONFIG)
        first = graph.get_state(CONFIG).values["messages"][0]
        graph.update_state(CONFIG, {"messages": [RemoveMessage(id=first.id)]})
        graph.invoke(human("q2"), CONFIG)

    _, actual = both(chat_agent, tmp_path, drive)
    texts = [line.get("content") for line in session_lines(actual.checkpointer)[1:]]
    assert "q0" not in texts
    assert texts[-1].startswith("reply")


def test_a_subgraph_equal(tmp_path: Path):
    def drive(graph: Any) -> None:
        graph.invoke(human("hello"), CONFIG)
        graph.invoke(human("again"), CONFIG)

    expected, actual = both(subgraph_graph, tmp_path, drive)

    def namespaces(graph: Any, **configurable: Any) -> list[str]:
        config = {"configurable": {"thread_id": "alice-1", **configurable}}
        return sorted(
            t.config["configurable"]["checkpoint_ns"] for t in graph.checkpointer.list(config)
        )

    # As LangGraph's own savers list: no checkpoint_ns is every namespace, "" the root alone.
    assert set(namespaces(actual)) == {"", "inner"}
    assert namespaces(actual) == namespaces(expected)
    assert namespaces(actual, checkpoint_ns="") == namespaces(expected, checkpoint_ns="")
    assert set(namespaces(actual, checkpoint_ns="")) == {""}


def test_a_node_that_raises_is_resumed(tmp_path: Path):
    def drive(graph: Any) -> None:
        with pytest.raises(RuntimeError, match="the service is down"):
            graph.invoke(human("go"), CONFIG)
        graph.invoke(None, CONFIG)

    _, actual = both(flaky_graph, tmp_path, drive)
    assert [m.content for m in actual.get_state(CONFIG).values["messages"]] == [
        "go",
        "first",
        "recovered",
    ]


def test_what_the_history_adds_the_agent_continues(tmp_path: Path):
    """One session, two doors: the newest checkpoint's messages are the session's now."""
    saver = crab(tmp_path)
    agent = chat_agent(saver)
    agent.invoke(human("q0"), CONFIG)
    history = saver.store.get_session_history("alice-1")
    assert history.messages == agent.get_state(CONFIG).values["messages"]
    history.add_messages([HumanMessage("from the history"), AIMessage("noted")])
    other = chat_agent(crab(tmp_path))  # another process sees the same
    texts = [m.content for m in other.get_state(CONFIG).values["messages"]]
    assert texts == ["q0", "reply 0: " + "words " * 8, "from the history", "noted"]
    other.invoke(human("q1"), CONFIG)
    assert [m.content for m in history.messages] == [*texts, "q1", "reply 0: " + "words " * 8]
    side = saver.store.storage.read(saver.store.find("alice-1") + ".checkpoints", None)
    assert not [line for _, line in side.lines if line.startswith(b'{"archive"')]  # appended
    before = list(other.get_state_history(CONFIG))[-3]  # the first run's last checkpoint
    assert [m.content for m in before.values["messages"]] == ["q0", "reply 0: " + "words " * 8]


def stored_bytes(root: Path) -> int:
    """What the sessions take: the session file and its side log (lock files aside)."""
    return sum(path.stat().st_size for path in root.glob("*.jsonl*"))


def test_stored_bytes_grow_linearly_over_500_turns(tmp_path: Path):
    root = tmp_path / "sessions"
    agent = chat_agent(CrabSaver(SessionStore(root, entry_points=False)), turns=500)
    marks = [0]
    for turn in range(1, 501):
        agent.invoke(human(f"question {turn}: " + "words " * 8), CONFIG)
        if turn % 100 == 0:
            marks.append(stored_bytes(root))
    costs = [b - a for a, b in itertools.pairwise(marks)]
    assert costs[-1] <= 1.2 * costs[0], costs  # the last 100 turns cost what the first did
    assert len(agent.get_state(CONFIG).values["messages"]) == 1000
    side = next(root.glob("*.checkpoints")).read_bytes()
    assert b'{"archive"' not in side  # nothing was rewritten


@pytest.mark.parametrize("build", [tool_agent, summarizing_agent], ids=["tools", "summary"])
def test_crabtalks_flat_era_reader_reads_the_savers_session(tmp_path: Path, build: Any):
    from test_eras import body_lines, crabtalk_context, missing_keys

    agent = build(crab(tmp_path))
    for turn in range(6 if build is summarizing_agent else 2):
        agent.invoke(human(f"q{turn}"), CONFIG)
    (path,) = (tmp_path / "sessions").glob("*.jsonl")
    roles = {"human": "user", "ai": "assistant", "tool": "tool", "system": "system"}
    state = agent.get_state(CONFIG).values["messages"]
    assert [(c["role"], c["content"]) for c in crabtalk_context(path)] == [
        (roles[m.type], m.content) for m in state
    ]
    calls = [c["calls"] for c in crabtalk_context(path) if c["calls"]]
    assert calls == [
        [
            (call["id"], call["name"], json.dumps(call["args"], separators=(",", ":")))
            for call in m.tool_calls
        ]
        for m in state
        if getattr(m, "tool_calls", None)
    ]
    for line in body_lines(path):
        assert b'"compact"' in line or missing_keys(line) == []


def test_a_message_replaced_by_id_equal(tmp_path: Path):
    def drive(graph: Any) -> None:
        for turn in range(2):
            graph.invoke(human(f"q{turn}"), CONFIG)
        first = graph.get_state(CONFIG).values["messages"][0]
        graph.update_state(CONFIG, {"messages": [HumanMessage("q0, edited", id=first.id)]})
        graph.invoke(human("q2"), CONFIG)

    _, actual = both(chat_agent, tmp_path, drive)
    texts = [line.get("content") for line in session_lines(actual.checkpointer)[1:]]
    assert texts[0] == "q0, edited"
    assert "q0" not in texts
