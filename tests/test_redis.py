"""What only the Redis backend has: keys, slots, prefixes, TTL, its index, round trips, errors.

Against the real servers of conftest.py (a single node and a three-node
cluster); the behaviour every backend shares is in the parametrized suites.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from datetime import datetime, timedelta, timezone

import pytest
import redis
import redis.cluster
from backends import log_name
from conftest import FIXTURE_FILES
from langchain_core.messages import AIMessage, HumanMessage
from pluggy import PluginValidationError

from crab_langchain import SessionStore, hookimpl
from crab_langchain.storage import open_storage
from crab_langchain.storage.redis import RedisStorage, StorageUnavailableError

HEADER = b'{"agent":"crab","created_by":"user","created_at":"2026-03-23T08:06:51.482913+00:00"}'
SERVERS = ["redis", "redis-cluster"]


@pytest.fixture(params=SERVERS)
def url(request) -> str:
    return request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")


@pytest.fixture
def storage(url, redis_prefix) -> RedisStorage:
    made = RedisStorage.from_url(url, prefix=redis_prefix)
    yield made
    made.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command_calls(client, command: str) -> int:
    """How often the server (every node of a cluster) ran ``command``, scripts' calls included."""
    if isinstance(client, redis.cluster.RedisCluster):
        nodes = [client.get_redis_connection(node) for node in client.get_nodes()]
    else:
        nodes = [client]
    stats = [node.info("commandstats").get(f"cmdstat_{command}", {}) for node in nodes]
    return sum(int(entry.get("calls", 0)) for entry in stats)


# --- connecting -------------------------------------------------------------------


def test_from_url_asks_the_server_whether_it_is_a_cluster(redis_url, redis_cluster_url):
    single = RedisStorage.from_url(redis_url)
    assert type(single.client) is redis.Redis
    clustered = RedisStorage.from_url(redis_cluster_url)
    assert isinstance(clustered.client, redis.cluster.RedisCluster)
    assert RedisStorage.from_url(redis_url, cluster=False).native_async


def test_open_storage_picks_the_backend_by_url(redis_url, tmp_path):
    assert isinstance(open_storage(redis_url, prefix="p"), RedisStorage)
    assert open_storage(tmp_path).describe() == str(tmp_path)
    assert open_storage(f"file://{tmp_path}").describe() == str(tmp_path)
    with pytest.raises(ValueError, match="prefix and ttl are for Redis"):
        open_storage(tmp_path, ttl=5)
    with pytest.raises(ValueError, match="unsupported URL scheme 'ftp'"):
        open_storage("ftp://example/x")


def test_an_unreachable_server_is_a_clear_error_naming_it():
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(StorageUnavailableError, match=url.replace(".", r"\.")):
        SessionStore.from_url(url, socket_connect_timeout=1, retry=None)


def test_a_password_never_shows_in_errors_or_descriptions(redis_url):
    with_password = redis_url.replace("redis://", "redis://user:hunter2@")
    with pytest.raises(StorageUnavailableError) as caught:
        RedisStorage.from_url(with_password)  # the server has no such user
    assert "hunter2" not in str(caught.value)
    assert "user:***@" in str(caught.value)


def test_a_server_going_away_raises_storage_unavailable_on_read_and_write(redis_url, redis_prefix):
    from redis_servers import RedisServer

    with RedisServer() as server:
        store = SessionStore.from_url(
            server.url, prefix=redis_prefix, entry_points=False, socket_timeout=1, retry=None
        )
        history = store.get_session_history("s")
        history.add_messages([HumanMessage("kept")])
        server.stop()
        with pytest.raises(StorageUnavailableError, match=str(server.port)):
            history.add_messages([HumanMessage("lost")])
        with pytest.raises(StorageUnavailableError, match=str(server.port)):
            _ = history.messages
        with pytest.raises(StorageUnavailableError, match=str(server.port)):
            asyncio.run(history.aadd_messages([HumanMessage("lost")]))


# --- keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["crab_1_7.jsonl", "}x{.jsonl", "{a}_1_{b}.jsonl", "a%7Bb.jsonl"])
def test_a_sessions_keys_share_one_slot_whatever_its_name(redis_cluster_url, redis_prefix, name):
    storage = RedisStorage.from_url(redis_cluster_url, prefix=redis_prefix)
    storage.create(name, HEADER)
    storage.append(name, [b'{"role":"user","content":"x"}'])
    keys = storage._keys.session(name)  # lines, token, write ids
    assert all(key.startswith(f"{redis_prefix}:") for key in keys)
    assert [storage.client.exists(key) for key in keys] == [1, 1, 1]
    assert len({storage.client.keyslot(key) for key in keys}) == 1
    assert storage.read_header(name) == HEADER


def test_prefixes_keep_stores_on_one_server_apart(redis_url, redis_prefix):
    one = SessionStore.from_url(redis_url, prefix=redis_prefix + "a", entry_points=False)
    two = SessionStore.from_url(redis_url, prefix=redis_prefix + "b", entry_points=False)
    one.get_session_history("s").add_messages([HumanMessage("one's")])
    assert two.list_sessions() == []
    assert two.get_session_history("s").messages == []
    assert one.get_session_history("s").messages == [HumanMessage("one's")]


def test_every_key_starts_with_the_prefix(storage, redis_prefix):
    store = SessionStore(backend=storage, entry_points=False)
    store.get_session_history("../../etc/passwd").add_messages([HumanMessage("x")])
    client = storage.client
    everything = list(client.scan_iter(match="*")) if type(client) is redis.Redis else None
    mine = list(client.scan_iter(match=f"{redis_prefix}:*"))
    assert len(mine) == 5  # three keys of the session, the index's two sorted sets
    if everything is not None:
        assert all(not key.startswith(redis_prefix.encode()) or key in mine for key in everything)


def test_items_are_exactly_the_jsonl_lines_header_first(storage):
    store = SessionStore(backend=storage, entry_points=False)
    history = store.get_session_history("7")
    history.add_messages([HumanMessage("hi"), AIMessage("hello")])
    lines_key = history.location.split(" ")[-1]
    items = storage.client.lrange(lines_key, 0, -1)
    assert items[1:] == [
        b'{"role":"user","content":"hi"}',
        b'{"role":"assistant","content":"hello"}',
    ]
    assert items[0].startswith(b'{"agent":"crab","created_by":"user","created_at":"')


# --- round trips --------------------------------------------------------------------


def test_one_rpush_per_add_messages_and_one_round_trip_per_read(storage):
    history = SessionStore(backend=storage, entry_points=False).get_session_history("s")
    history.add_messages([HumanMessage("first")])
    _ = history.messages
    client = storage.client
    pushes, scripts = command_calls(client, "rpush"), command_calls(client, "evalsha")
    for turn in range(5):
        _ = history.messages
        history.add_messages([HumanMessage(f"q{turn}"), AIMessage(f"a{turn}")])
    assert command_calls(client, "rpush") - pushes == 5
    assert command_calls(client, "evalsha") - scripts == 10  # a read and an append per turn


# --- idempotent writes ------------------------------------------------------------


def test_a_retried_append_lands_once(storage):
    """As redis-py resends a script whose reply was lost: same write id, one copy."""
    storage.create("s.jsonl", HEADER)
    keys = storage._keys.session("s.jsonl")
    args = [b"write-1", 0, b"", -1, b'{"role":"user","content":"once"}']
    first = storage._scripts["append"](keys=keys, args=args)
    again = storage._scripts["append"](keys=keys, args=args)
    assert first == again
    assert storage.client.lrange(keys[0], 0, -1) == [HEADER, b'{"role":"user","content":"once"}']


def test_a_retried_create_succeeds_and_a_real_conflict_does_not(storage):
    keys = storage._keys.session("s.jsonl")
    assert storage._scripts["create"](keys=keys, args=[b"tok", 0, HEADER]) == 1
    assert storage._scripts["create"](keys=keys, args=[b"tok", 0, HEADER]) == 1  # the retry
    assert storage._scripts["create"](keys=keys, args=[b"other", 0, HEADER]) == 0
    assert storage.client.lrange(keys[0], 0, -1) == [HEADER]


def test_a_retried_replace_does_not_undo_later_appends(storage):
    storage.create("s.jsonl", HEADER)
    keys = storage._keys.session("s.jsonl")
    replace = [b"new-token", 0, b"", -1, HEADER]
    storage._scripts["replace"](keys=keys, args=replace)
    storage.append("s.jsonl", [b'{"role":"user","content":"after"}'])
    storage._scripts["replace"](keys=keys, args=replace)  # resent: must be a no-op
    assert len(storage.client.lrange(keys[0], 0, -1)) == 2


# --- TTL ------------------------------------------------------------------------------


def test_ttl_expires_an_idle_session_and_writes_refresh_it(url, redis_prefix):
    store = SessionStore.from_url(url, prefix=redis_prefix, ttl=1.0, entry_points=False)
    history = store.get_session_history("s")
    history.add_messages([HumanMessage("a")])
    lines_key = history.location.split(" ")[-1]
    assert 0 < store.storage.client.pttl(lines_key) <= 1000
    for _ in range(3):  # 1.5 s in all, each write within the TTL of the one before
        time.sleep(0.5)
        history.add_messages([HumanMessage("b")])
    assert store.storage.client.exists(lines_key)
    deadline = time.monotonic() + 10
    while store.storage.client.exists(lines_key) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not store.storage.client.exists(lines_key)
    assert store.list_sessions() == []  # and the listing pruned the index entry
    index = store.storage._keys
    assert store.storage.client.zcard(index.by_time) == 0
    assert store.storage.client.zcard(index.by_name) == 0
    fresh = store.get_session_history("s")
    assert fresh.messages == []
    fresh.add_messages([HumanMessage("new life")])
    assert SessionStore.from_url(url, prefix=redis_prefix).get_session_history("s").messages == [
        HumanMessage("new life")
    ]


def test_ttl_must_be_positive(redis_url):
    with pytest.raises(ValueError, match="ttl must be positive"):
        RedisStorage.from_url(redis_url, ttl=0)


# --- the index ------------------------------------------------------------------------


def test_the_index_follows_creation_and_deletion(storage):
    store = SessionStore(backend=storage, entry_points=False)
    for fixture in FIXTURE_FILES:
        text = fixture.read_bytes().splitlines()
        storage.create(fixture.name, text[0], created=0.0)
    history = store.create_session("new")
    keys, client = storage._keys, storage.client
    assert client.zcard(keys.by_time) == client.zcard(keys.by_name) == 4
    assert storage.names()[0] == log_name(history)  # newest first
    assert store.delete_session("new")
    assert client.zcard(keys.by_time) == client.zcard(keys.by_name) == 3


def test_a_stale_entry_is_pruned_but_a_recreated_session_is_kept(storage):
    storage.create("a_1_x.jsonl", HEADER, created=100.0)
    storage.create("b_1_y.jsonl", HEADER, created=200.0)
    client = storage.client
    for key in storage._keys.session("a_1_x.jsonl") + storage._keys.session("b_1_y.jsonl"):
        client.delete(key)  # as a TTL (or a deleter that died half way) leaves them
    storage.create("b_1_y.jsonl", HEADER, created=300.0)  # re-created meanwhile
    headers = storage.read_headers(["a_1_x.jsonl"])
    assert isinstance(headers[0], FileNotFoundError)
    assert storage.names() == ["b_1_y.jsonl"]
    # A pruner that read b's old time before the re-creation must not remove the new entry.
    storage._scripts["index_remove"](
        keys=[storage._keys.by_time, storage._keys.by_name],
        args=["b_1_y.jsonl", "b_1_y.jsonl"[::-1], repr(200.0)],
    )
    assert storage.names() == ["b_1_y.jsonl"]
    assert storage.names(suffix="_y.jsonl") == ["b_1_y.jsonl"]


def test_find_of_a_new_id_reads_no_headers_at_all(storage):
    """Looking a session up is a range query on the index, not a scan of every session."""
    store = SessionStore(backend=storage, entry_points=False)
    for number in range(50):
        store.get_session_history(f"user-{number}").add_messages([HumanMessage("x")])
    client = storage.client
    before = command_calls(client, "lindex")
    assert SessionStore(backend=storage).find("someone-new") is None
    assert command_calls(client, "lindex") == before
    assert SessionStore(backend=storage).find("user-7") is not None
    assert command_calls(client, "lindex") == before + 1


def test_latest_session_reads_only_the_newest_page(storage):
    store = SessionStore(backend=storage, entry_points=False)
    for number in range(450):
        created = _created(number).timestamp()
        storage.create(f"crab_{number}_{number}.jsonl", _header(number), created=created)
    client = storage.client
    before = command_calls(client, "lindex")
    latest = store.latest_session("crab", "user")
    assert latest is not None
    assert latest.session_id == "449"
    assert command_calls(client, "lindex") - before == 200  # one page, not 450


def _created(number: int) -> datetime:
    return datetime(2026, 3, 23, 8, 0, tzinfo=timezone.utc) + timedelta(seconds=number)


def _header(number: int) -> bytes:
    meta = {"agent": "crab", "created_by": "user", "created_at": _created(number).isoformat()}
    return json.dumps({**meta, "session_id": str(number)}, separators=(",", ":")).encode()


# --- async ----------------------------------------------------------------------------


async def test_the_async_api_never_calls_the_sync_client(storage, monkeypatch):
    store = SessionStore(backend=storage, entry_points=False)
    store.get_session_history("s").add_messages([HumanMessage("made in sync")])
    history = store.get_session_history("s")

    def refuse(*args, **kwargs):
        raise AssertionError("the sync client was used by the async API")

    for method in ("read", "append", "replace"):
        monkeypatch.setattr(storage, method, refuse)
    await history.aadd_messages([AIMessage("async")])
    assert await history.aget_messages() == [HumanMessage("made in sync"), AIMessage("async")]
    await history.aclear()
    assert await history.aget_messages() == []


def test_a_server_out_of_memory_refuses_a_write_whole_and_keeps_what_was_stored(redis_prefix):
    """Redis's full disk: maxmemory reached. The error says so and names the server."""
    from redis_servers import RedisServer

    with RedisServer() as server:
        store = SessionStore.from_url(server.url, prefix=redis_prefix, entry_points=False)
        history = store.get_session_history("s")
        history.add_messages([HumanMessage("kept"), AIMessage("kept too")])
        admin = server.client()
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory", str(used + 64 * 1024))  # noeviction is the default
        big = [HumanMessage("x" * 1000) for _ in range(500)]  # 500 kB: over the limit
        with pytest.raises(OSError, match="out of memory") as caught:
            history.add_messages(big)
        assert str(server.port) in str(caught.value)
        admin.config_set("maxmemory", "0")
        assert SessionStore.from_url(server.url, prefix=redis_prefix).get_session_history(
            "s"
        ).messages == [HumanMessage("kept"), AIMessage("kept too")]
        history.add_messages([HumanMessage("after")])
        assert len(backend_lines(store, history)) == 4


def backend_lines(store: SessionStore, history) -> list[bytes]:
    chunk = store.storage.read(log_name(history), None)
    return [line for _, line in chunk.lines]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:pw123@h:6379/0", "redis://u:***@h:6379/0"),
        ("rediss://:pw123@h/1", "rediss://:***@h/1"),
        ("unix:///run/redis.sock?db=2&password=pw123", "unix:///run/redis.sock?db=2&password=***"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_public_urls_hide_passwords_wherever_they_are(url, shown):
    from crab_langchain.storage import public_url

    assert public_url(url) == shown


def test_bad_plugins_leave_no_connection_open(redis_server, redis_prefix, monkeypatch):
    closed = []

    def close(storage: RedisStorage) -> None:
        closed.append(storage)

    monkeypatch.setattr(RedisStorage, "close", close)
    with pytest.raises(PluginValidationError):
        SessionStore.from_url(redis_server.url, [WrongArguments()], prefix=redis_prefix)
    assert len(closed) == 1


class WrongArguments:
    @hookimpl
    def crab_filter_message(self, no_such_argument):
        return None


def thread_keys(store: SessionStore) -> list[bytes]:
    """Every key under the store's prefix but the index's and the holds' leases."""
    client = store.storage.client  # type: ignore[attr-defined]
    prefix = store.storage.prefix  # type: ignore[attr-defined]
    return sorted(
        key
        for key in client.scan_iter(match=f"{prefix}:*")
        if b":index}" not in key and not key.endswith(b":hold")
    )


def test_ttl_covers_a_thread_whole_whichever_door_writes(url, redis_prefix):
    pytest.importorskip("langchain.agents", reason="the agents extra (Python 3.11+)")
    from agents import CONFIG, chat_agent, human

    from crab_langchain.checkpoint import CrabSaver

    ttl = 0.6
    store = SessionStore.from_url(url, prefix=redis_prefix, ttl=ttl, entry_points=False)
    agent = chat_agent(CrabSaver(store), turns=100)
    agent.invoke(human("q0"), CONFIG)
    keys = thread_keys(store)
    assert len(keys) == 6  # the session's and the side log's lines, meta and write ids
    history = store.get_session_history("alice-1")
    for n in range(20):  # ten TTLs, a write every half TTL, by one door or the other
        time.sleep(ttl / 2)
        if n % 2:
            history.add_messages([HumanMessage(f"h{n}")])  # refreshes the side log too
        else:
            agent.update_state(CONFIG, {"jump_to": None})  # a put adding no message
        assert thread_keys(store) == keys, n
    assert len(CrabSaver(store).get_tuple(CONFIG).checkpoint["channel_values"]["messages"]) == 12
    time.sleep(ttl * 2.5)
    assert thread_keys(store) == []  # an idle thread leaves no key behind
    assert store.list_sessions() == []  # and the listing pruned its index entries
    assert store.storage.client.zcard(store.storage._keys.by_time) == 0


@pytest.mark.parametrize(
    "refusal",
    [
        redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"),
        redis.exceptions.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
        redis.exceptions.ReadOnlyError("READONLY You can't write against a read only replica."),
    ],
    ids=["clusterdown", "tryagain", "readonly"],
)
def test_a_passing_refusal_is_retried_and_a_lasting_one_names_the_server(storage, refusal):
    storage.create("s.jsonl", HEADER)
    real = storage._scripts["append"]
    calls = []

    def refused_once(**kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            raise refusal
        return real(**kwargs)

    storage._scripts["append"] = refused_once
    storage.append("s.jsonl", [b'{"role":"user","content":"once"}'])
    assert len(storage.read("s.jsonl", None).lines) == 2  # landed once
    storage._scripts["append"] = lambda **kwargs: (_ for _ in ()).throw(refusal)
    with pytest.raises(StorageUnavailableError) as raised:
        storage.append("s.jsonl", [b'{"role":"user","content":"never"}'])
    assert storage.describe().split(" ")[0] in str(raised.value)
    assert not isinstance(raised.value, redis.exceptions.RedisError)
