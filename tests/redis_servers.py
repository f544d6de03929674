"""Real ``redis-server`` processes for the tests: one standalone server, or a 3-node cluster.

Every server listens on a free loopback port in its own directory, keeps nothing on disk
and dies with the test process, so a run never touches (or depends on) a system Redis.
redis-py is imported only where a server is used: the rest of the suite must still run
where it is not installed.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from typing_extensions import Self

if TYPE_CHECKING:
    import redis
    import redis.cluster

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
PORT_ATTEMPTS = 5
CLUSTER_SLOTS = 16384
# Without persistence a server keeps nothing between runs and writes nothing but its log.
COMMON_ARGS = ("--bind", HOST, "--save", "", "--appendonly", "no", "--daemonize", "no")


class RedisStartError(RuntimeError):
    """A server or cluster did not come up; the message carries the tail of its log."""


class _PortTakenError(Exception):
    """The chosen port was bound by someone else between choosing it and listening on it."""


def redis_binaries_missing() -> str | None:
    """Say which of ``redis-server`` and ``redis-cli`` is not on PATH, or None if both are."""
    missing = [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]
    return f"{' and '.join(missing)} not on PATH" if missing else None


def redis_py_missing() -> str | None:
    """Say why redis-py cannot be imported, or None if it can."""
    try:
        import redis  # noqa: F401
    except ImportError as error:
        return f"redis-py not importable ({error})"
    return None


def free_port() -> int:
    """A loopback port that was free a moment ago (the caller must cope if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl where there is one (Linux), looked up now: the forked child must not."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM us when the test process dies."""
    if _PRCTL is None:
        return
    parent = os.getppid()
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
    # The parent may have died before prctl took effect; then nobody will signal us.
    if os.getppid() != parent:
        os._exit(1)


def _tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, or a note that there is none."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no {path.name})"
    return "\n".join(text.splitlines()[-lines:])


class _Servers:
    """What both kinds of servers share: ``with servers:`` stops them at the end."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class RedisServer(_Servers):
    """One ``redis-server`` on a free loopback port, in its own directory; a context manager.

    ``cluster=True`` starts it as a cluster node that has not joined any cluster yet.
    ``directory`` is kept (for its log) if given; otherwise a temporary one is made and removed.
    Start it from a long-lived thread: Linux sends the death signal when the starting
    *thread* ends, not only the process.
    """

    def __init__(self, directory: Path | None = None, *, cluster: bool = False) -> None:
        self._owns_dir = directory is None
        self.dir = Path(tempfile.mkdtemp(prefix="redis-test-")) if directory is None else directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "redis.log"
        self._cluster = cluster
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            self._start_on_some_port()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        """The URL of database 0."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self._proc is not None
        return self._proc.pid

    def client(self) -> redis.Redis:
        """A new client for database 0 (the caller closes it)."""
        import redis

        return redis.Redis(host=HOST, port=self.port, socket_timeout=10)

    def running(self) -> bool:
        """Whether the process is still alive."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """End the process (SIGTERM, then SIGKILL if it lingers) and remove an owned directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _start_on_some_port(self) -> None:
        """Start on a free port, choosing again when another process takes it first."""
        for _ in range(PORT_ATTEMPTS):
            try:
                self._start(*self._pick_ports())
            except _PortTakenError:
                continue
            return
        raise RedisStartError(f"no free port after {PORT_ATTEMPTS} attempts:\n{_tail(self.log)}")

    def _pick_ports(self) -> tuple[int, int]:
        """A client port, and for a cluster node a different bus port (else 0)."""
        port = free_port()
        bus_port = free_port() if self._cluster else 0
        while bus_port == port:
            bus_port = free_port()
        return port, bus_port

    def _args(self, port: int, bus_port: int) -> list[str]:
        """The command line: no persistence, logging into our directory."""
        args = [str(shutil.which("redis-server")), *COMMON_ARGS, "--port", str(port)]
        args += ["--dir", str(self.dir), "--logfile", str(self.log)]
        if self._cluster:
            # The default bus port is port + 10000, past 65535 for much of Linux's
            # ephemeral range (32768-60999), so each node gets a free one of its own.
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
            args += ["--cluster-node-timeout", "5000", "--cluster-port", str(bus_port)]
        return args

    def _start(self, port: int, bus_port: int) -> None:
        """Start the process and wait until it answers PING."""
        self.log.unlink(missing_ok=True)
        with (self.dir / "stdout.log").open("ab") as out:
            self._proc = subprocess.Popen(
                self._args(port, bus_port),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - the child must not outlive pytest
            )
        self.port = port
        self._wait_for_ping()

    def _wait_for_ping(self) -> None:
        """Poll until our process answers; raise if it exits or stays silent too long."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self._check_alive()
            if self._answers_ping():
                return
            time.sleep(0.02)
        self._check_alive()
        self.stop_process()
        raise RedisStartError(
            f"redis-server on port {self.port} did not answer PING within {START_TIMEOUT}s:\n"
            f"{_tail(self.log)}"
        )

    def _answers_ping(self) -> bool:
        """Whether this port answers PING from our process, not from whoever else took it."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries and short timeouts: whatever listens on the port may accept and never answer.
        with redis.Redis(
            host=HOST, port=self.port, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
        ) as probe:
            try:
                return bool(probe.ping()) and probe.info("server")["process_id"] == self.pid
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                return False

    def _check_alive(self) -> None:
        """Raise if the process has exited: _PortTakenError if its port was in use."""
        assert self._proc is not None
        code = self._proc.poll()
        if code is None:
            return
        self._proc = None
        log = _tail(self.log)
        if "Address already in use" in log:
            raise _PortTakenError
        stdout = _tail(self.dir / "stdout.log")
        raise RedisStartError(f"redis-server exited with {code}:\n{log}\n{stdout}")

    def stop_process(self) -> None:
        """End the process but keep the directory (and its log)."""
        owns, self._owns_dir = self._owns_dir, False
        try:
            self.stop()
        finally:
            self._owns_dir = owns


class RedisClusterServers(_Servers):
    """Three cluster-mode nodes holding all 16384 slots, no replicas; a context manager."""

    def __init__(self, directory: Path | None = None, nodes: int = 3) -> None:
        self._owns_dir = directory is None
        self.dir = (
            Path(tempfile.mkdtemp(prefix="redis-cluster-")) if directory is None else directory
        )
        self.nodes: list[RedisServer] = []
        try:
            for index in range(nodes):
                self.nodes.append(RedisServer(self.dir / f"node{index}", cluster=True))
            self._create()
            self._wait_until_ok()
        except BaseException:
            self.stop()
            raise

    @property
    def ports(self) -> list[int]:
        """The nodes' client ports, first node first."""
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """The first node's URL (a cluster has database 0 only, so the URL names none)."""
        return f"redis://{HOST}:{self.ports[0]}"

    def client(self) -> redis.cluster.RedisCluster:
        """A new cluster client that discovers every node from the first (the caller closes it)."""
        import redis.cluster

        return redis.cluster.RedisCluster(host=HOST, port=self.ports[0], socket_timeout=10)

    def node_clients(self) -> list[redis.Redis]:
        """One plain client per node, each seeing only that node's keys (the caller closes them)."""
        return [node.client() for node in self.nodes]

    def stop(self) -> None:
        """Stop every node and remove an owned directory."""
        for node in self.nodes:
            node.stop()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _create(self) -> None:
        """Join the nodes and split the slots between them."""
        addresses = [f"{HOST}:{port}" for port in self.ports]
        options = ["--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(
            [str(shutil.which("redis-cli")), "--cluster", "create", *addresses, *options],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RedisStartError(
                f"redis-cli --cluster create failed ({done.returncode}):\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}\n{self._logs()}"
            )

    def _wait_until_ok(self) -> None:
        """Wait until every node reports the cluster ok with all slots assigned."""
        deadline = time.monotonic() + START_TIMEOUT
        clients = self.node_clients()
        try:
            while time.monotonic() < deadline:
                if all(self._node_ok(client) for client in clients):
                    return
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()
        raise RedisStartError(f"cluster not ok within {START_TIMEOUT}s:\n{self._logs()}")

    @staticmethod
    def _node_ok(client: redis.Redis) -> bool:
        """Whether this node sees the cluster as ok, with every slot assigned."""
        info = client.cluster("INFO")  # redis-py parses it into a dict of strings
        ok = info.get("cluster_state") == "ok"
        return ok and int(info.get("cluster_slots_assigned", 0)) == CLUSTER_SLOTS

    def _logs(self) -> str:
        """Every node's log tail, for a start-up error."""
        return "\n".join(f"--- node {node.port}:\n{_tail(node.log)}" for node in self.nodes)
