"""The storage seam's contract, held by every backend: a directory, Redis, Redis Cluster.

Only the seam's own methods are used, so a test here says what any storage
promises the history. File-only details (torn tails, flock, permissions) are
in test_directory.py; Redis-only ones in test_redis.py.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crab_langchain.storage import Change, SessionStorage, companion_name
from crab_langchain.storage.directory import lock_file_name
from crab_langchain.storage.listing import JOURNAL

HEADER = b'{"agent":"crab","created_by":"user","created_at":"2026-03-23T08:06:51.482913+00:00"}'
LINE_A = b'{"role":"user","content":"a"}'
LINE_B = b'{"role":"assistant","content":"b"}'
LINE_C = b'{"role":"user","content":"c"}'
BAD_NAMES = ["../x", "a/b", "", "\x00", "a\x00b.jsonl", ".", "..", "/abs.jsonl", "a\nb.jsonl"]
LOG = "crab_1774253211_7.jsonl"


@pytest.fixture
def storage(backend) -> SessionStorage:
    return backend.storage()


@pytest.fixture
def log(storage) -> str:
    storage.create(LOG, HEADER, created=1774253211.5)
    return LOG


def all_lines(storage: SessionStorage, name: str) -> list[bytes]:
    chunk = storage.read(name, None)
    assert chunk is not None
    assert chunk.reset
    return [line for _, line in chunk.lines]


def test_create_holds_the_header_only(storage, log):
    chunk = storage.read(log, None)
    assert chunk.lines == [(1, HEADER)]
    assert storage.exists(log)
    assert storage.read_header(log) == HEADER


def test_create_refuses_an_existing_name_and_keeps_it(storage, log):
    with pytest.raises(FileExistsError):
        storage.create(log, b'{"other":1}')
    assert all_lines(storage, log) == [HEADER]


def test_append_after_the_current_cursor_returns_the_cursor_past_the_block(storage, log):
    first = storage.read(log, None)
    cursor = storage.append(log, [LINE_A, LINE_B], after=first.cursor)
    assert cursor is not None
    assert cursor.lines == 3
    assert cursor.identity == first.cursor.identity
    assert storage.read(log, cursor) is None  # the caller need not read its own lines back
    assert all_lines(storage, log) == [HEADER, LINE_A, LINE_B]


def test_append_without_or_after_a_stale_cursor_returns_none(storage, log):
    first = storage.read(log, None)
    assert storage.append(log, [LINE_A]) is None
    assert storage.append(log, [LINE_B], after=first.cursor) is None  # LINE_A came between
    assert all_lines(storage, log) == [HEADER, LINE_A, LINE_B]


def test_append_at_writes_only_where_the_log_still_ends(storage, log):
    first = storage.read(log, None)
    cursor = storage.append_at(log, [LINE_A], first.cursor)
    assert cursor is not None
    assert storage.read(log, cursor) is None
    assert storage.append_at(log, [LINE_B], first.cursor) is None  # LINE_A came between
    assert all_lines(storage, log) == [HEADER, LINE_A]
    assert storage.append_at(log, [LINE_B], cursor) is not None
    assert all_lines(storage, log) == [HEADER, LINE_A, LINE_B]


def test_append_at_refuses_a_log_replaced_since_even_at_the_same_length(storage, log):
    first = storage.read(log, None)
    storage.replace(log, [HEADER])  # same lines, a new log
    assert storage.append_at(log, [LINE_A], first.cursor) is None
    assert all_lines(storage, log) == [HEADER]


def test_replace_at_replaces_only_what_was_read(storage, log):
    storage.append(log, [LINE_A])
    read = storage.read(log, None)
    storage.append(log, [LINE_B])  # another writer, after the read
    assert storage.replace_at(log, [HEADER, LINE_C], read.cursor) is False
    assert all_lines(storage, log) == [HEADER, LINE_A, LINE_B]  # nothing dropped
    again = storage.read(log, None)
    assert storage.replace_at(log, [HEADER, LINE_C], again.cursor) is True
    assert all_lines(storage, log) == [HEADER, LINE_C]
    assert storage.replace_at(log, [HEADER], again.cursor) is False  # replaced since


async def test_async_conditional_writes_do_what_the_sync_ones_do(storage, log):
    first = await storage.aread(log, None)
    assert await storage.aappend_at(log, [LINE_A], first.cursor) is not None
    assert await storage.aappend_at(log, [LINE_B], first.cursor) is None
    assert await storage.areplace_at(log, [HEADER], first.cursor) is False
    now = await storage.aread(log, None)
    assert await storage.areplace_at(log, [HEADER, LINE_C], now.cursor) is True
    assert all_lines(storage, log) == [HEADER, LINE_C]
    aclose = getattr(storage, "aclose", None)
    if aclose is not None:
        await aclose()


SIDE = companion_name(LOG, "checkpoints")
SIDE_HEADER = b'{"crab_checkpoints":1}'
PENDING = b'{"writes":{"n":1}}'
RECORD = b'{"checkpoint":{"n":2}}'


@pytest.fixture
def pair(storage, log) -> tuple[str, str]:
    storage.create(SIDE, SIDE_HEADER)
    return log, SIDE


def test_commit_writes_both_logs_in_order_and_says_where_they_stand(storage, pair):
    session, side = storage.read(LOG, None), storage.read(SIDE, None)
    change = Change(
        session.cursor, side.cursor, [LINE_A, LINE_B], before=[b'{"i":1}'], after=[RECORD]
    )
    done = storage.commit(LOG, SIDE, change)
    assert done is not None
    assert all_lines(storage, LOG) == [HEADER, LINE_A, LINE_B]
    assert all_lines(storage, SIDE) == [SIDE_HEADER, b'{"i":1}', RECORD]
    assert done.session is not None
    assert done.session.lines == 3
    assert storage.read(LOG, done.session) is None  # nothing past it
    assert done.side is not None
    assert [line for _, line in done.side.lines] == [b'{"i":1}', RECORD]
    assert storage.read(SIDE, done.side.cursor) is None


def test_commit_writes_nothing_if_the_session_moved(storage, pair):
    session, side = storage.read(LOG, None), storage.read(SIDE, None)
    storage.append(LOG, [LINE_C])  # a chat history's append, after the put read
    change = Change(session.cursor, side.cursor, [LINE_A], before=[b'{"i":1}'], after=[RECORD])
    assert storage.commit(LOG, SIDE, change) is None
    assert all_lines(storage, LOG) == [HEADER, LINE_C]
    assert all_lines(storage, SIDE) == [SIDE_HEADER]  # not even the intent


def test_commit_passes_pending_writes_by_but_not_another_record(storage, pair):
    session, side = storage.read(LOG, None), storage.read(SIDE, None)
    storage.append(SIDE, [PENDING])
    change = Change(session.cursor, side.cursor, [LINE_A], after=[RECORD], passing=b'{"writes":')
    done = storage.commit(LOG, SIDE, change)
    assert done is not None
    assert [line for _, line in done.side.lines] == [PENDING, RECORD]  # what moved, told
    assert all_lines(storage, SIDE) == [SIDE_HEADER, PENDING, RECORD]
    storage.append(SIDE, [b'{"checkpoint":{"n":3}}'])  # another put's record: it bears
    later = Change(done.session, done.side.cursor, [LINE_B], passing=b'{"writes":')
    assert storage.commit(LOG, SIDE, later) is None
    assert all_lines(storage, LOG) == [HEADER, LINE_A]
    strict = Change(done.session, done.side.cursor, [LINE_B])  # no passing: nothing may move
    assert storage.commit(LOG, SIDE, strict) is None


def test_commit_replaces_the_session_or_the_side_log_only_as_read(storage, pair):
    storage.append(LOG, [LINE_A])
    session, side = storage.read(LOG, None), storage.read(SIDE, None)
    rewrite = Change(session.cursor, side.cursor, [HEADER, LINE_C], replace=True, before=[RECORD])
    done = storage.commit(LOG, SIDE, rewrite)
    assert done is not None
    assert all_lines(storage, LOG) == [HEADER, LINE_C]
    assert all_lines(storage, SIDE) == [SIDE_HEADER, RECORD]
    assert storage.commit(LOG, SIDE, rewrite) is None  # replaced since: its cursor is stale
    side = storage.read(SIDE, None)
    pruned = Change(None, side.cursor, before=[SIDE_HEADER], side_replace=True)
    assert storage.commit(LOG, SIDE, pruned) is not None
    assert all_lines(storage, SIDE) == [SIDE_HEADER]
    assert all_lines(storage, LOG) == [HEADER, LINE_C]  # not checked, not written
    assert storage.commit(LOG, SIDE, pruned) is None  # the side log was replaced since


def test_commit_to_a_missing_log_raises_and_writes_nothing(storage, pair):
    session = storage.read(LOG, None)
    storage.delete(SIDE)
    with pytest.raises(FileNotFoundError):
        storage.commit(LOG, SIDE, Change(session.cursor, None, [LINE_A], after=[RECORD]))
    assert all_lines(storage, LOG) == [HEADER]
    assert not storage.exists(SIDE)


async def test_async_commit_does_what_the_sync_one_does(storage, pair):
    session, side = await storage.aread(LOG, None), await storage.aread(SIDE, None)
    change = Change(session.cursor, side.cursor, [LINE_A], after=[RECORD])
    assert await storage.acommit(LOG, SIDE, change) is not None
    assert await storage.acommit(LOG, SIDE, change) is None  # moved: by itself
    assert all_lines(storage, LOG) == [HEADER, LINE_A]
    aclose = getattr(storage, "aclose", None)
    if aclose is not None:
        await aclose()


def test_a_change_that_could_not_be_checked_is_refused():
    with pytest.raises(ValueError, match="only where it was read"):
        Change(None, None, [LINE_A])
    with pytest.raises(ValueError, match="side log replaced"):
        Change(None, None, before=[SIDE_HEADER], side_replace=True)


def test_deleting_a_session_deletes_the_logs_beside_it(storage, pair):
    assert storage.delete(LOG) is True
    assert not storage.exists(LOG)
    assert not storage.exists(SIDE)


def test_append_to_a_missing_log_raises_and_creates_nothing(storage, log):
    with pytest.raises(FileNotFoundError):
        storage.append("crab_1_nope.jsonl", [LINE_A])
    assert not storage.exists("crab_1_nope.jsonl")
    assert storage.names() == [log]


def test_read_with_a_cursor_returns_only_new_lines_numbered_absolutely(storage, log):
    storage.append(log, [LINE_A])
    first = storage.read(log, None)
    storage.append(log, [LINE_B, LINE_C])
    second = storage.read(log, first.cursor)
    assert not second.reset
    assert second.lines == [(3, LINE_B), (4, LINE_C)]
    assert storage.read(log, second.cursor) is None


def test_read_of_a_missing_log_raises(storage):
    with pytest.raises(FileNotFoundError):
        storage.read("crab_1_nope.jsonl", None)
    with pytest.raises(FileNotFoundError):
        storage.read_header("crab_1_nope.jsonl")


def test_replace_changes_identity_and_a_reader_resets(storage, log):
    storage.append(log, [LINE_A, LINE_B])
    before = storage.read(log, None)
    storage.replace(log, [HEADER, LINE_C])
    after = storage.read(log, before.cursor)
    assert after.reset
    assert after.lines == [(1, HEADER), (2, LINE_C)]
    assert after.cursor.identity != before.cursor.identity


def test_replace_with_longer_content_still_resets(storage, log):
    before = storage.read(log, None)
    storage.replace(log, [HEADER, LINE_A, LINE_B, LINE_C])
    after = storage.read(log, before.cursor)
    assert after.reset
    assert [number for number, _ in after.lines] == [1, 2, 3, 4]


def test_append_after_replace_lands_in_the_new_log(storage, log):
    storage.append(log, [LINE_A])
    before = storage.read(log, None)
    storage.replace(log, [HEADER])
    assert storage.append(log, [LINE_B], after=before.cursor) is None  # not the log it read
    assert all_lines(storage, log) == [HEADER, LINE_B]


def test_replace_of_a_missing_log_raises_and_creates_nothing(storage):
    with pytest.raises(FileNotFoundError):
        storage.replace("crab_1_nope.jsonl", [HEADER])
    assert not storage.exists("crab_1_nope.jsonl")


def test_delete_then_recreate_is_a_new_log_for_old_cursors(storage, log):
    storage.append(log, [LINE_A])
    before = storage.read(log, None)
    assert storage.delete(log) is True
    assert not storage.exists(log)
    assert storage.names() == []
    assert storage.delete(log) is False
    storage.create(log, HEADER)
    storage.append(log, [LINE_B])
    after = storage.read(log, before.cursor)  # same name, same length: another log all the same
    assert after.reset
    assert after.lines == [(1, HEADER), (2, LINE_B)]


def test_names_by_suffix_find_exactly_the_names_ending_so(storage):
    names = ["crab_1_7.jsonl", "crab_2_17.jsonl", "x_3_a_7.jsonl", "crab_4_7x.jsonl"]
    for created, name in enumerate(names):
        storage.create(name, HEADER, created=float(created))
    assert sorted(storage.names()) == sorted(names)
    assert sorted(storage.names(suffix="_7.jsonl")) == ["crab_1_7.jsonl", "x_3_a_7.jsonl"]
    assert storage.names(suffix="_17.jsonl") == ["crab_2_17.jsonl"]
    assert storage.names(suffix="_8.jsonl") == []


def test_names_newest_first_where_the_storage_says_so(storage):
    for created, name in [(3.0, "c_3_c.jsonl"), (1.0, "a_1_a.jsonl"), (2.0, "b_2_b.jsonl")]:
        storage.create(name, HEADER, created=created)
    if storage.names_newest_first:
        assert storage.names() == ["c_3_c.jsonl", "b_2_b.jsonl", "a_1_a.jsonl"]
    else:
        assert sorted(storage.names()) == ["a_1_a.jsonl", "b_2_b.jsonl", "c_3_c.jsonl"]


def test_read_headers_gives_each_header_or_the_error(storage, log):
    storage.create("other_1_x.jsonl", b'{"agent":"other"}')
    headers = storage.read_headers([log, "gone_1_y.jsonl", "other_1_x.jsonl"])
    assert headers[0] == HEADER
    assert isinstance(headers[1], FileNotFoundError)
    assert headers[2] == b'{"agent":"other"}'


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_names_that_are_not_plain_file_names_are_refused(backend, storage, log, name):
    calls = [
        lambda: storage.create(name, HEADER),
        lambda: storage.append(name, [LINE_A]),
        lambda: storage.read(name, None),
        lambda: storage.read_header(name),
        lambda: storage.replace(name, [HEADER]),
        lambda: storage.delete(name),
        lambda: storage.location(name),
        lambda: storage.path(name),
        lambda: storage.exists(name),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="not a plain file name"):
            call()
    assert storage.names() == [log]
    if backend.kind == "directory":  # nothing was made beside the sessions directory either
        sessions = Path(backend.url)
        made = sorted(set(os.listdir(sessions)) - {JOURNAL})  # the journal, if a create made it
        assert made == [lock_file_name(log), log]
        assert sorted(os.listdir(sessions.parent)) == ["sessions"]


def test_a_block_of_thousands_of_lines_lands_whole_and_in_order(storage, log):
    block = [b'{"role":"user","content":"%d"}' % i for i in range(4500)]
    first = storage.read(log, None)
    cursor = storage.append(log, block, after=first.cursor)
    assert cursor is not None
    assert cursor.lines == 4501
    assert all_lines(storage, log) == [HEADER, *block]


def test_creation_lock_excludes_another_storage_object(backend):
    one, two = backend.storage(), backend.storage()  # as two machines would hold
    inside, order = threading.Event(), []

    def second() -> None:
        inside.wait(timeout=10)
        with two.creation_lock():
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with one.creation_lock():
        inside.set()
        thread.join(timeout=0.3)  # must still be waiting for the lock
        order.append("first")
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert order == ["first", "second"]


async def test_async_twins_do_what_the_sync_methods_do(storage, log):
    first = await storage.aread(log, None)
    assert first.lines == [(1, HEADER)]
    cursor = await storage.aappend(log, [LINE_A, LINE_B], after=first.cursor)
    assert cursor is not None
    assert cursor.lines == 3
    assert await storage.aread(log, cursor) is None
    assert await storage.aappend(log, [LINE_C], after=first.cursor) is None
    await storage.areplace(log, [HEADER, LINE_C])
    again = await storage.aread(log, cursor)
    assert again.reset
    assert again.lines == [(1, HEADER), (2, LINE_C)]
    with pytest.raises(FileNotFoundError):
        await storage.aappend("crab_1_nope.jsonl", [LINE_A])


def test_async_twins_work_across_event_loops(storage, log):
    """Each asyncio.run() is a new loop (as in scripts and some notebooks)."""
    for line in (LINE_A, LINE_B):
        asyncio.run(storage.aappend(log, [line]))
    assert all_lines(storage, log) == [HEADER, LINE_A, LINE_B]


# Any bytes but a newline, not blank: what a line of a session can hold.
LINES = st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b and b.strip() != b"")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.lists(LINES, min_size=1, max_size=6), max_size=6))
def test_any_lines_appended_in_any_batches_read_back_byte_for_byte(backend, batches):
    storage = backend.storage()
    name = f"p_1_{len(storage.names())}.jsonl"
    storage.create(name, HEADER)
    reader = storage.read(name, None)
    seen = [line for _, line in reader.lines]
    for batch in batches:
        storage.append(name, batch)
        chunk = storage.read(name, reader.cursor)
        seen += [line for _, line in chunk.lines]
        reader = chunk
    expected = [HEADER, *(line for batch in batches for line in batch)]
    assert seen == expected
    assert all_lines(storage, name) == expected


def test_sizes_are_the_bytes_a_file_of_the_lines_takes(storage, log):
    storage.append(log, [LINE_A, LINE_B])
    expected = len(HEADER) + len(LINE_A) + len(LINE_B) + 3
    assert storage.sizes([log, "crab_1_nope.jsonl"]) == [expected, None]
    storage.replace(log, [HEADER, LINE_C])
    assert storage.sizes([log]) == [len(HEADER) + len(LINE_C) + 2]


# --- reading a log's end ------------------------------------------------------------


def test_a_tail_read_gives_the_header_and_the_last_lines_and_reads_on(storage, log):
    lines = [b'{"n":%d,"pad":"%s"}' % (n, b"x" * (n % 300)) for n in range(3_000)]
    storage.append(log, lines)
    tail = storage.read_tail(log, 10)
    assert tail.header == HEADER
    assert not tail.whole
    assert 10 <= len(tail.lines) < 3_000
    assert [line for _, line in tail.lines] == lines[-len(tail.lines) :]
    numbers = [number for number, _ in tail.lines]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    storage.append(log, [LINE_A])
    on = storage.read(log, tail.cursor)
    assert on is not None
    assert not on.reset
    assert on.lines == [(numbers[-1] + 1, LINE_A)]
    assert storage.read(log, on.cursor) is None
    whole = storage.read_tail(log, 5_000)
    assert whole.whole
    assert whole.lines == list(enumerate([*lines, LINE_A], 2))


def test_a_tail_read_of_a_short_log_is_whole(storage, log):
    assert storage.read_tail(log, 10).lines == []
    storage.append(log, [LINE_A, LINE_B])
    tail = storage.read_tail(log, 10)
    assert (tail.header, tail.lines, tail.whole) == (HEADER, [(2, LINE_A), (3, LINE_B)], True)
    with pytest.raises(FileNotFoundError):
        storage.read_tail("crab_1_missing.jsonl", 10)


async def test_the_async_tail_read_is_the_same(storage, log):
    storage.append(log, [LINE_A, LINE_B, LINE_C])
    sync, native = storage.read_tail(log, 2), await storage.aread_tail(log, 2)
    assert (sync.header, sync.lines[-2:], sync.cursor) == (
        native.header,
        native.lines[-2:],
        native.cursor,
    )
