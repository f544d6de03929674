"""The real Redis servers the Redis backend's tests run on: that they are what they claim."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis_servers
from conftest import delete_prefixed
from redis_servers import RedisClusterServers, RedisServer

TESTS = Path(__file__).resolve().parent

# Starts a server in a throwaway process, reports it, then waits to be killed.
ORPHANING_PARENT = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from redis_servers import RedisServer
server = RedisServer(Path(sys.argv[2]))
print(server.pid, server.port, flush=True)
time.sleep(600)
"""


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie counts as dead (a container's init may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_server_answers_set_and_get(redis_server: RedisServer, redis_prefix: str) -> None:
    with redis_server.client() as client:
        assert client.set(f"{redis_prefix}k", "v")
        assert client.get(f"{redis_prefix}k") == b"v"
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"


def test_url_fixtures_name_the_session_servers(
    redis_url: str,
    redis_cluster_url: str,
    redis_server: RedisServer,
    redis_cluster: RedisClusterServers,
) -> None:
    assert redis_url == redis_server.url
    assert redis_cluster_url == f"redis://127.0.0.1:{redis_cluster.ports[0]}"


def test_prefix_clean_up_deletes_only_that_prefix(
    redis_server: RedisServer, redis_cluster: RedisClusterServers, redis_prefix: str
) -> None:
    mine = [f"{redis_prefix}:{n}" for n in range(30)]  # spread over the cluster's slots
    bystander = f"x{redis_prefix}"  # contains the prefix but does not start with it
    with redis_server.client() as single, redis_cluster.client() as cluster:
        for servers, client in ((redis_server, single), (redis_cluster, cluster)):
            for key in [*mine, bystander]:
                client.set(key, "v")
            delete_prefixed(servers, redis_prefix)
            assert [client.exists(key) for key in mine] == [0] * len(mine)
            assert client.exists(bystander) == 1
            client.unlink(bystander)


@pytest.mark.parametrize("run", range(3))
def test_prefixes_differ(run: int, redis_prefix: str) -> None:
    assert redis_prefix.startswith("t")
    assert len(redis_prefix) == 13
    assert redis_prefix not in SEEN_PREFIXES
    SEEN_PREFIXES.append(redis_prefix)


# Filled by the parametrized runs of test_prefixes_differ, in whatever order they run.
SEEN_PREFIXES: list[str] = []


def test_single_server_and_cluster_nodes_are_distinct_processes(
    redis_server: RedisServer, redis_cluster: RedisClusterServers
) -> None:
    servers = [redis_server, *redis_cluster.nodes]
    reported = []
    for server in servers:
        with server.client() as client:
            info = client.info("server")
        reported.append((info["process_id"], info["tcp_port"]))
    assert reported == [(server.pid, server.port) for server in servers]
    assert len({pid for pid, _ in reported}) == 4
    assert 6379 not in {port for _, port in reported}


def test_cluster_spreads_keys_over_all_three_nodes(
    redis_cluster: RedisClusterServers, redis_prefix: str
) -> None:
    keys = [f"{redis_prefix}:{n}" for n in range(60)]
    with redis_cluster.client() as cluster:
        for key in keys:
            cluster.set(key, key)
        assert [cluster.get(key) for key in keys] == [key.encode() for key in keys]
    per_node = []
    for node in redis_cluster.node_clients():
        with node:
            per_node.append(len(list(node.scan_iter(match=f"{redis_prefix}*", count=1000))))
    assert len(per_node) == 3
    assert all(count > 0 for count in per_node), per_node
    assert sum(per_node) == 60


def test_hash_tags_share_a_slot(redis_cluster: RedisClusterServers, redis_prefix: str) -> None:
    first, second = f"{redis_prefix}{{x}}a", f"{redis_prefix}{{x}}b"
    with redis_cluster.client() as cluster:
        assert cluster.keyslot(first) == cluster.keyslot(second)
        assert cluster.keyslot(first) == cluster.cluster_keyslot(second)
        # One multi-key command works only when every key is in one slot.
        assert cluster.mset_nonatomic({first: "1", second: "2"})
        assert cluster.execute_command("MGET", first, second) == [b"1", b"2"]


def test_stop_ends_the_process_and_removes_its_directory(redis_available: None) -> None:
    with RedisServer() as server:
        pid, port, directory = server.pid, server.port, server.dir
        with server.client() as client:
            assert client.ping()
        server.stop()
        assert not server.running()
        assert not _process_alive(pid)
        assert _refuses_connections(port)
        assert not directory.exists()


def test_a_taken_port_is_replaced(
    redis_available: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken, redis_servers.free_port()])
        monkeypatch.setattr(redis_servers, "free_port", lambda: next(ports))
        with RedisServer(tmp_path) as server:
            assert server.port != taken
            with server.client() as client:
                assert client.ping()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_server_dies_with_the_process_that_started_it(
    redis_available: None, tmp_path: Path
) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHANING_PARENT, str(TESTS), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        pid, port = map(int, parent.stdout.readline().split())
        assert _process_alive(pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while _process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _process_alive(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail("redis-server outlived the process that started it")
    assert _refuses_connections(port)
