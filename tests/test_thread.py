"""``checkpoint/thread.py``: what one saver knows of one thread's side log, and how it reads on."""

from __future__ import annotations

from pathlib import Path

from crab_langchain.checkpoint.sidelog import SIDE_KIND, side_header
from crab_langchain.checkpoint.thread import Thread
from crab_langchain.context import Follower
from crab_langchain.log import SessionLog, header_identity
from crab_langchain.storage import DirectoryStorage, companion_name

HEADER = b'{"agent":"crab","created_by":"user","created_at":"2026-03-23T08:06:51.482913+00:00"}'
NAME = "crab_1774253211_7.jsonl"
WRITES = b'{"writes":{"ns":"","checkpoint":"c","task":"t","path":"","items":[]}}'


def thread_at(tmp_path: Path) -> Thread:
    storage = DirectoryStorage(tmp_path)
    session = SessionLog(storage, NAME)
    session.create(HEADER)
    side = SessionLog(storage, companion_name(NAME, SIDE_KIND))
    side.create(side_header(NAME, header_identity(HEADER)))
    return Thread("7", Follower(session, "7"))


def test_a_side_read_is_taken_past_where_another_reader_moved_within_it(tmp_path: Path):
    """A commit tells the side log from where its put read: what was taken since, once."""
    thread = thread_at(tmp_path)
    first = thread.side.read(None)
    assert thread.take_side(None, first)
    read_at = thread.side_cursor
    after = thread.side.append([WRITES], read_at)  # a put_writes of this saver, taken
    assert thread.take_side(read_at, thread.side.read(read_at))
    assert thread.side_cursor == after
    thread.side.append([WRITES])
    since = thread.side.read(read_at)  # what a commit returns: both writes records
    assert since is not None
    assert len(since.lines) == 2
    assert thread.take_side(read_at, since)
    assert thread.side_cursor == since.cursor
    assert len(thread.index.writes[("", "c")]) == 2  # each record taken once, not three


def test_a_side_read_from_a_replaced_side_log_is_not_taken_by_a_reader_past_it(tmp_path: Path):
    thread = thread_at(tmp_path)
    read_at = thread.side.read(None)
    assert thread.take_side(None, read_at)
    thread.side.append([WRITES])
    moved = thread.side.read(read_at.cursor)
    assert thread.take_side(read_at.cursor, moved)
    thread.side.replace([side_header(NAME, header_identity(HEADER))])
    assert not thread.take_side(read_at.cursor, thread.side.read(read_at.cursor))
