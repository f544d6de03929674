"""Issue 3: append-only, crash-safe, multi-process session files at a flat per-turn cost.

The behaviour tests run on every backend (``backend``: a directory, Redis, Redis
Cluster; see ``backends.py``); what is about files alone (locks, torn tails,
descriptors, fsync, rewrites in place) runs on real files in tmp_path. Other
writers are real processes (``sys.executable``) or real threads. Loops are
bounded by count, never by time.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import itertools
import json
import os
import pickle
import random
import select
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from backends import OPEN_STORE, Backend, log_name, run_gated_writers
from conftest import FIXTURES, run_python, run_threads
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    messages_from_dict,
    messages_to_dict,
)

from crab_langchain import (
    CrabChatMessageHistory,
    SessionFormatError,
    SessionStore,
    TornTailWarning,
    hookimpl,
    is_auto_injected,
)
from crab_langchain import context as context_module
from crab_langchain.convert import to_crab_message
from crab_langchain.models import CompactMarker, CrabMessage, SessionMeta, parse_entry
from crab_langchain.storage import directory as directory_module
from crab_langchain.storage.directory import lock_file_name

HEADER = b'{"agent":"crab","created_by":"user","created_at":"2026-03-23T08:06:51.482913+00:00"}'
SESSION = "crab_1774253211_7.jsonl"  # holds HEADER, which names no id: the name says "7"
COMPACT_FIXTURE = FIXTURES / "crab_1775158803_12.jsonl"
POSIX_ONLY = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
PROC_FD = Path("/proc/self/fd")


# --- helpers ---------------------------------------------------------------------


def make_store(root: Path, plugins=(), **options: Any) -> SessionStore:
    return SessionStore(root, list(plugins), entry_points=False, **options)


def user_line(content: str) -> bytes:
    return CrabMessage(role="user", content=content).to_line().encode()


def session_file(directory: Path, *body: bytes, name: str = SESSION) -> Path:
    """A session file holding HEADER and the ``body`` lines."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(b"".join(line + b"\n" for line in (HEADER, *body)))
    return path


def file_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def seeded(backend: Backend, *body: bytes, name: str = SESSION) -> str:
    """Log ``name`` holding HEADER and the ``body`` lines as they are (nothing validates them)."""
    storage = backend.storage()
    storage.create(name, HEADER, created=int(name.split("_")[-2]))
    if body:
        storage.append(name, list(body))
    return name


def id_of(name: str) -> str:
    """The session id a crabtalk name ``{agent}_{seconds}_{id}.jsonl`` gives (no header id)."""
    return name.removesuffix(".jsonl").rsplit("_", 1)[1]


def opened(backend: Backend, name: str = SESSION) -> CrabChatMessageHistory:
    """A history on the existing log ``name``, read once: by path for a file, else by its id."""
    if not backend.is_server:
        return CrabChatMessageHistory.from_file(Path(backend.url) / name)
    history = backend.store().get_session_history(id_of(name))
    history.session  # noqa: B018 - read it now, as from_file does
    return history


def appended(backend: Backend, name: str, *lines: bytes) -> None:
    """Append raw ``lines`` to log ``name``, as another writer would."""
    backend.storage().append(name, list(lines))


def lines_of(history: CrabChatMessageHistory) -> list[bytes]:
    """The stored lines of ``history``, header first; a file holds exactly these.

    Read through the history's own storage: a new one costs a connection per call.
    """
    name = log_name(history)
    assert name is not None, "the session has no log yet"
    chunk = history._storage.read(name, None)
    assert chunk is not None
    lines = [line for _, line in chunk.lines]
    if history.file_path is not None:
        assert file_lines(history.file_path) == lines
    return lines


def only_log(backend: Backend) -> list[bytes]:
    """The lines of the backend's one and only log (a second one would fail the test)."""
    storage = backend.storage()
    [name] = storage.names()
    chunk = storage.read(name, None)
    assert chunk is not None
    lines = [line for _, line in chunk.lines]
    path = storage.path(name)
    if path is not None:
        assert file_lines(path) == lines
    return lines


def assert_valid_file(path: Path) -> None:
    """What ``crab-sessions verify`` checks: a header, then lines that all parse, then a newline."""
    lines = file_lines(path)
    SessionMeta.from_line(lines[0])
    for line in lines[1:]:
        parse_entry(line)


def to_line(message: BaseMessage) -> bytes:
    return to_crab_message(message).to_line().encode()


def contents(messages: list[BaseMessage]) -> list[str]:
    return [m.content for m in messages]  # type: ignore[misc]


def pair(writer: object, turn: int) -> list[BaseMessage]:
    return [HumanMessage(f"{writer}/{turn}/q"), AIMessage(f"{writer}/{turn}/a")]


def check_writers(lines: list[bytes], writers: list[str], turns: int) -> None:
    """Exactly one pair per (writer, turn), each pair adjacent, each writer's turns in order."""
    assert len(lines) == len(writers) * turns * 2
    entries = [parse_entry(line) for line in lines]  # each line a crabtalk message
    assert all(isinstance(entry, CrabMessage) for entry in entries)
    done = dict.fromkeys(writers, -1)
    for question, answer in zip(entries[::2], entries[1::2], strict=True):
        writer, turn, kind = question.content.split("/")
        assert (question.role, kind) == ("user", "q")
        assert (answer.role, answer.content) == ("assistant", f"{writer}/{turn}/a")
        assert int(turn) == done[writer] + 1, f"writer {writer} out of order"
        done[writer] = int(turn)
    assert done == dict.fromkeys(writers, turns - 1)


def open_fds() -> int:
    return len(os.listdir(PROC_FD))


@pytest.fixture
def split_writes(monkeypatch):
    """Every write goes to the file in two halves with a pause between.

    Without the locks, another writer's block would land between the halves:
    the tests below then see interleaved lines instead of passing by luck.
    """
    real = directory_module._write_all

    def in_two_halves(fd: int, data: bytes, path: Any) -> None:
        half = len(data) // 2
        real(fd, data[:half], path)
        time.sleep(0.0002)
        real(fd, data[half:], path)

    monkeypatch.setattr(directory_module, "_write_all", in_two_halves)


class Injector:
    """Injects ``len(history) % 3`` messages: the count changes from turn to turn."""

    @hookimpl
    def crab_inject_messages(self, session, history):
        return [SystemMessage(f"inj {len(history)}:{k}") for k in range(len(history) % 3)]


def injected_for(count: int) -> list[str]:
    return [f"inj {count}:{k}" for k in range(count % 3)]


# --- 1. handed-out lists -----------------------------------------------------------


def _setitem(items: list) -> None:
    items[0] = AIMessage("intruder")


def _setitem_last(items: list) -> None:
    items[-1] = AIMessage("intruder")


def _delitem(items: list) -> None:
    del items[0]


def _delslice(items: list) -> None:
    del items[1:]


def _iadd(items: list) -> None:
    items += [AIMessage("intruder")]


def _imul(items: list) -> None:
    items *= 2


def _slice_assign(items: list) -> None:
    items[1:2] = [AIMessage("x"), AIMessage("y"), AIMessage("z")]


def _slice_assign_all(items: list) -> None:
    items[:] = []


def _extended_slice_assign(items: list) -> None:
    items[::2] = [AIMessage("x")] * len(items[::2])


def _sort(items: list) -> None:
    items.sort(key=lambda m: m.content)


MUTATIONS: dict[str, Callable[[list], Any]] = {
    "append": lambda items: items.append(AIMessage("intruder")),
    "extend": lambda items: items.extend([AIMessage("intruder")]),
    "insert": lambda items: items.insert(1, AIMessage("intruder")),
    "pop": lambda items: items.pop(),
    "pop-first": lambda items: items.pop(0),
    "remove": lambda items: items.remove(items[1]),
    "clear": lambda items: items.clear(),
    "sort": _sort,
    "reverse": lambda items: items.reverse(),
    "setitem": _setitem,
    "setitem-last": _setitem_last,
    "delitem": _delitem,
    "delslice": _delslice,
    "iadd": _iadd,
    "imul": _imul,
    "slice-assign": _slice_assign,
    "slice-assign-all": _slice_assign_all,
    "extended-slice-assign": _extended_slice_assign,
}

READERS: dict[str, Callable[[CrabChatMessageHistory], list[BaseMessage]]] = {
    "messages": lambda history: history.messages,
    "stored_messages": lambda history: history.stored_messages(),
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("inject", [False, True], ids=["plain", "injected"])
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_changing_a_handed_out_list_changes_nothing_stored(backend, mutation, inject, reader):
    read = READERS[reader]
    history = backend.store([Injector()] if inject else []).get_session_history("s")
    history.add_messages([HumanMessage("c"), AIMessage("a"), HumanMessage("b")])
    expected = read(history)
    for _ in range(3):  # read and drop a few times: the next list is a recycled one
        assert read(history) == expected
    snapshot = list(expected)
    lines_before = lines_of(history)

    items = read(history)
    assert isinstance(items, list)
    assert items == snapshot
    MUTATIONS[mutation](items)
    assert items != snapshot  # the mutation did change the caller's list
    assert read(history) == snapshot  # while the caller holds the changed list
    del items
    assert read(history) == snapshot  # and after it dropped it
    assert read(history) == snapshot
    assert lines_of(history) == lines_before

    history.add_messages([AIMessage("d")])
    assert contents(history.stored_messages()) == ["c", "a", "b", "d"]
    if reader == "messages":
        assert contents(history.messages) == ["c", "a", "b", "d", *(injected_for(4) * inject)]
    assert lines_of(history)[1:] == [
        user_line("c"),
        b'{"role":"assistant","content":"a"}',
        user_line("b"),
        b'{"role":"assistant","content":"d"}',
    ]


def test_lists_a_caller_holds_never_change_over_many_turns(backend):
    history = backend.store([Injector()]).get_session_history("s")
    held: list[tuple[list[BaseMessage], list[BaseMessage]]] = []
    for turn in range(60):
        if turn % 3 == 0:
            history.messages  # noqa: B018 - a dropped read, so the pool recycles
        for items in (history.messages, history.stored_messages()):
            held.append((items, list(items)))
        history.add_messages(pair("w", turn))
        if turn == 30:
            history.compact("half way")
    for items, snapshot in held:
        assert len(items) == len(snapshot)
        assert all(a is b for a, b in zip(items, snapshot, strict=True))
    assert len({id(items) for items, _ in held}) == len(held)


OPS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["messages", "stored"]), st.booleans()),  # read; keep it?
        st.tuples(st.just("add"), st.integers(1, 3)),
        st.tuples(st.just("other"), st.integers(1, 3)),  # another writer appends
        st.tuples(st.sampled_from(["release", "mutate"]), st.integers(0, 20)),
        st.tuples(st.sampled_from(["compact", "clear"]), st.just(0)),
    ),
    max_size=40,
)


def test_recycled_lists_always_hold_the_current_context(backend):
    # Each example on a session of its own; fewer on a server, where each op is a round trip.
    histories = backend.store([Injector()])
    others = backend.store()
    examples = itertools.count()

    @settings(max_examples=30 if backend.is_server else 80, deadline=None)
    @given(ops=OPS)
    def check(ops):
        session_id = f"s{next(examples)}"
        history = histories.get_session_history(session_id)
        other = others.get_session_history(session_id)
        run_ops(history, other, ops)

    check()


def run_ops(history: CrabChatMessageHistory, other: CrabChatMessageHistory, ops) -> None:
    """Apply ``ops`` to ``history`` (``other`` writes the same session); check every read."""
    model: list[str] = []
    kept: list[tuple[list[BaseMessage], list[BaseMessage]]] = []
    serial = 0
    for op, arg in ops:
        if op in ("messages", "stored"):
            items = history.messages if op == "messages" else history.stored_messages()
            assert isinstance(items, list)
            injected = injected_for(len(model)) if op == "messages" else []
            assert contents(items) == model + injected
            assert [is_auto_injected(m) for m in items] == [False] * len(model) + [True] * len(
                injected
            )
            if arg:
                kept.append((items, list(items)))
            del items
        elif op in ("add", "other"):
            batch = [HumanMessage(f"m{serial + k}") for k in range(arg)]
            serial += arg
            (history if op == "add" else other).add_messages(batch)
            model += contents(batch)
        elif op == "release" and kept:
            kept.pop(arg % len(kept))
        elif op == "mutate" and kept:
            items, _ = kept[arg % len(kept)]
            items.append(AIMessage("mine"))
            kept[arg % len(kept)] = (items, list(items))
        elif op == "compact":
            history.compact(f"summary {serial}")
            model = [f"summary {serial}"]
        elif op == "clear":
            history.clear()
            model = []
        for items, snapshot in kept:  # what a caller holds is never touched
            assert len(items) == len(snapshot)
            assert all(a is b for a, b in zip(items, snapshot, strict=True))


def test_copies_pickles_and_dicts_of_a_handed_out_list(backend):
    history = backend.store([Injector()]).get_session_history("s")
    history.add_messages([HumanMessage("one"), AIMessage("two", id="x")])
    history.messages  # noqa: B018 - dropped, so the next list is recycled
    items = history.messages
    expected = list(items)
    shallow, deep = copy.copy(items), copy.deepcopy(items)
    pickled = pickle.loads(pickle.dumps(items))
    via_dicts = messages_from_dict(json.loads(json.dumps(messages_to_dict(items))))
    for duplicate in (shallow, deep, pickled, via_dicts):
        assert isinstance(duplicate, list)
        assert duplicate == expected
        assert duplicate is not items
    del items  # the original goes back to the pool ...
    history.add_messages([HumanMessage("three")])
    assert contents(history.messages) == ["one", "two", "three", *injected_for(3)]
    for duplicate in (shallow, deep, pickled, via_dicts):  # ... the copies are not touched
        assert duplicate == expected
    pickled.append(HumanMessage("mine"))  # and changing a copy changes nothing stored
    shallow.clear()
    assert contents(history.messages) == ["one", "two", "three", *injected_for(3)]


def test_injected_messages_stay_last_when_their_count_changes(backend):
    history = backend.store([Injector()]).get_session_history("s")
    for turn in range(12):
        history.messages  # noqa: B018 - dropped: recycled on the next read
        items = history.messages
        stored = [f"{w}/{t}/{k}" for t in range(turn) for w, k in (("u", "q"), ("u", "a"))]
        assert contents(items) == stored + injected_for(len(stored))
        assert [is_auto_injected(m) for m in items[len(stored) :]] == [True] * (len(stored) % 3)
        del items
        history.add_messages(pair("u", turn)[: 1 + turn % 2])  # a turn in one call or two
        if turn % 2 == 0:
            history.add_messages([AIMessage(f"u/{turn}/a")])


def test_next_read_after_clear_and_compact_gives_the_new_context(backend):
    history = backend.store([Injector()]).get_session_history("s")
    history.add_messages([HumanMessage("one"), AIMessage("two")])
    held = history.messages
    history.messages  # noqa: B018 - a dropped list, in the pool
    history.stored_messages()
    history.clear()
    assert history.messages == []
    assert history.stored_messages() == []
    history.add_messages([HumanMessage("three"), AIMessage("four"), HumanMessage("five")])
    history.messages  # noqa: B018
    history.compact("summary")
    assert contents(history.messages) == ["summary", *injected_for(1)]
    assert history.stored_messages() == [HumanMessage("summary")]
    history.add_messages([AIMessage("six")])
    assert contents(history.messages) == ["summary", "six", *injected_for(2)]
    assert contents(held) == ["one", "two", *injected_for(2)]


# --- 2. several writers ----------------------------------------------------------------


def test_four_processes_500_turns_each_on_one_session(tmp_path, backend, stress):
    turns = stress(500)
    run_gated_writers(backend, tmp_path / "gate", writers=4, turns=turns)
    lines = only_log(backend)
    SessionMeta.from_line(lines[0])
    check_writers(lines[1:], ["0", "1", "2", "3"], turns=turns)  # exactly 8 x turns lines
    if not backend.is_server:
        assert not list(Path(backend.url).glob("*.torn"))
    reader = backend.store().get_session_history("s")
    assert [to_line(m) for m in reader.messages] == lines[1:]


def _check_threads_result(backend: Backend, histories: list[CrabChatMessageHistory]) -> None:
    lines = only_log(backend)
    check_writers(lines[1:], [str(w) for w in range(8)], turns=50)
    expected = backend.store().get_session_history("s").messages
    assert len(expected) == 800
    for history in histories:  # every writer's own view ends up as the file: no line skipped
        assert history.messages == expected


def test_eight_threads_histories_of_one_store(backend, split_writes):
    store = backend.store()
    histories = [store.get_session_history("s") for _ in range(8)]
    run_threads(lambda w: [histories[w].add_messages(pair(w, t)) for t in range(50)], 8)
    _check_threads_result(backend, histories)


def test_eight_threads_with_a_store_each(backend, split_writes):
    histories = [backend.store().get_session_history("s") for _ in range(8)]
    run_threads(lambda w: [histories[w].add_messages(pair(w, t)) for t in range(50)], 8)
    _check_threads_result(backend, histories)


def test_threads_on_two_storages_of_one_process(backend, split_writes):
    """Threads share each storage (its cached descriptors, its connections); two storages."""
    stores = [backend.store(), backend.store()]
    histories = [stores[w % 2].get_session_history("s") for w in range(8)]
    run_threads(lambda w: [histories[w].add_messages(pair(w, t)) for t in range(50)], 8)
    _check_threads_result(backend, histories)


def test_threads_appending_blocks_through_two_storage_objects(backend, split_writes):
    storages = [backend.storage(), backend.storage()]
    storages[0].create("s.jsonl", HEADER)
    width = 40  # lines per block: a block interleaved with another shows

    def work(w: int) -> None:
        storage = storages[w % 2]
        for block in range(25):
            storage.append("s.jsonl", [user_line(f"{w}/{block}/{i}") for i in range(width)])

    run_threads(work, 6)
    lines = only_log(backend)[1:]
    assert len(lines) == 6 * 25 * width
    done = dict.fromkeys(range(6), -1)
    for start in range(0, len(lines), width):
        block = [parse_entry(line).content.split("/") for line in lines[start : start + width]]
        w, b = int(block[0][0]), int(block[0][1])
        assert block == [[str(w), str(b), str(i)] for i in range(width)]
        assert b == done[w] + 1
        done[w] = b


async def test_sync_and_async_callers_on_one_session(backend, split_writes):
    store = backend.store()
    histories = [store.get_session_history("s") for _ in range(4)]
    histories += [backend.store().get_session_history("s") for _ in range(4)]

    async def async_writer(w: int) -> None:
        for turn in range(50):
            await histories[w].aadd_messages(pair(w, turn))
            if turn % 10 == 0:
                await histories[w].aget_messages()

    errors: list[BaseException] = []

    def sync_writer(w: int) -> None:
        try:
            for turn in range(50):
                histories[w].add_messages(pair(w, turn))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=sync_writer, args=(w,)) for w in range(4, 8)]
    for thread in threads:
        thread.start()
    try:
        await asyncio.gather(*(async_writer(w) for w in range(4)))
    finally:
        for thread in threads:
            thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    _check_threads_result(backend, histories)
    assert await histories[0].aget_messages() == histories[7].messages


class ThreadGate:
    """A directory's storage calls wait at a gate; each must run off the event loop's thread."""

    def __init__(self, storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loop_thread = threading.get_ident()
        self.open = threading.Event()
        self.open.set()
        self.calls: list[str] = []
        for method in ("read", "append", "append_at", "replace", "replace_at"):
            monkeypatch.setattr(storage, method, self._gated(method, getattr(storage, method)))

    def _gated(self, method: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def gated(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == self.loop_thread:
                raise AssertionError(f"{method} ran on the event loop's thread")
            self.calls.append(method)
            assert self.open.wait(timeout=30), "never released"
            return real(*args, **kwargs)

        return gated

    def hold(self) -> None:
        self.open.clear()

    def release(self) -> None:
        self.open.set()


class ServerPause:
    """Redis: the sync methods refuse to run; holding pauses the servers' scripts."""

    def __init__(self, storage: Any, monkeypatch: pytest.MonkeyPatch, nodes: list[Any]) -> None:
        self.nodes = nodes
        for method in ("read", "append", "append_at", "replace", "replace_at", "create"):
            monkeypatch.setattr(storage, method, self._refused(method))

    @staticmethod
    def _refused(method: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"the sync {method} was called")

        return refused

    def hold(self) -> None:
        for node in self.nodes:  # WRITE: scripts wait, the commands releasing them do not
            node.client_pause(20_000, all=False)

    def release(self) -> None:
        for node in self.nodes:
            node.client_unpause()


class TableLock(ServerPause):
    """PostgreSQL: the sync methods refuse to run; holding locks the logs table from another
    connection (ACCESS EXCLUSIVE: reads wait too) until released."""

    def __init__(self, storage: Any, monkeypatch: pytest.MonkeyPatch, backend: Backend) -> None:
        super().__init__(storage, monkeypatch, [])
        import psycopg

        self.conn = psycopg.connect(backend.url)
        self.table = f'"{backend.prefix}".logs'

    def hold(self) -> None:
        self.conn.execute(f"LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        self.conn.commit()


async def held_call(gate: ThreadGate | ServerPause, call: Any) -> Any:
    """Await ``call`` while its storage work is held: meanwhile the loop must run on."""
    gate.hold()
    try:
        task = asyncio.ensure_future(call)
        for _ in range(50):
            await asyncio.sleep(0)  # would not come back while a call blocked the loop
        assert not task.done(), "the call finished while its storage work was held"
    finally:
        gate.release()
    return await task


@pytest.fixture
def redis_nodes(backend, request) -> Iterator[list[Any]]:
    """A plain client on every server of a Redis backend (none for another)."""
    if not backend.is_redis:
        yield []
        return
    servers = request.getfixturevalue(
        "redis_server" if backend.kind == "redis" else "redis_cluster"
    )
    nodes = [servers.client()] if backend.kind == "redis" else servers.node_clients()
    yield nodes
    for node in nodes:
        node.client_unpause()
        node.close()


async def test_async_calls_keep_the_event_loop_running(backend, monkeypatch, redis_nodes):
    # Redis: redis.asyncio, PostgreSQL: psycopg's async connections, and never the sync
    # methods. A directory: the sync ones, in a thread.
    store = backend.store()
    history = store.get_session_history("s")
    history.add_messages([HumanMessage("one")])  # created: what follows only reads and writes
    backend.store().get_session_history("s").add_messages([AIMessage("two")])
    if backend.is_redis:
        assert store.storage.native_async
        gate: ThreadGate | ServerPause = ServerPause(store.storage, monkeypatch, redis_nodes)
    elif backend.kind == "postgres":
        assert store.storage.native_async
        gate = TableLock(store.storage, monkeypatch, backend)
    else:
        gate = ThreadGate(store.storage, monkeypatch)

    assert await held_call(gate, history.aget_messages()) == [HumanMessage("one"), AIMessage("two")]
    await held_call(gate, history.aadd_messages([HumanMessage("three")]))
    reader = backend.store().get_session_history("s")
    assert contents(reader.messages) == ["one", "two", "three"]
    await held_call(gate, history.aclear())
    assert reader.messages == []
    assert await history.aget_messages() == []
    if isinstance(gate, ThreadGate):
        assert {"read", "append", "replace"} <= set(gate.calls)


# --- 3. writers killed mid-append ------------------------------------------------------

# Imports once, then forks a writer per request, so that each of the many
# kills costs a fork, not an interpreter start. A writer reports its pid once
# its batches are built, then appends them; the zygote reaps it when told.
ZYGOTE = """
import os, sys
from langchain_core.messages import HumanMessage
from crab_langchain import CrabChatMessageHistory
PAD = "x" * 2000
for request in sys.stdin:
    words = request.split()
    if words[0] == "reap":
        os.write(1, b"%d\\n" % os.waitpid(int(words[1]), 0)[1])
        continue
    path, tag, batches, size = words[1], words[2], int(words[3]), int(words[4])
    if os.fork() == 0:
        code = 1
        try:
            todo = [[HumanMessage(f"{tag}:{b}:{i}:{PAD}") for i in range(size)]
                    for b in range(batches)]
            history = CrabChatMessageHistory.from_file(path)
            os.write(1, b"%d\\n" % os.getpid())
            for batch in todo:
                history.add_messages(batch)
            code = 0
        finally:
            os._exit(code)
"""

PAD = "x" * 2000
# (batches, messages a batch): ~3 or ~6 MB an append, as the kernel stops a killed
# write only between pages (2 MB folios here): smaller appends are seldom torn.
SHAPES = {"timed": (2, 1500), "sized": (1, 3000)}


class Zygote:
    def __init__(self, tmp_path: Path) -> None:
        self.errors = open(tmp_path / "zygote.err", "w+b")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errors,
            bufsize=0,
        )
        self.buffer = b""
        self.unreaped: set[int] = set()

    def _line(self) -> int:
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.proc.stdout], [], [], 60)
            chunk = os.read(self.proc.stdout.fileno(), 4096) if ready else b""
            if not chunk:
                self.errors.seek(0)
                pytest.fail(f"zygote silent or gone: {self.errors.read().decode()[-2000:]}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return int(line)

    def spawn(self, path: Path, tag: int, batches: int, size: int) -> int:
        self.proc.stdin.write(f"spawn {path} {tag} {batches} {size}\n".encode())
        pid = self._line()
        self.unreaped.add(pid)
        return pid

    def reap(self, pid: int) -> int:
        """Wait for the writer to end; its wait status. Until then its pid is not reused."""
        self.proc.stdin.write(f"reap {pid}\n".encode())
        status = self._line()
        self.unreaped.discard(pid)
        return status

    def close(self) -> None:
        for pid in self.unreaped:
            os.kill(pid, signal.SIGKILL)  # our own writer, a zombie at worst
            self.reap(pid)
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.errors.close()


def expected_line(tag: int, batch: int, index: int) -> bytes:
    return user_line(f"{tag}:{batch}:{index}:{PAD}")


def kill_at_random(zygote: Zygote, path: Path, tag: int, rng: random.Random) -> tuple[int, int]:
    """Start a writer on ``path`` and SIGKILL it at a random moment; its shape."""
    start = path.stat().st_size
    if tag % 2 == 0:  # after a random delay: mid-build, mid-write, between batches, after
        shape = SHAPES["timed"]
        pid = zygote.spawn(path, tag, *shape)
        time.sleep(rng.uniform(0, 0.12))
    else:  # once the file reached a random size: often in the middle of a write
        shape = SHAPES["sized"]
        pid = zygote.spawn(path, tag, *shape)
        target = start + rng.randint(1, shape[0] * shape[1] * len(expected_line(tag, 0, 0)))
        name = str(path)
        for _ in range(500_000):
            if os.stat(name).st_size >= target:
                break
    os.kill(pid, signal.SIGKILL)
    status = zygote.reap(pid)
    assert status in (0, signal.SIGKILL), f"writer failed: wait status {status}"
    return shape


def check_killed_file(path: Path, tag: int, shape: tuple[int, int]) -> tuple[int, bool]:
    """Check the file a writer was killed appending to, repair it; (lines kept, unfinished?).

    Readers see whole calls only: what a killed call left is not read, and the
    next writer moves it to ``.torn``.
    """
    raw = path.read_bytes()
    batches, size = shape
    expected = [expected_line(tag, b, i) for b in range(batches) for i in range(size)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = CrabChatMessageHistory.from_file(path)
        stored = [to_line(m) for m in reader.stored_messages()]
    assert stored[0] == user_line("seed")
    kept = stored[1:]
    assert len(kept) % size == 0, "part of a call was read"
    assert kept == expected[: len(kept)]
    whole = b"".join(line + b"\n" for line in [HEADER, *stored])
    assert raw.startswith(whole)
    unfinished = raw[len(whole) :]
    next_call = b"".join(line + b"\n" for line in expected[len(kept) : len(kept) + size])
    assert next_call.startswith(unfinished)
    assert unfinished != next_call or not unfinished  # a whole call would have been read
    assert any(issubclass(w.category, TornTailWarning) for w in caught) == bool(unfinished)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader.add_messages([AIMessage(f"after {tag}")])
    assert any(issubclass(w.category, TornTailWarning) for w in caught) == bool(unfinished)
    side = path.with_name(path.name + ".torn")
    assert (side.read_bytes() if side.exists() else None) == (
        unfinished + b"\n" if unfinished else None
    )
    after = b'{"role":"assistant","content":"after %d"}\n' % tag
    assert path.read_bytes() == whole + after
    assert_valid_file(path)
    return len(kept), bool(unfinished)


@POSIX_ONLY
def test_writers_killed_at_random_moments_leave_whole_calls_only(tmp_path):
    rng = random.Random(20260323)
    zygote = Zygote(tmp_path)
    kept = tears = 0
    files: list[Path] = []
    try:
        for tag in range(40):
            if tag >= 24 and tears:  # more only while no write was torn yet
                break
            path = session_file(tmp_path / "s", user_line("seed"), name=f"crab_1_{tag}.jsonl")
            files.append(path)
            shape = kill_at_random(zygote, path, tag, rng)
            lines, torn = check_killed_file(path, tag, shape)
            kept += lines
            tears += torn
    finally:
        zygote.close()
    assert tears > 0, "no call was ever cut short: the test did not test recovery"
    # Across all of them: every complete line is still there, read by a new history.
    total = sum(len(CrabChatMessageHistory.from_file(path).messages) - 2 for path in files)
    assert total == kept


# --- 4. the descriptors kept open for appending ------------------------------------------

# Run with backend.argv, then the session's id (and, to append, the texts).
CLEAR_SCRIPT = (
    OPEN_STORE
    + """
import sys
open_store(sys.argv[1], sys.argv[2]).get_session_history(sys.argv[3]).clear()
"""
)

DELETE_SCRIPT = (
    OPEN_STORE
    + """
import sys
assert open_store(sys.argv[1], sys.argv[2]).delete_session(sys.argv[3])
"""
)

APPEND_SCRIPT = (
    OPEN_STORE
    + """
import sys
from langchain_core.messages import HumanMessage
history = open_store(sys.argv[1], sys.argv[2]).get_session_history(sys.argv[3])
history.add_messages([HumanMessage(t) for t in sys.argv[4:]])
"""
)


@contextlib.contextmanager
def old_file(history: CrabChatMessageHistory) -> Iterator[BinaryIO | None]:
    """The history's file, held open across what follows (None where there is no file)."""
    if history.file_path is None:
        yield None
        return
    with open(history.file_path, "rb") as file:
        yield file


def test_append_after_another_process_cleared_goes_to_the_new_file(backend):
    history = backend.store().get_session_history("s")
    history.add_messages([HumanMessage("old")])  # the descriptor (if any) is now cached
    header = lines_of(history)[0]
    with old_file(history) as old:
        run_python(CLEAR_SCRIPT, *backend.argv, "s")
        history.add_messages([HumanMessage("new")])  # no read in between
        if old is not None:
            assert old.read() == header + b"\n" + user_line("old") + b"\n"
    assert lines_of(history) == [header, user_line("new")]
    assert history.messages == [HumanMessage("new")]
    assert backend.store().get_session_history("s").messages == [HumanMessage("new")]


def test_append_after_another_process_deleted_a_file_opened_by_path_raises(tmp_path):
    path = session_file(tmp_path, user_line("one"))
    history = CrabChatMessageHistory.from_file(path)
    history.add_messages([HumanMessage("two")])  # the descriptor is now cached
    with open(path, "rb") as old_file:
        run_python("import os, sys; os.unlink(sys.argv[1])", str(path))
        with pytest.raises(FileNotFoundError):
            history.add_messages([HumanMessage("lost")])
        assert b"lost" not in old_file.read()  # not written to the unlinked file either
    assert not path.exists()


def test_append_after_another_process_deleted_a_store_session_starts_afresh(backend):
    history = backend.store().get_session_history("s")
    history.add_messages([HumanMessage("one")])
    with old_file(history) as old:
        run_python(DELETE_SCRIPT, *backend.argv, "s")
        history.add_messages([HumanMessage("two")])
        if old is not None:
            assert b"two" not in old.read()
    assert only_log(backend)[1:] == [user_line("two")]
    assert backend.store().get_session_history("s").messages == [HumanMessage("two")]


@pytest.mark.skipif(not PROC_FD.is_dir(), reason="counts descriptors in /proc")
def test_more_sessions_than_cached_descriptors_round_robin(tmp_path):
    store = make_store(tmp_path)
    sessions = 40  # more than the 32 descriptors a storage keeps open
    histories = [store.get_session_history(f"s{n}") for n in range(sessions)]
    other = make_store(tmp_path)
    expected: list[list[str]] = [[] for _ in range(sessions)]
    before = open_fds()
    for turn in range(4):
        for n, history in enumerate(histories):
            history.add_messages([HumanMessage(f"{n}/{turn}")])
            expected[n].append(f"{n}/{turn}")
            if turn == 1 and n % 7 == 0:  # replaced under a cached or an evicted descriptor
                other.get_session_history(f"s{n}").clear()
                expected[n] = []
        other.storage.close()  # the clearing store's descriptors are not the ones counted
        assert open_fds() - before <= 2 * 32  # a lock file and the log per cached session
    for n, history in enumerate(histories):
        assert contents(history.messages) == expected[n]
        assert file_lines(history.file_path)[1:] == [user_line(text) for text in expected[n]]
        assert contents(make_store(tmp_path).get_session_history(f"s{n}").messages) == expected[n]


def test_close_releases_descriptors_and_appending_reopens(backend):
    counted = not backend.is_server  # a directory's descriptors; a server's connections are pooled
    if counted and not PROC_FD.is_dir():
        pytest.skip("counts descriptors in /proc")
    store = backend.store()
    histories = [store.get_session_history(f"s{n}") for n in range(5)]
    for history in histories:
        history.add_messages([HumanMessage("one")])
    open_before_close = open_fds()
    store.storage.close()
    if counted:
        assert open_fds() <= open_before_close - 5
    for history in histories:
        history.add_messages([HumanMessage("two")])
    store.storage.close()
    store.storage.close()  # twice is fine
    for history in histories:
        history.add_messages([HumanMessage("three")])
        assert contents(history.messages) == ["one", "two", "three"]
        assert lines_of(history)[1:] == [user_line(t) for t in ("one", "two", "three")]


@POSIX_ONLY
def test_forked_child_and_parent_appending_to_one_session(tmp_path, split_writes):
    history = make_store(tmp_path).get_session_history("s")
    history.add_messages(pair("setup", 0))  # the parent caches its descriptor before the fork
    errors = tmp_path / "child.err"
    pid = os.fork()
    if pid == 0:  # the child: the same history object, inherited
        code = 1
        try:
            for turn in range(100):
                history.add_messages(pair("child", turn))
            code = 0
        except BaseException as error:
            errors.write_text(repr(error))
        finally:
            os._exit(code)
    try:
        for turn in range(100):
            history.add_messages(pair("parent", turn))
    finally:
        _, status = os.waitpid(pid, 0)
    assert status == 0, errors.read_text() if errors.exists() else status
    lines = file_lines(history.file_path)[1:]
    assert lines[:2] == [to_line(m) for m in pair("setup", 0)]
    check_writers(lines[2:], ["child", "parent"], turns=100)
    assert [to_line(m) for m in history.messages] == lines


# --- 5. incremental reads --------------------------------------------------------------


def test_another_process_appending_is_read_as_a_tail(backend):
    seeded(backend, *(user_line(f"m{i}") for i in range(50)))
    history = opened(backend)
    before = history.messages
    run_python(APPEND_SCRIPT, *backend.argv, id_of(SESSION), "new 1", "new 2")
    after = history.messages
    assert len(after) == 52
    assert all(a is b for a, b in zip(before, after[:50], strict=True))  # not parsed again
    assert after[50:] == [HumanMessage("new 1"), HumanMessage("new 2")]
    history.add_messages([AIMessage("mine")])
    again = history.messages
    assert all(a is b for a, b in zip(after, again[:52], strict=True))
    assert again[52:] == [AIMessage("mine")]


def test_tail_read_parses_only_the_new_lines(backend, monkeypatch):
    seeded(backend, *(user_line(f"m{i}") for i in range(50)))
    history = opened(backend)
    run_python(APPEND_SCRIPT, *backend.argv, id_of(SESSION), "new")
    parsed: list[bytes] = []

    def spying(parse):
        def spy(line):
            parsed.append(bytes(line))
            return parse(line)

        return spy

    # The working context parses every line it takes through decode_line.
    monkeypatch.setattr(context_module, "decode_line", spying(context_module.decode_line))
    assert len(history.messages) == 51
    assert parsed == [user_line("new")]


def test_a_first_write_reads_none_of_its_own_lines_back(backend, monkeypatch):
    parsed: list[bytes] = []
    real = context_module.decode_line
    monkeypatch.setattr(
        context_module, "decode_line", lambda line: parsed.append(line) or real(line)
    )
    history = backend.store().get_session_history("fresh")
    history.add_messages([HumanMessage("one"), AIMessage("two")])  # creates the session
    assert contents(history.messages) == ["one", "two"]
    again = backend.store().get_session_history("fresh")  # a first write, not read before
    again.add_messages([HumanMessage("three")])
    assert contents(again.messages) == ["one", "two", "three"]
    assert parsed == [
        user_line("one"),
        b'{"role":"assistant","content":"two"}',
    ]  # read once, by again


def rewrite_in_place(path: Path, data: bytes) -> None:
    """As crabtalk's ``persist()`` does: same file, truncated and written again."""
    with open(path, "r+b") as file:
        file.truncate(0)
        file.write(data)


def body(*texts: str) -> bytes:
    return b"".join(line + b"\n" for line in (HEADER, *(user_line(t) for t in texts)))


@pytest.mark.parametrize(
    "rewritten",
    [
        ["m00", "m01"],  # shorter
        ["m00", "m01", "m02", "m03", "mXX", "m05", "m06"],  # longer, the last line read changed
        ["m00", "m01", "m02", "m03", "m04", "m05", "m06"],  # longer, same start: an append
    ],
    ids=["shorter", "longer-changed", "longer-same"],
)
def test_rewrite_in_place_is_noticed(tmp_path, rewritten):
    path = session_file(tmp_path, *(user_line(t) for t in ["m00", "m01", "m02", "m03", "m04"]))
    history = CrabChatMessageHistory.from_file(path)
    assert contents(history.messages) == ["m00", "m01", "m02", "m03", "m04"]
    rewrite_in_place(path, body(*rewritten))
    assert contents(history.messages) == rewritten
    history.add_messages([HumanMessage("next")])
    assert contents(CrabChatMessageHistory.from_file(path).messages) == [*rewritten, "next"]


LONG = [f"message {i:03d} " + "." * 60 for i in range(20)]  # the first lines lie far from the end


@pytest.mark.parametrize("changed", [1, 18], ids=["early-line", "late-line"])
@pytest.mark.parametrize("how", ["in-place", "os.replace"])
def test_file_rewritten_with_same_size_different_content_is_noticed(tmp_path, how, changed):
    path = session_file(tmp_path, *(user_line(t) for t in LONG))
    history = CrabChatMessageHistory.from_file(path)
    assert contents(history.messages) == LONG
    new = list(LONG)
    new[changed] = new[changed].replace(".", ",")
    data = body(*new)
    assert len(data) == path.stat().st_size
    if how == "in-place":
        rewrite_in_place(path, data)
    else:
        (tmp_path / "new").write_bytes(data)
        os.replace(tmp_path / "new", path)
    assert contents(history.messages) == new


# --- 6. compaction -------------------------------------------------------------------


def compacted(summary: str) -> HumanMessage:
    return HumanMessage(summary, additional_kwargs={"crab_compact": True})


def test_archive_holds_every_message_and_each_marker_in_place(backend):
    history = backend.store().get_session_history("s")
    assert history.archive() == []  # no file yet
    history.add_messages([HumanMessage("one"), AIMessage("two")])
    history.compact("first summary")
    history.add_messages([HumanMessage("three")])
    history.compact('second "summary"\nwith ✓')
    history.add_messages([AIMessage("four")])
    assert lines_of(history)[3] == b'{"compact":"first summary"}'
    assert history.messages == [HumanMessage('second "summary"\nwith ✓'), AIMessage("four")]
    expected_archive = [
        HumanMessage("one"),
        AIMessage("two"),
        compacted("first summary"),
        HumanMessage("three"),
        compacted('second "summary"\nwith ✓'),
        AIMessage("four"),
    ]
    assert history.archive() == expected_archive
    fresh = backend.store().get_session_history("s")
    assert fresh.messages == history.messages
    assert fresh.archive() == expected_archive
    if history.file_path is not None:
        by_path = CrabChatMessageHistory.from_file(history.file_path)
        assert by_path.messages == history.messages


def test_archive_of_crabtalk_compacted_fixture(backend):
    history = opened(backend, backend.put(COMPACT_FIXTURE))
    lines = [line for line in file_lines(COMPACT_FIXTURE)[1:] if line.strip()]
    assert lines_of(history)[1:] == lines
    archive = history.archive()
    assert len(archive) == len(lines)
    for line, message in zip(lines, archive, strict=True):
        entry = parse_entry(line)
        is_marker = isinstance(entry, CompactMarker)
        assert message.additional_kwargs.get("crab_compact", False) is is_marker
        if is_marker:
            assert message == compacted(entry.compact)
    last_marker = max(i for i, m in enumerate(archive) if m.additional_kwargs.get("crab_compact"))
    assert history.messages == [
        HumanMessage(archive[last_marker].content),
        *archive[last_marker + 1 :],
    ]


@pytest.mark.parametrize(
    "bad",
    [b'{"role":"user","content":', b'{"role":42}', b"not json", b'{"compact":7}'],
    ids=["truncated", "bad-role", "not-json", "bad-marker"],
)
def test_malformed_line_before_the_last_marker(backend, bad):
    seeded(backend, user_line("one"), bad, b'{"compact":"summary"}', user_line("after"))
    history = opened(backend)  # the archive is not parsed
    where = history.location
    assert history.messages == [HumanMessage("summary"), HumanMessage("after")]
    with pytest.raises(SessionFormatError) as raised:
        history.archive()
    assert (raised.value.path, raised.value.line) == (where, 3)
    assert str(raised.value).startswith(f"{where}:3: ")
    assert history.messages == [HumanMessage("summary"), HumanMessage("after")]
    history.add_messages([AIMessage("more")])
    assert contents(opened(backend).messages) == ["summary", "after", "more"]


def test_malformed_line_after_the_last_marker_still_raises(backend):
    name = seeded(backend, b'{"compact":"summary"}', user_line("a"), b'{"role":')
    with pytest.raises(SessionFormatError) as raised:
        opened(backend)
    assert (raised.value.path, raised.value.line) == (backend.storage().location(name), 4)


LOOKALIKES = [
    HumanMessage("compact"),
    HumanMessage('{"compact":"x"}'),
    AIMessage('"compact"'),
    HumanMessage("x", additional_kwargs={"compact": "y"}),
]


def test_lines_that_merely_mention_compact_are_messages(backend):
    history = backend.store().get_session_history("s")
    history.add_messages([HumanMessage("before")])
    tail_reader = backend.store().get_session_history("s")
    assert tail_reader.messages == [HumanMessage("before")]
    history.add_messages(LOOKALIKES)
    raw = lines_of(history)
    assert raw[2] == b'{"role":"user","content":"compact"}'  # holds the bytes "compact"
    expected = [HumanMessage("before"), *LOOKALIKES]
    for reader in (history, tail_reader, backend.store().get_session_history("s")):
        assert reader.messages == expected
        assert not any(m.additional_kwargs.get("crab_compact") for m in reader.archive())


def test_a_line_with_a_role_and_a_compact_key_is_a_marker_as_crabtalk_reads_it(backend):
    history = backend.store().get_session_history("s")
    history.add_messages([HumanMessage("before")])
    tail_reader = backend.store().get_session_history("s")
    assert tail_reader.messages == [HumanMessage("before")]
    # Another writer's line: crabtalk's reader tries a marker first, and it is one.
    appended(backend, log_name(history), b'{"role":"user","content":"y","compact":"z"}')
    for reader in (history, tail_reader, backend.store().get_session_history("s")):
        assert reader.messages == [HumanMessage("z")]
        assert [m.content for m in reader.archive()] == ["before", "z"]


# --- 7. durability ---------------------------------------------------------------------


@pytest.fixture
def fsyncs(monkeypatch) -> list[int]:
    """The inode of every descriptor os.fsync is called on (the real fsync still runs)."""
    calls: list[int] = []
    real = os.fsync

    def counting(fd):
        calls.append(os.fstat(fd).st_ino)
        return real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def _opened(kind: str, tmp_path: Path, durability: str | None) -> CrabChatMessageHistory:
    options = {} if durability is None else {"durability": durability}
    if kind == "store":
        history = make_store(tmp_path, **options).get_session_history("s")
        history.add_messages([HumanMessage("creates the file")])
        return history
    return CrabChatMessageHistory.from_file(session_file(tmp_path, user_line("one")), **options)


@pytest.mark.parametrize("kind", ["store", "from_file"])
def test_fsync_durability_fsyncs_the_write_record_then_the_session_file_per_call(
    tmp_path, kind, fsyncs
):
    history = _opened(kind, tmp_path, "fsync")
    inode = history.file_path.stat().st_ino
    lock = history.file_path.with_name(lock_file_name(history.file_path.name))
    fsyncs.clear()
    for turn in range(5):
        history.add_messages(pair("w", turn))
        # The record of the block reaches the disk before the block: all or nothing on power loss.
        assert fsyncs == [lock.stat().st_ino, inode] * (turn + 1)
    history.compact("summary")
    assert fsyncs.count(inode) == 6
    assert len(file_lines(history.file_path)) == 2 + 11  # header, first message, 5 pairs, marker


@pytest.mark.parametrize("durability", [None, "flush"], ids=["default", "flush"])
@pytest.mark.parametrize("kind", ["store", "from_file"])
def test_default_durability_does_not_fsync_appends(tmp_path, kind, durability, fsyncs):
    history = _opened(kind, tmp_path, durability)
    fsyncs.clear()
    for turn in range(5):
        history.add_messages(pair("w", turn))
    history.compact("summary")
    assert fsyncs == []
    # handed to the OS all the same: a new reader sees every line at once
    archive = CrabChatMessageHistory.from_file(history.file_path).archive()
    assert len(archive) == 1 + 10 + 1  # the first message, 5 pairs, the marker


# --- 8. the garbage collector's pause ---------------------------------------------------


@pytest.fixture
def gc_restored() -> Iterator[None]:
    yield
    gc.enable()


BAD = "crab_1774253212_8.jsonl"  # a second log, beside SESSION


def big_log(backend: Backend, count: int = 1500, bad_at: int | None = None, name=SESSION) -> str:
    lines = [user_line(f"m{i}") for i in range(count)]
    if bad_at is not None:
        lines[bad_at - 2] = b'{"role":"user","content":'  # file line bad_at
    return seeded(backend, *lines, name=name)


def test_gc_enabled_after_loading_a_long_session(backend, gc_restored):
    assert gc.isenabled()
    history = opened(backend, big_log(backend))
    assert gc.isenabled()
    assert len(history.messages) == 1500
    store_history = backend.store().get_session_history("s")
    store_history.add_messages([HumanMessage(f"m{i}") for i in range(1500)])
    assert gc.isenabled()
    assert len(backend.store().get_session_history("s").messages) == 1500
    assert gc.isenabled()


async def test_gc_enabled_after_async_reads_and_writes_of_many_lines(backend, gc_restored):
    # On Redis a long chunk is turned into messages in a worker thread, the pause with it.
    history = backend.store().get_session_history("s")
    await history.aadd_messages([HumanMessage(f"m{i}") for i in range(1500)])
    assert gc.isenabled()
    fresh = backend.store().get_session_history("s")
    assert len(await fresh.aget_messages()) == 1500
    assert gc.isenabled()
    await history.aadd_messages([AIMessage(f"a{i}") for i in range(1200)])
    assert len(await fresh.aget_messages()) == 2700  # a tail of 1200 lines
    assert gc.isenabled()


def test_gc_enabled_after_a_long_tail_and_a_bulk_add(backend, gc_restored):
    seeded(backend, user_line("first"))
    history = opened(backend)
    opened(backend).add_messages([AIMessage(f"a{i}") for i in range(1200)])
    assert gc.isenabled()
    assert len(history.messages) == 1201  # a tail of 1200 lines
    assert gc.isenabled()
    history.add_messages([HumanMessage(f"b{i}") for i in range(1200)])
    assert gc.isenabled()


def test_gc_disabled_by_the_caller_stays_disabled(backend, gc_restored):
    big_log(backend)
    gc.disable()
    history = opened(backend)
    assert not gc.isenabled()
    history.add_messages([HumanMessage(f"b{i}") for i in range(1200)])
    assert not gc.isenabled()
    opened(backend).add_messages([AIMessage(f"c{i}") for i in range(1200)])
    assert len(history.messages) == 3900
    assert not gc.isenabled()
    with pytest.raises(SessionFormatError):
        opened(backend, big_log(backend, bad_at=1500, name=BAD))
    assert not gc.isenabled()


def test_gc_enabled_after_loading_fails(backend, gc_restored):
    with pytest.raises(SessionFormatError) as raised:
        opened(backend, big_log(backend, bad_at=1500))
    assert raised.value.line == 1500
    assert gc.isenabled()


def test_gc_enabled_after_a_tail_read_fails(backend, gc_restored):
    name = seeded(backend, user_line("first"))
    history = opened(backend)
    appended(backend, name, *(user_line(f"m{i}") for i in range(1500)), b"not json")
    with pytest.raises(SessionFormatError) as raised:
        history.messages  # noqa: B018 - the read is the point
    assert raised.value.line == 1503
    assert gc.isenabled()


def test_gc_enabled_after_a_bulk_add_fails(backend, gc_restored):
    seeded(backend, user_line("first"))
    history = opened(backend)
    before = lines_of(history)
    batch: list[BaseMessage] = [HumanMessage(f"m{i}") for i in range(1500)]
    batch.append(ToolMessage("r", tool_call_id="c", artifact=object()))
    with pytest.raises((TypeError, ValueError)):
        history.add_messages(batch)
    assert gc.isenabled()
    assert lines_of(history) == before


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda items: list.append(items, HumanMessage("z")), id="list.append"),
        pytest.param(lambda items: list.pop(items, 0), id="list.pop"),
        pytest.param(
            lambda items: list.__setitem__(items, 0, HumanMessage("z")), id="list.__setitem__"
        ),
        pytest.param(lambda items: list.__setitem__(items, 1, HumanMessage("z")), id="middle item"),
        pytest.param(lambda items: items.__init__([HumanMessage("x")]), id="__init__ again"),
    ],
)
def test_changes_that_bypass_the_list_methods_are_not_recycled(backend, change):
    history = backend.store().get_session_history("s")
    history.add_messages([HumanMessage("a"), HumanMessage("b"), HumanMessage("c")])
    items = history.messages
    change(items)
    del items
    history.add_messages([HumanMessage("d")])
    assert [m.content for m in history.messages] == ["a", "b", "c", "d"]
