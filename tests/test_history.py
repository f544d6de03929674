"""CrabChatMessageHistory on every backend: reading, writing, hooks, other writers.

Behaviour tests take ``backend`` and run on a directory, Redis and Redis
Cluster (see ``backends.py``); tests about files as such (``from_file``, torn
lines, inodes, a full disk) use a directory alone.
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from backends import OPEN_STORE, Backend, log_name
from conftest import FIXTURE_FILES, FIXTURES, run_python
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory
from strategies import MESSAGES

from crab_langchain import (
    CrabChatMessageHistory,
    CrabMessage,
    SessionFormatError,
    SessionStore,
    TornTailWarning,
    hookimpl,
    is_auto_injected,
    mark_auto_injected,
)
from crab_langchain import history as history_module
from crab_langchain.convert import to_crab_message
from crab_langchain.models import parse_entry
from crab_langchain.steps import run
from crab_langchain.storage import SessionStorage

PLAIN_FIXTURES = [p for p in FIXTURE_FILES if b'{"compact":' not in p.read_bytes()]
COMPACT_FIXTURE = FIXTURES / "crab_1775158803_12.jsonl"

HEADER = b'{"agent":"crab","created_by":"user","created_at":"2026-03-23T08:06:51.482913+00:00"}\n'
USER_A = b'{"role":"user","content":"a"}\n'
ASSISTANT_B = b'{"role":"assistant","content":"b"}\n'

# A crabtalk name: the store finds it as session "7" of agent "crab".
CRAB_NAME = "crab_1774253211_7.jsonl"


# --- helpers ---------------------------------------------------------------------


def make_store(tmp_path: Path, plugins=()) -> SessionStore:
    return SessionStore(tmp_path / "sessions", list(plugins), entry_points=False)


def copy_fixture(source: Path, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / source.name
    target.write_bytes(source.read_bytes())  # not shutil.copy: the fixtures are read-only
    return target


def file_lines(path: Path) -> list[bytes]:
    return split_lines(path.read_bytes())


def split_lines(data: bytes) -> list[bytes]:
    """The lines of a log's bytes, which end in a newline."""
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


_LOOKERS: weakref.WeakKeyDictionary[Backend, SessionStorage] = weakref.WeakKeyDictionary()


def storage_of(backend: Backend) -> SessionStorage:
    """The test's one storage for looking at what is stored (a cluster client takes a while)."""
    storage = _LOOKERS.get(backend)
    if storage is None:
        storage = _LOOKERS[backend] = backend.storage()
    return storage


def log_bytes(backend: Backend, what: CrabChatMessageHistory | str) -> bytes:
    """The exact bytes of a history's log (or of log ``what``): its file, or its Redis list.

    A Redis list holds the lines a file would, blank ones included, so its
    items each followed by a newline compare byte for byte with a file.
    """
    if isinstance(what, str):
        return backend.raw_bytes(what)
    assert what.location is not None, "the session has no log yet"
    return backend.raw_bytes(log_name(what))


def log_lines(backend: Backend, what: CrabChatMessageHistory | str) -> list[bytes]:
    return split_lines(log_bytes(backend, what))


def seed_raw(backend: Backend, name: str, data: bytes) -> bytes:
    """Store ``data`` as log ``name`` unchecked; return the log's bytes as now stored.

    A directory gets exactly ``data`` as the file; Redis gets its lines
    through the storage, which does not validate them (an unterminated last
    line becomes a whole item there, as no Redis writer can leave half a line).
    """
    if not backend.is_server:
        root = Path(backend.url)
        root.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        return data
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    storage = storage_of(backend)
    storage.create(name, lines[0], created=1774253211.0)
    if lines[1:]:
        storage.append(name, lines[1:])
    return b"".join(line + b"\n" for line in lines)


def expected_file_path(backend: Backend, name: str) -> Path | None:
    """What ``file_path`` says for log ``name``: its file, or None on Redis."""
    return None if backend.is_server else Path(backend.url) / name


def open_fixture(backend: Backend, fixture: Path, plugins=()) -> CrabChatMessageHistory:
    """Seed crabtalk's file ``fixture`` on ``backend``; its history from a new store."""
    name = backend.put(fixture)
    session_id, agent = FIXTURE_SESSIONS[name][:2]
    history = backend.store(list(plugins)).get_session_history(session_id, agent=agent)
    assert history.location == storage_of(backend).location(name)
    return history


def contents(messages: list[BaseMessage]) -> list[str]:
    return [m.content for m in messages]  # type: ignore[misc]


APPEND_SCRIPT = (
    OPEN_STORE
    + """
import sys
from langchain_core.messages import HumanMessage
store = open_store(sys.argv[1], sys.argv[2])
store.get_session_history(sys.argv[3]).add_messages([HumanMessage(t) for t in sys.argv[4:]])
"""
)

READ_SCRIPT = (
    OPEN_STORE
    + """
import json, sys
store = open_store(sys.argv[1], sys.argv[2])
print(json.dumps([m.content for m in store.get_session_history(sys.argv[3]).messages]))
"""
)

CLEAR_SCRIPT = (
    OPEN_STORE
    + """
import sys
open_store(sys.argv[1], sys.argv[2]).get_session_history(sys.argv[3]).clear()
"""
)


def expected_context(path: Path) -> list[bytes]:
    """The working context crabtalk reads: summary + lines after the last compact marker."""
    context: list[bytes] = []
    for line in file_lines(path)[1:]:
        if not line.strip():
            continue
        entry = parse_entry(line)
        if isinstance(entry, CrabMessage):
            context.append(line)
        else:
            context = [CrabMessage(role="user", content=entry.compact).to_line().encode()]
    return context


# --- basics ------------------------------------------------------------------------


def test_fixtures_are_present():
    assert {p.name for p in FIXTURE_FILES} >= {
        "crab_1774253211_7.jsonl",
        "crab_1775158803_12.jsonl",
        "research_bot_1777593600_3.jsonl",
    }
    assert PLAIN_FIXTURES
    assert COMPACT_FIXTURE not in PLAIN_FIXTURES


def test_file_path_is_none_until_first_write(tmp_path):
    store = make_store(tmp_path)
    history = store.get_session_history("s1")
    assert history.file_path is None
    assert history.messages == []
    assert not store.root.exists() or list(store.root.glob("*.jsonl")) == []
    history.add_messages([HumanMessage("hi")])
    assert isinstance(history.file_path, Path)
    assert history.file_path.is_file()
    assert history.file_path.parent == store.root


def test_location_is_none_until_first_write(backend):
    store = backend.store()
    history = store.get_session_history("s1")
    assert history.location is None
    assert history.messages == []
    assert store.storage.names() == []
    history.add_messages([HumanMessage("hi")])
    [name] = store.storage.names()
    assert history.location == store.storage.location(name)
    assert history.file_path == expected_file_path(backend, name)
    if backend.is_server:
        assert backend.prefix in history.location
    else:
        assert history.location == str(history.file_path)


def test_add_and_read_back(backend):
    history = backend.store().get_session_history("s1")
    history.add_messages([HumanMessage("hi"), AIMessage("hello")])
    history.add_message(HumanMessage("again"))
    assert history.messages == [HumanMessage("hi"), AIMessage("hello"), HumanMessage("again")]
    assert log_lines(backend, history)[1:] == [
        b'{"role":"user","content":"hi"}',
        b'{"role":"assistant","content":"hello"}',
        b'{"role":"user","content":"again"}',
    ]
    assert backend.lines(history) == log_lines(backend, history)


def test_clear_removes_messages_and_keeps_header_bytes(backend):
    history = backend.store().get_session_history("s1")
    history.add_messages([HumanMessage("hi"), AIMessage("hello")])
    header = log_lines(backend, history)[0]
    history.clear()
    assert history.messages == []
    assert log_bytes(backend, history) == header + b"\n"
    history.add_messages([HumanMessage("after")])
    assert history.messages == [HumanMessage("after")]
    assert log_lines(backend, history)[0] == header


def test_clear_before_any_write_creates_nothing(backend):
    store = backend.store()
    history = store.get_session_history("s1")
    history.clear()
    assert history.location is None
    assert history.file_path is None
    assert store.storage.names() == []
    if not backend.is_server:
        assert not store.root.exists() or list(store.root.glob("*.jsonl")) == []


def test_clear_keeps_fixture_header_byte_identical(backend):
    history = open_fixture(backend, COMPACT_FIXTURE)
    header = file_lines(COMPACT_FIXTURE)[0]
    history.clear()
    assert log_bytes(backend, history) == header + b"\n"
    assert history.messages == []
    assert history.session.extra == {"title": "Trip planning", "uptime_secs": 842}


async def test_async_add_get_clear(backend):
    history = backend.store().get_session_history("s1")
    await history.aadd_messages([HumanMessage("hi"), AIMessage("hello")])
    assert await history.aget_messages() == [HumanMessage("hi"), AIMessage("hello")]
    assert history.messages == await history.aget_messages()
    header = log_lines(backend, history)[0]
    await history.aclear()
    assert await history.aget_messages() == []
    assert log_bytes(backend, history) == header + b"\n"


async def _assert_loop_runs_while_blocked_in(storage, method, operation, monkeypatch):
    """Block ``storage.<method>`` in its thread until the event loop has ticked 5 times."""
    started, released = threading.Event(), threading.Event()
    seen: dict[str, object] = {}
    real = getattr(storage, method)
    ticks = 0

    def slow(*args, **kwargs):
        started.set()
        seen["released"] = released.wait(timeout=5)
        seen["ticks"] = ticks
        return real(*args, **kwargs)

    async def ticker():
        nonlocal ticks
        while not started.is_set():
            await asyncio.sleep(0.001)
        for _ in range(5):
            ticks += 1
            await asyncio.sleep(0)
        released.set()

    monkeypatch.setattr(storage, method, slow)
    task = asyncio.create_task(ticker())
    result = await operation()
    await task
    monkeypatch.undo()
    assert seen == {"released": True, "ticks": 5}, "the event loop was blocked"
    return result


# A directory has no async I/O: these block its sync calls in their worker thread.
async def test_aadd_messages_does_not_block_event_loop(tmp_path, monkeypatch):
    store = make_store(tmp_path)
    history = store.get_session_history("s1")
    await _assert_loop_runs_while_blocked_in(
        store.storage, "append", lambda: history.aadd_messages([HumanMessage("x")]), monkeypatch
    )
    assert history.messages == [HumanMessage("x")]


async def test_aget_messages_does_not_block_event_loop(tmp_path, monkeypatch):
    store = make_store(tmp_path)
    store.get_session_history("s1").add_messages([HumanMessage("x")])
    history = store.get_session_history("s1")
    result = await _assert_loop_runs_while_blocked_in(
        store.storage, "read", history.aget_messages, monkeypatch
    )
    assert result == [HumanMessage("x")]


async def test_aclear_does_not_block_event_loop(tmp_path, monkeypatch):
    store = make_store(tmp_path)
    history = store.get_session_history("s1")
    history.add_messages([HumanMessage("x")])
    await _assert_loop_runs_while_blocked_in(store.storage, "replace", history.aclear, monkeypatch)
    assert history.messages == []


SYNC_IO = ("names", "exists", "read_header", "read_headers", "create", "read", "append", "replace")


def _record_sync_io_on(storage, thread: int, monkeypatch) -> list[str]:
    """Spy on the blocking storage calls; return the list of those made on ``thread``."""
    made: list[str] = []

    def spy_on(method: str):
        real = getattr(storage, method)

        def spy(*args, **kwargs):
            if threading.get_ident() == thread:
                made.append(method)
            return real(*args, **kwargs)

        return spy

    for method in SYNC_IO:
        monkeypatch.setattr(storage, method, spy_on(method))
    return made


async def test_async_api_does_no_blocking_storage_io_on_the_event_loop(backend, monkeypatch):
    store = backend.store()
    history = store.get_session_history("s1")
    on_loop = _record_sync_io_on(store.storage, threading.get_ident(), monkeypatch)
    await history.aadd_messages([HumanMessage("hi"), AIMessage("hello")])
    await history.aadd_messages([HumanMessage("again")])
    backend.store().get_session_history("s1").add_messages([AIMessage("other")])
    assert contents(await history.aget_messages()) == ["hi", "hello", "again", "other"]
    await history.aclear()
    assert await history.aget_messages() == []
    assert on_loop == []
    assert store.storage.native_async == backend.is_server


def test_session_fields(backend):
    before = datetime.now(timezone.utc)
    history = backend.store().get_session_history("s1", agent="bot", created_by="tg:1")
    history.add_messages([HumanMessage("hi")])
    session = history.session
    assert (session.id, session.agent, session.created_by) == ("s1", "bot", "tg:1")
    assert history.session_id == "s1"
    assert session.created_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= session.created_at <= datetime.now(timezone.utc)
    assert session.file_path == history.file_path
    assert (session.file_path is None) == backend.is_server
    assert session.history == [CrabMessage(role="user", content="hi")]
    header = json.loads(log_lines(backend, history)[0])
    assert header["agent"] == "bot"
    assert header["created_by"] == "tg:1"
    assert header["session_id"] == "s1"


def test_created_at_header_never_changes(backend):
    history = backend.store().get_session_history("s1")
    history.add_messages([HumanMessage("one")])
    header = log_lines(backend, history)[0]
    created_at = history.session.created_at
    history.add_messages([AIMessage("two")])
    history.compact("summary")
    history.add_messages([HumanMessage("three")])
    history.clear()
    history.add_messages([HumanMessage("four")])
    history.compact("again")
    assert log_lines(backend, history)[0] == header
    assert history.session.created_at == created_at
    again = backend.store().get_session_history("s1")
    assert again.session.created_at == created_at


def test_append_only_adds_lines(backend):
    history = backend.store().get_session_history("s1")
    history.add_messages([HumanMessage("one"), AIMessage("two")])
    before = log_bytes(backend, history)
    history.add_messages([HumanMessage("three")])
    after = log_bytes(backend, history)
    assert after.startswith(before)
    assert after[len(before) :] == b'{"role":"user","content":"three"}\n'


def test_messages_returns_a_new_list_each_time(backend):
    history = backend.store().get_session_history("s1")
    history.add_messages([HumanMessage("one")])
    first = history.messages
    first.append(AIMessage("intruder"))
    first[0] = HumanMessage("changed")
    assert history.messages == [HumanMessage("one")]
    stored = history.stored_messages()
    stored.clear()
    assert history.stored_messages() == [HumanMessage("one")]
    assert history.messages is not history.messages


# --- other writers --------------------------------------------------------------


def test_another_instance_sees_writes(backend):
    one = backend.store().get_session_history("s1")
    one.add_messages([HumanMessage("from one")])
    two = backend.store().get_session_history("s1")
    assert two.messages == [HumanMessage("from one")]
    two.add_messages([AIMessage("from two")])
    assert one.messages == [HumanMessage("from one"), AIMessage("from two")]
    one.add_messages([HumanMessage("one again")])
    assert contents(two.messages) == ["from one", "from two", "one again"]


def test_session_deleted_by_another_store_starts_afresh(backend):
    old = backend.store().get_session_history("s1")
    old.add_messages([HumanMessage("before")])
    assert backend.store().delete_session("s1") is True
    assert old.messages == []
    old.add_messages([HumanMessage("after")])
    (name,) = storage_of(backend).names()
    assert log_lines(backend, name)[1:] == [b'{"role":"user","content":"after"}']
    assert contents(backend.store().get_session_history("s1").messages) == ["after"]


def test_session_deleted_under_a_writer_is_recreated_with_the_new_lines(backend):
    old = backend.store().get_session_history("s1")
    old.add_messages([HumanMessage("before")])
    backend.store().delete_session("s1")
    old.add_messages([HumanMessage("after")])  # no read in between
    assert contents(backend.store().get_session_history("s1").messages) == ["after"]
    assert len(storage_of(backend).names()) == 1


async def test_async_write_to_a_session_deleted_under_it_recreates_it(backend):
    old = backend.store().get_session_history("s1")
    await old.aadd_messages([HumanMessage("before")])
    backend.store().delete_session("s1")
    await old.aadd_messages([HumanMessage("after")])  # no read in between
    assert contents(await old.aget_messages()) == ["after"]
    assert contents(backend.store().get_session_history("s1").messages) == ["after"]
    assert len(storage_of(backend).names()) == 1


async def test_async_read_of_a_session_deleted_under_it_is_empty_and_creates_nothing(backend):
    old = backend.store().get_session_history("s1")
    await old.aadd_messages([HumanMessage("before")])
    backend.store().delete_session("s1")
    assert await old.aget_messages() == []
    assert storage_of(backend).names() == []


def test_a_reader_whose_log_another_caller_left_stops_reading_it(backend):
    """One thread reads on while another found the session deleted: the first must not spin."""
    history = backend.store().get_session_history("s1")
    history.add_messages([HumanMessage("before")])
    follower = history._current(create=False)
    assert follower is not None
    assert history._forgot(follower.log)  # what a caller that met the deletion does
    reader = threading.Thread(target=lambda: run(follower.read_on()), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive()
    assert contents(history.messages) == ["before"]  # the log still exists: found again


def freeze_clock(monkeypatch, moment: datetime) -> None:
    """Make new sessions see ``moment`` as now (their names hold its seconds)."""

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return moment

    monkeypatch.setattr(history_module, "datetime", Frozen)


def recreated_under_a_new_name(backend: Backend, monkeypatch) -> CrabChatMessageHistory:
    """A history of "s1" that another store deleted and, seconds later, created again."""
    moment = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
    freeze_clock(monkeypatch, moment)
    old = backend.store().get_session_history("s1")
    old.add_messages([HumanMessage("before")])
    old_location = old.location
    assert backend.store().delete_session("s1") is True
    freeze_clock(monkeypatch, moment + timedelta(seconds=5))  # a later second: another name
    backend.store().get_session_history("s1").add_messages([HumanMessage("new")])
    [name] = storage_of(backend).names()
    assert storage_of(backend).location(name) != old_location
    return old


def test_session_recreated_under_a_new_name_is_read_at_once(backend, monkeypatch):
    old = recreated_under_a_new_name(backend, monkeypatch)
    assert contents(old.messages) == ["new"]


async def test_async_read_finds_a_session_recreated_under_a_new_name(backend, monkeypatch):
    old = recreated_under_a_new_name(backend, monkeypatch)
    assert contents(await old.aget_messages()) == ["new"]


def test_clear_of_a_session_deleted_by_another_store_creates_nothing(backend):
    history = backend.store().get_session_history("s1")
    history.add_messages([HumanMessage("before")])
    assert backend.store().delete_session("s1") is True
    history.clear()
    assert history.messages == []
    assert storage_of(backend).names() == []
    history.add_messages([HumanMessage("after")])
    assert contents(backend.store().get_session_history("s1").messages) == ["after"]


async def test_aclear_of_a_session_deleted_by_another_store_creates_nothing(backend):
    history = backend.store().get_session_history("s1")
    history.add_messages([HumanMessage("before")])
    assert backend.store().delete_session("s1") is True
    await history.aclear()
    assert await history.aget_messages() == []
    assert storage_of(backend).names() == []
    await history.aadd_messages([HumanMessage("after")])
    assert contents(backend.store().get_session_history("s1").messages) == ["after"]


def test_archive_of_a_session_deleted_by_another_store_is_empty(backend):
    history = backend.store().get_session_history("s1")
    history.add_messages([HumanMessage("before")])
    history.compact("summary")
    assert backend.store().delete_session("s1") is True
    assert history.archive() == []
    assert history.messages == []


def test_file_opened_with_from_file_and_deleted_raises(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(HEADER + USER_A)
    history = CrabChatMessageHistory.from_file(path)
    path.unlink()
    with pytest.raises(FileNotFoundError):
        history.add_messages([HumanMessage("lost?")])
    with pytest.raises(FileNotFoundError):
        _ = history.messages


def test_instance_created_before_the_file_finds_it(backend):
    early = backend.store().get_session_history("s1")
    writer = backend.store().get_session_history("s1")
    writer.add_messages([HumanMessage("hi")])
    assert early.messages == [HumanMessage("hi")]
    early.add_messages([AIMessage("yo")])
    assert len(storage_of(backend).names()) == 1
    assert contents(writer.messages) == ["hi", "yo"]


def test_another_process_sees_writes_both_ways(backend):
    history = backend.store().get_session_history("s1")
    history.add_messages([HumanMessage("parent 1")])
    assert json.loads(run_python(READ_SCRIPT, *backend.argv, "s1")) == ["parent 1"]
    run_python(APPEND_SCRIPT, *backend.argv, "s1", "child 1", "child 2")
    assert contents(history.messages) == ["parent 1", "child 1", "child 2"]
    history.add_messages([AIMessage("parent 2")])
    assert json.loads(run_python(READ_SCRIPT, *backend.argv, "s1")) == [
        "parent 1",
        "child 1",
        "child 2",
        "parent 2",
    ]


def test_another_process_creates_the_session(backend):
    history = backend.store().get_session_history("s1")
    assert history.messages == []
    run_python(APPEND_SCRIPT, *backend.argv, "s1", "child")
    assert history.messages == [HumanMessage("child")]
    [name] = storage_of(backend).names()
    assert history.location == storage_of(backend).location(name)
    assert history.file_path == expected_file_path(backend, name)


def test_read_after_another_process_clear_reloads(backend):
    loads: list[list[str]] = []

    class AfterLoad:
        @hookimpl
        def crab_after_load(self, session, messages):
            loads.append(contents(list(messages)))

    history = backend.store([AfterLoad()]).get_session_history("s1")
    history.add_messages([HumanMessage("one"), AIMessage("two")])
    assert contents(history.messages) == ["one", "two"]
    loads.clear()
    assert contents(history.messages) == ["one", "two"]
    assert loads == []
    run_python(CLEAR_SCRIPT, *backend.argv, "s1")
    assert history.messages == []
    assert loads == [[]]
    history.add_messages([HumanMessage("three")])
    assert history.messages == [HumanMessage("three")]
    assert loads == [[]]


class AfterLoadRecorder:
    """Records ``(session id, contents)`` of every load."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, list[str]]] = []

    @hookimpl
    def crab_after_load(self, session, messages):
        self.loads.append((session.id, contents(list(messages))))


def test_after_load_called_on_first_load(backend):
    recorder = AfterLoadRecorder()
    backend.store().get_session_history("s1").add_messages([HumanMessage("x")])
    history = backend.store([recorder]).get_session_history("s1")
    assert recorder.loads == []
    history.messages  # noqa: B018 - the read is the point
    history.messages  # noqa: B018
    assert recorder.loads == [("s1", ["x"])]
    fixture = open_fixture(backend, FIXTURE_FILES[0], [recorder])
    assert len(recorder.loads) == 1
    fixture.messages  # noqa: B018
    assert recorder.loads[-1][0] == "7"
    assert len(recorder.loads) == 2


def test_after_load_called_when_from_file_opens(tmp_path):
    recorder = AfterLoadRecorder()
    path = copy_fixture(FIXTURE_FILES[0], tmp_path / "fx")
    CrabChatMessageHistory.from_file(path, [recorder])
    assert recorder.loads[-1][0] == "7"
    assert len(recorder.loads) == 1


# --- crabtalk fixtures -------------------------------------------------------------


@pytest.mark.parametrize("fixture", FIXTURE_FILES, ids=lambda p: p.name)
def test_from_file_reads_messages_as_crabtalk(tmp_path, fixture):
    path = copy_fixture(fixture, tmp_path)
    history = CrabChatMessageHistory.from_file(path)
    lines = [to_crab_message(m).to_line().encode() for m in history.messages]
    assert lines == expected_context(fixture)
    assert [m.to_line().encode() for m in history.session.history] == expected_context(fixture)
    assert path.read_bytes() == fixture.read_bytes()


@pytest.mark.parametrize("fixture", FIXTURE_FILES, ids=lambda p: p.name)
def test_fixture_in_store_reads_messages_as_crabtalk(backend, fixture):
    history = open_fixture(backend, fixture)
    lines = [to_crab_message(m).to_line().encode() for m in history.messages]
    assert lines == expected_context(fixture)
    assert [m.to_line().encode() for m in history.session.history] == expected_context(fixture)
    assert log_bytes(backend, fixture.name) == fixture.read_bytes()


def test_from_file_message_types_of_first_fixture(tmp_path):
    history = CrabChatMessageHistory.from_file(
        copy_fixture(FIXTURES / "crab_1774253211_7.jsonl", tmp_path)
    )
    messages = history.messages
    assert [type(m) for m in messages] == [
        SystemMessage,
        HumanMessage,
        AIMessage,
        ToolMessage,
        ToolMessage,
        AIMessage,
        HumanMessage,
        AIMessage,
    ]
    call = messages[2]
    assert isinstance(call, AIMessage)
    assert [c["args"] for c in call.tool_calls] == [
        {"city": "Lisbon", "unit": "C"},
        {"city": "Porto", "unit": "C"},
    ]
    assert messages[3].tool_call_id == "call_01"  # type: ignore[attr-defined]
    assert messages[5].content == "Lisbon: 21 °C and clear ☀️\nPorto: 17 °C with rain 🌧️"


def test_from_file_compact_fixture_working_context(tmp_path):
    history = CrabChatMessageHistory.from_file(copy_fixture(COMPACT_FIXTURE, tmp_path))
    messages = history.messages
    assert messages[0] == HumanMessage(
        "The user flies to Lisbon on Friday; day one is Alfama then Belém."
    )
    assert messages[1] == HumanMessage("Add a dinner spot, and ask the guide agent.")
    assert len(messages) == 7
    assert "I fly to Lisbon on Friday. Plan day one." not in contents(messages)
    assert messages[-1].content == "2026-04-02T19:41:00Z"


def test_from_file_custom_roles(tmp_path):
    history = CrabChatMessageHistory.from_file(
        copy_fixture(FIXTURES / "research_bot_1777593600_3.jsonl", tmp_path)
    )
    developer, critic = history.messages[:2]
    assert isinstance(developer, SystemMessage)
    assert developer.additional_kwargs.get("__openai_role__") == "developer"
    assert isinstance(critic, ChatMessage)
    assert critic.role == "critic"


FIXTURE_SESSIONS = {
    "crab_1774253211_7.jsonl": (
        "7",
        "crab",
        "user",
        datetime(2026, 3, 23, 8, 6, 51, 482913, tzinfo=timezone.utc),
    ),
    "crab_1775158803_12.jsonl": (
        "12",
        "crab",
        "tg:12345",
        datetime(2026, 4, 2, 19, 40, 3, 500000, tzinfo=timezone.utc),
    ),
    "research_bot_1777593600_3.jsonl": (
        "3",
        "research_bot",
        "research_bot",
        datetime(2026, 5, 1, tzinfo=timezone.utc),
    ),
}


@pytest.mark.parametrize(("name", "expected"), FIXTURE_SESSIONS.items())
def test_from_file_session_fields(tmp_path, name, expected):
    path = copy_fixture(FIXTURES / name, tmp_path)
    history = CrabChatMessageHistory.from_file(path)
    session = history.session
    assert history.session_id == expected[0]
    assert (session.id, session.agent, session.created_by, session.created_at) == expected
    assert session.file_path == path
    assert history.file_path == path


@pytest.mark.parametrize(("name", "expected"), FIXTURE_SESSIONS.items())
def test_fixture_in_store_session_fields(backend, name, expected):
    history = open_fixture(backend, FIXTURES / name)
    session = history.session
    assert history.session_id == expected[0]
    assert (session.id, session.agent, session.created_by, session.created_at) == expected
    assert session.file_path == expected_file_path(backend, name)
    assert history.file_path == expected_file_path(backend, name)


@pytest.mark.parametrize("fixture", FIXTURE_FILES, ids=lambda p: p.name)
def test_appending_to_a_fixture_keeps_every_earlier_byte(backend, fixture):
    history = open_fixture(backend, fixture)
    before = history.messages
    history.add_messages([HumanMessage("new question"), AIMessage("new answer")])
    data = log_bytes(backend, history)
    assert data.startswith(fixture.read_bytes())
    assert data[len(fixture.read_bytes()) :] == (
        b'{"role":"user","content":"new question"}\n{"role":"assistant","content":"new answer"}\n'
    )
    session_id, agent = FIXTURE_SESSIONS[fixture.name][:2]
    assert backend.store().get_session_history(session_id, agent=agent).messages == [
        *before,
        HumanMessage("new question"),
        AIMessage("new answer"),
    ]


def test_from_file_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        CrabChatMessageHistory.from_file(tmp_path / "crab_1_1.jsonl")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("one_at_a_time", [False, True], ids=["one-batch", "one-at-a-time"])
@pytest.mark.parametrize("fixture", PLAIN_FIXTURES, ids=lambda p: p.name)
def test_rewrite_through_langchain_is_byte_exact(backend, tmp_path, fixture, one_at_a_time):
    source = CrabChatMessageHistory.from_file(copy_fixture(fixture, tmp_path / "src"))
    storage_of(backend).create(fixture.name, file_lines(fixture)[0])  # the header alone
    session_id, agent = FIXTURE_SESSIONS[fixture.name][:2]
    target = backend.store().get_session_history(session_id, agent=agent)
    if one_at_a_time:
        for message in source.messages:
            target.add_message(message)
    else:
        target.add_messages(source.messages)
    assert log_bytes(backend, fixture.name) == fixture.read_bytes()
    assert target.messages == source.messages


# --- malformed files ---------------------------------------------------------------

MALFORMED = {
    "no header": (USER_A + ASSISTANT_B, 1),
    "header missing created_at": (b'{"agent":"crab","created_by":"user"}\n' + USER_A, 1),
    "header missing agent": (
        b'{"created_by":"user","created_at":"2026-03-23T08:06:51+00:00"}\n',
        1,
    ),
    "header agent not a string": (
        b'{"agent":1,"created_by":"user","created_at":"2026-03-23T08:06:51+00:00"}\n',
        1,
    ),
    "header bad time": (b'{"agent":"crab","created_by":"user","created_at":"yesterday"}\n', 1),
    "header not an object": (b"[1,2]\n" + USER_A, 1),
    "header not utf-8": (HEADER[:10] + b"\xff" + HEADER[10:], 1),
    "header incomplete": (HEADER[:-10], 1),
    "empty file": (b"", 1),
    "blank first line": (b"\n" + HEADER, 1),
    "line not json": (HEADER + USER_A + b'{"role":"user",\n' + ASSISTANT_B, 3),
    "line not utf-8": (HEADER + b'{"role":"user","content":"\xff\xfe"}\n', 2),
    "missing role": (HEADER + USER_A + b'{"content":"x"}\n', 3),
    "role not a string": (HEADER + b'{"role":5,"content":"x"}\n', 2),
    "empty role": (HEADER + b'{"role":""}\n', 2),
    "content not a string": (HEADER + USER_A + ASSISTANT_B + b'{"role":"user","content":5}\n', 4),
    "tool_calls not a list": (HEADER + b'{"role":"assistant","tool_calls":{"id":"c"}}\n', 2),
    "arguments not a string": (
        HEADER
        + b'{"role":"assistant","tool_calls":[{"id":"c","type":"function",'
        + b'"function":{"name":"f","arguments":{"a":1}}}]}\n',
        2,
    ),
    "line is an array": (HEADER + b"[1]\n", 2),
    "bad compact marker": (HEADER + USER_A + b'{"compact":5}\n', 3),
    "blank lines in the middle": (HEADER + USER_A + b"\n   \n" + ASSISTANT_B + b"nope\n", 6),
    "blank line then bad line": (HEADER + b"\n" + b'{"role":true}\n', 3),
}


@pytest.mark.parametrize(("data", "line"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_file_raises_with_path_and_line(tmp_path, data, line):
    path = tmp_path / "crab_1774253211_7.jsonl"
    path.write_bytes(data)
    with pytest.raises(SessionFormatError) as caught:
        CrabChatMessageHistory.from_file(path)
    error = caught.value
    assert error.line == line
    assert error.path == str(path)
    assert str(error).startswith(f"{path}:{line}: ")
    assert path.read_bytes() == data
    assert sorted(tmp_path.iterdir()) == [path]


def read_session_seven(backend: Backend) -> list[BaseMessage]:
    """Session "7" read by a new store (a bad header fails already when it is looked up)."""
    return backend.store().get_session_history("7").messages


@pytest.mark.parametrize(("data", "line"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_session_in_store_raises_with_place_and_line(backend, data, line):
    stored = seed_raw(backend, CRAB_NAME, data)
    location = storage_of(backend).location(CRAB_NAME)
    with pytest.raises(SessionFormatError) as caught:
        read_session_seven(backend)
    error = caught.value
    assert error.line == line
    assert error.path == location
    assert str(error).startswith(f"{location}:{line}: ")
    assert log_bytes(backend, CRAB_NAME) == stored
    assert storage_of(backend).names() == [CRAB_NAME]


def test_malformed_session_in_store_raises_on_read(backend):
    history = backend.store().get_session_history("s1")
    history.add_messages([HumanMessage("ok")])
    [name] = storage_of(backend).names()
    storage_of(backend).append(name, [b"", b"{not json}"])  # unchecked, as another writer might
    data = log_bytes(backend, history)
    fresh = backend.store().get_session_history("s1")
    for _ in range(2):  # a failed read is not remembered as a success
        with pytest.raises(SessionFormatError) as caught:
            fresh.messages  # noqa: B018
        assert caught.value.line == 4
        assert str(caught.value).startswith(f"{history.location}:4: ")
    assert log_bytes(backend, history) == data


def test_bad_line_from_another_writer_reports_absolute_line(backend):
    history = backend.store().get_session_history("s1")
    history.add_messages([HumanMessage("1"), AIMessage("2"), HumanMessage("3")])
    assert len(history.messages) == 3
    [name] = storage_of(backend).names()
    storage_of(backend).append(name, [b'{"role":"user","content":"4"}', b"", b'{"role":[]}'])
    with pytest.raises(SessionFormatError) as caught:
        history.messages  # noqa: B018
    assert caught.value.line == 7
    assert caught.value.path == history.location


# --- failed writes -----------------------------------------------------------------


def test_add_with_non_json_value_writes_nothing(backend):
    history = backend.store().get_session_history("s1")
    history.add_messages([HumanMessage("keep")])
    before = log_bytes(backend, history)
    bad = ToolMessage("result", tool_call_id="c1", artifact=object())
    with pytest.raises((TypeError, ValueError), match="artifact"):
        history.add_messages([HumanMessage("good"), bad, AIMessage("after")])
    assert log_bytes(backend, history) == before
    assert history.messages == [HumanMessage("keep")]
    history.add_messages([AIMessage("later")])
    assert history.messages == [HumanMessage("keep"), AIMessage("later")]
    assert backend.store().get_session_history("s1").messages == history.messages


def test_add_with_raising_before_persist_writes_nothing(backend):
    class Veto:
        armed = True

        @hookimpl
        def crab_before_persist(self, session, messages):
            if self.armed:
                raise RuntimeError("vetoed")

    veto = Veto()
    history = backend.store([veto]).get_session_history("s1")
    veto.armed = False
    history.add_messages([HumanMessage("keep")])
    before = log_bytes(backend, history)
    veto.armed = True
    with pytest.raises(RuntimeError, match="vetoed"):
        history.add_messages([HumanMessage("a"), AIMessage("b")])
    assert log_bytes(backend, history) == before
    assert history.messages == [HumanMessage("keep")]
    veto.armed = False
    history.add_messages([AIMessage("later")])
    assert history.messages == [HumanMessage("keep"), AIMessage("later")]


def test_failed_first_write_creates_no_file(backend):
    store = backend.store()
    history = store.get_session_history("s1")
    with pytest.raises((TypeError, ValueError)):
        history.add_messages([ToolMessage("r", tool_call_id="c", artifact=object())])
    assert history.location is None
    assert history.file_path is None
    assert store.storage.names() == []
    if not backend.is_server:
        assert not store.root.exists() or list(store.root.glob("*.jsonl")) == []


# --- torn tail ---------------------------------------------------------------------


def test_torn_last_line_is_kept_aside_and_repaired(tmp_path):
    history = make_store(tmp_path).get_session_history("s1")
    history.add_messages([HumanMessage("one"), AIMessage("two")])
    path = history.file_path
    torn = b'{"role":"user","content":"thr'
    with open(path, "ab") as file:
        file.write(torn)
    reader = make_store(tmp_path).get_session_history("s1")
    with pytest.warns(TornTailWarning):
        assert reader.messages == [HumanMessage("one"), AIMessage("two")]
    with pytest.warns(TornTailWarning):
        reader.add_messages([HumanMessage("three")])
    assert (tmp_path / "sessions" / (path.name + ".torn")).read_bytes() == torn + b"\n"
    lines = file_lines(path)
    assert len(lines) == 4
    for line in lines:
        json.loads(line)
    expected = [HumanMessage("one"), AIMessage("two"), HumanMessage("three")]
    assert make_store(tmp_path).get_session_history("s1").messages == expected
    assert history.messages == expected
    assert reader.messages == expected


# --- compaction --------------------------------------------------------------------


def test_compact_starts_a_new_working_context(backend):
    history = backend.store().get_session_history("s1")
    history.add_messages([HumanMessage("one"), AIMessage("two")])
    before = log_bytes(backend, history)
    history.compact("they said one and two")
    history.add_messages([HumanMessage("three")])
    expected = [HumanMessage("they said one and two"), HumanMessage("three")]
    assert history.messages == expected
    assert backend.store().get_session_history("s1").messages == expected
    data = log_bytes(backend, history)
    assert data.startswith(before)
    assert data[len(before) :] == (
        b'{"compact":"they said one and two"}\n{"role":"user","content":"three"}\n'
    )
    assert [m.content for m in history.session.history] == ["they said one and two", "three"]


def test_last_compact_marker_wins(backend):
    history = backend.store().get_session_history("s1")
    history.add_messages([HumanMessage("one")])
    history.compact("first")
    history.add_messages([HumanMessage("two")])
    history.compact("second")
    assert history.messages == [HumanMessage("second")]
    assert backend.store().get_session_history("s1").messages == [HumanMessage("second")]
    assert len(log_lines(backend, history)) == 5


def test_compact_on_fixture_keeps_archive(backend):
    history = open_fixture(backend, COMPACT_FIXTURE)
    history.compact("newer summary")
    assert history.messages == [HumanMessage("newer summary")]
    assert log_bytes(backend, history) == (
        COMPACT_FIXTURE.read_bytes() + b'{"compact":"newer summary"}\n'
    )


# --- hooks -------------------------------------------------------------------------


class Audit:
    """Keeps injected messages (audit) and drops anything mentioning SECRET."""

    @hookimpl
    def crab_filter_message(self, session, message):
        if "SECRET" in message.content:
            return False
        return True if message.auto_injected else None


def test_audit_plugin_writes_injected_but_reading_skips_them(backend):
    history = backend.store([Audit()]).get_session_history("s1")
    injected = mark_auto_injected(SystemMessage("recalled memory"))
    history.add_messages([injected, HumanMessage("question")])
    lines = log_lines(backend, history)[1:]
    assert len(lines) == 2
    assert b"recalled memory" in lines[0]
    assert history.messages == [HumanMessage("question")]
    assert backend.store().get_session_history("s1").messages == [HumanMessage("question")]


def test_filter_plugin_drops_secrets(backend):
    history = backend.store([Audit()]).get_session_history("s1")
    history.add_messages([HumanMessage("my SECRET is 42"), AIMessage("noted"), HumanMessage("ok")])
    assert history.messages == [AIMessage("noted"), HumanMessage("ok")]
    assert b"SECRET" not in log_bytes(backend, history)


def test_filter_dropping_everything_creates_no_file(backend):
    store = backend.store([Audit()])
    history = store.get_session_history("s1")
    history.add_messages([HumanMessage("SECRET")])
    assert history.location is None
    assert history.file_path is None
    assert history.messages == []
    assert store.storage.names() == []


def test_default_plugin_never_writes_injected(backend):
    history = backend.store().get_session_history("s1")
    history.add_messages([mark_auto_injected(HumanMessage("injected")), HumanMessage("real")])
    assert b"injected" not in log_bytes(backend, history)
    assert history.messages == [HumanMessage("real")]


def test_before_persist_redacts_in_place(backend):
    class Redact:
        @hookimpl
        def crab_before_persist(self, session, messages):
            for message in messages:
                message.content = message.content.replace("hunter2", "*****")
            messages[:] = [m for m in messages if m.content != "drop me"]

    history = backend.store([Redact()]).get_session_history("s1")
    history.add_messages([HumanMessage("pw is hunter2"), HumanMessage("drop me"), AIMessage("ok")])
    assert b"hunter2" not in log_bytes(backend, history)
    assert log_lines(backend, history)[1:] == [
        b'{"role":"user","content":"pw is *****"}',
        b'{"role":"assistant","content":"ok"}',
    ]
    assert history.messages == [HumanMessage("pw is *****"), AIMessage("ok")]


def test_session_created_called_once_per_new_file(backend):
    created: list[str] = []

    class Created:
        @hookimpl
        def crab_session_created(self, session):
            created.append(session.id)

    store = backend.store([Created()])
    history = store.get_session_history("s1")
    history.messages  # noqa: B018
    assert created == []
    history.add_messages([HumanMessage("one")])
    history.add_messages([HumanMessage("two")])
    store.get_session_history("s1").add_messages([HumanMessage("three")])
    history.clear()
    history.add_messages([HumanMessage("four")])
    assert created == ["s1"]
    store.get_session_history("s2").add_messages([HumanMessage("x")])
    assert created == ["s1", "s2"]


class Injector:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def crab_inject_messages(self, session, history):
        self.calls += 1
        return [SystemMessage(f"recall #{self.calls} of {len(history)}")]


class SecondInjector:
    @hookimpl
    def crab_inject_messages(self, session, history):
        return [HumanMessage("second plugin")]


def test_injected_messages_are_marked_and_last(backend):
    injector = Injector()
    history = backend.store([injector]).get_session_history("s1")
    history.add_messages([HumanMessage("q"), AIMessage("a")])
    messages = history.messages
    assert messages[:2] == [HumanMessage("q"), AIMessage("a")]
    assert len(messages) == 3
    assert messages[2].content == "recall #1 of 2"
    assert is_auto_injected(messages[2])
    assert not any(is_auto_injected(m) for m in messages[:2])
    assert history.stored_messages() == [HumanMessage("q"), AIMessage("a")]


def test_results_of_all_injectors_are_concatenated(backend):
    history = backend.store([Injector(), SecondInjector()]).get_session_history("s1")
    injected = history.messages
    assert sorted(contents(injected)) == ["recall #1 of 0", "second plugin"]
    assert all(is_auto_injected(m) for m in injected)


def test_injection_is_stable_without_a_write_and_fresh_after(backend):
    injector = Injector()
    history = backend.store([injector]).get_session_history("s1")
    history.add_messages([HumanMessage("q")])
    first = history.messages
    second = history.messages
    assert first == second
    assert injector.calls == 1
    assert first[-1].content == "recall #1 of 1"
    history.add_messages([AIMessage("a")])
    third = history.messages
    assert injector.calls == 2
    assert third[-1].content == "recall #2 of 2"
    assert contents(third[:-1]) == ["q", "a"]


async def test_async_reads_get_the_same_injection(backend):
    injector = Injector()
    history = backend.store([injector]).get_session_history("s1")
    history.add_messages([HumanMessage("q")])
    assert await history.aget_messages() == history.messages
    assert injector.calls == 1


def test_injection_after_another_writer_is_fresh(backend):
    injector = Injector()
    history = backend.store([injector]).get_session_history("s1")
    history.add_messages([HumanMessage("q")])
    assert history.messages[-1].content == "recall #1 of 1"
    backend.store().get_session_history("s1").add_messages([AIMessage("a")])
    assert history.messages[-1].content == "recall #2 of 2"


def test_injected_messages_do_not_accumulate_across_turns(backend):
    injector = Injector()
    history = backend.store([injector]).get_session_history("s1")
    for turn in range(3):
        context = history.messages
        assert sum(is_auto_injected(m) for m in context) == 1
        assert is_auto_injected(context[-1])
        # a careless caller writes back everything it saw plus the new turn
        history.add_messages([context[-1], HumanMessage(f"q{turn}"), AIMessage(f"a{turn}")])
    stored = history.stored_messages()
    assert contents(stored) == ["q0", "a0", "q1", "a1", "q2", "a2"]
    assert len(log_lines(backend, history)) == 7
    assert b"recall" not in log_bytes(backend, history)
    assert b"crab_auto_injected" not in log_bytes(backend, history)


def test_runnable_with_message_history_writes_no_injected_messages(backend):
    injector = Injector()
    store = backend.store([injector])
    seen: list[list[BaseMessage]] = []

    def model(messages: list[BaseMessage]) -> AIMessage:
        seen.append(list(messages))
        return AIMessage(f"answer {len(seen)}")

    chain = RunnableWithMessageHistory(RunnableLambda(model), store.get_session_history)
    config = {"configurable": {"session_id": "chat"}}
    for turn in range(3):
        chain.invoke([HumanMessage(f"question {turn}")], config=config)
    assert is_auto_injected(seen[2][-2])
    assert seen[2][-1] == HumanMessage("question 2")
    assert sum(is_auto_injected(m) for m in seen[2]) == 1
    history = store.get_session_history("chat")
    assert contents(history.stored_messages()) == [
        "question 0",
        "answer 1",
        "question 1",
        "answer 2",
        "question 2",
        "answer 3",
    ]
    assert b"recall" not in log_bytes(backend, history)


def test_reader_sees_two_clears_by_another_instance(backend):
    writer = backend.store().get_session_history("s1")
    writer.add_messages([HumanMessage("first")])
    writer.clear()  # from here on, ext4 tends to alternate two inodes
    writer.add_messages([HumanMessage("old")])
    reader = backend.store().get_session_history("s1")
    assert reader.messages == [HumanMessage("old")]
    reader_inode = None if backend.is_server else writer.file_path.stat().st_ino
    for _ in range(20):  # clear until the file system hands the reader's inode back
        writer.clear()
        if reader_inode is None or writer.file_path.stat().st_ino == reader_inode:
            break
    writer.add_messages([HumanMessage("new"), HumanMessage("more")])
    assert reader.messages == [HumanMessage("new"), HumanMessage("more")]


def test_reader_notices_crabtalk_rewriting_the_file_in_place(tmp_path):
    """crabtalk's persist() truncates and rewrites the same file, with a new created_at."""
    path = tmp_path / "crab_1774253211_7.jsonl"
    path.write_bytes(HEADER + USER_A)
    reader = CrabChatMessageHistory.from_file(path)
    assert reader.messages == [HumanMessage("a")]
    rewritten = HEADER.replace(b"482913+00:00", b"482913000+00:00")
    with open(path, "r+b") as file:
        file.truncate(0)
        file.write(rewritten + USER_A + ASSISTANT_B)
    assert reader.messages == [HumanMessage("a"), AIMessage("b")]


def test_any_messages_written_read_back_equal_by_a_new_store(backend):
    writers, readers = backend.store(), backend.store()
    runs = iter(range(1_000_000))

    # Inside the test so each backend sets its own budget: a Redis round trip costs more.
    @settings(max_examples=30 if backend.is_server else 60, deadline=None)
    @given(batches=st.lists(st.lists(MESSAGES, min_size=1, max_size=4), min_size=1, max_size=3))
    def written_and_read_back(batches):
        session_id = f"prop-{next(runs)}"  # a session neither store has seen
        writer = writers.get_session_history(session_id)
        for batch in batches:
            writer.add_messages(batch)
        written = [message for batch in batches for message in batch]
        reader = readers.get_session_history(session_id)
        assert reader.messages == written
        assert writer.messages == written

    written_and_read_back()


FULL_DISK_SCRIPT = """
import resource, signal, sys
from pathlib import Path
from langchain_core.messages import HumanMessage
from crab_langchain import SessionStore
history = SessionStore(sys.argv[1], entry_points=False).get_session_history("s")
history.add_messages([HumanMessage("kept 1"), HumanMessage("kept 2")])
size = history.file_path.stat().st_size
# The kernel refuses to grow the file past the limit, as a full disk would.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, size + 100))
try:
    history.add_messages([HumanMessage("x" * 10_000)])
except OSError as error:
    print(error)
print(history.file_path.stat().st_size - size)
"""


def test_write_refused_by_the_disk_names_the_file_and_leaves_no_partial_line(tmp_path):
    out = run_python(FULL_DISK_SCRIPT, str(tmp_path)).splitlines()
    (path,) = tmp_path.glob("*.jsonl")
    assert "File too large" in out[0]
    assert str(path) in out[0]
    assert out[1] == "0"  # the 100 bytes that did fit were truncated away
    history = CrabChatMessageHistory.from_file(path)
    assert contents(history.messages) == ["kept 1", "kept 2"]


def test_a_text_message_added_is_built_when_first_read_and_shares_nothing(backend, monkeypatch):
    """add_messages keeps a call per text message, not a second message, until someone reads."""
    history = backend.store().get_session_history("s1")
    given = [HumanMessage("one"), AIMessage("two")]
    expected = [HumanMessage("one"), AIMessage("two")]
    built: list[str] = []
    real = AIMessage.__init__

    def counted(self: AIMessage, *args: object, **kwargs: object) -> None:
        built.append(kwargs.get("content", args[0] if args else None))
        real(self, *args, **kwargs)

    monkeypatch.setattr(AIMessage, "__init__", counted)
    history.add_messages(given)
    assert built == []  # nothing built on the way in
    given[1].content = "changed by the caller"
    given[1].additional_kwargs["k"] = 1
    assert history.messages == expected
    assert built == ["two"]  # once, when first read
    assert history.messages[1] is not given[1]
    history.messages  # noqa: B018 - read again: nothing built again
    assert built == ["two"]
