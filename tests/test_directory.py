"""DirectoryStorage: the bytes-and-lines layer, on real files in tmp_path."""

from __future__ import annotations

import fcntl
import os
import stat
import threading
import warnings
from pathlib import Path

import pytest

from crab_langchain.storage import DirectoryStorage, TornTailWarning
from crab_langchain.storage import directory as directory_module
from crab_langchain.storage.directory import lock_file_name
from crab_langchain.storage.listing import JOURNAL

HEADER = b'{"agent":"crab","created_by":"user","created_at":"2026-03-23T08:06:51.482913+00:00"}'
LINE_A = b'{"role":"user","content":"a"}'
LINE_B = b'{"role":"assistant","content":"b"}'
LINE_C = b'{"role":"user","content":"c"}'


@pytest.fixture
def storage(tmp_path: Path) -> DirectoryStorage:
    return DirectoryStorage(tmp_path / "sessions")


@pytest.fixture
def log(storage: DirectoryStorage) -> str:
    storage.create("s.jsonl", HEADER)
    return "s.jsonl"


def test_create_writes_header_line_only(storage, log):
    assert (storage.root / log).read_bytes() == HEADER + b"\n"


def test_create_refuses_existing_name_and_keeps_it(storage, log):
    with pytest.raises(FileExistsError):
        storage.create(log, b'{"other":1}')
    assert (storage.root / log).read_bytes() == HEADER + b"\n"


def test_create_leaves_no_temporary_files(storage, log):
    assert sorted(os.listdir(storage.root)) == [JOURNAL, lock_file_name(log), log]


def test_fresh_root_is_0700_and_files_0600(tmp_path):
    storage = DirectoryStorage(tmp_path / "deep" / "sessions")
    storage.create("s.jsonl", HEADER)
    assert stat.S_IMODE(os.stat(storage.root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(storage.root / "s.jsonl").st_mode) == 0o600
    storage.replace("s.jsonl", [HEADER])
    assert stat.S_IMODE(os.stat(storage.root / "s.jsonl").st_mode) == 0o600


def test_append_after_current_cursor_returns_cursor_past_the_block(storage, log):
    first = storage.read(log, None)
    cursor = storage.append(log, [LINE_A, LINE_B], after=first.cursor)
    size = (storage.root / log).stat().st_size
    assert size == len(HEADER) + len(LINE_A) + len(LINE_B) + 3
    assert (cursor.offset, cursor.lines) == (size, 3)
    assert cursor.identity == first.cursor.identity
    assert storage.read(log, cursor) is None  # the caller needs not read its own lines back


def test_append_without_or_after_stale_cursor_returns_none(storage, log):
    first = storage.read(log, None)
    assert storage.append(log, [LINE_A]) is None
    assert storage.append(log, [LINE_B], after=first.cursor) is None  # LINE_A came between
    data = (storage.root / log).read_bytes()
    assert data == HEADER + b"\n" + LINE_A + b"\n" + LINE_B + b"\n"


def test_append_only_adds_bytes(storage, log):
    before = (storage.root / log).read_bytes()
    storage.append(log, [LINE_A])
    after = (storage.root / log).read_bytes()
    assert after == before + LINE_A + b"\n"


def test_append_with_fsync_durability(tmp_path):
    storage = DirectoryStorage(tmp_path, durability="fsync")
    storage.create("s.jsonl", HEADER)
    storage.append("s.jsonl", [LINE_A])
    assert (tmp_path / "s.jsonl").read_bytes() == HEADER + b"\n" + LINE_A + b"\n"


def test_unknown_durability_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="durability"):
        DirectoryStorage(tmp_path, durability="never")  # type: ignore[arg-type]


def test_append_to_missing_log_raises(storage, log):
    with pytest.raises(FileNotFoundError):
        storage.append("nope.jsonl", [LINE_A])
    assert not (storage.root / "nope.jsonl").exists()


def test_failed_append_leaves_nothing_behind(storage, log, monkeypatch):
    before = (storage.root / log).read_bytes()
    real_write_all = directory_module._write_all

    def half_then_fail(fd, data, path):
        real_write_all(fd, data[: len(data) // 2], path)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(directory_module, "_write_all", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        storage.append(log, [LINE_A, LINE_B])
    monkeypatch.undo()
    assert (storage.root / log).read_bytes() == before
    storage.append(log, [LINE_C])
    assert (storage.root / log).read_bytes() == before + LINE_C + b"\n"


def test_read_from_start_numbers_lines(storage, log):
    storage.append(log, [LINE_A, LINE_B])
    chunk = storage.read(log, None)
    assert chunk is not None
    assert chunk.reset
    assert chunk.lines == [(1, HEADER), (2, LINE_A), (3, LINE_B)]
    assert chunk.cursor.offset == (storage.root / log).stat().st_size
    assert chunk.cursor.lines == 3


def test_read_with_cursor_returns_only_new_lines(storage, log):
    storage.append(log, [LINE_A])
    first = storage.read(log, None)
    assert first is not None
    storage.append(log, [LINE_B, LINE_C])
    second = storage.read(log, first.cursor)
    assert second is not None
    assert not second.reset
    assert second.lines == [(3, LINE_B), (4, LINE_C)]


def test_read_with_current_cursor_returns_none(storage, log):
    chunk = storage.read(log, None)
    assert chunk is not None
    assert storage.read(log, chunk.cursor) is None


def test_read_skips_blank_lines_but_keeps_numbers(storage, log):
    path = storage.root / log
    with open(path, "ab") as file:
        file.write(LINE_A + b"\n\n   \n" + LINE_B + b"\n")
    chunk = storage.read(log, None)
    assert chunk is not None
    assert chunk.lines == [(1, HEADER), (2, LINE_A), (5, LINE_B)]
    assert chunk.cursor.lines == 5


def test_read_missing_log_raises(storage):
    with pytest.raises(FileNotFoundError):
        storage.read("nope.jsonl", None)


def test_replace_changes_identity_and_reader_resets(storage, log):
    storage.append(log, [LINE_A, LINE_B])
    before = storage.read(log, None)
    assert before is not None
    storage.replace(log, [HEADER, LINE_C])
    assert (storage.root / log).read_bytes() == HEADER + b"\n" + LINE_C + b"\n"
    after = storage.read(log, before.cursor)
    assert after is not None
    assert after.reset
    assert after.lines == [(1, HEADER), (2, LINE_C)]
    assert after.cursor.identity != before.cursor.identity


def test_replace_with_longer_content_still_resets(storage, log):
    before = storage.read(log, None)
    assert before is not None
    storage.replace(log, [HEADER, LINE_A, LINE_B, LINE_C])
    after = storage.read(log, before.cursor)
    assert after is not None
    assert after.reset
    assert [number for number, _ in after.lines] == [1, 2, 3, 4]


def test_replace_is_atomic_old_file_object_untouched(storage, log):
    storage.append(log, [LINE_A])
    with open(storage.root / log, "rb") as old:
        storage.replace(log, [HEADER])
        assert old.read() == HEADER + b"\n" + LINE_A + b"\n"
    assert sorted(os.listdir(storage.root)) == [JOURNAL, lock_file_name(log), log]


def test_append_after_replace_goes_to_new_file(storage, log):
    storage.append(log, [LINE_A])
    before = storage.read(log, None)
    storage.replace(log, [HEADER])
    assert storage.append(log, [LINE_B], after=before.cursor) is None  # not the file it read
    assert (storage.root / log).read_bytes() == HEADER + b"\n" + LINE_B + b"\n"


def test_delete_removes_log_and_torn_side_file(storage, log):
    torn = storage.root / (log + ".torn")
    torn.write_bytes(b"junk\n")
    assert storage.delete(log) is True
    assert not (storage.root / log).exists()
    assert not torn.exists()
    assert storage.delete(log) is False


def test_delete_unknown_returns_false(storage):
    assert storage.delete("never.jsonl") is False


def test_names_lists_only_jsonl_files(storage, log):
    (storage.root / "notes.txt").write_text("x")
    (storage.root / "s.jsonl.torn").write_text("x")
    (storage.root / "dir.jsonl").mkdir()
    (storage.root / "other.jsonl").write_bytes(HEADER + b"\n")
    assert sorted(storage.names()) == ["other.jsonl", log]


def test_names_of_missing_root_is_empty(tmp_path):
    assert DirectoryStorage(tmp_path / "missing").names() == []
    assert not (tmp_path / "missing").exists()


def test_read_header_returns_first_line(storage, log):
    storage.append(log, [LINE_A])
    assert storage.read_header(log) == HEADER


def test_read_header_missing_file(storage):
    with pytest.raises(FileNotFoundError):
        storage.read_header("nope.jsonl")


def test_read_header_incomplete_line_raises_eoferror(storage):
    storage.root.mkdir(parents=True)
    (storage.root / "t.jsonl").write_bytes(HEADER[:20])
    with pytest.raises(EOFError):
        storage.read_header("t.jsonl")
    (storage.root / "e.jsonl").write_bytes(b"")
    with pytest.raises(EOFError):
        storage.read_header("e.jsonl")


def test_torn_tail_is_not_returned_and_warns(storage, log):
    storage.append(log, [LINE_A])
    with open(storage.root / log, "ab") as file:
        file.write(b'{"role":"user","con')
    with pytest.warns(TornTailWarning, match="incomplete last line"):
        chunk = storage.read(log, None)
    assert chunk is not None
    assert chunk.lines == [(1, HEADER), (2, LINE_A)]


def test_reader_waits_for_a_live_writer_and_sees_its_whole_call(storage, log):
    """A writer half way through its block holds the lock: readers wait, then see it all."""
    lock_fd = os.open(storage.root / lock_file_name(log), os.O_RDWR)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    with open(storage.root / log, "ab") as file:
        file.write(LINE_A + b"\n" + b'{"role":"user","con')
    read: list[object] = []
    reader = threading.Thread(target=lambda: read.append(storage.read(log, None)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TornTailWarning)
        reader.start()
        reader.join(timeout=0.3)
        assert reader.is_alive()
        assert read == []  # not a line of the unfinished call
        with open(storage.root / log, "ab") as file:
            file.write(b'tent":"c"}\n')
        os.close(lock_fd)  # the writer is done
        reader.join(timeout=10)
    assert read[0].lines == [(1, HEADER), (2, LINE_A), (3, LINE_C)]


def test_append_moves_torn_tail_aside(storage, log):
    storage.append(log, [LINE_A])
    before = storage.read(log, None)
    torn = b'{"role":"user","con'
    with open(storage.root / log, "ab") as file:
        file.write(torn)
    with pytest.warns(TornTailWarning, match="torn"):
        cursor = storage.append(log, [LINE_B], after=before.cursor)
    assert cursor.offset == len(HEADER) + len(LINE_A) + len(LINE_B) + 3
    assert (storage.root / log).read_bytes() == HEADER + b"\n" + LINE_A + b"\n" + LINE_B + b"\n"
    assert (storage.root / (log + ".torn")).read_bytes() == torn + b"\n"


def test_append_to_file_without_complete_header_refuses(storage):
    storage.root.mkdir(parents=True)
    (storage.root / "t.jsonl").write_bytes(HEADER[:10])
    with pytest.raises(EOFError):
        storage.append("t.jsonl", [LINE_A])
    assert (storage.root / "t.jsonl").read_bytes() == HEADER[:10]


def test_reader_cursor_survives_torn_tail_repair(storage, log):
    with open(storage.root / log, "ab") as file:
        file.write(b"partial")
    with pytest.warns(TornTailWarning):
        first = storage.read(log, None)
    assert first is not None
    with pytest.warns(TornTailWarning):
        storage.append(log, [LINE_A])
    second = storage.read(log, first.cursor)
    assert second is not None
    assert second.lines == [(2, LINE_A)]


def test_creation_lock_excludes_other_holders_and_is_released(tmp_path):
    one = DirectoryStorage(tmp_path / "r")
    with one.creation_lock():
        lock_files = [n for n in os.listdir(one.root) if not n.endswith(".jsonl")]
        assert len(lock_files) == 1
        fd = os.open(one.root / lock_files[0], os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(one.root / lock_files[0], os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    assert one.names() == []


def test_reader_resets_after_two_replaces(storage, log):
    """Replaces may hand the log an earlier inode back: the cursor must still go stale."""
    storage.replace(log, [HEADER])  # from here on, ext4 tends to alternate two inodes
    storage.append(log, [LINE_A])
    before = storage.read(log, None)
    assert before is not None
    for _ in range(20):  # replace until the file system hands the reader's inode back
        storage.replace(log, [HEADER])
        if (storage.root / log).stat().st_ino == before.cursor.identity[1]:
            break
    storage.append(log, [LINE_B, LINE_C])
    after = storage.read(log, before.cursor)
    assert after is not None
    assert after.reset
    assert after.lines == [(1, HEADER), (2, LINE_B), (3, LINE_C)]
