"""Hardening: each point of the hardening issue, tried as an attacker or a crash would.

Real files, real subprocesses killed with SIGKILL, real symlinks, real forks.
The Redis points live in ``test_redis_hardening.py``.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from conftest import run_python
from langchain_core.messages import AIMessage, HumanMessage

from crab_langchain import CrabChatMessageHistory, SessionStore, TornTailWarning
from crab_langchain.storage import DirectoryStorage
from crab_langchain.storage.directory import lock_file_name

HEADER = b'{"agent":"crab","created_by":"user","created_at":"2026-03-23T08:06:51.482913+00:00"}'
NAME = "crab_1774253211_7.jsonl"
POSIX_ONLY = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")


def line(role: str, content: str) -> bytes:
    return b'{"role":"%s","content":"%s"}' % (role.encode(), content.encode())


def session_file(directory: Path, *body: bytes, name: str = NAME) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(b"".join(item + b"\n" for item in (HEADER, *body)))
    return path


def texts(history: CrabChatMessageHistory) -> list[str]:
    return [str(message.content) for message in history.stored_messages()]


# --- 1. a call of add_messages is all or nothing ----------------------------------------

BIG_PAIR_WRITER = """
import sys
from langchain_core.messages import AIMessage, HumanMessage
from crab_langchain import CrabChatMessageHistory
history = CrabChatMessageHistory.from_file(sys.argv[1])
question, answer = HumanMessage("q" * 4_000_000), AIMessage("a" * 4_000_000)
print("ready", flush=True)
history.add_messages([question, answer])
print("done", flush=True)
"""


def kill_mid_call(path: Path, script: str, at: int) -> None:
    """Run ``script`` on ``path``; SIGKILL it once the file has grown by ``at`` bytes."""
    start = path.stat().st_size
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 60
        while path.stat().st_size < start + at and time.monotonic() < deadline:
            pass
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL


@POSIX_ONLY
@pytest.mark.parametrize("run", range(6))
def test_a_question_is_never_kept_without_its_answer(tmp_path, run):
    path = session_file(tmp_path, line("user", "seed"))
    before = path.read_bytes()
    kill_mid_call(path, BIG_PAIR_WRITER, at=4_000_100 + run * 300_000)
    assert path.stat().st_size > len(before) + 4_000_000  # the question's line did land
    with pytest.warns(TornTailWarning, match="unfinished add_messages call"):
        reader = CrabChatMessageHistory.from_file(path)
    assert texts(reader) == ["seed"]  # neither the question nor half of the pair
    with pytest.warns(TornTailWarning, match="moved"):
        reader.add_messages([HumanMessage("next")])
    assert path.read_bytes() == before + line("user", "next") + b"\n"
    torn = path.with_name(path.name + ".torn").read_bytes()
    assert torn.startswith(line("user", "q" * 100)[:100])  # set aside, not lost


LIVE_WRITER = """
import sys
from langchain_core.messages import AIMessage, HumanMessage
from crab_langchain import CrabChatMessageHistory
history = CrabChatMessageHistory.from_file(sys.argv[1])
print("ready", flush=True)
for call in range(60):
    history.add_messages(
        [HumanMessage(f"{call}:{i}:" + "x" * 20_000) for i in range(24)]
        + [AIMessage(f"{call}:end")]
    )
print("done", flush=True)
"""


@POSIX_ONLY
def test_readers_never_see_part_of_a_call_a_live_writer_is_writing(tmp_path):
    path = session_file(tmp_path, line("user", "seed"))
    writer = subprocess.Popen(
        [sys.executable, "-c", LIVE_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    follower = CrabChatMessageHistory.from_file(path)
    seen: set[int] = set()
    try:
        assert writer.stdout.readline() == "ready\n"
        while writer.poll() is None or len(seen) < 2:
            for history in (follower, CrabChatMessageHistory.from_file(path)):
                count = len(history.stored_messages()) - 1
                assert count % 25 == 0, f"a reader saw {count % 25} messages of a call"
                seen.add(count)
            if writer.poll() is not None:
                break
    finally:
        writer.wait(timeout=120)
        writer.stdout.close()
    assert writer.returncode == 0
    assert len(follower.stored_messages()) == 1 + 60 * 25
    assert len(seen) > 2  # the readers really read while the writer wrote


# --- 9. a replaced file is always noticed -------------------------------------------------


def test_replacement_reusing_the_inode_with_matching_bytes_is_noticed(tmp_path):
    """Another instance clears and rewrites; the new file may reuse the inode number."""
    store = SessionStore(tmp_path, entry_points=False)
    reader = store.get_session_history("s")
    reader.add_messages([HumanMessage("first, older than the bytes a reader checks")])
    reader.add_messages([AIMessage("x")] * 20)
    reused = 0
    for attempt in range(50):
        before = texts(reader)
        inode = reader.file_path.stat().st_ino
        other = SessionStore(tmp_path, entry_points=False).get_session_history("s")
        other.clear()
        other.add_messages([HumanMessage("filler")])
        other.clear()  # the second replacement may get the first file's inode back
        other.add_messages([AIMessage("x")] * (21 + attempt))
        reused += reader.file_path.stat().st_ino == inode
        assert texts(reader) == ["x"] * (21 + attempt), f"attempt {attempt} after {before[:1]}"
        other.clear()
        other.add_messages([HumanMessage("first, older than the bytes a reader checks")])
        other.add_messages([AIMessage("x")] * 20)
        assert texts(reader)[0].startswith("first")
    if reused == 0:
        pytest.skip("this file system never reused an inode number: nothing was tried")


# --- 10. a last line without its newline is a line ------------------------------------------


def test_last_line_without_newline_is_read_and_the_next_append_ends_it(tmp_path):
    path = tmp_path / NAME
    joined = b"\n".join([HEADER, line("user", "one"), line("assistant", "two")])
    path.write_bytes(joined)  # as "\n".join writes it
    with warnings.catch_warnings():
        warnings.simplefilter("error", TornTailWarning)
        history = CrabChatMessageHistory.from_file(path)
        follower = CrabChatMessageHistory.from_file(path)
        assert texts(history) == ["one", "two"]
        assert texts(follower) == ["one", "two"]
        history.add_messages([HumanMessage("three")])
        assert texts(history) == ["one", "two", "three"]
        assert texts(follower) == ["one", "two", "three"]  # continues past the added newline
    assert path.read_bytes() == joined + b"\n" + line("user", "three") + b"\n"
    assert not path.with_name(path.name + ".torn").exists()


def test_a_header_alone_without_newline_opens(tmp_path):
    path = tmp_path / NAME
    path.write_bytes(HEADER)
    history = CrabChatMessageHistory.from_file(path)
    assert texts(history) == []
    history.add_messages([HumanMessage("one")])
    assert path.read_bytes() == HEADER + b"\n" + line("user", "one") + b"\n"


def test_a_last_line_that_does_not_parse_is_still_torn(tmp_path):
    path = session_file(tmp_path, line("user", "one"))
    with open(path, "ab") as file:
        file.write(b'{"role":"user","content":"tw')
    with pytest.warns(TornTailWarning, match="incomplete last line"):
        history = CrabChatMessageHistory.from_file(path)
    assert texts(history) == ["one"]


# --- 5. no symlink is followed ----------------------------------------------------------------


def test_appending_to_a_session_file_that_is_a_symlink_is_refused(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(HEADER + b"\n")
    sessions = tmp_path / "sessions"
    sessions.mkdir(mode=0o700)
    (sessions / NAME).symlink_to(target)
    storage = DirectoryStorage(sessions)
    with pytest.raises(OSError, match="symbolic link") as caught:
        storage.append(NAME, [line("user", "planted")])
    assert str(sessions / NAME) in str(caught.value)
    with pytest.raises(OSError, match="symbolic link"):
        CrabChatMessageHistory.from_file(sessions / NAME).add_messages([HumanMessage("x")])
    assert target.read_bytes() == HEADER + b"\n"


def test_a_planted_torn_symlink_is_never_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    path = session_file(tmp_path / "sessions", line("user", "one"))
    with open(path, "ab") as file:
        file.write(b"attacker-chosen bytes")
    path.with_name(path.name + ".torn").symlink_to(victim)
    with pytest.warns(TornTailWarning):
        history = CrabChatMessageHistory.from_file(path)
    with pytest.raises(OSError, match="symbolic link"):
        history.add_messages([HumanMessage("two")])
    assert victim.read_bytes() == b"precious\n"
    assert path.read_bytes().endswith(b"attacker-chosen bytes")  # nothing moved, nothing lost


def test_a_planted_lock_symlink_is_never_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    path = session_file(tmp_path / "sessions", line("user", "one"))
    path.with_name(lock_file_name(path.name)).symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link") as caught:
        CrabChatMessageHistory.from_file(path)
    assert lock_file_name(path.name) in str(caught.value)
    with pytest.raises(OSError, match="symbolic link"):
        DirectoryStorage(path.parent).append(path.name, [line("user", "two")])
    assert victim.read_bytes() == b"precious\n"


def test_a_planted_directory_lock_symlink_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    sessions = tmp_path / "sessions"
    sessions.mkdir(mode=0o700)
    (sessions / ".crab_langchain.lock").symlink_to(victim)
    store = SessionStore(sessions, entry_points=False)
    with pytest.raises(OSError, match="symbolic link") as caught:
        store.get_session_history("s").add_messages([HumanMessage("one")])
    assert ".crab_langchain.lock" in str(caught.value)
    assert victim.read_bytes() == b"precious\n"


def test_a_sessions_directory_others_can_write_to_is_warned_about(tmp_path):
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    sessions.chmod(0o777)
    with pytest.warns(UserWarning, match="other users can write") as caught:
        SessionStore(sessions, entry_points=False).list_sessions()
    assert f"chmod 700 {sessions}" in str(caught[0].message)
    sessions.chmod(0o700)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SessionStore(sessions, entry_points=False).list_sessions()


def test_crabtalk_home_created_by_the_library_is_private(tmp_path, monkeypatch):
    home = tmp_path / "home" / ".crabtalk"
    monkeypatch.setenv("CRABTALK_HOME", str(home))
    SessionStore(entry_points=False).get_session_history("s").add_messages([HumanMessage("x")])
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "sessions").stat().st_mode) == 0o700


# --- 11. leftovers ----------------------------------------------------------------------------

KILLED_CLEAR = """
import os, signal, sys
from crab_langchain import CrabChatMessageHistory
history = CrabChatMessageHistory.from_file(sys.argv[1])
real_replace = os.replace
def die(*args):
    os.kill(os.getpid(), signal.SIGKILL)  # after the temporary file is written, before the move
os.replace = die
history.clear()
"""


@POSIX_ONLY
def test_a_clear_killed_midway_leaves_a_file_the_next_rewrite_removes(tmp_path):
    path = session_file(tmp_path / "sessions", line("user", "one"))
    done = subprocess.run([sys.executable, "-c", KILLED_CLEAR, str(path)], check=False)
    assert done.returncode == -signal.SIGKILL
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".new")]
    assert len(leftovers) == 1
    store = SessionStore(path.parent, entry_points=False)
    assert [info.name for info in store.list_sessions()] == [NAME]  # never listed
    history = CrabChatMessageHistory.from_file(path)
    assert texts(history) == ["one"]  # the killed clear changed nothing
    history.clear()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".new")]
    assert path.read_bytes() == HEADER + b"\n"


TORN_ON_A_FULL_DISK = """
import resource, signal, sys
from langchain_core.messages import HumanMessage
from crab_langchain import CrabChatMessageHistory
history = CrabChatMessageHistory.from_file(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
try:
    history.add_messages([HumanMessage("next")])
except OSError as error:
    print(error)
"""


def test_a_torn_tail_that_cannot_be_set_aside_stays_where_it_is(tmp_path):
    path = session_file(tmp_path / "sessions", line("user", "one"))
    torn = b'{"role":"user","content":"' + b"t" * 80_000
    with open(path, "ab") as file:
        file.write(torn)
    before = path.read_bytes()
    out = run_python(TORN_ON_A_FULL_DISK, str(path))
    assert "File too large" in out
    assert path.with_name(path.name + ".torn") not in list(path.parent.iterdir())
    assert path.read_bytes() == before  # the torn bytes were not cut off either
