"""LangGraph checkpointers side by side, measured by ``run.py`` in the same run as the rest.

One ``create_agent`` conversation, the same for every saver: a fake
tool-calling model (the tests' scripted one) that calls a tool every fourth
turn and answers otherwise, so a turn adds two messages, or four with the tool.
For each saver, at each of ``marks`` turns (10, 100 and 500):

- total bytes stored (files on disk; the bytes Redis holds in the keys'
  items, as a file of the same lines would; the serialized blobs of
  ``InMemorySaver``), also at every fifth of the run;
- ms per turn (wall clock of ``invoke``) and the CPU ms the saver's own
  methods take in it;
- cold ``get_state``: a new saver object and a new agent on the same storage
  (what a restarted server does; InMemorySaver has no storage, so its own
  object again), median of three;
- ``get_state_history(limit=10)``, the same way.

The savers: ``CrabSaver`` on a directory, on Redis and on PostgreSQL (the
run's private servers), ``InMemorySaver``, ``SqliteSaver``, ``PostgresSaver``
(langgraph-checkpoint-postgres, on the same server as CrabSaver's rows; its
bytes are what its rows hold: the checkpoints' JSON, the blobs and the writes,
as CrabSaver's are its lines), and ``SqliteSaver`` with
LangGraph's ``DeltaChannel`` for the messages where the installed langgraph
has it. A floor row runs the same agent with no checkpointer, the whole
conversation passed in each turn: the agent's own cost per turn.
"""

from __future__ import annotations

import gc
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from agents import ScriptedModel, states, weather  # the tests' model, tool and comparison

CRAB_DIR = "CrabSaver (directory)"
CRAB_REDIS = "CrabSaver (Redis)"
CRAB_POSTGRES = "CrabSaver (PostgreSQL)"
MEMORY = "InMemorySaver"
SQLITE = "SqliteSaver"
POSTGRES = "PostgresSaver"
SQLITE_DELTA = "SqliteSaver + DeltaChannel messages"
FLOOR = "no checkpointer (whole conversation passed in)"
SAVERS = (CRAB_DIR, CRAB_REDIS, CRAB_POSTGRES, MEMORY, SQLITE, POSTGRES, SQLITE_DELTA)
CONFIG = {"configurable": {"thread_id": "bench"}}
SAVER_METHODS = ("put", "put_writes", "get_tuple", "list")


def script(turns: int) -> Iterator[AIMessage]:
    """The model's replies: a tool call then an answer every fourth turn, an answer otherwise."""
    for turn in range(turns):
        if turn % 4 == 3:
            call = {"name": "weather", "args": {"city": f"city {turn}"}, "id": f"call-{turn}"}
            yield AIMessage("", tool_calls=[call])
        yield AIMessage(f"Answer {turn}: sunny, 21 °C today; clouds tomorrow. Take a jacket.")


def question(turn: int) -> HumanMessage:
    return HumanMessage(f"Question {turn}: what is the weather like in Lisbon today, and tomorrow?")


# --- the savers ---------------------------------------------------------------------------


@dataclass
class Subject:
    """One saver under measurement: how to open it again on the same storage, and its size."""

    open: Callable[[], Any]
    size: Callable[[Any], int]
    state_schema: Any = None
    cleanup: Callable[[], None] = field(default=lambda: None)
    counts: dict[str, int] | None = None
    """Requests sent to the server and commits that found a log moved, so far (Redis)."""


def crab_directory(root: Path) -> Subject:
    from crab_langchain import SessionStore
    from crab_langchain.checkpoint import CrabSaver

    return Subject(
        open=lambda: CrabSaver(SessionStore(root / "sessions", entry_points=False)),
        size=lambda _saver: _files_size(root / "sessions"),
    )


def crab_redis(url: str) -> Subject:
    import redis

    from crab_langchain import SessionStore
    from crab_langchain.checkpoint import CrabSaver
    from crab_langchain.storage.redis import RedisStorage

    prefix = f"bench-savers-{uuid.uuid4().hex[:8]}"
    counts = {"sent": 0, "moved": 0}

    class CountingRedis(redis.Redis):  # type: ignore[type-arg]
        """Counts every request: each is one round trip to the server."""

        def execute_command(self, *args: Any, **options: Any) -> Any:
            counts["sent"] += 1
            return super().execute_command(*args, **options)

    def open_saver() -> Any:
        storage = RedisStorage(CountingRedis.from_url(url), prefix=prefix, url=url)
        commit = storage.commit

        def counted_commit(*args: Any) -> Any:
            done = commit(*args)
            counts["moved"] += done is None  # a failed attempt: another writer moved first
            return done

        storage.commit = counted_commit  # type: ignore[method-assign]
        return CrabSaver(SessionStore(backend=storage, entry_points=False))

    def size(_saver: Any) -> int:
        with redis.Redis.from_url(url) as client:
            keys = list(client.scan_iter(match=f"{prefix}*", count=10_000))
            return sum(_payload(client, key) for key in keys)

    def cleanup() -> None:
        with redis.Redis.from_url(url) as client:
            for key in client.scan_iter(match=f"{prefix}*", count=10_000):
                client.unlink(key)

    return Subject(open=open_saver, size=size, cleanup=cleanup, counts=counts)


def crab_postgres(url: str) -> Subject:
    from crab_langchain import SessionStore
    from crab_langchain.checkpoint import CrabSaver

    schema = f"bench_savers_{uuid.uuid4().hex[:8]}"
    SessionStore.from_url(url, prefix=schema, entry_points=False).setup()

    def size(_saver: Any) -> int:
        # The bytes its lines hold, a newline each: what files of the same lines would.
        return _sql_int(
            url, f'SELECT coalesce(sum(octet_length(line) + 1), 0) FROM "{schema}".lines'
        )

    return Subject(
        open=lambda: CrabSaver(SessionStore.from_url(url, prefix=schema, entry_points=False)),
        size=size,
        cleanup=lambda: _sql_int(url, f'DROP SCHEMA "{schema}" CASCADE'),
    )


def postgres_saver(url: str) -> Subject:
    """LangGraph's PostgresSaver in a database of its own (its tables are not in a schema)."""
    import psycopg
    from langgraph.checkpoint.postgres import PostgresSaver

    database = f"bench_savers_{uuid.uuid4().hex[:8]}"
    _sql_int(url, f'CREATE DATABASE "{database}"')
    own = url.rsplit("/", 1)[0] + f"/{database}"
    connections: list[Any] = []

    def open_saver() -> Any:
        conn = psycopg.connect(own, autocommit=True, prepare_threshold=0)
        connections.append(conn)
        saver = PostgresSaver(conn)
        saver.setup()
        return saver

    def size(_saver: Any) -> int:
        return sum(
            _sql_int(own, f"SELECT coalesce(sum({expr}), 0) FROM {table}")
            for table, expr in (
                ("checkpoints", "octet_length(checkpoint::text) + octet_length(metadata::text)"),
                ("checkpoint_blobs", "coalesce(octet_length(blob), 0)"),
                ("checkpoint_writes", "octet_length(blob)"),
            )
        )

    def cleanup() -> None:
        for conn in connections:
            conn.close()
        _sql_int(url, f'DROP DATABASE "{database}" WITH (FORCE)')

    return Subject(open=open_saver, size=size, cleanup=cleanup)


def _sql_int(url: str, statement: str) -> int:
    """Run one statement on its own autocommitted connection; its first value, if a number."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement)
        row = cursor.fetchone() if cursor.description else None
    return int(row[0]) if row and isinstance(row[0], int) else 0


def _payload(client: Any, key: bytes) -> int:
    """The bytes a key holds (its items, members and fields; a list item with its newline).

    What a file of the same lines would hold, so the Redis row compares with the
    directory's; Redis's own overhead per key and item comes on top.
    """
    kind = client.type(key)
    if kind == b"list":
        return sum(len(item) + 1 for item in client.lrange(key, 0, -1))
    if kind == b"hash":
        return sum(len(k) + len(v) for k, v in client.hgetall(key).items())
    if kind == b"zset":
        return sum(len(member) for member in client.zrange(key, 0, -1))
    if kind == b"set":
        return sum(len(member) for member in client.smembers(key))
    return int(client.strlen(key))


def memory() -> Subject:
    from langgraph.checkpoint.memory import InMemorySaver

    saver = InMemorySaver()
    return Subject(open=lambda: saver, size=_memory_size)


def _memory_size(saver: Any) -> int:
    """The bytes of everything InMemorySaver keeps serialized: checkpoints, blobs, writes."""
    stored = [c for ns in saver.storage.values() for cps in ns.values() for c in cps.values()]
    blobs = sum(len(blob[1]) for blob in saver.blobs.values())
    writes = sum(len(w[2][1]) for ws in saver.writes.values() for w in ws.values())
    return blobs + writes + sum(len(c[0][1]) + len(c[1][1]) for c in stored)


def sqlite(root: Path, *, delta: bool = False) -> Subject:
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = root / "checkpoints.sqlite"
    return Subject(
        open=lambda: SqliteSaver(sqlite3.connect(path, check_same_thread=False)),
        size=lambda _saver: _files_size(root),
        state_schema=_delta_state() if delta else None,
    )


def _delta_state() -> Any:
    """create_agent's state with its messages in a DeltaChannel (langgraph's own reducer)."""
    from langchain.agents import AgentState
    from langgraph.channels.delta import DeltaChannel
    from langgraph.graph.message import _messages_delta_reducer

    # Spelled out, not annotated in a class body: this module's annotations are strings
    # (`from __future__ import annotations`) that LangChain would evaluate in module scope.
    messages = Annotated[list[AnyMessage], DeltaChannel(_messages_delta_reducer)]
    return type("DeltaMessagesState", (AgentState,), {"__annotations__": {"messages": messages}})


def _files_size(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def why_missing(name: str, redis_url: str | None, postgres_url: str | None) -> str | None:
    """Why saver ``name`` cannot be measured here, or None."""
    try:
        if name == CRAB_REDIS and redis_url is None:
            return "skipped: no redis-server for this run"
        if name in (CRAB_POSTGRES, POSTGRES) and postgres_url is None:
            return "skipped: no PostgreSQL server for this run"
        if name == POSTGRES:
            import langgraph.checkpoint.postgres
        if name in (SQLITE, SQLITE_DELTA):
            import langgraph.checkpoint.sqlite
        if name == SQLITE_DELTA:
            import langgraph.channels.delta  # noqa: F401
    except ImportError as error:
        return f"skipped: {error}"
    return None


def subject(name: str, root: Path, redis_url: str | None, postgres_url: str | None) -> Subject:
    return {
        CRAB_DIR: lambda: crab_directory(root),
        CRAB_REDIS: lambda: crab_redis(str(redis_url)),
        CRAB_POSTGRES: lambda: crab_postgres(str(postgres_url)),
        POSTGRES: lambda: postgres_saver(str(postgres_url)),
        MEMORY: memory,
        SQLITE: lambda: sqlite(root),
        SQLITE_DELTA: lambda: sqlite(root, delta=True),
    }[name]()


# --- measuring ----------------------------------------------------------------------------


def agent(saver: Any, turns: int, state_schema: Any = None) -> Any:
    from langchain.agents import create_agent

    model = ScriptedModel(messages=script(turns))
    return create_agent(model, [weather], checkpointer=saver, state_schema=state_schema)


@contextmanager
def timed_saver(saver: Any, spent: list[float]) -> Iterator[None]:
    """Add the CPU seconds ``saver``'s methods take to ``spent[0]`` (on any thread).

    CPU time of the calling thread, not wall time: LangGraph puts checkpoints
    from a background thread while the next step runs, and a saver's wall
    time there is mostly waiting for the interpreter lock.
    """
    originals = {name: getattr(saver, name) for name in SAVER_METHODS}

    def timing(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                spent[0] += time.thread_time() - start

        return call

    for name, method in originals.items():
        setattr(saver, name, timing(method))
    try:
        yield
    finally:
        for name in originals:
            delattr(saver, name)


def conversation(
    name: str, made: Subject, turns: int, marks: list[int], read_at: tuple[int, ...]
) -> dict[str, Any]:
    """Run ``turns`` turns on one saver: bytes at each of ``marks``, cold reads at ``read_at``."""
    saver = made.open()
    graph = agent(saver, turns, made.state_schema)
    ms, in_saver, stored, reads = [], [], {}, {}
    sent, moved = [], 0
    spent = [0.0]
    counts = made.counts or {"sent": 0, "moved": 0}
    with timed_saver(saver, spent):
        for turn in range(1, turns + 1):
            spent[0] = 0.0
            before = dict(counts)
            start = time.perf_counter()
            graph.invoke({"messages": [question(turn)]}, CONFIG)
            ms.append((time.perf_counter() - start) * 1000)
            in_saver.append(spent[0] * 1000)
            sent.append(counts["sent"] - before["sent"])
            moved += counts["moved"] - before["moved"]
            if turn in marks:
                stored[turn] = made.size(saver)
            if turn in read_at:
                reads[turn] = cold_reads(made, name)
    row = {"ms": ms, "in_saver_ms": in_saver, "bytes": stored, "reads": reads}
    if made.counts is not None:
        row["round_trips"] = {"per_turn": sent, "failed_commits": moved}
    return row


def cold_reads(made: Subject, name: str) -> dict[str, float]:
    """ms of a cold ``get_state`` and of ``get_state_history(limit=10)``, medians of three."""
    state, history = [], []
    for _ in range(3):
        fresh = agent(made.open(), 0, made.state_schema)
        gc.collect()
        start = time.perf_counter()
        found = fresh.get_state(CONFIG)
        state.append((time.perf_counter() - start) * 1000)
        assert found.values["messages"], name
        fresh = agent(made.open(), 0, made.state_schema)
        gc.collect()
        start = time.perf_counter()
        listed = list(fresh.get_state_history(CONFIG, limit=10))
        history.append((time.perf_counter() - start) * 1000)
        assert len(listed) == 10, name
    return {"get_state_ms": statistics.median(state), "history_ms": statistics.median(history)}


def floor(turns: int) -> list[float]:
    """ms per turn of the agent alone: no checkpointer, the conversation passed in whole."""
    graph = agent(None, turns)
    history: list[BaseMessage] = []
    ms = []
    for turn in range(1, turns + 1):
        start = time.perf_counter()
        history = graph.invoke({"messages": [*history, question(turn)]})["messages"]
        ms.append((time.perf_counter() - start) * 1000)
    return ms


def run(
    read_at: tuple[int, ...],
    redis_url: str | None,
    postgres_url: str | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Every saver through one conversation of ``max(read_at)`` turns; what ``report`` shows."""
    import tempfile

    turns = max(read_at)
    fifths = [turns * k // 5 for k in range(1, 6)]
    marks = sorted({*read_at, *fifths, turns // 2})
    rows: dict[str, Any] = {}
    notes: dict[str, str] = {}
    for name in SAVERS:
        why = why_missing(name, redis_url, postgres_url)
        if why:
            notes[name] = why
            log(f"savers     {name:40}: {why}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            made = subject(name, Path(tmp), redis_url, postgres_url)
            try:
                rows[name] = conversation(name, made, turns, marks, read_at)
            finally:
                made.cleanup()
        row = rows[name]
        log(
            f"savers     {name:40}: {row['bytes'][turns]:>12,} bytes, "
            f"{statistics.median(row['ms'][-max(turns // 5, 1) :]):.1f} ms/turn at the end, "
            f"cold get_state {row['reads'][turns]['get_state_ms']:.1f} ms"
        )
    moved = _moved_in(postgres_url, turns, log) if POSTGRES in rows else None
    rows[FLOOR] = {"ms": floor(turns)}
    log(f"savers     {FLOOR:40}: {statistics.median(rows[FLOOR]['ms'][-turns // 5 :]):.1f} ms/turn")
    return {
        "turns": turns,
        "read_at": list(read_at),
        "marks": marks,
        "rows": rows,
        "notes": notes,
        "moved_in": moved,
    }


def _moved_in(postgres_url: str | None, turns: int, log: Callable[[str], None]) -> dict[str, Any]:
    """A PostgresSaver thread of ``turns`` turns moved into CrabSaver on the same server with
    ``copy_threads``: bytes before and after, and how long the move took."""
    from crab_langchain.checkpoint import copy_threads

    source, target = postgres_saver(str(postgres_url)), crab_postgres(str(postgres_url))
    try:
        reader = source.open()
        graph = agent(reader, turns)
        for turn in range(1, turns + 1):
            graph.invoke({"messages": [question(turn)]}, CONFIG)
        writer = target.open()
        start = time.perf_counter()
        (thread,) = copy_threads(reader, writer)
        seconds = time.perf_counter() - start
        before, after = source.size(reader), target.size(writer)
        same = states(agent(writer, 0)) == states(agent(reader, 0))
    finally:
        source.cleanup()
        target.cleanup()
    log(
        f"moved in   {turns} turns, {thread.checkpoints} checkpoints: PostgresSaver "
        f"{before:,} bytes -> CrabSaver (PostgreSQL) {after:,} bytes in {seconds:.1f} s"
    )
    return {
        "turns": turns,
        "checkpoints": thread.checkpoints,
        "writes": thread.writes,
        "bytes_before": before,
        "bytes_after": after,
        "seconds": seconds,
        "history_equal": same,
    }
