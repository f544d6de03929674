"""``crab-sessions copy``: real processes moving sessions between directories and real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote, urlsplit

import pytest
from cli_helpers import assert_one_line_error, crab, isolated, sessions  # noqa: F401
from conftest import FIXTURE_FILES
from langchain_core.messages import AIMessage, HumanMessage
from redis_servers import RedisServer, free_port

from crab_langchain import SessionStore
from crab_langchain.storage import SessionStorage, open_storage

SEVEN = "crab_1774253211_7.jsonl"  # 9 lines: reasoning and tool calls
TWELVE = "crab_1775158803_12.jsonl"  # 10 lines: a compaction marker, a title
THREE = "research_bot_1777593600_3.jsonl"  # 7 lines: agent research_bot
NAMES = sorted(path.name for path in FIXTURE_FILES)
SUMMARY = "copied {}, appended {}, unchanged {}, failed {}"


class Redis(NamedTuple):
    """A Redis server (or cluster) and this test's key prefix on it."""

    url: str
    prefix: str

    def storage(self) -> SessionStorage:
        return open_storage(self.url, prefix=self.prefix)

    def lines(self, name: str) -> list[bytes]:
        """The raw lines of log ``name`` there (header first); [] if it is not there."""
        storage = self.storage()
        try:
            if not storage.exists(name):
                return []
            chunk = storage.read(name, None)
            return [] if chunk is None else [line for _, line in chunk.lines]
        finally:
            storage.close()

    def names(self) -> list[str]:
        storage = self.storage()
        try:
            return sorted(storage.names())
        finally:
            storage.close()


# --- helpers ----------------------------------------------------------------------


def copy(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m crab_langchain copy ARGS`` to completion."""
    return crab("copy", *args)


def copied(*args: str | Path) -> list[str]:
    """Run a copy that must succeed; its stdout lines."""
    done = copy(*args)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout.splitlines()


def summary(done: subprocess.CompletedProcess[str]) -> str:
    return done.stderr.splitlines()[-1]


def files(directory: Path) -> dict[str, bytes]:
    """Every ``*.jsonl`` of ``directory``, by name."""
    return {path.name: path.read_bytes() for path in sorted(directory.glob("*.jsonl"))}


def line_count(name: str) -> int:
    return len(next(p for p in FIXTURE_FILES if p.name == name).read_bytes().splitlines())


@pytest.fixture
def redis(redis_url: str, redis_prefix: str) -> Redis:
    return Redis(redis_url, redis_prefix)


@pytest.fixture
def cluster(redis_cluster_url: str, redis_prefix: str) -> Redis:
    return Redis(redis_cluster_url, redis_prefix)


@pytest.fixture
def postgres(postgres_url: str, postgres_schema: str) -> Redis:
    return Redis(postgres_url, postgres_schema)


@pytest.fixture(params=["redis", "cluster", "postgres"])
def server(request: pytest.FixtureRequest) -> Redis:
    """The test's server: Redis, a three-node Redis Cluster, then PostgreSQL (a schema)."""
    return request.getfixturevalue(request.param)


# --- round trips ------------------------------------------------------------------


def test_directory_to_redis_and_back_is_byte_identical(
    server: Redis, sessions: Path, tmp_path: Path
) -> None:
    done = copy(sessions, server.url, "--prefix", server.prefix)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{n}: copied {line_count(n)} lines" for n in NAMES]
    assert summary(done) == SUMMARY.format(3, 0, 0, 0)
    assert server.names() == NAMES
    for path in FIXTURE_FILES:  # the Redis list items are exactly the file's lines
        assert server.lines(path.name) == path.read_bytes().splitlines()

    back = tmp_path / "new" / "sessions"  # does not exist yet: the copy makes it
    copied(server.url, f"file://{back}", "--prefix", server.prefix)
    assert files(back) == {path.name: path.read_bytes() for path in FIXTURE_FILES}


def test_redis_to_cluster_with_another_prefix(
    redis: Redis, cluster: Redis, sessions: Path, tmp_path: Path
) -> None:
    copied(sessions, redis.url, "--prefix", redis.prefix)
    other = f"{cluster.prefix}-team"
    lines = copied(redis.url, cluster.url, "--prefix", redis.prefix, "--dst-prefix", other)
    assert lines == [f"{n}: copied {line_count(n)} lines" for n in NAMES]
    assert Redis(cluster.url, cluster.prefix).names() == []  # --dst-prefix, not --prefix

    back = tmp_path / "back"
    copied(cluster.url, back, "--prefix", other)
    assert files(back) == files(sessions)


def test_two_prefixes_on_one_server(redis: Redis, sessions: Path) -> None:
    copied(sessions, redis.url, "--prefix", redis.prefix, "--id", "12")
    other = Redis(redis.url, f"{redis.prefix}-2")
    assert copied(redis.url, redis.url, "--prefix", redis.prefix, "--dst-prefix", other.prefix) == [
        f"{TWELVE}: copied 10 lines"
    ]
    assert other.lines(TWELVE) == (sessions / TWELVE).read_bytes().splitlines()

    same = copy(redis.url, redis.url, "--prefix", redis.prefix)
    assert_one_line_error(same, "same place")


def test_copied_sessions_are_usable_from_redis(server: Redis, sessions: Path) -> None:
    copied(sessions, server.url, "--prefix", server.prefix)
    local = SessionStore(sessions, entry_points=False)
    remote = SessionStore.from_url(server.url, prefix=server.prefix, entry_points=False)
    try:

        def listed(store: SessionStore) -> list[tuple[str, str, str, object, str]]:
            return [
                (i.name, i.session_id, i.agent, i.created_at, i.created_by)
                for i in store.list_sessions()
            ]

        assert listed(remote) == listed(local)
        assert len(listed(remote)) == 3
        for info in local.list_sessions():
            mine = local.get_session_history(info.session_id, info.agent)
            theirs = remote.get_session_history(info.session_id, info.agent)
            assert theirs.messages == mine.messages
            assert theirs.stored_messages() == mine.stored_messages()
            assert len(theirs.stored_messages()) > 0
    finally:
        remote.storage.close()


# --- copying again ----------------------------------------------------------------


def test_copying_again_is_unchanged_then_appends_only_new_lines(
    redis: Redis, sessions: Path, tmp_path: Path
) -> None:
    server = redis  # the cluster's round trip is tested above
    copied(sessions, server.url, "--prefix", server.prefix)
    again = copy(sessions, server.url, "--prefix", server.prefix)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"{n}: unchanged ({line_count(n)} lines)" for n in NAMES]
    assert summary(again) == SUMMARY.format(0, 0, 3, 0)

    reader = server.storage()  # a reader of the Redis copy, holding its place
    try:
        first = reader.read(SEVEN, None)
        assert first is not None
        history = SessionStore(sessions, entry_points=False).get_session_history("7")
        history.add_messages([HumanMessage("and Faro?"), AIMessage("Sunny, 24 °C.")])
        grown = copy(sessions, server.url, "--prefix", server.prefix)
        assert grown.returncode == 0, grown.stderr
        assert f"{SEVEN}: appended 2 new lines (11 in all)" in grown.stdout.splitlines()
        assert summary(grown) == SUMMARY.format(0, 1, 2, 0)
        # Appended, not rewritten: the reader's cursor still holds and yields just the new lines.
        chunk = reader.read(SEVEN, first.cursor)
        assert chunk is not None
        assert not chunk.reset
        assert [line for _, line in chunk.lines] == (sessions / SEVEN).read_bytes().splitlines()[9:]
    finally:
        reader.close()

    back = tmp_path / "back"
    copied(server.url, back, "--prefix", server.prefix)
    assert files(back) == files(sessions)


def test_a_differing_session_is_reported_and_left_alone(
    redis: Redis, sessions: Path, tmp_path: Path
) -> None:
    # The destination holds another session under TWELVE's name: same header, other messages.
    header = (sessions / TWELVE).read_bytes().splitlines()[0]
    other = tmp_path / "other"
    other.mkdir()
    (other / TWELVE).write_bytes(header + b'\n{"role":"user","content":"something else"}\n')
    copied(other, redis.url, "--prefix", redis.prefix)
    theirs = redis.lines(TWELVE)

    done = copy(sessions, redis.url, "--prefix", redis.prefix)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{SEVEN}: copied 9 lines"
    assert lines[2] == f"{THREE}: copied 7 lines"
    assert lines[1].startswith(f"{redis.url} ")  # where: the destination's key
    assert TWELVE in lines[1]
    assert ": error: a different session has this name there" in lines[1]
    assert summary(done) == SUMMARY.format(2, 0, 0, 1)
    assert redis.lines(TWELVE) == theirs
    assert redis.lines(SEVEN) == (sessions / SEVEN).read_bytes().splitlines()

    rows = json.loads(copy(sessions, redis.url, "--prefix", redis.prefix, "--json").stdout)
    assert [(row["name"], row["outcome"]) for row in rows] == [
        (SEVEN, "unchanged"),
        (TWELVE, "failed"),
        (THREE, "unchanged"),
    ]
    assert "different session" in rows[1]["error"]


# --- choosing what to copy --------------------------------------------------------


def test_id_and_agent_copy_one_session(redis: Redis, sessions: Path, tmp_path: Path) -> None:
    assert copied(sessions, redis.url, "--prefix", redis.prefix, "--id", "12") == [
        f"{TWELVE}: copied 10 lines"
    ]
    assert redis.names() == [TWELVE]
    copied(sessions, redis.url, "--prefix", redis.prefix, "--id", "3", "--agent", "research_bot")
    assert redis.names() == sorted([TWELVE, THREE])

    # From Redis: found the way SessionStore.find finds it there.
    back = tmp_path / "back"
    copied(redis.url, back, "--prefix", redis.prefix, "--id", "3", "--agent", "research_bot")
    assert files(back) == {THREE: (sessions / THREE).read_bytes()}


@pytest.mark.parametrize(("session_id", "agent"), [("nope", None), ("12", "research_bot")])
def test_an_unknown_id_is_an_error(
    redis: Redis, sessions: Path, session_id: str, agent: str | None
) -> None:
    extra = [] if agent is None else ["--agent", agent]
    done = copy(sessions, redis.url, "--prefix", redis.prefix, "--id", session_id, *extra)
    assert_one_line_error(done, f"no such session: {session_id!r}", f"agent {agent or 'crab'!r}")
    assert done.stdout == ""
    assert redis.names() == []


def test_a_malformed_session_is_reported_and_not_written(redis: Redis, sessions: Path) -> None:
    lines = (sessions / SEVEN).read_bytes().splitlines(keepends=True)
    lines[4] = b'{"role": "user", "content": \n'  # line 5 of 9: lines before it are fine
    (sessions / SEVEN).write_bytes(b"".join(lines))

    done = copy(sessions, redis.url, "--prefix", redis.prefix)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    out = done.stdout.splitlines()
    assert out[0].startswith(f"{sessions / SEVEN}:5: error: ")
    assert out[1:] == [f"{TWELVE}: copied 10 lines", f"{THREE}: copied 7 lines"]
    assert summary(done) == SUMMARY.format(2, 0, 0, 1)
    assert redis.lines(SEVEN) == []
    assert redis.names() == sorted([TWELVE, THREE])


def test_a_session_file_copies_that_session(redis: Redis, sessions: Path, tmp_path: Path) -> None:
    assert copied(sessions / THREE, redis.url, "--prefix", redis.prefix) == [
        f"{THREE}: copied 7 lines"
    ]
    assert redis.names() == [THREE]
    back = tmp_path / "back"
    copied(redis.url, back, "--prefix", redis.prefix)
    assert files(back) == {THREE: (sessions / THREE).read_bytes()}


# --- errors -----------------------------------------------------------------------


def _refused_url(password: str | None = None) -> str:
    auth = "" if password is None else f"crab:{quote(password, safe='')}@"
    return f"redis://{auth}127.0.0.1:{free_port()}/0"  # nothing listens there


def test_an_unreachable_redis_is_a_one_line_error_without_its_password(
    sessions: Path, tmp_path: Path
) -> None:
    url = _refused_url()
    assert_one_line_error(copy(sessions, url), url)

    password = "p@ss:w/rd+%"  # a password to encode: neither form may show
    target = tmp_path / "target"
    runs = [copy(_refused_url(password), target)]
    assert_one_line_error(runs[0], "redis://crab:***@127.0.0.1:")
    assert not target.exists()
    runs.append(copy(sessions, f"{url}?password={quote(password, safe='')}"))
    assert_one_line_error(runs[1], f"{url}?password=***")
    for done in runs:
        for text in (password, quote(password, safe="")):
            assert text not in done.stdout + done.stderr


@pytest.fixture
def redis_user(redis_server: RedisServer, redis_prefix: str) -> Iterator[tuple[str, str]]:
    """An ACL user with a password on the test server: ``(user, password)``."""
    user, password = f"{redis_prefix}-user", "s3cret:p@ss/word"
    with redis_server.client() as client:
        client.acl_setuser(
            user, enabled=True, passwords=[f"+{password}"], keys=["*"], categories=["+@all"]
        )
    yield user, password
    with redis_server.client() as client:
        client.acl_deluser(user)


def test_a_password_is_never_printed_when_copying(
    redis_url: str, redis_prefix: str, redis_user: tuple[str, str], sessions: Path
) -> None:
    user, password = redis_user
    where = urlsplit(redis_url)
    url = f"redis://{user}:{quote(password, safe='')}@{where.netloc}{where.path}"
    query_url = f"redis://{user}@{where.netloc}{where.path}?password={quote(password, safe='')}"
    runs = [
        copy(sessions, url, "--prefix", redis_prefix, "--json"),
        copy(query_url, sessions / "back", "--prefix", redis_prefix, "--json"),
    ]
    for done in runs:
        assert done.returncode == 0, done.stderr
    there, back = (json.loads(done.stdout) for done in runs)
    assert [(r["name"], r["outcome"], r["lines"], r["written"], r["error"]) for r in there] == [
        (n, "copied", line_count(n), line_count(n), None) for n in NAMES
    ]
    assert there[0]["source"] == str(sessions / NAMES[0])
    assert there[0]["destination"].startswith(f"redis://{user}:***@{where.netloc}/0 ")
    assert back[0]["source"].startswith(f"redis://{user}@{where.netloc}/0?password=*** ")
    assert files(sessions / "back") == files(sessions)

    wrong = url.replace(quote(password, safe=""), "not-it")
    runs.append(copy(sessions, wrong, "--prefix", redis_prefix))
    assert_one_line_error(runs[-1], f"redis://{user}:***@")
    for done in runs:
        for text in (password, quote(password, safe=""), "not-it"):
            assert text not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (["{dir}", "{dir}/other", "--prefix", "p"], 1, "--prefix is for Redis or PostgreSQL"),
        (["{url}", "{dir}/other", "--dst-prefix", "p"], 1, "--dst-prefix is for a Redis or"),
        (["{dir}", "{url}", "--prefix", "{prefix}", "--agent", "crab"], 2, "--agent"),
        (["{dir}/" + SEVEN, "{url}", "--prefix", "{prefix}", "--id", "7"], 2, "--id"),
        (["{dir}", "http://example.com/x"], 1, "unsupported URL scheme 'http'"),
        (["{dir}", "redis://:pw@[::1"], 1, "redis://:***@[::1: "),  # urlsplit refuses it
        (["{dir}/missing", "{url}"], 1, "no such sessions directory"),
        (["{dir}/" + SEVEN, "{dir}/" + TWELVE], 1, "not a directory"),
    ],
)
def test_command_line_mistakes(
    redis: Redis, sessions: Path, args: list[str], status: int, says: str
) -> None:
    done = copy(*[arg.format(dir=sessions, url=redis.url, prefix=redis.prefix) for arg in args])
    assert done.returncode == status, done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    assert ":pw@" not in done.stderr
    assert files(sessions) == {path.name: path.read_bytes() for path in FIXTURE_FILES}
    assert not (sessions / "other").exists()
    assert redis.names() == []


def test_help_documents_every_option_with_an_example() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "crab_langchain", "copy", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for option in ("--id", "--agent", "--prefix", "--dst-prefix", "--json", "SRC", "DST"):
        assert option in done.stdout
    assert "crab-sessions copy ~/.crabtalk/sessions redis://" in done.stdout


def test_a_torn_tail_copies_the_complete_lines_and_warns(redis: Redis, sessions: Path) -> None:
    whole = (sessions / SEVEN).read_bytes()
    (sessions / SEVEN).write_bytes(whole + b'{"role":"user","con')  # a writer died mid-append
    done = copy(sessions / SEVEN, redis.url, "--prefix", redis.prefix)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{SEVEN}: copied 9 lines"]
    warning, last = done.stderr.splitlines()
    assert warning.startswith(f"crab-sessions: warning: {sessions / SEVEN}: incomplete last line")
    assert last == SUMMARY.format(1, 0, 0, 0)
    assert redis.lines(SEVEN) == whole.splitlines()
