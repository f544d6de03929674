"""The working-context layer (``context.py``): the context, the one follower, the cache of them."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from crab_langchain.context import (
    Followed,
    Follower,
    ReadOnlyMessages,
    WorkingContext,
    read_context,
)
from crab_langchain.log import SessionLog
from crab_langchain.models import SessionFormatError
from crab_langchain.steps import arun, run
from crab_langchain.storage import DirectoryStorage

HEADER = b'{"agent":"crab","created_by":"user","created_at":"2026-03-23T08:06:51.482913+00:00"}'
NAME = "crab_1774253211_7.jsonl"


def line(text: str) -> bytes:
    return b'{"role":"user","content":"%s"}' % text.encode()


@pytest.fixture
def log(tmp_path: Path) -> SessionLog:
    made = SessionLog(DirectoryStorage(tmp_path), NAME)
    made.create(HEADER)
    return made


def contents(messages: Any) -> list[Any]:
    return [m.content for m in messages]


def test_the_context_starts_at_the_last_marker_and_tells_earlier_states(log: SessionLog):
    log.append([line("a"), b'{"compact":"sum"}', line("b"), line("c")])
    context = read_context(log)
    assert contents(context.messages) == ["sum", "b", "c"]
    assert list(context.lines) == [3, 4, 5]
    as_of = context.as_of(4)
    assert as_of is not None
    assert contents(as_of[0]) == ["sum", "b"]
    assert context.as_of(2) is None  # before the marker: another context


def test_a_malformed_line_resets_the_context_and_names_the_line(log: SessionLog):
    log.append([line("a"), b'{"role":'])
    context = WorkingContext()
    chunk = log.read(None)
    assert chunk is not None
    with pytest.raises(SessionFormatError) as raised:
        context.take(log, chunk)
    assert raised.value.line == 3
    assert context.cursor is None  # the next read starts again from line 1
    assert context.messages == []


def test_a_follower_reads_on_from_its_cursor_only(log: SessionLog, monkeypatch):
    follower = Follower(log, "7")
    log.append([line("a")])
    run(follower.read_on())
    reads: list[Any] = []
    real = log.storage.read
    monkeypatch.setattr(log.storage, "read", lambda n, c: reads.append(c) or real(n, c))
    log.append([line("b")])
    chunk = run(follower.read_on())
    assert chunk is not None
    assert [number for number, _ in chunk.lines] == [3]
    assert reads[0] is not None  # from its cursor, not from line 1
    assert contents(follower.context.messages) == ["a", "b"]


def test_a_follower_takes_a_read_only_if_nobody_moved_meanwhile(log: SessionLog):
    follower = Follower(log, "7")
    log.append([line("a")])
    stale = log.read(None)
    run(follower.read_on())
    log.append([line("b")])
    run(follower.read_on())
    assert not follower.take(None, stale)  # read from a cursor another reader moved on from
    assert contents(follower.context.messages) == ["a", "b"]


def test_a_follower_takes_its_own_lines_unread_only_if_they_follow_its_cursor(log: SessionLog):
    follower = Follower(log, "7")
    run(follower.read_on())
    at = follower.cursor
    after = log.append([line("a")], at)
    assert follower.take_appended(at, [line("a")], None, after)
    assert contents(follower.context.messages) == ["a"]
    other = log.append([line("b")], None)  # someone else's: not known to follow
    assert not follower.take_appended(follower.cursor, [line("b")], None, other)


async def test_a_follower_reads_on_the_same_way_async(log: SessionLog):
    follower = Follower(log, "7")
    log.append([line(str(n)) for n in range(1500)])  # long enough to parse off the loop
    chunk = await arun(follower.read_on())
    assert chunk is not None
    assert len(follower.context.messages) == 1500


def test_a_load_is_told_once_with_a_read_only_view(log: SessionLog):
    told: list[Any] = []

    class Hook:
        def get_hookimpls(self) -> list[object]:
            return [object()]

        def __call__(self, session: Any, messages: Any) -> None:
            told.append((session.id, messages))

    follower = Follower(log, "7", after_load=Hook)
    log.append([line("a")])
    run(follower.read_on())
    run(follower.read_on())  # nothing new: no load
    ((session_id, view),) = told
    assert session_id == "7"
    assert isinstance(view, ReadOnlyMessages)
    assert contents(view) == ["a"]
    with pytest.raises(TypeError):
        view[0] = HumanMessage("x")  # type: ignore[index]


def test_the_session_told_is_made_once_per_state_of_the_context(log: SessionLog):
    follower = Follower(log, "7")
    with pytest.raises(SessionFormatError, match="not read"):
        follower.session()
    run(follower.read_on())
    first = follower.session()
    assert follower.session() is first
    log.append([line("a")])
    run(follower.read_on())
    again = follower.session()
    assert again is not first
    assert [m.content for m in again.history] == ["a"]
    assert again.agent == "crab"


def test_followed_keeps_the_most_recently_used_and_makes_outside_its_lock():
    kept: Followed[object] = Followed(2)
    made = [object() for _ in range(3)]
    for index in range(3):
        assert kept.get(index, lambda index=index: made[index]) is made[index]
    assert kept.get(0, lambda: None) is None  # the oldest went
    assert kept.get(2, lambda: None) is made[2]
    inside: list[bool] = []

    def make() -> object:
        inside.append(kept._lock.acquire(blocking=False))  # free while making (I/O)
        kept._lock.release()
        return object()

    kept.get("new", make)
    assert inside == [True]


def test_followed_forgets_only_what_it_was_told_to():
    kept: Followed[object] = Followed()
    old, new = object(), object()
    kept.get("t", lambda: old)
    kept.forget("t", old)
    kept.get("t", lambda: new)
    kept.forget("t", old)  # a reader that met the deletion late: the new one stays
    assert kept.get("t", lambda: None) is new


def test_followers_of_one_log_in_threads_agree(log: SessionLog):
    follower = Follower(log, "7")
    log.append([line(str(n)) for n in range(200)])
    threads = [threading.Thread(target=lambda: run(follower.read_on())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert contents(follower.context.messages) == [str(n) for n in range(200)]


def test_a_load_nobody_listens_to_builds_no_session(log: SessionLog, monkeypatch):
    """Telling a load costs a conversion of every message: only for a plugin that listens."""
    import crab_langchain.context as context_module

    converted: list[Any] = []
    monkeypatch.setattr(context_module, "to_crab_message", converted.append)

    class Unheard:
        def get_hookimpls(self) -> list[object]:
            return []

    log.append([line(str(n)) for n in range(50)])
    run(Follower(log, "7", after_load=Unheard).read_on())
    run(Follower(log, "7").read_on())
    assert converted == []
