"""The session is the truth: no door hides, rewrites or drops what another door wrote.

A chat history and an agent with ``CrabSaver`` on one session, across lost
side logs, killed and cancelled puts, concurrent runs and new processes: a
message acknowledged by either door stays in the session's working context
until something removes it explicitly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from agents import CONFIG, RecordingModel, chat_agent, chat_script, human, tool_agent
from backends import OPEN_STORE, Backend, backend  # noqa: F401 - the fixture
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, RemoveMessage
from langgraph.checkpoint.base import empty_checkpoint
from redis_servers import RedisServer, redis_binaries_missing

from crab_langchain import SessionFormatError, SessionStore
from crab_langchain.checkpoint import CrabSaver
from crab_langchain.checkpoint.saver import MissingSideLogWarning
from crab_langchain.storage import companion_name
from crab_langchain.verify import verify_file, verify_log

TESTS = Path(__file__).parent
THREAD = "alice-1"


def texts(messages: list[BaseMessage]) -> list[Any]:
    return [m.content for m in messages]


def session_texts(store: SessionStore) -> list[Any]:
    return texts(store.get_session_history(THREAD).messages)


def side_name(store: SessionStore) -> str:
    name = store.find(THREAD)
    assert name is not None
    return companion_name(name, "checkpoints")


def side_lines(store: SessionStore) -> list[bytes]:
    chunk = store.storage.read(side_name(store), None)
    return [] if chunk is None else [line for _, line in chunk.lines]


REPLY = "reply 0: " + "words " * 8


def reply(n: int) -> str:
    """The scripted model's ``n``-th reply (from 0) of one agent object."""
    return f"reply {n}: " + "words " * 8


def test_an_agent_continues_the_session_a_chat_history_wrote(backend: Backend):
    store = backend.store()
    store.get_session_history(THREAD).add_messages([HumanMessage("hi"), AIMessage("hello")])
    agent = chat_agent(CrabSaver(store))
    assert texts(agent.get_state(CONFIG).values["messages"]) == ["hi", "hello"]
    agent.invoke(human("q"), CONFIG)
    expected = ["hi", "hello", "q", REPLY]
    assert texts(agent.get_state(CONFIG).values["messages"]) == expected
    assert session_texts(backend.store()) == expected
    assert texts(chat_agent(CrabSaver(backend.store())).get_state(CONFIG).values["messages"]) == (
        expected
    )
    assert not any(line.startswith(b'{"archive"') for line in side_lines(store))  # appended


@pytest.mark.parametrize("lose", ["delete", "prune"])
def test_a_lost_side_log_leaves_the_conversation_and_the_next_turn_appends(
    backend: Backend, lose: str
):
    store = backend.store()
    saver = CrabSaver(store)
    agent = chat_agent(saver)
    agent.invoke(human("q0"), CONFIG)
    agent.invoke(human("q1"), CONFIG)
    before = session_texts(store)
    assert len(before) == 4
    if lose == "delete":  # deleted by hand, or evicted by Redis
        assert store.storage.delete(side_name(store))
    else:
        saver.prune([THREAD], strategy="delete")
    with (
        pytest.warns(MissingSideLogWarning, match="side log is gone")
        if lose == "delete"
        else (warnings.catch_warnings())
    ):
        assert texts(agent.get_state(CONFIG).values["messages"]) == before
    agent.invoke(human("q2"), CONFIG)
    assert session_texts(backend.store())[:5] == [*before, "q2"]
    assert len(session_texts(backend.store())) == 6
    cold = chat_agent(CrabSaver(backend.store())).get_state(CONFIG).values["messages"]
    assert texts(cold) == session_texts(backend.store())


class AppendingModel(RecordingModel):
    """Answers, after a chat history on the same session appended a message (mid-run)."""

    store: Any = None

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.store.get_session_history(THREAD).add_messages([HumanMessage("from the history")])
        return super()._generate(messages, *args, **kwargs)


def test_a_history_append_during_a_run_is_kept_and_in_the_next_checkpoint(backend: Backend):
    store = backend.store()
    agent = chat_agent(CrabSaver(store))
    agent.invoke(human("q0"), CONFIG)
    model = AppendingModel(messages=chat_script(1), store=backend.store())
    appending = create_agent(model, [], checkpointer=CrabSaver(backend.store()))
    appending.invoke(human("q1"), CONFIG, durability="sync")  # q1 stored before the model runs
    after = session_texts(backend.store())
    assert after == ["q0", REPLY, "q1", "from the history", REPLY]
    state = appending.get_state(CONFIG).values["messages"]
    assert texts(state) == after
    side = side_lines(store)
    assert not any(line.startswith(b'{"archive"') for line in side)


# argv: url, prefix, tests dir. Runs one turn, then a second whose put is SIGKILLed right
# after its session lines landed (before its checkpoint record).
KILLED_PUT = (
    OPEN_STORE
    + """
import os, signal, sys
sys.path.insert(0, sys.argv[3])
from agents import CONFIG, chat_agent, human
from crab_langchain.checkpoint import CrabSaver
store = open_store(sys.argv[1], sys.argv[2])
agent = chat_agent(CrabSaver(store))
agent.invoke(human("q0"), CONFIG)
import dataclasses
storage, commit = store.storage, store.storage.commit
def commit_then_die(name, side, change):
    if not change.lines:
        return commit(name, side, change)
    # What a directory killed between a put's session lines and its record holds.
    commit(name, side, dataclasses.replace(change, after=()))
    os.kill(os.getpid(), signal.SIGKILL)
storage.commit = commit_then_die
agent.invoke(human("q1"), CONFIG)
"""
)


def test_a_killed_puts_lines_go_and_a_history_append_after_it_stays(backend: Backend):
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_PUT, *backend.argv, str(TESTS)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = backend.store()
    assert session_texts(store) == ["q0", REPLY, "q1"]  # the killed put's line landed
    store.get_session_history(THREAD).add_messages([HumanMessage("after the kill")])
    side_before = sum(map(len, side_lines(store)))
    agent = chat_agent(CrabSaver(store))
    state = texts(agent.get_state(CONFIG).values["messages"])
    # The newest acknowledged checkpoint, with its pending write (q1, from __start__) if
    # LangGraph's background write of it came before the kill.
    assert state in (["q0", REPLY], ["q0", REPLY, "q1"])
    agent.invoke(human("q2"), CONFIG)
    after = session_texts(backend.store())
    # A new input starts from the acknowledged checkpoint (LangGraph drops the killed run's
    # pending writes): the killed put's line is gone, the history's stays.
    assert after == ["q0", REPLY, "after the kill", "q2", REPLY]
    assert texts(agent.get_state(CONFIG).values["messages"]) == after
    side = side_lines(store)
    assert not any(line.startswith(b'{"archive"') for line in side)  # no copy of the session
    assert sum(map(len, side)) - side_before < 8000  # the turn's own records, no more


def test_messages_handed_out_are_copies_with_ids_the_same_in_every_process(backend: Backend):
    store = backend.store()
    store.get_session_history(THREAD).add_messages([HumanMessage("hi"), AIMessage("hello")])
    agent = chat_agent(CrabSaver(store))
    agent.invoke(human("q"), CONFIG)
    warm = agent.get_state(CONFIG).values["messages"]
    assert all(m.id for m in warm)
    cold = chat_agent(CrabSaver(backend.store())).get_state(CONFIG).values["messages"]
    assert [m.id for m in cold] == [m.id for m in warm]
    warm[0].content = "changed in place"
    assert texts(agent.get_state(CONFIG).values["messages"])[0] == "hi"  # nothing cached changed
    fresh = chat_agent(CrabSaver(backend.store()))
    fresh.update_state(CONFIG, {"messages": [RemoveMessage(id=cold[0].id)]})
    assert session_texts(backend.store()) == ["hello", "q", REPLY]


# --- concurrency --------------------------------------------------------------------------------


async def run_with_workers(workers: int, work: Any) -> Any:
    """``work()`` with a default executor of ``workers`` threads, bounded in time.

    The executor stays the loop's (each test has a loop of its own).
    """
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    asyncio.get_running_loop().set_default_executor(pool)
    return await asyncio.wait_for(work(), timeout=60)


@pytest.mark.parametrize("runs", [2, 4, 8, 16])
@pytest.mark.parametrize("workers", [1, 2])
async def test_concurrent_runs_on_one_thread_complete(backend: Backend, runs: int, workers: int):
    store = backend.store()
    agent = chat_agent(CrabSaver(store), turns=runs)

    async def submit() -> list[Any]:
        return await asyncio.gather(*(agent.ainvoke(human(f"q{n}"), CONFIG) for n in range(runs)))

    await run_with_workers(workers, submit)
    messages = texts((await agent.aget_state(CONFIG)).values["messages"])
    assert {f"q{n}" for n in range(runs)} & set(messages)  # the last run's turn at least
    assert session_texts(backend.store()) == messages


@pytest.mark.parametrize("workers", [1, 2])
async def test_parallel_tool_calls_with_one_worker_complete(tmp_path: Path, workers: int):
    store = SessionStore(tmp_path / "sessions", entry_points=False)
    agent = tool_agent(CrabSaver(store))

    async def turn() -> Any:
        return await agent.ainvoke(human("weather?"), CONFIG)

    await run_with_workers(workers, turn)
    assert texts((await agent.aget_state(CONFIG)).values["messages"])[-1] == "Sunny in both."


async def test_cancelled_runs_leave_the_thread_writable_and_the_session_is_the_state(
    backend: Backend,
):
    store = backend.store()
    agent = chat_agent(CrabSaver(store), turns=200)
    for n in range(5):
        await agent.ainvoke(human(f"warm-up {n}"), CONFIG)
    for n in range(50):
        task = asyncio.ensure_future(agent.ainvoke(human(f"q{n}"), CONFIG))
        await asyncio.sleep(0.001 * (n % 7))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # a run may finish first
            await task
    await asyncio.sleep(0.2)  # puts a cancelled caller left to finish
    await asyncio.wait_for(agent.ainvoke(human("after"), CONFIG), timeout=30)  # not stuck
    state = texts((await agent.aget_state(CONFIG)).values["messages"])
    assert state[-2] == "after"
    assert session_texts(backend.store()) == state


async def test_history_appends_among_cancelled_runs_stay(backend: Backend):
    """The two doors together across cancellations: a cancelled run's put may land late,
    beside or after a chat history's append; the append stays in the conversation."""
    store = backend.store()
    agent = chat_agent(CrabSaver(store), turns=200)
    history = backend.store().get_session_history(THREAD)
    await agent.ainvoke(human("warm-up"), CONFIG)
    for n in range(20):
        task = asyncio.ensure_future(agent.ainvoke(human(f"q{n}"), CONFIG))
        await asyncio.sleep(0.001 * (n % 7))
        task.cancel()
        if n % 5 == 0:
            await history.aadd_messages([HumanMessage(f"from the history {n}")])
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await asyncio.sleep(0.2)  # puts a cancelled caller left to finish
    await asyncio.wait_for(agent.ainvoke(human("after"), CONFIG), timeout=30)
    state = texts((await agent.aget_state(CONFIG)).values["messages"])
    appended = [f"from the history {n}" for n in range(0, 20, 5)]
    assert [text for text in state if str(text).startswith("from the history")] == appended
    assert state[-2] == "after"
    assert session_texts(backend.store()) == state


# --- cancelled puts -------------------------------------------------------------------------------


def new_checkpoint(messages: list[BaseMessage], version: int) -> tuple[Any, Any]:
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"messages": messages}
    checkpoint["channel_versions"] = {"messages": version}
    return checkpoint, {"messages": version}


async def put_turns(saver: CrabSaver, thread_id: str, turns: int, *, cancel: bool) -> None:
    """``turns`` puts of a growing conversation; with ``cancel``, a cancelled put before each."""
    messages: list[BaseMessage] = []
    parent: str | None = None
    for n in range(turns):
        configurable = {"thread_id": thread_id, "checkpoint_ns": ""}
        if parent:
            configurable["checkpoint_id"] = parent
        if cancel:  # a put whose caller gives up: its turn is asked again below
            lost = [*messages, HumanMessage(f"lost {n}" + " words" * 20, id=f"lost-{n}")]
            checkpoint, versions = new_checkpoint(lost, 2 * n + 1)
            task = asyncio.ensure_future(
                saver.aput({"configurable": configurable}, checkpoint, {"step": n}, versions)
            )
            await asyncio.sleep(0)  # under way
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        messages = [*messages, HumanMessage(f"q{n}" + " words" * 20, id=f"q-{n}")]
        checkpoint, versions = new_checkpoint(messages, 2 * n + 2)
        stored = await saver.aput({"configurable": configurable}, checkpoint, {"step": n}, versions)
        parent = stored["configurable"]["checkpoint_id"]
    await asyncio.sleep(0.1)  # the last cancelled put, finishing in the background


async def test_fifty_cancelled_puts_cost_their_own_lines_not_a_copy(backend: Backend):
    store = backend.store()
    saver = CrabSaver(store)
    await put_turns(saver, "plain", 50, cancel=False)
    await put_turns(saver, "cancelled", 50, cancel=True)

    def side_bytes(thread_id: str) -> int:
        name = companion_name(store.find(thread_id) or "", "checkpoints")
        chunk = store.storage.read(name, None)
        return sum(len(line) for _, line in chunk.lines) if chunk else 0

    assert side_bytes("cancelled") <= 2 * side_bytes("plain")
    assert texts(store.get_session_history("cancelled").messages) == texts(
        store.get_session_history("plain").messages
    )
    tuple_ = await CrabSaver(backend.store()).aget_tuple(
        {"configurable": {"thread_id": "cancelled"}}
    )
    assert tuple_ is not None
    assert [m.id for m in tuple_.checkpoint["channel_values"]["messages"]] == [
        f"q-{n}" for n in range(50)
    ]


def test_a_rolled_back_run_leaves_the_session_and_a_history_append_stays(backend: Backend):
    store = backend.store()
    saver = CrabSaver(store)
    chat_agent(saver).invoke(human("q0"), {**CONFIG, "metadata": {"run_id": "r0"}})
    model = AppendingModel(messages=chat_script(1), store=backend.store())
    appending = create_agent(model, [], checkpointer=saver)
    run = {**CONFIG, "metadata": {"run_id": "r1"}}
    appending.invoke(human("q1"), run, durability="sync")
    assert session_texts(store) == ["q0", REPLY, "q1", "from the history", REPLY]
    saver.delete_for_runs(["r1"])
    expected = ["q0", REPLY, "from the history"]
    assert session_texts(backend.store()) == expected
    for reader in (saver, CrabSaver(backend.store())):
        state = chat_agent(reader).get_state(CONFIG)
        assert texts(state.values["messages"]) == expected
        history = list(reader.list(CONFIG))
        assert all(t.metadata.get("run_id") != "r1" for t in history)
        assert all(
            texts(t.checkpoint["channel_values"].get("messages", []))[:2] in (["q0"], ["q0", REPLY])
            for t in history
            if t.checkpoint["channel_values"].get("messages")
        )
    (archive,) = [line for line in side_lines(store) if line.startswith(b'{"archive"')]
    assert b'"q1"' in archive
    chat_agent(CrabSaver(backend.store())).invoke(human("q2"), CONFIG)
    assert session_texts(backend.store()) == [*expected, "q2", REPLY]


# --- a side log belongs to one session ------------------------------------------------------------


def test_swapped_side_logs_are_refused_naming_both_and_verify_reports_them(backend: Backend):
    store = backend.store()
    agent = chat_agent(CrabSaver(store), turns=4)
    for thread_id in ("t-1", "t-2"):
        agent.invoke(human(f"q {thread_id}"), {"configurable": {"thread_id": thread_id}})
    names = [store.find(t) or "" for t in ("t-1", "t-2")]
    sides = [companion_name(name, "checkpoints") for name in names]
    lines = [store.storage.read(side, None) for side in sides]
    for side, chunk in zip(sides, reversed(lines), strict=True):
        assert chunk is not None
        store.storage.replace(side, [line for _, line in chunk.lines])
    with pytest.raises(SessionFormatError) as raised:
        CrabSaver(backend.store()).get_tuple({"configurable": {"thread_id": "t-1"}})
    assert store.storage.location(sides[0]) in str(raised.value)
    report = verify_log(store.storage, names[0])
    assert report is not None
    assert any("the side log of another session" in problem for _, problem in report.problems)


def test_a_session_re_created_under_its_name_does_not_adopt_the_old_side_log(tmp_path: Path):
    store = SessionStore(tmp_path, entry_points=False)
    chat_agent(CrabSaver(store)).invoke(human("old"), CONFIG)
    name = store.find(THREAD) or ""
    header = (tmp_path / name).read_bytes().split(b"\n")[0]
    (tmp_path / name).write_bytes(header.replace(b'"agent"', b'"extra":1,"agent"') + b"\n")
    with pytest.raises(SessionFormatError) as raised:
        CrabSaver(SessionStore(tmp_path, entry_points=False)).get_tuple(CONFIG)
    assert str(tmp_path / name) in str(raised.value)
    assert "earlier session of this name" in str(raised.value)
    assert not verify_file(tmp_path / name).ok


# A reader between the two deletions sees the side log gone and says so: true, and harmless.
@pytest.mark.filterwarnings("ignore::crab_langchain.checkpoint.saver.MissingSideLogWarning")
def test_delete_thread_racing_writers_leaves_nothing_of_the_thread(backend: Backend, stress: Any):
    store = backend.store()
    saver = CrabSaver(store)
    agent = chat_agent(saver, turns=10_000)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        while not stop.is_set():
            try:
                agent.invoke(human("q"), CONFIG, durability="sync")
            except BaseException as error:
                errors.append(error)
                return

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(stress(60)):
            saver.delete_thread(THREAD)
            time.sleep(0.002)
    finally:
        stop.set()
        writer.join(timeout=60)
    assert not errors, errors
    saver.delete_thread(THREAD)
    left = [name for name in store.storage.names() if THREAD in name]
    assert left == []
    if not backend.is_server:
        assert sorted(p.name for p in Path(backend.url).iterdir() if THREAD in p.name) == []
    elif backend.kind == "postgres":
        assert backend.server_rows() == {"logs": 0, "lines": 0}
    else:
        client = store.storage.client  # type: ignore[attr-defined]
        keys = list(client.scan_iter(match=f"{backend.prefix}:*"))
        assert [k for k in keys if THREAD.encode() in k] == []


def test_an_edit_made_in_place_before_update_state_is_stored(backend: Backend):
    """LangGraph's docs edit a tool call's arguments on the state they got, then update_state."""
    store = backend.store()
    agent = tool_agent(CrabSaver(store))
    agent.invoke(human("weather?"), {**CONFIG, "recursion_limit": 3}, interrupt_before=["tools"])
    last = agent.get_state(CONFIG).values["messages"][-1]
    assert last.tool_calls[0]["args"] == {"city": "Lisbon"}
    last.tool_calls[0]["args"]["city"] = "Faro"
    assert agent.get_state(CONFIG).values["messages"][-1].tool_calls[0]["args"] == {
        "city": "Lisbon"  # what was handed out shares nothing with what the saver keeps
    }
    agent.update_state(CONFIG, {"messages": [last]})
    for reader in (agent, tool_agent(CrabSaver(backend.store()))):
        calls = reader.get_state(CONFIG).values["messages"][-1].tool_calls
        assert calls[0]["args"] == {"city": "Faro"}
    stored = store.get_session_history(THREAD).stored_messages()[-1]
    assert stored.tool_calls[0]["args"] == {"city": "Faro"}  # type: ignore[attr-defined]


def test_a_long_chat_history_session_is_continued_not_cut(tmp_path: Path):
    """(Reported on a 1,000,000-message session, cut to 3; 20,000 keep the suite fast.)"""
    store = SessionStore(tmp_path, entry_points=False)
    store.get_session_history(THREAD).add_messages(
        [HumanMessage(f"m{n}") if n % 2 == 0 else AIMessage(f"m{n}") for n in range(20_000)]
    )
    before = (tmp_path / (store.find(THREAD) or "")).stat().st_size
    chat_agent(CrabSaver(store)).invoke(human("q"), CONFIG)
    after = session_texts(SessionStore(tmp_path, entry_points=False))
    assert len(after) == 20_002
    assert after[:2] == ["m0", "m1"]
    assert after[-2:] == ["q", REPLY]
    assert (tmp_path / (store.find(THREAD) or "")).stat().st_size > before  # appended
    assert not any(line.startswith(b'{"archive"') for line in side_lines(store))


async def test_the_two_doors_together_across_concurrent_runs(backend: Backend):
    """A chat history appends while agent runs race on the same session."""
    store = backend.store()
    agent = chat_agent(CrabSaver(store), turns=100)
    history = backend.store().get_session_history(THREAD)
    await agent.ainvoke(human("q-first"), CONFIG)

    async def runs_and_appends(n: int) -> None:
        await asyncio.gather(
            agent.ainvoke(human(f"q{n}"), CONFIG),
            history.aadd_messages([HumanMessage(f"h{n}")]),
        )

    await asyncio.wait_for(asyncio.gather(*(runs_and_appends(n) for n in range(6))), 60)
    await agent.ainvoke(human("q-last"), CONFIG)
    stored = session_texts(backend.store())
    state = texts((await agent.aget_state(CONFIG)).values["messages"])
    assert state == stored
    assert [f"h{n}" for n in range(6) if f"h{n}" not in stored] == []  # every append stays


def test_remove_message_of_a_history_line_added_after_the_last_put_removes_it(backend: Backend):
    store = backend.store()
    agent = chat_agent(CrabSaver(store))
    agent.invoke(human("q0"), CONFIG)
    backend.store().get_session_history(THREAD).add_messages(
        [HumanMessage("late"), HumanMessage("kept")]
    )
    told = agent.get_state(CONFIG).values["messages"]
    late = next(m for m in told if m.content == "late")
    agent.update_state(CONFIG, {"messages": [RemoveMessage(id=late.id)]})
    assert session_texts(backend.store()) == ["q0", REPLY, "kept"]
    agent.invoke(human("q1"), CONFIG)
    assert session_texts(backend.store()) == ["q0", REPLY, "kept", "q1", reply(1)]


def test_a_history_append_between_a_puts_read_and_its_write_keeps_both_in_place(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
):
    """The put's commit loses the race, reads on and decides again."""
    store = backend.store()
    agent = chat_agent(CrabSaver(store))
    agent.invoke(human("q0"), CONFIG)
    history = backend.store().get_session_history(THREAD)
    real = store.storage.commit
    raced: list[bool] = []

    def history_first(name: str, side: str, change: Any) -> Any:
        if change.lines and not raced:
            raced.append(True)
            history.add_messages([HumanMessage("in between")])
        return real(name, side, change)

    monkeypatch.setattr(store.storage, "commit", history_first)
    agent.invoke(human("q1"), CONFIG)
    assert raced
    expected = ["q0", REPLY, "in between", "q1", reply(1)]
    assert session_texts(backend.store()) == expected
    # The history's line is no put's: a fork back to the first turn keeps it (after the
    # fork's first put, which rewrote the session; the reply is appended after that).
    first_turn = list(agent.get_state_history(CONFIG))[-3].config
    agent.invoke(human("q-fork"), first_turn)
    assert session_texts(backend.store()) == ["q0", REPLY, "q-fork", "in between", reply(2)]


def test_a_fork_keeps_history_lines_it_never_saw_and_drops_the_branch_it_leaves(
    backend: Backend,
):
    store = backend.store()
    agent = chat_agent(CrabSaver(store))
    agent.invoke(human("q0"), CONFIG)
    agent.invoke(human("q1"), CONFIG)
    backend.store().get_session_history(THREAD).add_messages([HumanMessage("h")])
    after_q0 = next(
        s.config
        for s in agent.get_state_history(CONFIG)
        if texts(s.values["messages"]) == ["q0", REPLY]
    )
    agent.invoke(human("q-fork"), after_q0)
    stored = session_texts(backend.store())
    assert stored == ["q0", REPLY, "q-fork", "h", reply(2)]  # q1's turn archived, h kept
    cold = chat_agent(CrabSaver(backend.store())).get_state(CONFIG).values["messages"]
    assert texts(cold) == stored


def put_as(saver: CrabSaver, checkpoint_id: str, parent: str | None, **values: Any) -> None:
    """Put a checkpoint with this id whose channels ``values`` are all new, as LangGraph does."""
    checkpoint = empty_checkpoint()
    checkpoint["id"] = checkpoint_id
    checkpoint["channel_values"] = dict(values)
    checkpoint["channel_versions"] = dict.fromkeys(values, checkpoint_id)
    configurable = {"thread_id": THREAD, "checkpoint_ns": ""}
    if parent is not None:
        configurable["checkpoint_id"] = parent
    metadata: Any = {"source": "loop", "step": 0}
    saver.put({"configurable": configurable}, checkpoint, metadata, checkpoint["channel_versions"])


def test_a_put_after_another_writers_rewrite_keeps_its_own_messages(backend: Backend):
    """A writer that learned of another's rewrite from the side log alone reads the session anew.

    Writer A's put without messages learns from the side log that B replaced
    the session (an epoch later), but not what the session now holds. A's
    next put, older than B's newest checkpoint, keeps its messages beside the
    session: they must be its own, not B's lines where A's stood.
    """
    ids = [empty_checkpoint()["id"] for _ in range(5)]  # time-ordered, as LangGraph's
    a, b = CrabSaver(backend.store()), CrabSaver(backend.store())
    q0, a0 = HumanMessage("q0", id="q0"), AIMessage("a0", id="a0")
    qa, aa, qa2 = (HumanMessage(text, id=text) for text in ("qA", "aA", "qA2"))
    put_as(a, ids[0], None, messages=[q0, a0])
    b.get_tuple({"configurable": {"thread_id": THREAD}})
    put_as(a, ids[1], ids[0], messages=[q0, a0, qa, aa])
    put_as(b, ids[4], ids[0], messages=[q0, a0, HumanMessage("qB", id="qB")])  # a fork: B's
    put_as(a, ids[2], ids[1], other=1)  # no messages: A reads only the side log on
    mine = [q0, a0, qa, aa, qa2]
    put_as(a, ids[3], ids[2], messages=mine)  # older than B's newest
    for saver in (a, CrabSaver(backend.store())):
        found = saver.get_tuple({"configurable": {"thread_id": THREAD, "checkpoint_id": ids[3]}})
        assert found is not None
        assert found.checkpoint["channel_values"]["messages"] == mine
    assert session_texts(backend.store()) == ["q0", "a0", "qB"]  # B's, the newest


@pytest.mark.skipif(redis_binaries_missing() is not None, reason="no redis-server")
def test_a_side_log_evicted_by_redis_allkeys_lru_leaves_the_conversation(tmp_path: Path):
    """A real eviction: ``maxmemory`` lowered under ``allkeys-lru`` until the side log goes."""
    with RedisServer(tmp_path / "redis") as server, contextlib.closing(server.client()) as raw:
        store = SessionStore.from_url(server.url, entry_points=False)
        raw.mset({f"filler:{n}": b"x" * 1000 for n in range(2000)})  # as old as the side log
        agent = chat_agent(CrabSaver(store))
        for turn in range(3):
            agent.invoke(human(f"q{turn}"), CONFIG)
        name = store.find(THREAD)
        assert name is not None
        keys = store.storage._keys  # type: ignore[attr-defined]
        side = keys.session(companion_name(name, "checkpoints"))
        kept = [*keys.session(name), keys.by_time, keys.by_name]
        time.sleep(2.1)  # Redis tells key ages apart to the second
        raw.touch(*kept)  # the conversation is in use; the side log is not
        raw.config_set("maxmemory-policy", "allkeys-lru")
        raw.config_set("maxmemory-samples", 10)
        used = int(raw.info("memory")["used_memory"])
        while raw.exists(side[0]):
            # Fine steps: a step past what the side log frees would evict the next-oldest
            # keys in the same go, the conversation's.
            used -= 2_000
            raw.config_set("maxmemory", used)
            raw.set("trigger", b"")  # eviction runs as commands come
        assert [k for k in kept if not raw.exists(k)] == []  # the conversation's keys stay
        expected = ["q0", REPLY, "q1", reply(1), "q2", reply(2)]
        with pytest.warns(MissingSideLogWarning, match="side log is gone"):
            state = agent.get_state(CONFIG).values["messages"]
        assert texts(state) == expected
        raw.config_set("maxmemory", 0)  # room again for the next turn
        agent.invoke(human("q3"), CONFIG)
        assert session_texts(store) == [*expected, "q3", reply(3)]  # appended, nothing cut
        cold = chat_agent(CrabSaver(SessionStore.from_url(server.url, entry_points=False)))
        assert texts(cold.get_state(CONFIG).values["messages"]) == [*expected, "q3", reply(3)]
