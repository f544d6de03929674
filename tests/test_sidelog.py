"""``checkpoint/sidelog.py``: the side log's records and the index read from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from crab_langchain.checkpoint.sidelog import (
    WRITES_PREFIX,
    BadRecordWarning,
    SideIndex,
    archive_record,
    checkpoint_record,
    intent_record,
    writes_record,
    written_record,
)
from crab_langchain.log import SessionLog
from crab_langchain.storage import DirectoryStorage

LINES = [b'{"role":"user","content":"a"}', b'{"role":"assistant","content":"b"}']


def index_of(tmp_path: Path, records: list[bytes]) -> SideIndex:
    index = SideIndex(SessionLog(DirectoryStorage(tmp_path), "x.jsonl.checkpoints"))
    index.take(list(enumerate(records, 2)))
    return index


def checkpoint(checkpoint_id: str, ns: str = "") -> bytes:
    return checkpoint_record(ns, checkpoint_id, None, {"json": {}}, {"json": {}}, [])


def test_every_writes_record_starts_as_a_commit_passes_it_by():
    record = writes_record("ns", "c", "t", "p", [[0, "messages", {"json": 1}]])
    assert record.startswith(WRITES_PREFIX)
    assert not checkpoint("c").startswith(WRITES_PREFIX)
    assert not intent_record(0, 2, LINES, "c").startswith(WRITES_PREFIX)


def test_an_intent_is_pending_until_its_checkpoint_comes(tmp_path: Path):
    index = index_of(tmp_path, [intent_record(0, 2, LINES, "c1")])
    assert [(i.first, i.last) for i in index.pending] == [(2, 3)]
    index.take([(3, checkpoint("c1"))])
    assert index.pending == []
    assert index.written_spans[0] == [(2, 3)]
    assert index.written[0] == 3


def test_an_intent_announced_again_counts_where_the_last_one_says(tmp_path: Path):
    """A put that lost the race to another writer announces its lines again, further on."""
    again = [intent_record(0, 2, LINES, "c1"), intent_record(0, 4, LINES, "c1"), checkpoint("c1")]
    index = index_of(tmp_path, again)
    assert index.written_spans[0] == [(4, 5)]


def test_a_killed_puts_intent_stays_pending_and_another_checkpoint_does_not_finish_it(
    tmp_path: Path,
):
    index = index_of(tmp_path, [intent_record(0, 2, LINES, "killed"), checkpoint("other")])
    assert [i.checkpoint for i in index.pending] == ["killed"]
    assert 0 not in index.written_spans


def test_an_archive_starts_a_new_epoch_and_keeps_the_lines_byte_for_byte(tmp_path: Path):
    body = list(enumerate(LINES, 2))
    index = index_of(tmp_path, [archive_record(0, body), written_record(1, [(2, 3)])])
    assert index.epoch == 1
    assert index.archives[0] == body
    assert index.written[1] == 3


def test_checkpoints_are_found_by_namespace_and_the_newest_by_id(tmp_path: Path):
    index = index_of(
        tmp_path, [checkpoint("1"), checkpoint("3"), checkpoint("2"), checkpoint("9", "sub")]
    )
    assert index.newest("") == "3"
    assert index.newest("sub") == "9"
    found = index.checkpoint("", "2")
    assert found is not None
    assert found["id"] == "2"


def test_a_line_that_is_no_record_is_kept_aside_and_read_as_nothing(tmp_path: Path):
    with pytest.warns(BadRecordWarning, match="x.jsonl.checkpoints:2"):
        index = index_of(tmp_path, [b"not json", checkpoint("1")])
    assert [number for number, _, _ in index.bad] == [2]
    assert index.newest("") == "1"
