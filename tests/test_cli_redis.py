"""``crab-sessions`` on a Redis ``--root``: real processes against real Redis and Redis Cluster.

Each session is seeded byte for byte from crabtalk's own files, so every
command's output on Redis is compared with its output on the same sessions
in a directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import pytest
from cli_helpers import WAIT, Follower, assert_one_line_error, crab, isolated, lines_until, sessions  # noqa: F401
from conftest import FIXTURE_FILES
from langchain_core.messages import AIMessage, HumanMessage, convert_to_openai_messages
from redis_servers import free_port

from crab_langchain import CrabChatMessageHistory, SessionStore
from crab_langchain.storage import DirectoryStorage, SessionStorage, open_storage
from crab_langchain.transfer import CopyResult, copy_sessions

SEVEN = "crab_1774253211_7.jsonl"  # 9 lines: reasoning and tool calls
TWELVE = "crab_1775158803_12.jsonl"  # 10 lines: a compaction marker, a title
THREE = "research_bot_1777593600_3.jsonl"  # 7 lines: agent research_bot


class Redis(NamedTuple):
    """A Redis server (or cluster) and this test's key prefix on it."""

    url: str
    prefix: str

    @property
    def root(self) -> list[str]:
        """The options that put a command's sessions here."""
        return ["--root", self.url, "--prefix", self.prefix]

    def storage(self) -> SessionStorage:
        return open_storage(self.url, prefix=self.prefix)


# --- helpers ----------------------------------------------------------------------


def ok(*args: str | Path) -> str:
    """Run a command that must succeed; its stdout."""
    done = crab(*args)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def raw_stdout(*args: str | Path) -> bytes:
    """Run a command that must succeed; its stdout as bytes, untouched."""
    done = subprocess.run(
        [sys.executable, "-m", "crab_langchain", *map(str, args)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def seeded(url: str, prefix: str, sessions: Path) -> Redis:
    """The fixtures' sessions copied, byte-identical, to ``url`` under ``prefix``."""
    redis = Redis(url, prefix)
    storage = redis.storage()
    try:
        results = copy_sessions(DirectoryStorage(sessions), storage)
    finally:
        storage.close()
    assert all(isinstance(result, CopyResult) for result in results), results
    return redis


@pytest.fixture
def redis(redis_url: str, redis_prefix: str, sessions: Path) -> Redis:
    """The fixtures' sessions on the single test server."""
    return seeded(redis_url, redis_prefix, sessions)


@pytest.fixture(params=["redis", "redis-cluster", "postgres"])
def server(request: pytest.FixtureRequest, sessions: Path) -> Redis:
    """The fixtures' sessions on a single server, a three-node cluster, then PostgreSQL
    (its ``--prefix`` names a schema)."""
    if request.param == "postgres":
        url, prefix = request.getfixturevalue("postgres_url"), "postgres_schema"
    else:
        url = request.getfixturevalue(
            "redis_url" if request.param == "redis" else "redis_cluster_url"
        )
        prefix = "redis_prefix"
    return seeded(url, request.getfixturevalue(prefix), sessions)


def location(redis: Redis, name: str) -> str:
    storage = redis.storage()
    try:
        return storage.location(name)
    finally:
        storage.close()


# --- list -------------------------------------------------------------------------


def test_list_shows_what_the_directory_store_shows(server: Redis, sessions: Path) -> None:
    assert ok("list", *server.root) == ok("list", "--root", sessions)  # sizes included

    listed = json.loads(ok(*server.root, "list", "--json"))
    local = json.loads(ok("--root", sessions, "list", "--json"))
    assert [row["session_id"] for row in listed] == ["3", "12", "7"]
    for row, there in zip(listed, local, strict=True):
        name = Path(there["path"]).name
        assert row["location"] == location(server, name)
        assert there["location"] == there["path"]
        assert row["path"] is None
        assert {**row, "path": None, "location": None} == {**there, "path": None, "location": None}
        assert row["size"] == (sessions / name).stat().st_size  # the bytes of its lines

    both = ok(*server.root, "list", "--json", "--agent", "crab", "--created-by", "tg:12345")
    assert [row["session_id"] for row in json.loads(both)] == ["12"]


def test_list_counts_message_lines_without_parsing_them(redis: Redis) -> None:
    storage = redis.storage()
    try:  # not JSON at all, yet a message line to count; a compaction marker is not
        storage.create("crab_1_odd.jsonl", FIXTURE_FILES[0].read_bytes().split(b"\n")[0])
        storage.append("crab_1_odd.jsonl", [b"not json", b'{"compact":"x"}', b"[1]"])
    finally:
        storage.close()
    rows = json.loads(ok(*redis.root, "list", "--json"))
    (odd,) = [row for row in rows if row["location"].endswith("{crab_1_odd.jsonl}:lines")]
    assert odd["messages"] == 2


def test_another_prefix_holds_no_sessions(redis: Redis) -> None:
    done = crab("--root", redis.url, "--prefix", f"{redis.prefix}-other", "list")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == f"no sessions in {redis.url} (prefix '{redis.prefix}-other')\n"


# --- show -------------------------------------------------------------------------


def test_show_prints_what_it_prints_for_the_directory(server: Redis, sessions: Path) -> None:
    assert raw_stdout(*server.root, "show", "3", "--jsonl") == (sessions / THREE).read_bytes()
    lines = (sessions / SEVEN).read_bytes().splitlines()
    assert raw_stdout("show", "7", "--jsonl", "--tail", "1", *server.root).splitlines() == [
        lines[0],
        lines[-1],
    ]

    header, *rest = ok(*server.root, "show", "12", "--tail", "3").splitlines()
    local_header, *local_rest = ok("--root", sessions, "show", "12", "--tail", "3").splitlines()
    assert rest == local_rest
    assert rest[0] == "… 6 earlier messages hidden"
    assert header == local_header.replace(str(sessions / TWELVE), location(server, TWELVE))


def test_show_an_unknown_id_names_the_server_and_prefix(redis: Redis) -> None:
    done = crab(*redis.root, "show", "404")
    assert_one_line_error(done, "no such session: '404'", f"{redis.url} (prefix '{redis.prefix}')")


def test_follow_prints_what_another_process_appends(server: Redis) -> None:
    follower = Follower(*server.root, "show", "7", "--follow")
    out, err = follower.out, follower.err
    store = SessionStore.from_url(server.url, prefix=server.prefix, entry_points=False)
    try:
        lines_until(out, "Livraria Lello")  # the initial transcript is out
        history = store.get_session_history("7")
        history.add_messages([HumanMessage("one more?"), AIMessage("appended elsewhere")])
        seen = lines_until(out, "appended elsewhere")
        history.clear()  # a new incarnation of the log: shown again from its header
        lines_until(err, "was replaced; showing it again from the start")
        seen += lines_until(out, "session '7'")
        history.add_messages([HumanMessage("after the clear")])
        seen += lines_until(out, "after the clear")
        rest, errors = follower.stop()
    finally:
        follower.kill()
        store.storage.close()
    assert follower.returncode == 0, errors
    assert "Traceback" not in errors
    printed = seen + rest.splitlines()
    assert [line for line in printed if not line.startswith("# ")] == [
        "user: one more?",
        "assistant: appended elsewhere",
        "user: after the clear",
    ], (printed, errors)
    (header,) = [line for line in printed if line.startswith("# ")]  # once, after the clear
    assert header.startswith("# session '7' · agent 'crab'")
    assert header.endswith(f"0 messages · {location(server, SEVEN)}")
    assert printed.index(header) == 2


# --- export and import ------------------------------------------------------------


def test_export_equals_the_directory_export(server: Redis, sessions: Path) -> None:
    exported = ok(*server.root, "export", "12", "--format", "langchain")
    assert exported == ok("--root", sessions, "export", "12", "--format", "langchain")
    assert json.loads(exported)[0]["data"]["content"].startswith("The user flies to Lisbon")
    openai = json.loads(ok("export", "7", "--format", "openai", *server.root))
    history = CrabChatMessageHistory.from_file(sessions / SEVEN)
    assert openai == convert_to_openai_messages(history.stored_messages())


def test_import_creates_a_session_on_redis_and_never_touches_one(
    redis: Redis, tmp_path: Path
) -> None:
    items = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    source = tmp_path / "dicts.json"
    source.write_text(json.dumps(items), encoding="utf-8")
    done = ok("import", source, "--agent", "bot", "--id", "alice-1", *redis.root)

    store = SessionStore.from_url(redis.url, prefix=redis.prefix, entry_points=False)
    try:
        history = store.get_session_history("alice-1", agent="bot")
        assert [(m.type, m.content) for m in history.stored_messages()] == [
            ("system", "Be brief."),
            ("human", "hi"),
        ]
        assert history.file_path is None
        assert done == f"imported 2 messages into {history.location}\n"
        before = store.storage.read(SEVEN, None)
        again = crab(*redis.root, "import", source, "--agent", "crab", "--id", "7")
        assert_one_line_error(again, "already exists", "not touching it")
        assert store.storage.read(SEVEN, None) == before
    finally:
        store.storage.close()


# --- verify and repair ------------------------------------------------------------


def test_verify_checks_every_session_on_the_server(server: Redis, sessions: Path) -> None:
    done = crab(*server.root, "verify")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{location(server, name)}: ok ({len((sessions / name).read_bytes().splitlines())} lines)"
        for name in sorted([SEVEN, TWELVE, THREE])
    ]
    assert done.stderr == "3 sessions checked, 0 with problems\n"

    header, *lines = (sessions / SEVEN).read_bytes().splitlines()
    lines[1] = b'{"role":"user","content":"cut'
    lines[4] = b"[1, 2]"
    lines[6] = b'{"role":"user",\n"content":"two lines in a file"}'
    storage = server.storage()
    try:  # a malformed session can only be written below the library
        storage.create("crab_1_bad.jsonl", header)
        storage.append("crab_1_bad.jsonl", lines)
        storage.create("crab_2_header.jsonl", b'{"agent":"crab"}')
    finally:
        storage.close()
    done = crab("verify", *server.root)
    assert done.returncode == 1
    bad, no_header = location(server, "crab_1_bad.jsonl"), location(server, "crab_2_header.jsonl")
    out = done.stdout.splitlines()
    problems = [line.removeprefix(bad) for line in out if line.startswith(bad)]
    assert [problem.split(": ", 1)[0] for problem in problems] == [":3", ":6", ":8"]
    assert problems[0].startswith(":3: not JSON")
    assert problems[1].startswith(":6: expected a JSON object")
    assert problems[2] == ":8: holds a line break"
    (header_problem,) = [line for line in out if line.startswith(no_header)]
    assert header_problem.startswith(f"{no_header}:1: header needs a string 'created_by'")
    assert f"{location(server, TWELVE)}: ok (10 lines)" in out
    assert done.stderr == "5 sessions checked, 2 with problems\n"


def test_repair_refuses_a_redis_root_in_one_line(redis: Redis) -> None:
    line = assert_one_line_error(crab(*redis.root, "repair"), "nothing is ever torn there")
    assert "verify" in line


# --- mistakes ---------------------------------------------------------------------


def test_prefix_is_for_a_redis_root_only(sessions: Path) -> None:
    nowhere = "redis://127.0.0.1:1/0"  # refused before any connection is tried
    for args in (["--root", sessions, "--prefix", "p", "list"], ["show", "7", "--prefix", "p"]):
        assert_one_line_error(crab(*args), "--prefix is for a server --root", "is a directory")
    empty = crab("--root", nowhere, "--prefix", "", "list")
    assert empty.returncode == 2
    assert "--prefix must not be empty" in empty.stderr
    assert_one_line_error(crab("--root", nowhere, "demo"), "demo writes its session to a dir")


def test_an_unreachable_server_is_one_line_without_its_password(tmp_path: Path) -> None:
    password = "p@ss:w/rd+%"  # a password to encode: neither form may show
    port = free_port()  # nothing listens there
    url = f"redis://crab:{quote(password, safe='')}@127.0.0.1:{port}/0"
    query = f"redis://127.0.0.1:{port}/0?password={quote(password, safe='')}"
    source = tmp_path / "in.json"
    source.write_text('[{"role": "user", "content": "hi"}]', encoding="utf-8")
    runs = [
        (crab("--root", url, "list"), "redis://crab:***@127.0.0.1:"),
        (crab("--root", query, "verify"), "?password=***"),
        (crab("--root", query, "import", source, "--id", "x"), "?password=***"),
    ]
    for done, shown in runs:
        assert_one_line_error(done, shown)
        for text in (password, quote(password, safe="")):
            assert text not in done.stdout + done.stderr
