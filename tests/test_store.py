"""SessionStore on every backend: names, listing, other processes, many writers.

Behaviour tests take ``backend`` (a directory, Redis, Redis Cluster; see
``backends.py``); tests about the directory itself (its default place,
permissions, paths on disk) use a directory alone.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from backends import OPEN_STORE, Backend, run_gated_writers
from conftest import FIXTURE_FILES, run_python, run_threads
from langchain_core.messages import AIMessage, HumanMessage
from test_history import expected_file_path, log_bytes, log_lines, seed_raw, storage_of

from crab_langchain import CrabChatMessageHistory, SessionStore, default_root
from crab_langchain import history as history_module

HOSTILE_IDS = ["..", "../../x", "a/b", "\x00", "x" * 5000, "日本語 🦀", "", ".", "a\\b", "%2F"]
HOSTILE_AGENTS = ["..", "../../x", "a/b", "\x00", "日本語 🦀", ".", "/", "a\\b"]
# Braces choose a Redis Cluster slot: an id must not pick its keys' slot.
REDIS_HOSTILE_IDS = [*HOSTILE_IDS, "{tag}", "}{", "a{b}c"]
REDIS_HOSTILE_AGENTS = [*HOSTILE_AGENTS, "{tag}", "}{"]

redis_only = pytest.mark.parametrize("backend", ["redis", "redis-cluster"], indirect=True)


# --- helpers ---------------------------------------------------------------------


def make_store(root: Path, plugins=()) -> SessionStore:
    return SessionStore(root, list(plugins), entry_points=False)


def put_fixtures(backend: Backend) -> None:
    for fixture in FIXTURE_FILES:
        backend.put(fixture)


def names_of(backend: Backend) -> list[str]:
    """The names of the backend's logs, sorted."""
    return sorted(storage_of(backend).names())


def all_files(top: Path) -> set[str]:
    found = set()
    for folder, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            found.add(os.path.join(folder, name))
    return found


def server_keys(request: pytest.FixtureRequest, backend: Backend) -> set[bytes]:
    """Every key on the backend's Redis server (each node of a cluster)."""
    cluster = backend.kind == "redis-cluster"
    servers = request.getfixturevalue("redis_cluster" if cluster else "redis_server")
    keys: set[bytes] = set()
    for node in servers.nodes if cluster else [servers]:
        with node.client() as client:
            keys.update(client.scan_iter(count=1000))
    return keys


READ_SCRIPT = (
    OPEN_STORE
    + """
import json, sys
store = open_store(sys.argv[1], sys.argv[2])
for agent, session_id in zip(sys.argv[3::2], sys.argv[4::2]):
    history = store.get_session_history(session_id, agent=agent)
    print(json.dumps({"name": store.find(session_id, agent),
                      "contents": [m.content for m in history.messages]}))
"""
)


def check_interleaving(lines: list[bytes], writers: int, calls: int) -> None:
    """Exactly writers*calls*2 valid lines; each call's pair adjacent; each writer in order."""
    assert len(lines) == writers * calls * 2
    parsed = [json.loads(line) for line in lines]
    progress = dict.fromkeys(range(writers), -1)
    for question, answer in zip(parsed[::2], parsed[1::2], strict=True):
        assert question["role"] == "user"
        assert answer["role"] == "assistant"
        writer, call, kind = question["content"].split("/")
        assert kind == "q"
        assert answer["content"] == f"{writer}/{call}/a"
        assert int(call) == progress[int(writer)] + 1
        progress[int(writer)] = int(call)
    assert progress == dict.fromkeys(range(writers), calls - 1)


def session_files(root: Path) -> list[Path]:
    return sorted(root.glob("*.jsonl"))


# --- the root --------------------------------------------------------------------


def test_default_root_from_crabtalk_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CRABTALK_HOME", str(tmp_path / "ct"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "ct" / "sessions"
    store = SessionStore(entry_points=False)
    assert store.root == tmp_path / "ct" / "sessions"
    store.get_session_history("s").add_messages([HumanMessage("hi")])
    assert len(session_files(tmp_path / "ct" / "sessions")) == 1
    assert not (tmp_path / "home").exists()


def test_default_root_from_home(tmp_path, monkeypatch):
    monkeypatch.delenv("CRABTALK_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".crabtalk" / "sessions"
    store = SessionStore(entry_points=False)
    store.get_session_history("s").add_messages([HumanMessage("hi")])
    assert len(session_files(tmp_path / "home" / ".crabtalk" / "sessions")) == 1


def test_empty_crabtalk_home_falls_back_to_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CRABTALK_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".crabtalk" / "sessions"


def test_fresh_root_and_files_have_private_permissions(tmp_path):
    root = tmp_path / "new" / "sessions"
    history = make_store(root).get_session_history("s")
    assert not root.exists()
    history.add_messages([HumanMessage("hi")])
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE(history.file_path.stat().st_mode) == 0o600
    history.clear()
    assert stat.S_IMODE(history.file_path.stat().st_mode) == 0o600
    for entry in root.iterdir():
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry


# --- names -----------------------------------------------------------------------


def test_file_name_format(backend):
    before = int(time.time())
    history = backend.store().get_session_history("abc", agent="bot")
    history.add_messages([HumanMessage("hi")])
    after = int(time.time())
    [name] = names_of(backend)
    assert history.location == storage_of(backend).location(name)
    assert history.file_path == expected_file_path(backend, name)
    match = re.fullmatch(r"bot_(\d+)_abc\.jsonl", name)
    assert match is not None
    seconds = int(match.group(1))
    assert before <= seconds <= after
    header = json.loads(log_lines(backend, history)[0])
    assert seconds == int(datetime.fromisoformat(header["created_at"]).timestamp())
    assert header["session_id"] == "abc"
    assert list(header)[:3] == ["agent", "created_by", "created_at"]


def test_integer_ids_find_crabtalk_files(backend):
    put_fixtures(backend)
    store = backend.store()
    assert store.find("7") == "crab_1774253211_7.jsonl"
    assert store.find(12) == "crab_1775158803_12.jsonl"
    assert store.find("3", agent="research_bot") == "research_bot_1777593600_3.jsonl"
    assert store.find("3") is None
    history = store.get_session_history(7)
    assert history.file_path == expected_file_path(backend, "crab_1774253211_7.jsonl")
    assert history.location == storage_of(backend).location("crab_1774253211_7.jsonl")
    assert len(history.messages) == 8
    history.add_messages([HumanMessage("more")])
    assert len(names_of(backend)) == 3
    assert history.messages[-1] == HumanMessage("more")


@pytest.mark.parametrize("bad", [None, 1.5, True, b"x"])
def test_non_string_ids_are_rejected(tmp_path, bad):
    with pytest.raises(TypeError):
        make_store(tmp_path).get_session_history(bad)


def test_existing_session_keeps_header_created_by(backend):
    backend.store().get_session_history("s", created_by="tg:1").add_messages([HumanMessage("x")])
    history = backend.store().get_session_history("s", created_by="someone else")
    assert history.session.created_by == "tg:1"
    history.add_messages([AIMessage("y")])
    assert len(names_of(backend)) == 1
    assert json.loads(log_lines(backend, history)[0])["created_by"] == "tg:1"


UNDERSCORE_PAIRS = [("my_agent_2", "x_1"), ("my", "agent_2_x_1")]


def test_underscores_and_digits_in_agents_and_ids_are_not_confused(backend):
    store = backend.store()
    for agent, session_id in UNDERSCORE_PAIRS:
        store.get_session_history(session_id, agent=agent).add_messages(
            [HumanMessage(f"{agent}/{session_id}")]
        )
    assert len(names_of(backend)) == 2
    for current in (store, backend.store()):
        for agent, session_id in UNDERSCORE_PAIRS:
            history = current.get_session_history(session_id, agent=agent)
            assert history.messages == [HumanMessage(f"{agent}/{session_id}")]
            assert history.session.agent == agent
            assert history.session_id == session_id
        assert current.find("agent_2_x_1", "my_agent_2") is None
        assert current.find("x_1", "my") is None
        assert current.find("2_x_1", "my_agent") is None
    listed = {(i.agent, i.session_id) for i in backend.store().list_sessions()}
    assert listed == set(UNDERSCORE_PAIRS)


def test_underscore_sessions_seen_from_another_process(backend):
    store = backend.store()
    for agent, session_id in UNDERSCORE_PAIRS:
        store.get_session_history(session_id, agent=agent).add_messages(
            [HumanMessage(f"{agent}/{session_id}")]
        )
    pairs = [part for pair in UNDERSCORE_PAIRS for part in pair]
    out = run_python(READ_SCRIPT, *backend.argv, *pairs).splitlines()
    assert len(out) == len(UNDERSCORE_PAIRS)
    for (agent, session_id), line in zip(UNDERSCORE_PAIRS, out, strict=True):
        seen = json.loads(line)
        assert seen["contents"] == [f"{agent}/{session_id}"]
        assert seen["name"] == store.find(session_id, agent)


class _Frozen(datetime):
    moment = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)

    @classmethod
    def now(cls, tz=None):
        return cls.moment


def test_names_that_read_the_same_get_distinct_files(backend, monkeypatch):
    monkeypatch.setattr(history_module, "datetime", _Frozen)
    seconds = int(_Frozen.moment.timestamp())
    store = backend.store()
    # agent "a", id "<s>_b" and agent "a_<s>", id "b" both name "a_<s>_<s>_b.jsonl"
    first = ("a", f"{seconds}_b")
    second = (f"a_{seconds}", "b")
    for agent, session_id in (first, second):
        store.get_session_history(session_id, agent=agent).add_messages(
            [HumanMessage(f"{agent}|{session_id}")]
        )
    assert len(names_of(backend)) == 2
    monkeypatch.undo()
    fresh = backend.store()
    for agent, session_id in (first, second):
        history = fresh.get_session_history(session_id, agent=agent)
        assert history.messages == [HumanMessage(f"{agent}|{session_id}")]
        history.add_messages([AIMessage("more")])
    assert len(names_of(backend)) == 2
    assert {(i.agent, i.session_id) for i in fresh.list_sessions()} == {first, second}


@pytest.mark.parametrize("session_id", HOSTILE_IDS, ids=repr)
def test_hostile_ids_stay_inside_root_and_are_found(tmp_path, session_id):
    root = tmp_path / "sessions"
    before = all_files(tmp_path.parent)
    history = make_store(root).get_session_history(session_id)
    history.add_messages([HumanMessage("mine")])
    created = all_files(tmp_path.parent) - before
    assert created
    assert all(Path(p).is_relative_to(root) for p in created), created
    assert history.file_path.parent == root
    again = make_store(root).get_session_history(session_id)
    assert again.messages == [HumanMessage("mine")]
    assert again.session_id == session_id
    assert again.file_path == history.file_path
    [info] = make_store(root).list_sessions()
    assert info.session_id == session_id
    assert make_store(root).delete_session(session_id) is True
    assert session_files(root) == []


@redis_only
@pytest.mark.parametrize("session_id", REDIS_HOSTILE_IDS, ids=repr)
def test_hostile_ids_stay_under_the_prefix_and_are_found(request, backend, session_id):
    before = server_keys(request, backend)
    history = backend.store().get_session_history(session_id)
    history.add_messages([HumanMessage("mine")])
    created = server_keys(request, backend) - before
    assert created
    assert all(key.startswith(f"{backend.prefix}:".encode()) for key in created), created
    again = backend.store().get_session_history(session_id)
    assert again.messages == [HumanMessage("mine")]
    assert again.session_id == session_id
    assert again.location == history.location
    [info] = backend.store().list_sessions()
    assert info.session_id == session_id
    assert backend.store().delete_session(session_id) is True
    assert names_of(backend) == []
    assert server_keys(request, backend) - before == set()  # nothing left behind


@pytest.mark.parametrize("agent", HOSTILE_AGENTS, ids=repr)
def test_hostile_agents_stay_inside_root_and_are_found(tmp_path, agent):
    root = tmp_path / "sessions"
    before = all_files(tmp_path.parent)
    history = make_store(root).get_session_history("s", agent=agent)
    history.add_messages([HumanMessage("mine")])
    created = all_files(tmp_path.parent) - before
    assert all(Path(p).is_relative_to(root) for p in created), created
    assert history.file_path.parent == root
    again = make_store(root).get_session_history("s", agent=agent)
    assert again.messages == [HumanMessage("mine")]
    assert again.session.agent == agent
    [info] = make_store(root).list_sessions(agent=agent)
    assert (info.agent, info.session_id) == (agent, "s")


@redis_only
@pytest.mark.parametrize("agent", REDIS_HOSTILE_AGENTS, ids=repr)
def test_hostile_agents_stay_under_the_prefix_and_are_found(request, backend, agent):
    before = server_keys(request, backend)
    history = backend.store().get_session_history("s", agent=agent)
    history.add_messages([HumanMessage("mine")])
    created = server_keys(request, backend) - before
    assert created
    assert all(key.startswith(f"{backend.prefix}:".encode()) for key in created), created
    again = backend.store().get_session_history("s", agent=agent)
    assert again.messages == [HumanMessage("mine")]
    assert again.session.agent == agent
    assert again.location == history.location
    [info] = backend.store().list_sessions(agent=agent)
    assert (info.agent, info.session_id) == (agent, "s")


def test_all_hostile_ids_in_one_directory_keep_their_own_messages(backend):
    store = backend.store()
    for number, session_id in enumerate(HOSTILE_IDS):
        store.get_session_history(session_id).add_messages([HumanMessage(str(number))])
    assert len(names_of(backend)) == len(HOSTILE_IDS)
    fresh = backend.store()
    for number, session_id in enumerate(HOSTILE_IDS):
        assert fresh.get_session_history(session_id).messages == [HumanMessage(str(number))]
    assert sorted(i.session_id for i in fresh.list_sessions()) == sorted(HOSTILE_IDS)


def test_long_ids_with_a_common_prefix_get_distinct_files(backend):
    one, two = "x" * 5000, "x" * 4999 + "y"
    store = backend.store()
    store.get_session_history(one).add_messages([HumanMessage("one")])
    store.get_session_history(two).add_messages([HumanMessage("two")])
    assert len(names_of(backend)) == 2
    assert all(len(name) < 255 for name in names_of(backend))
    fresh = backend.store()
    assert fresh.get_session_history(one).messages == [HumanMessage("one")]
    assert fresh.get_session_history(two).messages == [HumanMessage("two")]
    assert fresh.get_session_history("x" * 4998).messages == []


def test_unencodable_id_is_rejected_and_creates_nothing(backend):
    store = backend.store()
    with pytest.raises(ValueError, match="Unicode"):
        store.get_session_history("\ud800").add_messages([HumanMessage("x")])
    assert names_of(backend) == []


@pytest.mark.parametrize("agent", ["", "x" * 5000, "\udcff"], ids=["empty", "long", "surrogate"])
def test_unusable_agent_raises_valueerror(tmp_path, agent):
    with pytest.raises(ValueError, match="agent"):
        make_store(tmp_path / "sessions").get_session_history("s", agent=agent)
    assert not (tmp_path / "sessions").exists()


# --- listing ---------------------------------------------------------------------


def test_list_sessions_reads_crabtalk_files_newest_first(backend):
    put_fixtures(backend)
    store = backend.store()
    store.get_session_history("mine", created_by="tg:9").add_messages([HumanMessage("x")])
    infos = store.list_sessions()
    assert [(i.agent, i.session_id) for i in infos] == [
        ("crab", "mine"),
        ("research_bot", "3"),
        ("crab", "12"),
        ("crab", "7"),
    ]
    assert [i.created_at for i in infos] == sorted((i.created_at for i in infos), reverse=True)
    by_id = {i.session_id: i for i in infos}
    assert by_id["12"].created_by == "tg:12345"
    assert by_id["12"].title == "Trip planning"
    assert by_id["12"].extra == {"title": "Trip planning", "uptime_secs": 842}
    assert by_id["7"].title is None
    assert by_id["7"].created_at == datetime(2026, 3, 23, 8, 6, 51, 482913, tzinfo=timezone.utc)
    assert by_id["7"].path == expected_file_path(backend, "crab_1774253211_7.jsonl")
    assert by_id["7"].name == "crab_1774253211_7.jsonl"
    assert by_id["mine"].created_by == "tg:9"
    for fixture in FIXTURE_FILES:
        assert log_bytes(backend, fixture.name) == fixture.read_bytes()


def test_list_sessions_filters(backend):
    put_fixtures(backend)
    store = backend.store()
    assert [i.session_id for i in store.list_sessions(agent="crab")] == ["12", "7"]
    assert [i.session_id for i in store.list_sessions(created_by="tg:12345")] == ["12"]
    assert [i.session_id for i in store.list_sessions(agent="research_bot")] == ["3"]
    assert store.list_sessions(agent="crab", created_by="research_bot") == []
    assert store.list_sessions(agent="nobody") == []


def test_list_sessions_skips_malformed_files_with_a_warning(backend):
    put_fixtures(backend)
    seed_raw(backend, "crab_1_bad.jsonl", b"garbage\n")
    seed_raw(backend, "crab_2_empty.jsonl", b"")
    if not backend.is_server:  # a directory holds other files too
        (Path(backend.url) / "notes.txt").write_bytes(b"not a session")
    store = backend.store()
    with pytest.warns(UserWarning, match="skipping") as caught:
        infos = store.list_sessions()
    assert sorted(i.session_id for i in infos) == ["12", "3", "7"]
    text = " ".join(str(w.message) for w in caught)
    assert "crab_1_bad.jsonl" in text
    assert "crab_2_empty.jsonl" in text
    assert "notes.txt" not in text
    assert log_bytes(backend, "crab_1_bad.jsonl") == b"garbage\n"


def test_list_sessions_of_missing_root_is_empty(tmp_path):
    assert make_store(tmp_path / "none").list_sessions() == []
    assert not (tmp_path / "none").exists()


def test_latest_session(backend):
    put_fixtures(backend)
    store = backend.store()
    assert store.latest_session().session_id == "7"
    assert store.latest_session("crab", "tg:12345").session_id == "12"
    assert store.latest_session("research_bot", "research_bot").session_id == "3"
    assert store.latest_session("nobody") is None
    store.get_session_history("new").add_messages([HumanMessage("x")])
    assert store.latest_session().session_id == "new"


def test_latest_session_of_empty_store_is_none(backend):
    assert backend.store().latest_session() is None
    assert backend.store().list_sessions() == []


def test_delete_session(backend):
    put_fixtures(backend)
    store = backend.store()
    store.get_session_history("mine").add_messages([HumanMessage("x")])
    assert store.delete_session("mine") is True
    assert store.find("mine") is None
    assert store.get_session_history("mine").messages == []
    assert store.delete_session("7") is True
    assert not storage_of(backend).exists("crab_1774253211_7.jsonl")
    assert names_of(backend) == [
        "crab_1775158803_12.jsonl",
        "research_bot_1777593600_3.jsonl",
    ]
    assert store.delete_session("7") is False
    assert store.delete_session("unknown") is False
    assert store.delete_session("3") is False  # wrong agent
    assert store.delete_session("3", agent="research_bot") is True


def test_deleted_session_starts_fresh(backend):
    store = backend.store()
    store.get_session_history("s").add_messages([HumanMessage("old")])
    store.delete_session("s")
    history = store.get_session_history("s")
    history.add_messages([HumanMessage("new")])
    assert history.messages == [HumanMessage("new")]
    assert len(names_of(backend)) == 1


# --- many writers ----------------------------------------------------------------


def _wait_until_ready(gate: Path, procs: list[subprocess.Popen[str]]) -> None:
    for _ in range(6000):
        if len(list(gate.glob("ready-*"))) == len(procs):
            return
        assert all(p.poll() is None for p in procs), "a writer died early"
        time.sleep(0.005)
    raise AssertionError("writers did not start")


def test_processes_creating_one_session_together_make_one_file(backend, tmp_path):
    run_gated_writers(backend, tmp_path / "gate", writers=4, turns=1)
    [name] = names_of(backend)
    check_interleaving(log_lines(backend, name)[1:], writers=4, calls=1)
    history = backend.store().get_session_history("s")
    assert len(history.messages) == 8


def _write_calls(history: CrabChatMessageHistory, writer: int, calls: int = 100) -> None:
    for i in range(calls):
        history.add_messages([HumanMessage(f"{writer}/{i}/q"), AIMessage(f"{writer}/{i}/a")])


def test_threads_sharing_one_history(backend):
    history = backend.store().get_session_history("shared")
    run_threads(lambda writer: _write_calls(history, writer))
    [name] = names_of(backend)
    check_interleaving(log_lines(backend, name)[1:], writers=4, calls=100)
    assert len(history.messages) == 800
    assert history.messages == backend.store().get_session_history("shared").messages


# --- create-only sessions (importers) -----------------------------------------


def test_create_session_writes_a_header_only_file(backend):
    store = backend.store()
    history = store.create_session("imported", agent="bot", created_by="cli")
    [name] = names_of(backend)
    assert history.location == storage_of(backend).location(name)
    assert history.file_path == expected_file_path(backend, name)
    lines = log_bytes(backend, history).splitlines()
    assert len(lines) == 1
    header = json.loads(lines[0])
    assert (header["agent"], header["created_by"], header["session_id"]) == (
        "bot",
        "cli",
        "imported",
    )
    history.add_messages([HumanMessage("one")])
    assert backend.store().get_session_history("imported", agent="bot").messages == [
        HumanMessage("one")
    ]


def test_create_session_refuses_an_existing_session_and_leaves_it_alone(backend):
    store = backend.store()
    store.get_session_history("s").add_messages([HumanMessage("kept")])
    history = store.get_session_history("s")
    before = log_bytes(backend, history)
    with pytest.raises(FileExistsError, match="'s'"):
        backend.store().create_session("s")
    assert log_bytes(backend, history) == before
    assert len(names_of(backend)) == 1


def test_create_session_is_per_agent(backend):
    store = backend.store()
    store.create_session("same", agent="a")
    store.create_session("same", agent="b")
    assert sorted(info.agent for info in store.list_sessions()) == ["a", "b"]
