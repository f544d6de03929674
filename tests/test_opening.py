"""Opening a session: the factory does no I/O; a look-up does not scan the directory each time."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from crab_langchain import DirectoryStorage, SessionStore
from crab_langchain.storage import directory

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
    real = directory.time.monotonic
    monkeypatch.setattr(directory.time, "monotonic", lambda: real() + seconds)


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


def test_a_change_in_the_same_time_stamp_tick_is_not_missed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A file added without changing the directory's stat is seen until the listing settles."""
    store = SessionStore(tmp_path, entry_points=False)
    store.get_session_history("a").add_messages([HumanMessage("hi")])
    frozen = directory._DirStamp.of(os.stat(tmp_path))  # as a coarse clock would leave it
    monkeypatch.setattr(directory._DirStamp, "of", classmethod(lambda cls, st: frozen))
    assert store.find("b") is None
    assert store.find("b") is None  # a second scan, within the settling time
    other = SessionStore(tmp_path / "elsewhere", entry_points=False)
    other.get_session_history("b").add_messages([AIMessage("same tick")])
    (made,) = (tmp_path / "elsewhere").glob("*.jsonl")
    os.rename(made, tmp_path / made.name)
    assert store.find("b") == made.name


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
