"""Opening a session: the factory does no I/O; a look-up does not scan the directory each time."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from crab_langchain import DirectoryStorage, SessionStore
from crab_langchain.storage import directory, listing

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# The storage's blocking calls (its async twins, aread and the like, may run on the loop).
BLOCKING = {
    "names",
    "exists",
    "read_header",
    "read_headers",
    "sizes",
    "create",
    "read",
    "append",
    "append_at",
    "replace",
    "replace_at",
    "delete",
    "creation_lock",
}


class Recording(DirectoryStorage):
    """A directory storage that records, for every blocking call, its name and its thread."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: list[tuple[str, threading.Thread]] = []

    def __getattribute__(self, name: str) -> Any:
        attribute = super().__getattribute__(name)
        if name in BLOCKING:

            def recorded(*args: Any, **kwargs: Any) -> Any:
                self.calls.append((name, threading.current_thread()))
                return attribute(*args, **kwargs)

            return recorded
        return attribute


def test_the_factory_touches_no_storage(tmp_path: Path):
    storage = Recording(tmp_path)
    store = SessionStore(backend=storage, entry_points=False)
    store.get_session_history("old").add_messages([HumanMessage("hi")])
    storage.calls.clear()
    for session_id in ("old", "new", "other"):
        store.get_session_history(session_id)
    assert storage.calls == []


def test_the_factory_does_no_file_system_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = SessionStore(tmp_path, entry_points=False)
    store.get_session_history("old").add_messages([HumanMessage("hi")])

    calls: list[str] = []
    for name in ("scandir", "stat", "open", "listdir"):
        monkeypatch.setattr(os, name, lambda *args, name=name, **kwargs: calls.append(name))
    try:
        history = store.get_session_history("old")
        store.get_session_history("new")
    finally:
        monkeypatch.undo()
    assert calls == []
    assert [m.content for m in history.messages] == ["hi"]


def chain(store: SessionStore) -> RunnableWithMessageHistory:
    prompt = ChatPromptTemplate.from_messages(
        [MessagesPlaceholder("history"), ("human", "{question}")]
    )
    model = FakeListChatModel(responses=["one", "two", "three"])
    return RunnableWithMessageHistory(
        prompt | model,
        store.get_session_history,
        input_messages_key="question",
        history_messages_key="history",
    )


def test_ainvoke_keeps_storage_off_the_event_loop(tmp_path: Path):
    storage = Recording(tmp_path)
    store = SessionStore(backend=storage, entry_points=False)
    runnable = chain(store)

    async def talk() -> threading.Thread:
        config: Any = {"configurable": {"session_id": "s"}}
        await runnable.ainvoke({"question": "hi"}, config)
        await runnable.ainvoke({"question": "again"}, config)
        return threading.current_thread()

    loop_thread = asyncio.run(talk())
    on_loop = sorted({name for name, thread in storage.calls if thread is loop_thread})
    assert on_loop == []
    assert {name for name, _ in storage.calls} >= {"names", "create", "read", "append"}
    history = store.get_session_history("s")
    assert isinstance(history, BaseChatMessageHistory)
    assert [m.content for m in history.messages] == ["hi", "one", "again", "two"]


def count_scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    scans: list[str] = []
    real = os.scandir

    def scandir(path: Any) -> Any:
        scans.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(directory.os, "scandir", scandir)
    return scans


def settle(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Move the storage's clock on by ``seconds``."""
    real = listing.time.monotonic
    monkeypatch.setattr(listing.time, "monotonic", lambda: real() + seconds)


def test_looking_up_new_ids_scans_once_the_listing_has_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    store = SessionStore(tmp_path, entry_points=False)
    store.get_session_history("a").add_messages([HumanMessage("hi")])
    scans = count_scans(monkeypatch)
    assert store.find("new-1") is None
    settle(monkeypatch, 5)
    assert store.find("new-2") is None  # scans again: the listing could have been racy
    scans.clear()
    for n in range(20):
        assert store.find(f"unknown-{n}") is None
        assert [m.content for m in store.get_session_history(f"x{n}").messages] == []
    assert store.find("a") is not None
    assert scans == []


def test_a_session_another_process_creates_is_found_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    store = SessionStore(tmp_path, entry_points=False)
    store.get_session_history("a").add_messages([HumanMessage("hi")])
    settle(monkeypatch, 5)
    assert store.find("b") is None
    assert store.find("b") is None  # the listing is settled now
    code = (
        "import sys; from crab_langchain import SessionStore; "
        "from langchain_core.messages import AIMessage; "
        "SessionStore(sys.argv[1], entry_points=False)"
        ".get_session_history('b').add_messages([AIMessage('from elsewhere')])"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    assert [m.content for m in store.get_session_history("b").messages] == ["from elsewhere"]


def test_a_session_made_in_the_same_time_stamp_tick_is_found_at_once_through_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A session this library makes is in the journal: found though the directory looks the same."""
    store = SessionStore(tmp_path, entry_points=False)
    store.get_session_history("a").add_messages([HumanMessage("hi")])
    frozen = listing.DirStamp.of(os.stat(tmp_path))  # as a coarse clock would leave it
    monkeypatch.setattr(listing.DirStamp, "of", classmethod(lambda cls, st: frozen))
    assert store.find("b") is None
    other = SessionStore(tmp_path, entry_points=False)  # another process's store, in effect
    assert other.find("b") is None
    scans = count_scans(monkeypatch)
    other.get_session_history("b").add_messages([AIMessage("same tick")])
    assert store.find("b") is not None
    assert scans == []


def test_a_file_another_program_adds_in_the_same_tick_is_found_within_the_settling_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A file no journal tells of, added without changing the directory's stat: the next scan."""
    store = SessionStore(tmp_path, entry_points=False)
    store.get_session_history("a").add_messages([HumanMessage("hi")])
    frozen = listing.DirStamp.of(os.stat(tmp_path))  # as a coarse clock would leave it
    monkeypatch.setattr(listing.DirStamp, "of", classmethod(lambda cls, st: frozen))
    assert store.find("b") is None
    other = SessionStore(tmp_path / "elsewhere", entry_points=False)
    other.get_session_history("b").add_messages([AIMessage("same tick")])
    (made,) = (tmp_path / "elsewhere").glob("*.jsonl")
    os.rename(made, tmp_path / made.name)
    settle(monkeypatch, listing.SETTLED)
    assert store.find("b") == made.name


def test_a_file_another_program_adds_is_found_at_once_when_the_directory_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The directory changed after the journal last did: not ours to explain, so it is scanned."""
    store = SessionStore(tmp_path, entry_points=False)
    store.get_session_history("a").add_messages([HumanMessage("hi")])
    assert store.find("b") is None
    other = SessionStore(tmp_path / "elsewhere", entry_points=False)
    other.get_session_history("b").add_messages([AIMessage("copied in by hand")])
    (made,) = (tmp_path / "elsewhere").glob("*.jsonl")
    time.sleep(0.02)  # past the clock tick of the journal's last line
    os.rename(made, tmp_path / made.name)
    assert store.find("b") == made.name


def test_a_busy_directory_is_not_scanned_per_look_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Another process makes a session every 100 ms; look-ups follow the journal, not scans."""
    store = SessionStore(tmp_path, entry_points=False)
    for n in range(50):
        store.get_session_history(f"old-{n}").add_messages([HumanMessage(str(n))])
    maker = subprocess.Popen([sys.executable, "-c", _MAKER, str(tmp_path), "10"])
    try:
        deadline = time.monotonic() + 120
        while store.find("busy-0") is None:  # its interpreter starts (slow on a loaded machine)
            assert time.monotonic() < deadline, "the other process made no session"
            time.sleep(0.05)
        scans = count_scans(monkeypatch)
        seen: set[str] = set()
        started = time.monotonic()
        while maker.poll() is None:
            assert store.find("old-7") is not None
            assert store.find(f"new-{len(seen)}") is None
            seen.update(n for n in store.storage.names() if "busy" in n)
            time.sleep(0.01)
        elapsed = time.monotonic() - started
    finally:
        maker.wait(timeout=120)
    assert len(seen) >= 5  # the other process's sessions were seen as they came
    assert len(scans) <= elapsed / listing.SETTLED + 1  # one a settling time, not one a look-up
    assert store.find("busy-9") is not None
    fresh = SessionStore(tmp_path, entry_points=False)
    assert sorted(store.storage.names()) == sorted(fresh.storage.names())


_MAKER = """
import sys, time
from langchain_core.messages import HumanMessage
from crab_langchain import SessionStore
store = SessionStore(sys.argv[1], entry_points=False)
for n in range(int(sys.argv[2])):
    store.get_session_history(f"busy-{n}").add_messages([HumanMessage("hi")])
    time.sleep(0.1)
"""


def test_a_session_deleted_elsewhere_leaves_the_listing_at_once(tmp_path: Path):
    store = SessionStore(tmp_path, entry_points=False)
    for session_id in ("a", "b"):
        store.get_session_history(session_id).add_messages([HumanMessage(session_id)])
    before, deleted = store.storage.names(), store.find("a")
    other = SessionStore(tmp_path, entry_points=False)
    assert other.delete_session("a")
    assert len(before) == 2
    assert store.storage.names() == [name for name in before if name != deleted]
    assert store.find("a") is None


def test_a_journal_grown_past_its_limit_starts_afresh_and_nothing_is_missed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(listing, "_JOURNAL_LIMIT", 200)
    store = SessionStore(tmp_path, entry_points=False)
    other = SessionStore(tmp_path, entry_points=False)
    for n in range(30):
        other.get_session_history(f"s{n}").add_messages([HumanMessage(str(n))])
        assert store.find(f"s{n}") is not None
        if n % 7 == 0:
            settle(monkeypatch, listing.SETTLED * (n + 1))  # a scan, which may start afresh
    assert (tmp_path / listing.JOURNAL).stat().st_size < 400
    assert len(store.storage.names()) == 30


def test_a_settled_listing_finds_every_session_as_a_fresh_scan_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    ids = ["1", "11", "a_1", "1.jsonl", "x/1", "lisbon trip", "ü", "_1", "crab_1"]
    store = SessionStore(tmp_path, entry_points=False)
    for session_id in ids:
        for agent in ("crab", "other"):
            store.get_session_history(session_id, agent).add_messages([HumanMessage(session_id)])
    store.find("warm-up")
    settle(monkeypatch, 5)
    store.find("warm-up")
    scans = count_scans(monkeypatch)
    asked = [(session_id, agent) for session_id in [*ids, "2", "", "jsonl"] for agent in AGENTS]
    found = [store.find(session_id, agent) for session_id, agent in asked]
    suffixes = [sorted(store.storage.names(suffix=f"{i}.jsonl")) for i in [*ids, "2", ""]]
    assert scans == []  # all from the kept listing
    fresh = SessionStore(tmp_path, entry_points=False)  # a new listing, never settled
    assert found == [fresh.find(session_id, agent) for session_id, agent in asked]
    assert suffixes == [sorted(fresh.storage.names(suffix=f"{i}.jsonl")) for i in [*ids, "2", ""]]
    assert sum(name is not None for name in found) == 2 * len(ids)


AGENTS = ("crab", "other", "none")


def test_a_look_up_by_suffix_does_not_walk_every_name():
    """The index bisects to the names that end so: it never iterates from the first name."""

    class NoWalking(list):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            raise AssertionError("walked the names from the first")

    names = tuple(f"crab_{n}_other-{n}.jsonl" for n in range(2_000))
    scan = listing.Scan((*names, "crab_7_target.jsonl"))
    assert scan.ending("target.jsonl") == ["crab_7_target.jsonl"]  # builds the index
    scan._index._reversed = NoWalking(scan._index._reversed)  # type: ignore[union-attr]
    assert scan.ending("other-1999.jsonl") == ["crab_1999_other-1999.jsonl"]
    assert scan.ending("nothing.jsonl") == []
