"""Many machines, one session: processes with their own stores on one Redis (and one cluster).

Each writer is a real process with its own ``SessionStore.from_url`` on the
same server, as separate machines would be. Released together, they append
chat turns to one session; the log must then hold every turn exactly once,
each call's lines side by side, each writer's turns in its order, and every
writer's own history must read the same final list. Then connections are cut:
by a killer thread issuing ``CLIENT KILL`` again and again while they write,
one blocked call at a time (``CLIENT PAUSE`` holds it), or by a proxy that
loses exactly one reply after the server ran the command. redis-py resends;
the write ids must keep a resent append from landing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster
import redis.exceptions
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from redis_servers import HOST, RedisClusterServers, RedisServer

from crab_langchain import SessionStore, to_crab_message
from crab_langchain.models import SessionMeta
from crab_langchain.storage import Change
from crab_langchain.storage import redis as redis_storage
from crab_langchain.storage.redis import RedisStorage, StorageUnavailableError

WRITERS = 4
TURNS = 300
TURNS_UNDER_KILLS = 150
SESSION = "s"
WAIT_SECONDS = 60.0
SYNC = ["sync"] * WRITERS
MIXED = ["sync", "async", "sync", "async"]
# Under kills a call may fail once its retries are spent: rarely, not as a rule.
MAX_FAILED_SHARE = 0.01
KILL_PAUSE = 0.01  # between kill rounds: every connection lives ~10 ms, many calls are cut


# A writer process serves jobs, one JSON line each on stdin: {url, prefix, gate,
# writer, turns, api ("sync"|"async"), tolerant}. Per job it opens a store of its
# own, leaves ready-<w> in the gate directory, waits for "go", appends its turns,
# leaves done-<w>, waits for "read", reads the session back and answers one JSON
# line: {"failed": [turns whose call raised], "reasons", "messages"}, or
# {"error": traceback} after leaving failed-<w>. A tolerant writer notes a
# StorageUnavailableError (its retries spent) and goes on with the next turn.
WRITER = """
import asyncio, json, os, sys, time, traceback
from langchain_core.messages import AIMessage, HumanMessage
from crab_langchain import SessionStore
from crab_langchain.storage.redis import StorageUnavailableError

class Job:
    def __init__(self, spec):
        self.spec, self.gate, self.writer = spec, spec["gate"], spec["writer"]
        self.failed, self.reasons = [], []
        self.store = SessionStore.from_url(spec["url"], prefix=spec["prefix"], entry_points=False)
        self.history = self.store.get_session_history("s")

    def mark(self, name):
        open(os.path.join(self.gate, f"{name}-{self.writer}"), "w").close()

    def opened(self, name):
        return os.path.exists(os.path.join(self.gate, name))

    def pair(self, turn):
        w = self.writer
        return [HumanMessage(f"{w}/{turn}/q"), AIMessage(f"{w}/{turn}/a")]

    def failure(self, turn):
        if not self.spec["tolerant"]:
            raise
        self.failed.append(turn)
        self.reasons.append(str(sys.exc_info()[1]))

    def report(self, messages):
        reasons = sorted(set(self.reasons))[:5]
        messages = [[m.type, m.content] for m in messages]
        return {"failed": self.failed, "reasons": reasons, "messages": messages}

    def run_sync(self):
        self.mark("ready")
        while not self.opened("go"):
            time.sleep(0.001)
        for turn in range(self.spec["turns"]):
            try:
                self.history.add_messages(self.pair(turn))
            except StorageUnavailableError:
                self.failure(turn)
        self.mark("done")
        while not self.opened("read"):
            time.sleep(0.001)
        return self.report(self.history.messages)

    async def run_async(self):
        try:
            self.mark("ready")
            while not self.opened("go"):
                await asyncio.sleep(0.001)
            for turn in range(self.spec["turns"]):
                try:
                    await self.history.aadd_messages(self.pair(turn))
                except StorageUnavailableError:
                    self.failure(turn)
            self.mark("done")
            while not self.opened("read"):
                await asyncio.sleep(0.001)
            return self.report(await self.history.aget_messages())
        finally:
            aclose = getattr(self.store.storage, "aclose", None)  # the async client's pool
            if aclose is not None:
                await aclose()

def serve(spec):
    job = None
    try:
        job = Job(spec)
        return asyncio.run(job.run_async()) if spec["api"] == "async" else job.run_sync()
    except BaseException:
        open(os.path.join(spec["gate"], f"failed-{spec['writer']}"), "w").close()
        return {"error": traceback.format_exc()}
    finally:
        if job is not None:
            job.store.storage.close()

for line in sys.stdin:
    print(json.dumps(serve(json.loads(line))), flush=True)
"""


# --- where the writers go ------------------------------------------------------------


@dataclass
class Target:
    """A URL, a key prefix, and the server processes behind them."""

    url: str
    prefix: str
    nodes: list[RedisServer]

    def admin_clients(self) -> list[Any]:
        """One plain client per server process (the caller closes them)."""
        return [node.client() for node in self.nodes]

    def store(self) -> SessionStore:
        """A new store on the target, as one more machine would open it."""
        return SessionStore.from_url(self.url, prefix=self.prefix, entry_points=False)


@pytest.fixture(params=["redis", "redis-cluster"])
def target(request: pytest.FixtureRequest, redis_prefix: str) -> Target:
    """The session-scoped single server, then the session-scoped cluster."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return Target(server.url, redis_prefix, [server])
    cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
    return Target(cluster.url, redis_prefix, list(cluster.nodes))


def on(kind: str, *marks: Any) -> Any:
    """A ``target`` parameter (for ``indirect``) carrying ``marks``."""
    return pytest.param(kind, marks=marks, id=kind)


# --- writer processes -----------------------------------------------------------------


@dataclass
class Outcome:
    """What each writer reported: the turns whose call failed, why, and its final read."""

    failed: list[list[int]]
    reasons: list[list[str]]
    messages: list[list[list[str]]]


class Gate:
    """A directory of marker files through which the test releases its writers."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.dir = directory

    def open(self, name: str) -> None:
        (self.dir / name).touch()

    def wait(self, marker: str, count: int) -> bool:
        """Wait until ``count`` writers left ``marker-<w>``; False as soon as one failed."""
        deadline = time.monotonic() + WAIT_SECONDS
        while len(list(self.dir.glob(f"{marker}-*"))) < count:
            if any(self.dir.glob("failed-*")):
                return False
            assert time.monotonic() < deadline, f"writers not {marker} within {WAIT_SECONDS} s"
            time.sleep(0.005)
        return True


class Writers:
    """WRITERS long-lived writer processes: started once, each job a new store in each.

    Starting Python with LangChain costs about a second of CPU, so the
    processes serve one job per test instead of being started per test.
    """

    def __init__(self, log: Path) -> None:
        self._log = log.open("a")
        self._procs = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                text=True,
            )
            for _ in range(WRITERS)
        ]

    def run(
        self,
        gate_dir: Path,
        target: Target,
        apis: list[str],
        *,
        turns: int = TURNS,
        tolerant: bool = False,
        while_writing: contextlib.AbstractContextManager[Any] | None = None,
    ) -> Outcome:
        """Writer ``w`` writes ``turns`` turns with API ``apis[w]``, all released together.

        ``while_writing`` is entered just before the go and left once every
        writer has finished writing, before they read back.
        """
        gate = Gate(gate_dir)
        for writer, (proc, api) in enumerate(zip(self._procs, apis, strict=True)):
            spec = {"url": target.url, "prefix": target.prefix, "gate": str(gate.dir)}
            spec |= {"writer": writer, "turns": turns, "api": api, "tolerant": tolerant}
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(spec) + "\n")
            proc.stdin.flush()
        try:
            if gate.wait("ready", WRITERS):
                with while_writing or contextlib.nullcontext():
                    gate.open("go")
                    gate.wait("done", WRITERS)
        finally:
            # Whatever happened, every writer ends its job and answers: the next test's are next.
            gate.open("go")
            gate.open("read")
            reports = [self._answer(proc) for proc in self._procs]
        errors = [report["error"] for report in reports if "error" in report]
        assert not errors, "\n".join(errors)
        return Outcome(*([report[key] for report in reports] for key in Outcome.__annotations__))

    def _answer(self, proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], WAIT_SECONDS)
        line = proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise AssertionError(f"a writer process hung or died ({proc.poll()})")
        return dict(json.loads(line))

    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self._procs)

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        self._log.close()


@pytest.fixture(scope="module")
def writer_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Writers]]:
    """The module's writer processes (in a box: a test that lost them starts new ones)."""
    box = [Writers(tmp_path_factory.mktemp("writers") / "stderr.log")]
    yield box
    box[0].close()


@pytest.fixture
def writers(writer_pool: list[Writers], tmp_path_factory: pytest.TempPathFactory) -> Writers:
    if not writer_pool[0].alive():
        writer_pool[0].close()
        writer_pool[0] = Writers(tmp_path_factory.mktemp("writers") / "stderr.log")
    return writer_pool[0]


# --- what must have landed ------------------------------------------------------------


def pair(writer: int, turn: int) -> list[BaseMessage]:
    """The two messages of one turn, exactly as the writer process builds them."""
    return [HumanMessage(f"{writer}/{turn}/q"), AIMessage(f"{writer}/{turn}/a")]


def pair_lines(writer: int, turn: int) -> list[bytes]:
    """The two lines one turn must be stored as: crabtalk's compact JSON, role first."""
    q, a = f"{writer}/{turn}/q", f"{writer}/{turn}/a"
    return [
        b'{"role":"user","content":"%s"}' % q.encode(),
        b'{"role":"assistant","content":"%s"}' % a.encode(),
    ]


def _who(line: bytes) -> tuple[int, int]:
    """(writer, turn) from a message line's content."""
    writer, turn, _ = json.loads(line)["content"].split("/")
    return int(writer), int(turn)


@dataclass
class Landed:
    """The session's raw lines as a fresh store reads them, and each writer's turns in order."""

    header: bytes
    body: list[bytes]
    turns: dict[int, list[int]] = field(default_factory=dict)


def read_landed(target: Target) -> Landed:
    """The one session's lines, split into calls; asserts each call's lines are side by side."""
    storage = target.store().storage
    try:
        names = storage.names()
        assert len(names) == 1, f"one session expected, the index lists {names}"
        chunk = storage.read(names[0], None)
    finally:
        storage.close()
    assert chunk is not None
    lines = [line for _, line in chunk.lines]
    landed = Landed(lines[0], lines[1:])
    assert len(landed.body) % 2 == 0, "a call's lines were split"
    for index in range(0, len(landed.body), 2):
        block = landed.body[index : index + 2]
        writer, turn = _who(block[0])
        # Both lines of one call, nothing of another call between, each as encoded.
        assert block == pair_lines(writer, turn), block
        assert block == [to_crab_message(m).to_line_bytes() for m in pair(writer, turn)]
        landed.turns.setdefault(writer, []).append(turn)
    return landed


def check_session(target: Target, outcome: Outcome, turns: int) -> int:
    """Assert the session holds every writer's turns once, in its order; return its line count.

    A turn whose call failed may be there or not, but whole: ``read_landed``
    checked that every call's two lines stand side by side.
    """
    landed = read_landed(target)
    meta = SessionMeta.from_line(landed.header)
    assert (meta.agent, meta.extra.get("session_id")) == ("crab", SESSION)
    for writer, failed in enumerate(outcome.failed):
        got = landed.turns.get(writer, [])
        assert got == sorted(set(got)), f"writer {writer}: a turn twice or out of order: {got}"
        kept = [turn for turn in got if turn not in failed]
        assert kept == [t for t in range(turns) if t not in failed], f"writer {writer} lost turns"
    expected = [[m.type, m.content] for m in map(_message_of, landed.body)]
    store = target.store()
    assert [[m.type, m.content] for m in store.get_session_history(SESSION).messages] == expected
    store.storage.close()
    for writer, messages in enumerate(outcome.messages):
        assert messages == expected, f"writer {writer}'s own history reads otherwise"
    return 1 + len(landed.body)


def _message_of(line: bytes) -> BaseMessage:
    """The message a checked line stands for."""
    writer, turn = _who(line)
    return pair(writer, turn)[0 if line == pair_lines(writer, turn)[0] else 1]


# --- many writers, one session -----------------------------------------------------------


def test_processes_with_own_stores_append_to_one_session(tmp_path, target, writers, stress):
    turns = stress(TURNS)
    outcome = writers.run(tmp_path / "gate", target, SYNC, turns=turns)
    assert outcome.failed == [[]] * WRITERS
    assert check_session(target, outcome, turns) == 1 + 2 * WRITERS * turns


def test_sync_and_async_writers_mix_on_one_session(tmp_path, target, writers, stress):
    turns = stress(TURNS)
    outcome = writers.run(tmp_path / "gate", target, MIXED, turns=turns)
    assert outcome.failed == [[]] * WRITERS
    assert check_session(target, outcome, turns) == 1 + 2 * WRITERS * turns


# --- connections killed while they write --------------------------------------------------


class Killer:
    """A thread killing every normal client connection on every server, again and again.

    ``kills`` counts the connections killed; ``reconnects`` the connections the
    servers accepted meanwhile (clients coming back after a kill).
    """

    def __init__(self, target: Target, pause: float = KILL_PAUSE) -> None:
        self._clients = target.admin_clients()
        self._pause = pause
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.kills = 0
        self.reconnects = 0
        self._accepted = 0
        self.error: BaseException | None = None

    def __enter__(self) -> Killer:
        self._accepted = self._connections_received()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT_SECONDS)
        self.reconnects = self._connections_received() - self._accepted
        for client in self._clients:
            client.close()
        assert self.error is None, f"the killer failed: {self.error!r}"

    def _connections_received(self) -> int:
        return sum(int(c.info("stats")["total_connections_received"]) for c in self._clients)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for client in self._clients:
                    self.kills += int(client.client_kill_filter(_type="normal", skipme=True))
                time.sleep(self._pause)
        except BaseException as error:
            self.error = error


KILL_CASES = [
    pytest.param("redis", SYNC, id="redis-sync"),
    pytest.param("redis", MIXED, id="redis-mixed"),
    pytest.param("redis-cluster", SYNC, id="cluster-sync"),
    pytest.param("redis-cluster", MIXED, id="cluster-mixed"),
]


@pytest.mark.parametrize(("target", "apis"), KILL_CASES, indirect=["target"])
def test_writers_carry_on_while_their_connections_are_killed(tmp_path, target, apis, writers):
    # Created first: creation under lost replies is test_a_lost_creation_lock_reply_...
    store = target.store()
    store.create_session(SESSION)
    store.storage.close()
    killer = Killer(target)
    outcome = writers.run(
        tmp_path / "gate",
        target,
        apis,
        turns=TURNS_UNDER_KILLS,
        tolerant=True,
        while_writing=killer,
    )
    # Kills landed while the writers wrote, and the writers came back.
    assert killer.kills >= WRITERS
    assert killer.reconnects >= WRITERS
    landed = check_session(target, outcome, TURNS_UNDER_KILLS)
    failed = sum(len(turns) for turns in outcome.failed)
    assert failed <= MAX_FAILED_SHARE * WRITERS * TURNS_UNDER_KILLS, outcome.reasons
    assert 1 + 2 * (WRITERS * TURNS_UNDER_KILLS - failed) <= landed


# --- one call cut while the server holds it -----------------------------------------------


def _blocked_scripts(admins: list[Any]) -> list[tuple[Any, int]]:
    """(admin client, client id) of each connection waiting in a script call, on any node."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        found = [
            (admin, int(client["id"]))
            for admin in admins
            for client in admin.client_list(_type="normal")
            if client["cmd"] == "evalsha" and "b" in client["flags"]
        ]
        if found:
            return found
        time.sleep(0.005)
    raise AssertionError("no script call got held by CLIENT PAUSE")


@contextlib.contextmanager
def writes_paused(target: Target) -> Iterator[list[Any]]:
    """Hold every write (scripts included) on every node until the block ends."""
    admins = target.admin_clients()
    try:
        for admin in admins:
            admin.execute_command("CLIENT", "PAUSE", int(WAIT_SECONDS * 1000), "WRITE")
        yield admins
    finally:
        for admin in admins:
            admin.execute_command("CLIENT", "UNPAUSE")
            admin.close()


def _in_thread(work: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _add(history: Any, api: str, messages: list[BaseMessage]) -> Callable[[], object]:
    if api == "sync":
        return lambda: history.add_messages(messages)
    return lambda: asyncio.run(history.aadd_messages(messages))


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("target", [on("redis"), on("redis-cluster")], indirect=True)
def test_a_call_cut_mid_call_is_sent_again_and_lands_once(target, api):
    store = target.store()
    history = store.get_session_history(SESSION)
    history.add_messages(pair(0, 0))
    with writes_paused(target) as admins:
        thread, errors = _in_thread(_add(history, api, pair(0, 1)))
        for admin, client_id in _blocked_scripts(admins):
            assert admin.client_kill_filter(_id=client_id) == 1
    thread.join(timeout=WAIT_SECONDS)
    assert not thread.is_alive()
    assert errors == []
    landed = read_landed(target)
    assert landed.body == pair_lines(0, 0) + pair_lines(0, 1)
    assert [m.content for m in history.messages] == ["0/0/q", "0/0/a", "0/1/q", "0/1/a"]
    store.storage.close()


def _kill_idle_connections(target: Target) -> None:
    """Cut every client connection to the target's servers (as a restart or idle timeout)."""
    for admin in target.admin_clients():
        with admin:
            admin.client_kill_filter(_type="normal", skipme=True)


IDLE_CASES = [
    pytest.param("redis", "sync", id="redis-sync"),
    pytest.param("redis", "async", id="redis-async"),
    pytest.param("redis-cluster", "sync", id="cluster-sync"),
    pytest.param("redis-cluster", "async", id="cluster-async"),
]


@pytest.mark.parametrize(("target", "api"), IDLE_CASES, indirect=["target"])
def test_a_connection_dropped_while_idle_is_replaced(target, api):
    # A restart, the server's `timeout` or a proxy drops idle clients: the next call reconnects.
    store = target.store()
    history = store.get_session_history(SESSION)

    async def in_one_loop() -> None:  # one loop: the async client and its pool live on
        await history.aadd_messages(pair(0, 0))
        _kill_idle_connections(target)
        await history.aadd_messages(pair(0, 1))

    if api == "async":
        asyncio.run(in_one_loop())
    else:
        history.add_messages(pair(0, 0))
        _kill_idle_connections(target)
        history.add_messages(pair(0, 1))
    assert read_landed(target).body == pair_lines(0, 0) + pair_lines(0, 1)
    store.storage.close()


# --- a reply lost after the server ran the command --------------------------------------


class ReplyDropper:
    """A TCP proxy in front of one server that loses the reply to one chosen command.

    ``arm(pattern, then)``: the next command whose bytes hold ``pattern`` goes
    to the server; once the server has answered, ``then()`` runs (others'
    writes while the client backs off) and both sides are closed, the answer
    kept from the client. Everything else passes through.
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._listener = socket.create_server((HOST, 0))
        self.port = int(self._listener.getsockname()[1])
        self._armed: tuple[bytes, Callable[[], object]] | None = None
        self._lock = threading.Lock()
        self.dropped = threading.Event()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def arm(self, pattern: bytes, then: Callable[[], object] = lambda: None) -> None:
        with self._lock:
            self._armed = (pattern, then)

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _take(self, data: bytes) -> Callable[[], object] | None:
        with self._lock:
            if self._armed is None or self._armed[0] not in data:
                return None
            then, self._armed = self._armed[1], None
            return then

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while not self._closed:
                client, _ = self._listener.accept()
                threading.Thread(target=self._pump, args=(client,), daemon=True).start()

    def _pump(self, client: socket.socket) -> None:
        """Pass bytes both ways on one thread, so a chosen reply can be read and dropped."""
        with contextlib.suppress(OSError), client:
            self._pump_to(client, socket.create_connection((HOST, self._upstream)))

    def _pump_to(self, client: socket.socket, upstream: socket.socket) -> None:
        with upstream:
            upstream.settimeout(WAIT_SECONDS)
            while not self._closed:
                readable, _, _ = select.select([client, upstream], [], [], 0.2)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is upstream:
                        client.sendall(data)
                        continue
                    upstream.sendall(data)
                    then = self._take(data)
                    if then is not None:
                        upstream.recv(1)  # the server ran it and began to answer
                        then()
                        self.dropped.set()
                        return  # closing both sides loses the answer


@pytest.fixture
def dropper(redis_server: RedisServer) -> Iterator[ReplyDropper]:
    """A reply-losing proxy in front of the session-scoped single server."""
    proxy = ReplyDropper(redis_server.port)
    yield proxy
    proxy.close()


def _others_write(
    url: str, prefix: str, name_of: Callable[[], str], count: int
) -> Callable[[], None]:
    """Appends of ``count`` other lines, one call each, by a store of its own."""

    def write() -> None:
        storage = RedisStorage.from_url(url, prefix=prefix)
        try:
            for index in range(count):
                storage.append(name_of(), [b'{"role":"user","content":"other %d"}' % index])
        finally:
            storage.close()

    return write


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_lost_reply_is_sent_again_and_lands_once(dropper, redis_prefix, api):
    store = SessionStore.from_url(dropper.url, prefix=redis_prefix, entry_points=False)
    history = store.get_session_history(SESSION)
    history.add_messages(pair(0, 0))
    dropper.arm(b"0/1/q")
    _add(history, api, pair(0, 1))()
    assert dropper.dropped.is_set()
    name = store.find(SESSION)
    lines = [line for _, line in store.storage.read(name, None).lines]
    assert lines[1:] == pair_lines(0, 0) + pair_lines(0, 1)
    assert [m.content for m in history.messages] == ["0/0/q", "0/0/a", "0/1/q", "0/1/a"]
    store.storage.close()


def test_a_lost_reply_sent_again_after_many_other_writes_lands_once(
    dropper, redis_server, redis_prefix
):
    # While a client backs off before resending, other machines go on appending.
    store = SessionStore.from_url(dropper.url, prefix=redis_prefix, entry_points=False)
    history = store.get_session_history(SESSION)
    history.add_messages(pair(0, 0))
    name = store.find(SESSION)
    dropper.arm(b"0/1/q", then=_others_write(redis_server.url, redis_prefix, lambda: name, 200))
    history.add_messages(pair(0, 1))
    assert dropper.dropped.is_set()
    body = [line for _, line in store.storage.read(name, None).lines][1:]
    assert body[:4] == pair_lines(0, 0) + pair_lines(0, 1)
    assert len(body) == 4 + 200
    assert [m.content for m in history.messages][:4] == ["0/0/q", "0/0/a", "0/1/q", "0/1/a"]
    store.storage.close()


def test_a_lost_creation_lock_reply_does_not_stall_creation(dropper, redis_prefix, monkeypatch):
    # A short lease, so that waiting for our own lease to run out fails fast, not in 30 s.
    monkeypatch.setattr(redis_storage, "_CREATION_LOCK_SECONDS", 2.0, raising=False)
    store = SessionStore.from_url(dropper.url, prefix=redis_prefix, entry_points=False)
    dropper.arm(b"creation-lock")
    history = store.get_session_history(SESSION)
    history.add_messages(pair(0, 0))
    assert dropper.dropped.is_set()
    assert len(store.storage.names()) == 1
    assert [m.content for m in history.messages] == ["0/0/q", "0/0/a"]
    store.storage.close()


# --- the append script resent by hand, as redis-py resends it ----------------------------


@pytest.fixture
def script_storage(target: Target) -> Iterator[Any]:
    storage = RedisStorage.from_url(target.url, prefix=target.prefix)
    storage.create(
        "s.jsonl", b'{"agent":"crab","created_by":"user","created_at":"2026-03-23T08:06:51+00:00"}'
    )
    yield storage
    storage.close()


def _raw_client(target: Target) -> Any:
    """A plain redis-py client on the target (a cluster client for a cluster)."""
    if len(target.nodes) == 1:
        return target.nodes[0].client()
    return redis.cluster.RedisCluster.from_url(target.url)


def test_a_resent_append_returns_the_first_result_and_lands_once(target, script_storage):
    keys = script_storage._keys.session("s.jsonl")
    script = script_storage._scripts["append"]
    args = [b"write-1", 0, b"", -1, *pair_lines(0, 0)]
    with contextlib.closing(_raw_client(target)) as raw:
        first = raw.eval(script.script, len(keys), *keys, *args)  # its reply "lost"
    script_storage.append("s.jsonl", pair_lines(1, 0))  # another writer, meanwhile
    again = script(keys=keys, args=args)  # the resend
    assert again == first
    assert int(first[0]) == 3
    lines = [line for _, line in script_storage.read("s.jsonl", None).lines]
    assert lines[1:] == pair_lines(0, 0) + pair_lines(1, 0)


def test_a_resent_append_lands_once_after_many_other_writes(script_storage):
    keys = script_storage._keys.session("s.jsonl")
    script = script_storage._scripts["append"]
    args = [b"write-1", 0, b"", -1, *pair_lines(0, 0)]
    first = script(keys=keys, args=args)
    for turn in range(200):  # other machines' appends while the resend backs off
        script_storage.append("s.jsonl", pair_lines(1, turn))
    assert script(keys=keys, args=args) == first
    lines = [line for _, line in script_storage.read("s.jsonl", None).lines]
    assert lines.count(pair_lines(0, 0)[0]) == 1


def test_a_resent_commit_lands_once_and_says_to_read_again(script_storage):
    """A put's commit whose reply was lost, sent again: written once, and the put reads on."""
    script_storage.create("s.jsonl.checkpoints", b'{"crab_checkpoints":1}')
    at = script_storage.read("s.jsonl", None).cursor
    side_at = script_storage.read("s.jsonl.checkpoints", None).cursor
    change = Change(at, side_at, pair_lines(0, 0), after=[b'{"checkpoint":{}}'])
    keys, args = script_storage._commit_call("s.jsonl", "s.jsonl.checkpoints", change)
    script = script_storage._scripts["commit"]
    script(keys=keys, args=args)  # its reply "lost"
    script_storage.append("s.jsonl", pair_lines(1, 0))  # another writer, meanwhile
    assert list(script(keys=keys, args=args)) == [2]  # the resend: done before, read again
    lines = [line for _, line in script_storage.read("s.jsonl", None).lines]
    assert lines[1:] == pair_lines(0, 0) + pair_lines(1, 0)
    side = [line for _, line in script_storage.read("s.jsonl.checkpoints", None).lines]
    assert side[1:] == [b'{"checkpoint":{}}']


# --- a store whose server is gone ---------------------------------------------------------


GONE_CALLS: dict[str, Callable[[SessionStore, Any], object]] = {
    "add_messages": lambda store, history: history.add_messages(pair(0, 1)),
    "messages": lambda store, history: history.messages,
    "clear": lambda store, history: history.clear(),
    "a new session": lambda store, history: store.get_session_history("new").add_messages(
        pair(0, 0)
    ),
    "list_sessions": lambda store, history: store.list_sessions(),
    "latest_session": lambda store, history: store.latest_session(),
    "delete_session": lambda store, history: store.delete_session(SESSION),
    "aadd_messages": lambda store, history: asyncio.run(history.aadd_messages(pair(0, 1))),
    "aget_messages": lambda store, history: asyncio.run(history.aget_messages()),
    "aclear": lambda store, history: asyncio.run(history.aclear()),
}


@contextlib.contextmanager
def stores_on_a_session(url: str) -> Iterator[dict[str, tuple[SessionStore, Any]]]:
    """One store and history per call of GONE_CALLS, each on one session written first."""
    opened = {}
    try:
        for what in GONE_CALLS:
            store = SessionStore.from_url(url, prefix="p", entry_points=False)
            opened[what] = (store, store.get_session_history(SESSION))
        opened["add_messages"][1].add_messages(pair(0, 0))
        for _, history in opened.values():
            assert len(history.messages) == 2
        yield opened
    finally:
        for store, _ in opened.values():
            store.storage.close()


def every_call_fails_naming(opened: dict[str, tuple[SessionStore, Any]], url: str) -> None:
    """Each call raises StorageUnavailableError naming ``url``, never a redis-py error.

    The calls run at once, each on its own store: a client that retries a
    refused connection takes seconds to give up, and they would add up.
    """
    raised: dict[str, BaseException | None] = {}

    def call(what: str, work: Callable[[], object]) -> None:
        try:
            work()
            raised[what] = None
        except BaseException as error:
            raised[what] = error

    works: dict[str, Callable[[], object]] = {
        what: partial(GONE_CALLS[what], *both) for what, both in opened.items()
    }
    works["a new store"] = lambda: SessionStore.from_url(url, entry_points=False)
    threads = [threading.Thread(target=call, args=item, daemon=True) for item in works.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT_SECONDS)
    for what in works:
        error = raised.get(what)
        assert isinstance(error, StorageUnavailableError), (what, error)
        assert url in str(error), what
        assert not isinstance(error, redis.exceptions.RedisError), what


def test_a_store_whose_server_is_gone_raises_storage_unavailable(tmp_path):
    with RedisServer(tmp_path / "gone") as server, stores_on_a_session(server.url) as opened:
        server.stop_process()
        every_call_fails_naming(opened, server.url)


def test_a_store_whose_cluster_is_gone_raises_storage_unavailable(tmp_path):
    with (
        RedisClusterServers(tmp_path / "gone") as cluster,
        stores_on_a_session(cluster.url) as opened,
    ):
        for node in cluster.nodes:
            node.stop_process()
        every_call_fails_naming(opened, cluster.url)
