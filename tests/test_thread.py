"""``checkpoint/thread.py``: what one saver knows of one thread's side log, and how it reads on."""

from __future__ import annotations

from pathlib import Path

from crab_langchain.checkpoint.sidelog import (
    SIDE_KIND,
    SideIndex,
    archive_record,
    side_header,
    snapshot_record,
)
from crab_langchain.checkpoint.thread import Thread
from crab_langchain.context import Follower
from crab_langchain.log import SessionLog, header_identity
from crab_langchain.steps import run
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


def test_a_side_read_telling_of_a_new_epoch_makes_the_session_be_read_again(tmp_path: Path):
    """What was read of the session belongs to the epoch it was read in, never to the next.

    Another writer's rewrite replaces the session and archives its lines in
    one step; a saver that reads only the side log on learns of the new epoch
    but not of the new lines, so it forgets the old ones rather than take them
    for the new epoch's.
    """
    thread = thread_at(tmp_path)
    thread.session.append([b'{"role":"user","content":"old epoch"}'])
    run(thread.follower.read_on())
    assert thread.take_side(None, thread.side.read(None))
    read_at = thread.side_cursor
    thread.side.append([WRITES])  # a pending write bears on no epoch: the context stays
    assert thread.take_side(read_at, thread.side.read(read_at))
    assert [m.content for m in thread.context.messages] == ["old epoch"]
    read_at = thread.side_cursor
    thread.side.append([archive_record(0, [(2, b'{"role":"user","content":"old epoch"}')])])
    assert thread.take_side(read_at, thread.side.read(read_at))
    assert thread.index.epoch == 1
    assert thread.context.cursor is None  # read again before any decision


def test_a_whole_read_replacing_a_partial_index_of_an_older_epoch_reads_the_session_again(
    tmp_path: Path,
):
    """As a side read telling of a new epoch: the partial index read from the side log's
    end was of epoch 0; the whole log, read later, says another writer made epoch 1."""
    thread = thread_at(tmp_path)
    thread.session.append([b'{"role":"user","content":"old epoch"}'])
    run(thread.follower.read_on())
    thread.side.append([snapshot_record(0, {}, [], 0, [])])
    tail = thread.side.read_tail(10)
    partial = SideIndex.resumed(thread.side, tail.lines)
    assert partial is not None
    thread.take_tail(tail, partial)
    assert thread.index.partial
    assert thread.context.cursor is not None
    thread.side.append([archive_record(0, [(2, b'{"role":"user","content":"old epoch"}')])])
    thread.take_whole(thread.side.read(None))
    assert not thread.index.partial
    assert thread.index.epoch == 1
    assert thread.context.cursor is None  # read again before any decision
