"""The session-log layer (``log.py``): one session's lines in a storage, and what a line is."""

from __future__ import annotations

from pathlib import Path

import pytest

from crab_langchain.log import (
    SessionLog,
    header_identity,
    is_message_line,
    last_marker,
    split_header,
)
from crab_langchain.models import CompactMarker, SessionFormatError
from crab_langchain.storage import Change, DirectoryStorage, companion_name

HEADER = b'{"agent":"crab","created_by":"user","created_at":"2026-03-23T08:06:51.482913+00:00"}'
USER = b'{"role":"user","content":"hi"}'
MARKER = b'{"compact":"so far"}'
EVENT = b'{"event":"run_started"}'
NAME = "crab_1774253211_7.jsonl"


@pytest.fixture
def log(tmp_path: Path) -> SessionLog:
    made = SessionLog(DirectoryStorage(tmp_path), NAME)
    made.create(HEADER)
    return made


def test_a_malformed_line_is_named_by_log_and_number(log: SessionLog):
    log.append([USER, b'{"role":"user","content":'])
    with pytest.raises(SessionFormatError) as raised:
        log.entries()
    assert raised.value.line == 3
    assert NAME in str(raised.value)


def test_clear_keeps_the_header_byte_for_byte(log: SessionLog):
    log.append([USER, MARKER])
    log.clear()
    chunk = log.read(None)
    assert chunk is not None
    assert [line for _, line in chunk.lines] == [HEADER]
    assert log.header_line() == HEADER


def test_the_working_context_starts_at_the_last_marker_only_marker_lines_parsed(log: SessionLog):
    body = [(2, USER), (3, MARKER), (4, USER), (5, MARKER), (6, USER)]
    assert last_marker(log, body) == 3
    assert last_marker(log, [(2, USER), (3, EVENT)]) == 0
    # A message whose text holds the marker's key, escaped, is not a marker.
    quoted = b'{"role":"user","content":"\\"compact\\": no"}'
    assert last_marker(log, [(2, quoted)]) == 0


def test_a_message_line_is_told_without_parsing_most_lines():
    assert is_message_line(USER)
    assert not is_message_line(MARKER)
    assert not is_message_line(EVENT)
    assert not is_message_line(b"   ")
    assert is_message_line(b'{"compact": not json')  # malformed: counted, named when read


def test_a_log_without_a_header_is_refused_by_name():
    with pytest.raises(SessionFormatError, match="no header line"):
        split_header("somewhere.jsonl", [(2, USER)])
    assert split_header("x", [(1, HEADER), (2, USER)]) == (HEADER, [(2, USER)])


def test_the_identity_of_a_header_tells_incarnations_apart():
    later = HEADER.replace(b"482913", b"482914")
    assert header_identity(HEADER) == header_identity(HEADER)
    assert header_identity(HEADER) != header_identity(later)


def test_commit_writes_the_session_and_its_side_log_together(log: SessionLog):
    side = SessionLog(log.storage, companion_name(NAME, "checkpoints"))
    side.create(b'{"crab_checkpoints":1}')
    session_at, side_at = log.read(None), side.read(None)
    assert session_at is not None
    assert side_at is not None
    change = Change(session_at.cursor, side_at.cursor, [USER], after=[b'{"checkpoint":{}}'])
    done = log.commit(side, change)
    assert done is not None
    assert [type(e).__name__ for _, e in log.entries()] == ["CrabMessage"]
    assert log.commit(side, change) is None  # the session moved since: by this very change


def test_entries_are_messages_markers_and_events_in_order(log: SessionLog):
    log.append([USER, MARKER, EVENT])
    kinds = [type(entry).__name__ for _, entry in log.entries()]
    assert kinds == ["CrabMessage", "CompactMarker", "RunEvent"]
    assert isinstance(log.entries()[1][1], CompactMarker)
