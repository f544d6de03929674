"""Hardening: each point of the hardening issue, tried as an attacker or a crash would.

Real files, real subprocesses killed with SIGKILL, real symlinks, real forks.
The Redis points live in ``test_redis_hardening.py``.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import AGENTS_MISSING, run_python
from langchain_core.messages import AIMessage, HumanMessage
from test_durability import HEADER, session_file
from test_durability import SESSION as NAME

from crab_langchain import (
    CrabChatMessageHistory,
    Session,
    SessionFormatError,
    SessionStore,
    TornTailWarning,
    hookimpl,
    make_plugin_manager,
)
from crab_langchain.hooks import injected_messages
from crab_langchain.storage import DirectoryStorage
from crab_langchain.storage.directory import lock_file_name

POSIX_ONLY = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")


def line(role: str, content: str) -> bytes:
    return b'{"role":"%s","content":"%s"}' % (role.encode(), content.encode())


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
def test_a_question_is_never_kept_without_its_answer(tmp_path):
    cut = 0
    for run in range(6):
        path = session_file(tmp_path / str(run), line("user", "seed"))
        before = path.read_bytes()
        kill_mid_call(path, BIG_PAIR_WRITER, at=4_000_100 + run * 300_000)
        assert path.stat().st_size > len(before) + 4_000_000  # the question's line did land
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            reader = CrabChatMessageHistory.from_file(path)
            stored = texts(reader)
        if stored == ["seed", "q" * 4_000_000, "a" * 4_000_000]:
            continue  # the kill came after the whole call: all of it, which is fine
        cut += 1
        assert stored == ["seed"]  # neither the question nor half of the pair
        assert any("unfinished add_messages call" in str(w.message) for w in caught)
        with pytest.warns(TornTailWarning, match="moved"):
            reader.add_messages([HumanMessage("next")])
        assert path.read_bytes() == before + line("user", "next") + b"\n"
        torn = path.with_name(path.name + ".torn").read_bytes()
        assert torn.startswith(line("user", "q" * 100)[:100])  # set aside, not lost
    assert cut >= 1, "no kill landed inside the call: nothing was tested"


LIVE_WRITER = """
import os, sys, time
from langchain_core.messages import AIMessage, HumanMessage
from crab_langchain import CrabChatMessageHistory
real_write = os.write
def slow_write(fd, data):  # a slow disk: each write lands 64 KiB at a time
    time.sleep(0.001)
    return real_write(fd, bytes(data[:65536]))
os.write = slow_write
history = CrabChatMessageHistory.from_file(sys.argv[1])
print("ready", flush=True)
for call in range(30):
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
        while writer.poll() is None:
            count = len(follower.stored_messages()) - 1
            assert count % 25 == 0, f"a reader saw {count % 25} messages of a call"
            seen.add(count)
    finally:
        writer.wait(timeout=120)
        writer.stdout.close()
    assert writer.returncode == 0
    assert len(follower.stored_messages()) == 1 + 30 * 25
    assert len(seen) > 2  # the readers really read while the writer wrote


# --- 9. a replaced file is always noticed -------------------------------------------------


def test_replacement_reusing_the_inode_with_matching_bytes_is_noticed(tmp_path):
    """Another instance clears and rewrites; the new file may reuse the inode number.

    The reader's first line ("y") is as long as the others ("x"), so every byte
    a content check could compare (the header, the bytes before the reader's
    position) matches in the new file: only an identity that cannot repeat
    tells the files apart.
    """
    store = SessionStore(tmp_path, entry_points=False)
    reader = store.get_session_history("s")
    reused = 0
    for attempt in range(50):
        other = SessionStore(tmp_path, entry_points=False).get_session_history("s")
        other.clear()
        other.add_messages([AIMessage("y")] + [AIMessage("x")] * 20)
        assert texts(reader) == ["y"] + ["x"] * 20
        inode = reader.file_path.stat().st_ino
        other.clear()
        other.add_messages([HumanMessage("filler")])
        other.clear()  # the second replacement may get the first file's inode back
        other.add_messages([AIMessage("x")] * (21 + attempt))
        reused += reader.file_path.stat().st_ino == inode
        assert texts(reader) == ["x"] * (21 + attempt), f"attempt {attempt}"
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


# --- 2. the header line is never rewritten ------------------------------------------------

ODD_HEADERS = [
    b'{"agent":"crab","created_by":"user","created_at":"2026-03-23T08:06:51Z","uptime_secs":1e400}',
    b'{ "created_at" : "2026-03-23T08:06:51.000+00:00", "agent":"crab" ,"created_by":"user"}',
    b'{"agent":"cr\\u0061b","created_by":"user","created_at":"2026-03-23T08:06:51Z","n":1.0e3}',
    b'{"agent":"x","agent":"crab","created_by":"user","created_at":"2026-03-23T08:06:51Z"}',
]


@pytest.mark.parametrize("header", ODD_HEADERS)
def test_clear_keeps_the_header_byte_for_byte(tmp_path, header):
    path = tmp_path / NAME
    path.write_bytes(header + b"\n" + line("user", "one") + b"\n")
    history = CrabChatMessageHistory.from_file(path)
    assert texts(history) == ["one"]
    history.clear()
    assert path.read_bytes() == header + b"\n"
    assert texts(CrabChatMessageHistory.from_file(path)) == []  # and it still opens


async def test_aclear_keeps_the_header_byte_for_byte(tmp_path):
    path = tmp_path / NAME
    path.write_bytes(ODD_HEADERS[0] + b"\n" + line("user", "one") + b"\n")
    await CrabChatMessageHistory.from_file(path).aclear()
    assert path.read_bytes() == ODD_HEADERS[0] + b"\n"


# --- 3. plugins cannot corrupt a session --------------------------------------------------


class Vandal:
    def __init__(self, field: str, value: object) -> None:
        self.field, self.value = field, value

    @hookimpl
    def crab_before_persist(self, messages):
        if len(messages) > 1:
            setattr(messages[-1], self.field, self.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("content", ["a", "list"]), ("role", ""), ("content", 42), ("tool_calls", "zz")],
)
def test_a_batch_a_plugin_broke_is_refused_whole(tmp_path, field, value):
    store = SessionStore(tmp_path, [Vandal(field, value)], entry_points=False)
    history = store.get_session_history("s")
    history.add_messages([HumanMessage("kept")])
    before = history.file_path.read_bytes()
    with pytest.raises(TypeError, match=rf"crab_before_persist left.*index 1.*{field}"):
        history.add_messages([HumanMessage("one"), AIMessage("two")])
    assert history.file_path.read_bytes() == before
    assert texts(SessionStore(tmp_path, entry_points=False).get_session_history("s")) == ["kept"]


class NotAMessage:
    @hookimpl
    def crab_before_persist(self, messages):
        messages.append({"role": "user", "content": "a dict"})


def test_a_plugin_adding_a_non_message_is_refused(tmp_path):
    history = SessionStore(tmp_path, [NotAMessage()], entry_points=False).get_session_history("s")
    with pytest.raises(TypeError, match="index 1 of the batch, a dict, not a CrabMessage"):
        history.add_messages([HumanMessage("one")])
    assert history.file_path is None or history.file_path.read_bytes().count(b"\n") == 1


class NaNExtra:
    @hookimpl
    def crab_before_persist(self, messages):
        messages[0].langchain = {"response_metadata": {"score": float("nan")}}


def test_a_plugin_adding_a_value_json_cannot_hold_is_refused(tmp_path):
    history = SessionStore(tmp_path, [NaNExtra()], entry_points=False).get_session_history("s")
    with pytest.raises(TypeError, match="JSON cannot hold"):
        history.add_messages([HumanMessage("one")])


class InjectsAString:
    @hookimpl
    def crab_inject_messages(self):
        return "remember Lisbon"


class InjectsFine:
    @hookimpl
    def crab_inject_messages(self):
        return [HumanMessage("fine")]


class FiltersWithAMessage:
    @hookimpl
    def crab_filter_message(self, message):
        return message


def test_an_inject_hook_returning_a_string_is_named(tmp_path):
    plugins = [InjectsFine(), InjectsAString()]
    history = SessionStore(tmp_path, plugins, entry_points=False).get_session_history("s")
    with pytest.raises(TypeError, match=r"crab_inject_messages of plugin 'InjectsAString'.*a str"):
        _ = history.messages


def test_a_filter_hook_returning_a_message_is_named(tmp_path):
    history = SessionStore(
        tmp_path, [FiltersWithAMessage()], entry_points=False
    ).get_session_history("s")
    with pytest.raises(TypeError, match="crab_filter_message of plugin 'FiltersWithAMessage'"):
        history.add_messages([HumanMessage("one")])
    assert history.file_path is None


class CountsItsCalls:
    """A plugin with a side effect: each call counts."""

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.calls = 0

    @hookimpl
    def crab_inject_messages(self):
        self.calls += 1
        return self.answer

    @hookimpl
    def crab_filter_message(self):
        self.calls += 1
        return self.answer


def test_a_plugin_returning_garbage_is_named_without_asking_any_plugin_twice(tmp_path):
    fine, bad = CountsItsCalls([HumanMessage("fine")]), CountsItsCalls("garbage")
    store = SessionStore(tmp_path, [fine, bad], entry_points=False)
    with pytest.raises(TypeError, match="crab_inject_messages of plugin 'CountsItsCalls'"):
        _ = store.get_session_history("s").messages
    assert bad.calls == 1  # it is asked first (registered last), and once
    with pytest.raises(TypeError, match="crab_filter_message of plugin 'CountsItsCalls'"):
        store.get_session_history("s").add_messages([HumanMessage("one")])
    assert bad.calls == 2
    assert fine.calls == 0  # a firstresult hook stops at the first answer, here a bad one


class Early:
    @hookimpl(tryfirst=True)
    def crab_inject_messages(self):
        return [HumanMessage("early")]


class Late:
    @hookimpl(trylast=True)
    def crab_inject_messages(self):
        return [HumanMessage("late")]


class Plain:
    def __init__(self, text: str) -> None:
        self.text = text

    @hookimpl
    def crab_inject_messages(self):
        return [HumanMessage(self.text)]


def test_plugins_are_asked_in_pluggys_own_order():
    plugins = [Late(), Plain("first registered"), Early(), Plain("last registered")]
    manager = make_plugin_manager(plugins, entry_points=False)
    pluggys = manager.hook.crab_inject_messages(session=None, history=[])
    session = Session(id="s", agent="crab", created_at=datetime.now(timezone.utc))
    ours = injected_messages(manager, session, [])
    assert [m.content for m in ours] == [m.content for r in pluggys for m in r]
    assert ours[0].content == "early"


# --- 6. hostile structure gets SessionFormatError -------------------------------------------

HOSTILE_LINES = {
    "nested 100,000 deep": (
        b'{"role":"user","content":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "recursion limit",
    ),
    "langchain id an object": (
        b'{"role":"user","content":"hi","langchain":{"id":{}}}',
        "langchain' extension key: id",
    ),
    "langchain status unknown": (
        b'{"role":"tool","content":"hi","tool_call_id":"c","langchain":{"status":"nope"}}',
        "langchain' extension key: status",
    ),
    "langchain tool_calls a string": (
        b'{"role":"assistant","content":"hi","langchain":{"tool_calls":"zz"}}',
        "langchain' extension key",
    ),
    "lone surrogate": (b'{"role":"user","content":"\\ud800"}', "lone surrogate"),
    "NaN": (b'{"role":"user","content":NaN}', "NaN and Infinity"),
}


@pytest.mark.parametrize("hostile", HOSTILE_LINES.values(), ids=HOSTILE_LINES.keys())
def test_hostile_lines_raise_session_format_error_with_a_true_reason(tmp_path, hostile):
    bad, reason = hostile
    path = session_file(tmp_path, line("user", "one"), bad)
    with pytest.raises(SessionFormatError) as caught:
        CrabChatMessageHistory.from_file(path)
    assert caught.value.path == str(path)
    assert caught.value.line == 3
    assert reason in caught.value.reason
    if reason != "NaN and Infinity":
        assert "NaN" not in caught.value.reason


@pytest.mark.parametrize("hostile", HOSTILE_LINES.values(), ids=HOSTILE_LINES.keys())
def test_archive_of_a_hostile_line_raises_session_format_error(tmp_path, hostile):
    path = session_file(tmp_path, b'{"compact":"summary"}', line("user", "one"))
    with open(path, "rb+") as file:
        data = file.read()
        file.seek(0)
        file.write(data.replace(b'{"compact"', hostile[0] + b'\n{"compact"'))
    history = CrabChatMessageHistory.from_file(path)  # the bad line is archived: it opens
    assert texts(history) == ["summary", "one"]
    with pytest.raises(SessionFormatError) as caught:
        history.archive()
    assert caught.value.line == 2


@pytest.mark.parametrize("hostile", HOSTILE_LINES.values(), ids=HOSTILE_LINES.keys())
def test_clear_works_on_a_file_with_a_hostile_line(tmp_path, hostile):
    path = session_file(tmp_path, line("user", "one"), hostile[0])
    history = SessionStore(tmp_path, entry_points=False).get_session_history("7")
    history.clear()
    assert path.read_bytes() == HEADER + b"\n"
    assert texts(history) == []


@pytest.mark.parametrize("hostile", HOSTILE_LINES.values(), ids=HOSTILE_LINES.keys())
def test_compact_works_on_a_file_with_a_hostile_line(tmp_path, hostile):
    path = session_file(tmp_path, line("user", "one"), hostile[0])
    history = SessionStore(tmp_path, entry_points=False).get_session_history("7")
    history.compact("a fresh start")
    assert texts(history) == ["a fresh start"]
    assert path.read_bytes().endswith(b'{"compact":"a fresh start"}\n')


def test_a_hostile_header_raises_session_format_error(tmp_path):
    path = tmp_path / NAME
    path.write_bytes(b'{"agent":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")
    with pytest.raises(SessionFormatError, match="recursion limit") as caught:
        CrabChatMessageHistory.from_file(path)
    assert caught.value.line == 1


def test_created_at_in_other_scripts_digits_is_rejected(tmp_path):
    path = tmp_path / NAME
    path.write_bytes(
        '{"agent":"crab","created_by":"user","created_at":"\uff12\uff10\uff12\uff16-03-23T08:06:51Z"}\n'.encode()
    )
    with pytest.raises(SessionFormatError, match="not an RFC 3339 time stamp"):
        CrabChatMessageHistory.from_file(path)


def test_a_malformed_line_is_named_but_never_quoted(tmp_path):
    secret = "sk-proj-DO-NOT-PRINT-1234567890"
    path = session_file(tmp_path, b'{"api_key":"%s","nested":{"x":NaN}}' % secret.encode())
    with pytest.raises(SessionFormatError) as caught:
        CrabChatMessageHistory.from_file(path)
    assert secret not in str(caught.value)
    header = tmp_path / "h.jsonl"
    header.write_bytes(b'{"agent":"crab","api_key":"%s","created_by":7}\n' % secret.encode())
    with pytest.raises(SessionFormatError) as caught:
        CrabChatMessageHistory.from_file(header)
    assert secret not in str(caught.value)


# --- 8. fork() is safe -------------------------------------------------------------------

FORK_DURING_ADD = """
import os, sys, threading
from langchain_core.messages import HumanMessage
from crab_langchain import SessionStore, hookimpl
inside, release = threading.Event(), threading.Event()
class Slow:
    @hookimpl
    def crab_before_persist(self, messages):
        if threading.current_thread() is not threading.main_thread():
            inside.set()
            release.wait()
store = SessionStore(sys.argv[1], [Slow()], entry_points=False)
history = store.get_session_history("s")
history.add_messages([HumanMessage("before")])
writer = threading.Thread(target=history.add_messages, args=([HumanMessage("parent")],))
writer.start()
inside.wait()  # the writer holds the history's lock now
pid = os.fork()
if pid == 0:
    history.add_messages([HumanMessage("child")])
    os._exit(0 if "child" in [m.content for m in history.messages] else 3)
release.set()
writer.join()
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
print([m.content for m in store.get_session_history("s").messages])
"""


@POSIX_ONLY
def test_a_child_forked_while_a_thread_holds_a_history_lock_works(tmp_path):
    out = run_python(FORK_DURING_ADD, str(tmp_path)).splitlines()
    assert out[0] == "0"
    assert sorted(eval(out[1])) == sorted(["before", "parent", "child"])


FORK_WHILE_EVERY_LOCK_IS_HELD = """
import os, signal, sys, threading
sys.path.insert(0, sys.argv[2])
from agents import CONFIG, chat_agent, human
from langchain_core.messages import HumanMessage
from crab_langchain import SessionStore
from crab_langchain.checkpoint import CrabSaver
from crab_langchain.middleware import CrabHooksMiddleware
store = SessionStore(sys.argv[1])  # entry points on: its plugins' lock too
saver = CrabSaver(store)
agent = chat_agent(saver)
agent.invoke(human("q0"), CONFIG)
middleware = CrabHooksMiddleware(store)
middleware._session("t")
history = store.get_session_history("h")
history.add_messages([HumanMessage("a")])
store._manager = None  # the plugins are still to be loaded, under their lock
(thread,) = saver._threads._kept._known.values()
locks = [saver._threads._kept._lock, thread.lock, middleware._followed._lock, store._manager_lock]
locks += [history._lock, *(followed.lock for followed in middleware._followed._known.values())]
held, release = threading.Event(), threading.Event()
def hold_every_lock():
    for lock in locks:
        lock.acquire()
    held.set()
    release.wait()
    for lock in locks:
        lock.release()
holder = threading.Thread(target=hold_every_lock)
holder.start()
held.wait()
pid = os.fork()
if pid == 0:
    signal.alarm(30)  # a lock still held would hang the child: it dies instead
    agent.invoke(human("child"), CONFIG)
    history.add_messages([HumanMessage("b")])
    middleware._session("t")
    os._exit(0)
release.set()
holder.join()
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
print([m.content for m in store.get_session_history("h").messages])
"""


@POSIX_ONLY
@pytest.mark.skipif(AGENTS_MISSING, reason="needs the langgraph and agents extras")
def test_a_child_forked_while_other_threads_hold_every_lock_uses_every_door(tmp_path):
    """The saver's, a thread's, the middleware's, the store's and the history's locks."""
    tests = Path(__file__).parent
    out = run_python(FORK_WHILE_EVERY_LOCK_IS_HELD, str(tmp_path), str(tests)).splitlines()
    assert out == ["0", "['a', 'b']"]


# --- 11 and 12. values JSON cannot hold, and what users hit first ------------------------------


def test_nan_inside_raw_tool_calls_raises_instead_of_writing_null(tmp_path):
    history = SessionStore(tmp_path, entry_points=False).get_session_history("s")
    raw = [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "f", "arguments": "{}"},
            "score": float("nan"),
        }
    ]
    message = AIMessage(
        "",
        tool_calls=[{"name": "f", "args": {}, "id": "c1"}],
        additional_kwargs={"tool_calls": raw},
    )
    with pytest.raises(TypeError, match=r"additional_kwargs.tool_calls\[0\].score"):
        history.add_messages([message])
    assert history.file_path is None


@pytest.mark.parametrize("crab", ["agent=x", ["agent"], {"agent": 5}])
def test_crab_fields_of_the_wrong_shape_raise_naming_the_field(tmp_path, crab):
    history = SessionStore(tmp_path, entry_points=False).get_session_history("s")
    with pytest.raises(TypeError, match=r"additional_kwargs\.crab"):
        history.add_messages([HumanMessage("hi", additional_kwargs={"crab": crab})])
    assert history.file_path is None


@pytest.mark.parametrize("given", ["hello", b"hello", HumanMessage("hello"), {"role": "user"}])
def test_add_messages_of_something_not_a_list_raises(tmp_path, given):
    history = SessionStore(tmp_path, entry_points=False).get_session_history("s")
    with pytest.raises(TypeError, match="sequence of messages"):
        history.add_messages(given)
    assert history.file_path is None


async def test_aadd_messages_of_a_string_raises(tmp_path):
    history = SessionStore(tmp_path, entry_points=False).get_session_history("s")
    with pytest.raises(TypeError, match="sequence of messages"):
        await history.aadd_messages("hello")
    assert history.file_path is None


# --- 7. one bad session never breaks the others (directory) ----------------------------------

HOSTILE_HEADERS = {
    "crab_1_deep.jsonl": b'{"agent":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
    "crab_2_notjson.jsonl": b"not json at all\n",
    "crab_3_fullwidth.jsonl": (
        '{"agent":"crab","created_by":"user","created_at":"\uff12\uff10\uff12\uff16-03-23T08:06:51Z"}\n'
    ).encode(),
    "crab_4_empty.jsonl": b"",
    "crab_5_array.jsonl": b"[1,2,3]\n",
    "crab_6_binary.jsonl": b"\xff\xfe\x00\x01\n",
}


@pytest.fixture
def hostile_sessions(tmp_path) -> Path:
    sessions = tmp_path / "sessions"
    sessions.mkdir(mode=0o700)
    store = SessionStore(sessions, entry_points=False)
    for session_id in ("good-1", "good-2"):
        store.get_session_history(session_id).add_messages([HumanMessage(session_id)])
    for name, data in HOSTILE_HEADERS.items():
        (sessions / name).write_bytes(data)
    (sessions / "crab_7_link.jsonl").symlink_to(sessions / "crab_1_deep.jsonl")
    (sessions / "crab_8_dir.jsonl").mkdir()
    return sessions


def test_listing_skips_each_bad_session_with_a_warning_and_lists_the_rest(hostile_sessions):
    store = SessionStore(hostile_sessions, entry_points=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        listed = store.list_sessions()
        latest = store.latest_session()
    assert sorted(info.session_id for info in listed) == ["good-1", "good-2"]
    assert latest is not None
    assert latest.session_id in ("good-1", "good-2")
    skipped = " ".join(str(w.message) for w in caught)
    for name in HOSTILE_HEADERS:
        assert name in skipped
    assert "[[[" not in skipped  # named, never quoted


def test_the_command_line_lists_and_verifies_around_bad_sessions(hostile_sessions):
    from cli_helpers import crab

    listed = crab("list", "--root", hostile_sessions, "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(item["session_id"] for item in json.loads(listed.stdout)) == [
        "good-1",
        "good-2",
    ]
    for name in HOSTILE_HEADERS:
        assert name in listed.stderr
    assert "Traceback" not in listed.stderr
    verified = crab("verify", "--root", hostile_sessions)
    assert verified.returncode == 1
    assert "Traceback" not in verified.stderr + verified.stdout
    for name in HOSTILE_HEADERS:
        assert name in verified.stdout
    assert verified.stdout.count(": ok (") == 2


# --- 12. what users hit first: the command line -----------------------------------------


def test_demo_on_a_root_it_cannot_write_is_one_error_line(tmp_path):
    from cli_helpers import assert_one_line_error, crab

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = crab("demo", "--root", blocker / "sessions")
    assert_one_line_error(done, str(blocker / "sessions"), "cannot write")
    assert "callback" not in done.stderr
    assert done.stdout == ""


def test_verify_and_repair_take_a_session_id_as_show_does(tmp_path):
    from cli_helpers import crab

    sessions = tmp_path / "sessions"
    store = SessionStore(sessions, entry_points=False)
    history = store.get_session_history("alice-1")
    history.add_messages([HumanMessage("one")])
    with open(history.file_path, "ab") as file:
        file.write(b'{"role":"user","con')
    verified = crab("verify", "--root", sessions, "alice-1")
    assert verified.returncode == 1
    assert str(history.file_path) in verified.stdout
    assert "incomplete last line" in verified.stdout
    repaired = crab("repair", "--root", sessions, "alice-1")
    assert repaired.returncode == 0, repaired.stderr
    assert "moved" in repaired.stdout
    again = crab("verify", "--root", sessions, "alice-1")
    assert again.returncode == 0
    assert ": ok (" in again.stdout
    missing = crab("verify", "--root", sessions, "nobody")
    assert missing.returncode == 1
    assert "no such session: 'nobody'" in missing.stderr


@pytest.mark.parametrize("root", ["valkey://host/0", "redis+sentinel://host/0", "ftp://x/y"])
def test_an_unsupported_root_url_names_its_scheme(root):
    from cli_helpers import assert_one_line_error, crab

    assert_one_line_error(
        crab("list", "--root", root), f"unsupported URL scheme '{root.split(':')[0]}'"
    )


# argv: sessions directory. 1,000 operations on 40 sessions through 20 stores, with
# descriptors limited to 64: prints how many failed.
FEW_DESCRIPTORS = """
import resource, sys
from langchain_core.messages import HumanMessage
from crab_langchain import SessionStore
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
stores = [SessionStore(sys.argv[1], entry_points=False) for _ in range(20)]
failed = 0
for n in range(1000):
    history = stores[(n // 40) % 20].get_session_history(f"s{n % 40}")
    try:
        if n % 2:
            history.add_messages([HumanMessage(f"m{n}")])
        else:
            history.messages
    except OSError as error:
        failed += 1
print(failed)
"""


def test_few_descriptors_make_no_operation_fail(tmp_path: Path):
    assert run_python(FEW_DESCRIPTORS, str(tmp_path)).strip() == "0"
    store = SessionStore(tmp_path, entry_points=False)
    assert sum(len(store.get_session_history(f"s{n}").messages) for n in range(40)) == 500


def test_a_read_that_comes_back_short_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = SessionStore(tmp_path, entry_points=False)
    store.get_session_history("s").add_messages([HumanMessage("x" * 100) for _ in range(100)])
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, size, offset: real(fd, min(size, 1000), offset))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torn tail seen
        assert (
            len(SessionStore(tmp_path, entry_points=False).get_session_history("s").messages) == 100
        )
