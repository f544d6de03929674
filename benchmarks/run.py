"""Side-by-side benchmark: crab_langchain against the chat histories users would pick instead.

One run, the same messages for every backend, on this machine:

- chat loop: read the history, add a human+AI pair; ms per turn at several
  history lengths;
- cold load: a new history object's ``messages`` for a long session, beside
  the naive floor (``json.loads`` per line + LangChain's constructors);
- bulk add: one ``add_messages`` call with many messages;
- concurrent writers: several processes adding pairs to one session (and
  how many messages each backend kept);
- memory: bytes per loaded message at three sizes (linear growth);
- checkpointers: one ``create_agent`` conversation with ``CrabSaver`` and
  LangGraph's own savers (``savers.py``): bytes stored, ms per turn, cold
  ``get_state`` and ``get_state_history`` at 10, 100 and 500 turns.

The Redis rows (crab_langchain on Redis, and langchain-community's
RedisChatMessageHistory) share one private ``redis-server`` that the run
starts on a free loopback port without persistence and stops at the end; if
``redis-server`` or redis-py is missing, those rows say so and are skipped.
The PostgreSQL rows (crab_langchain on PostgreSQL and langchain-postgres'
PostgresChatMessageHistory; CrabSaver on PostgreSQL and PostgresSaver) share
one private PostgreSQL the same way (the tests' ``PostgresServer``: Debian's
package, ``initdb`` in a temporary directory, the server's defaults but for
``fsync=off`` and ``synchronous_commit=off``, the same for both).

``python benchmarks/run.py`` writes ``benchmarks/RESULTS.md``,
``benchmarks/results.json``, ``benchmarks/chat_loop.png`` and ``benchmarks/savers.png``;
``--quick`` runs small sizes as a smoke test (CI, the performance notebook)
and writes to ``--out`` (a temporary directory by default). Timings are
wall-clock medians over the turns of one run; the ratios are what to read.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    message_to_dict,
    messages_to_dict,
)

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*InMemoryChatMessageHistory.*")

CRAB = "crab_langchain"
CRAB_FSYNC = "crab_langchain (fsync)"
CRAB_REDIS = "crab_langchain (Redis)"
FILE = "FileChatMessageHistory"
SQLITE = "SQLChatMessageHistory (SQLite)"
REDIS = "RedisChatMessageHistory"
MEMORY = "InMemoryChatMessageHistory"
MEMORY_COPY = "InMemoryChatMessageHistory (list copied)"
RAW = "raw append"
NAIVE = "naive floor (json.loads + constructors)"
CRAB_POSTGRES = "crab_langchain (PostgreSQL)"
POSTGRES = "PostgresChatMessageHistory"
CHAT_BACKENDS = (
    CRAB, CRAB_FSYNC, CRAB_REDIS, CRAB_POSTGRES, FILE, SQLITE, REDIS, POSTGRES, MEMORY,
    MEMORY_COPY, RAW,
)  # fmt: skip
REDIS_BACKENDS = (CRAB_REDIS, REDIS)
POSTGRES_BACKENDS = (CRAB_POSTGRES, POSTGRES)
POSTGRES_URL_ENV = "CRAB_BENCH_POSTGRES_URL"
# The private server's URL; writer subprocesses inherit it.
REDIS_URL_ENV = "CRAB_BENCH_REDIS_URL"
REDIS_ARGS = '--save "" --appendonly no'  # what RedisServer runs it with


@dataclass(frozen=True)
class Sizes:
    lengths: tuple[int, ...]
    cold: int
    bulk: int
    writers: int
    writer_turns: int
    memory: tuple[int, ...]
    budget_s: float  # skip a backend at a size if it would take longer than this
    turn_time_s: float  # time spent measuring turns at each length
    sessions: int  # session files in the directory when opening one among many
    saver_turns: tuple[int, ...]  # turns of the agent conversation where savers are read


FULL = Sizes(
    (1_000, 4_000, 20_000),
    100_000,
    100_000,
    4,
    500,
    (25_000, 50_000, 100_000),
    120,
    3,
    20_000,
    (10, 100, 500),
)
QUICK = Sizes(
    (200, 800, 2_000), 5_000, 5_000, 4, 50, (1_000, 2_000, 4_000), 20, 0.3, 500, (5, 10, 30)
)


# --- the messages -----------------------------------------------------------


def pair(turn: int) -> list[BaseMessage]:
    """The human+AI pair every backend stores at ``turn``."""
    return [
        HumanMessage(f"Question {turn}: what is the weather like in Lisbon today, and tomorrow?"),
        AIMessage(f"Answer {turn}: sunny, 21 °C today; clouds and 18 °C tomorrow. Take a jacket."),
    ]


def messages(count: int) -> list[BaseMessage]:
    return [m for turn in range(count // 2) for m in pair(turn)]


# --- the backends -----------------------------------------------------------


def crab_history(root: Path, durability: str = "flush") -> Any:
    from crab_langchain import SessionStore

    store = SessionStore(root, durability=durability, entry_points=False)  # type: ignore[arg-type]
    return store.get_session_history("bench")


def file_history(root: Path) -> Any:
    from langchain_community.chat_message_histories import FileChatMessageHistory

    return FileChatMessageHistory(str(root / "history.json"))


def sqlite_history(root: Path) -> Any:
    from langchain_community.chat_message_histories import SQLChatMessageHistory

    return SQLChatMessageHistory("bench", connection=f"sqlite:///{root / 'history.db'}")


def _redis_url() -> str:
    return os.environ[REDIS_URL_ENV]


def _redis_prefix(root: Path) -> str:
    """Key prefix of one measurement: its temporary directory's unique name.

    Writer processes reopen the backend from the same directory, so they find the same keys.
    """
    return f"bench-{root.name}"


def crab_redis_history(root: Path) -> Any:
    from crab_langchain import SessionStore

    store = SessionStore.from_url(_redis_url(), prefix=_redis_prefix(root), entry_points=False)
    return store.get_session_history("bench")


def redis_history(root: Path) -> Any:
    from langchain_community.chat_message_histories import RedisChatMessageHistory

    return RedisChatMessageHistory("bench", url=_redis_url(), key_prefix=f"{_redis_prefix(root)}:")


def _redis_prefill(history: Any, count: int) -> None:
    """Push what ``add_message`` would, pipelined: its add_messages is one round trip a message."""
    values = [json.dumps(message_to_dict(m)) for m in messages(count)]
    pipe = history.redis_client.pipeline(transaction=False)
    for start in range(0, len(values), 10_000):
        pipe.lpush(history.key, *values[start : start + 10_000])
    pipe.execute()


def _postgres_url() -> str:
    return os.environ[POSTGRES_URL_ENV]


def _postgres_name(root: Path) -> str:
    """The schema (crab) or table (PostgresChatMessageHistory) of one measurement."""
    return f"bench_{root.name}".lower().replace("-", "_")


def crab_postgres_history(root: Path) -> Any:
    from crab_langchain import SessionStore

    store = SessionStore.from_url(_postgres_url(), prefix=_postgres_name(root), entry_points=False)
    store.setup()
    return store.get_session_history("bench")


def postgres_history(root: Path) -> Any:
    import psycopg
    from langchain_postgres import PostgresChatMessageHistory

    conn = psycopg.connect(_postgres_url())
    table = _postgres_name(root)
    PostgresChatMessageHistory.create_tables(conn, table)
    session = "00000000-0000-4000-8000-000000000001"  # it takes UUIDs only
    return PostgresChatMessageHistory(table, session, sync_connection=conn)


def memory_history(root: Path) -> Any:
    from langchain_core.chat_history import InMemoryChatMessageHistory

    return InMemoryChatMessageHistory()


class CopiedInMemory:
    """InMemoryChatMessageHistory handing out a list of the caller's own on each read.

    The floor for a history whose ``messages`` may be changed by the caller
    without touching what is stored (crab_langchain's contract): a list copy.
    """

    def __init__(self) -> None:
        self.inner = memory_history(Path())

    @property
    def messages(self) -> list[BaseMessage]:
        return list(self.inner.messages)

    def add_messages(self, batch: Sequence[BaseMessage]) -> None:
        self.inner.add_messages(batch)


class RawAppend:
    """The floor: append the same JSON lines to a file, read nothing."""

    def __init__(self, root: Path) -> None:
        self.file = open(root / "raw.jsonl", "ab")  # noqa: SIM115 - closed by the caller

    @property
    def messages(self) -> list[BaseMessage]:
        return []

    def add_messages(self, batch: Sequence[BaseMessage]) -> None:
        self.file.write(b"".join(_json_line(m) for m in batch))
        self.file.flush()


def _json_line(message: BaseMessage) -> bytes:
    return json.dumps({"role": message.type, "content": message.content}).encode() + b"\n"


def prefill(name: str, root: Path, count: int) -> Any:
    """A history of ``name`` in ``root`` already holding ``count`` messages."""
    history = open_backend(name, root)
    if name == FILE:  # its add_messages rewrites the file per message: write it directly
        (root / "history.json").write_text(json.dumps(messages_to_dict(messages(count))))
    elif name == REDIS:
        _redis_prefill(history, count)
    elif name != RAW:
        history.add_messages(messages(count))
    return history


def open_backend(name: str, root: Path) -> Any:
    return {
        CRAB: lambda: crab_history(root),
        CRAB_FSYNC: lambda: crab_history(root, "fsync"),
        CRAB_REDIS: lambda: crab_redis_history(root),
        CRAB_POSTGRES: lambda: crab_postgres_history(root),
        POSTGRES: lambda: postgres_history(root),
        FILE: lambda: file_history(root),
        SQLITE: lambda: sqlite_history(root),
        REDIS: lambda: redis_history(root),
        MEMORY: lambda: memory_history(root),
        MEMORY_COPY: CopiedInMemory,
        RAW: lambda: RawAppend(root),
    }[name]()


@contextmanager
def workspace(name: str) -> Iterator[Path]:
    """A temporary directory for one measurement; a Redis backend's keys go with it."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            yield Path(tmp)
        finally:
            if name in REDIS_BACKENDS:
                _drop_keys(_redis_prefix(Path(tmp)))
            if name in POSTGRES_BACKENDS:
                _drop_postgres(_postgres_name(Path(tmp)))


def _drop_keys(prefix: str) -> None:
    """Delete a measurement's keys, so the server holds one measurement's data at a time."""
    import redis

    with redis.Redis.from_url(_redis_url()) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=10_000))
        for start in range(0, len(keys), 1_000):
            client.unlink(*keys[start : start + 1_000])


def _drop_postgres(name: str) -> None:
    """Drop a measurement's schema or table, so the server holds one measurement at a time."""
    import psycopg

    with psycopg.connect(_postgres_url(), autocommit=True) as conn:
        # PostgresChatMessageHistory leaves its connection in the transaction its read began.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND state = 'idle in transaction'"
        )
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        conn.execute(f'DROP TABLE IF EXISTS "{name}"')


# --- measuring --------------------------------------------------------------


def chat_loop(name: str, length: int, sizes: Sizes) -> float:
    """Median ms per turn (read the history, add a pair) at ``length`` messages."""
    with workspace(name) as root:
        history = prefill(name, root, length)
        times: list[float] = []
        spent, turn = 0.0, 0
        while turn < 5 or (spent < sizes.turn_time_s and turn < 2_000):
            start = time.perf_counter()
            _ = history.messages
            history.add_messages(pair(length + turn))
            elapsed = time.perf_counter() - start
            times.append(elapsed)
            spent += elapsed
            turn += 1
        if isinstance(history, RawAppend):
            history.file.close()
        return statistics.median(times) * 1000


def cold_load(name: str, count: int) -> float:
    """Seconds for a new history object of a ``count``-message session to return its messages."""
    with workspace(name) as root:
        prefill(name, root, count)
        gc.collect()
        start = time.perf_counter()
        loaded = open_backend(name, root).messages
        seconds = time.perf_counter() - start
        assert len(loaded) == count, (name, len(loaded))
        return seconds


def naive_floor(count: int) -> float:
    """Seconds to read a crab session with ``json.loads`` and LangChain's constructors."""
    classes = {"user": HumanMessage, "assistant": AIMessage}
    with tempfile.TemporaryDirectory() as tmp:
        history = prefill(CRAB, Path(tmp), count)
        path = history.file_path
        gc.collect()
        start = time.perf_counter()
        with open(path, encoding="utf-8") as file:
            file.readline()
            loaded = [classes[d["role"]](content=d["content"]) for d in map(json.loads, file)]
        seconds = time.perf_counter() - start
        assert len(loaded) == count
        return seconds


def open_among(sessions: int) -> dict[str, float]:
    """ms to open and read one session in a directory of ``sessions`` session files.

    The way ``RunnableWithMessageHistory`` does on each run, with one store:
    call the factory, then read. ``factory_ms`` is the factory alone (what
    runs on the event loop in ``ainvoke``) for that session, ``factory_new_ms``
    for a session not written yet; ``existing_ms`` opens and reads a
    100-message session; ``new_ms`` opens and reads a session not yet
    written (a new conversation's first read). Medians over 20 calls, after
    the directory has settled (its listing is kept from then on).
    """
    from crab_langchain import SessionStore

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = SessionStore(root, entry_points=False)
        store.get_session_history("target").add_messages(messages(100))
        _plant_sessions(root, sessions - 1)
        store.find("warm-up")
        time.sleep(2.1)  # past the listing's settling time (time stamps are coarse)
        store.find("warm-up")
        fresh = iter(range(1_000_000))
        return {
            "sessions": sessions,
            "factory_ms": _median_ms(lambda: store.get_session_history("target")),
            "factory_new_ms": _median_ms(lambda: store.get_session_history(f"new-{next(fresh)}")),
            "existing_ms": _median_ms(lambda: store.get_session_history("target").messages),
            "new_ms": _median_ms(lambda: store.get_session_history(f"new-{next(fresh)}").messages),
        }


def _median_ms(call: Callable[[], object]) -> float:
    return _median_us(call, 20) / 1000


_MAKER = """
import sys, time
from langchain_core.messages import HumanMessage
from crab_langchain import SessionStore
store = SessionStore(sys.argv[1], entry_points=False)
for n in range(int(sys.argv[2])):
    store.get_session_history(f"busy-{n}").add_messages([HumanMessage("hi")])
    time.sleep(0.1)
"""


def busy_lookups(counts: tuple[int, ...]) -> list[dict[str, float]]:
    """ms to find a session by id while another process makes a session every 100 ms.

    For each count of session files: the median and the mean of 150 look-ups
    of an existing id and of a new one, 10 ms apart, so that the directory
    has changed between most of them (the case that once cost a scan each).
    """
    from crab_langchain import SessionStore

    rows = []
    for count in counts:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            store = SessionStore(root, entry_points=False)
            store.get_session_history("target").add_messages(messages(2))
            _plant_sessions(root, count - 1)
            store.find("warm-up")
            maker = subprocess.Popen([sys.executable, "-c", _MAKER, tmp, "40"])
            time.sleep(1.0)  # its interpreter starts
            existing, new = [], []
            try:
                for n in range(150):
                    start = time.perf_counter()
                    assert store.find("target") is not None
                    existing.append((time.perf_counter() - start) * 1000)
                    start = time.perf_counter()
                    assert store.find(f"new-{n}") is None
                    new.append((time.perf_counter() - start) * 1000)
                    time.sleep(0.01)
            finally:
                maker.kill()
                maker.wait()
            rows.append(
                {
                    "sessions": count,
                    "existing_median_ms": statistics.median(existing),
                    "existing_mean_ms": statistics.mean(existing),
                    "new_median_ms": statistics.median(new),
                    "new_mean_ms": statistics.mean(new),
                }
            )
    return rows


def _plant_sessions(root: Path, count: int) -> None:
    """``count`` one-line session files, written as crabtalk would (no store involved)."""
    from crab_langchain.naming import SESSION_ID_KEY, file_name

    for n in range(count):
        header = {"agent": "crab", "created_by": "user", "created_at": "2026-01-01T00:00:00Z"}
        header[SESSION_ID_KEY] = f"other-{n}"
        name = file_name("crab", 1_767_225_600 + n, f"other-{n}")
        (root / name).write_text(json.dumps(header) + "\n")


def bulk_add(name: str, count: int) -> float:
    """Seconds for one ``add_messages`` call of ``count`` messages on a new history."""
    batch = messages(count)
    with workspace(name) as root:
        history = open_backend(name, root)
        gc.collect()
        start = time.perf_counter()
        history.add_messages(batch)
        seconds = time.perf_counter() - start
        if isinstance(history, RawAppend):
            history.file.close()
        return seconds


_WRITER = """
import sys, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, {bench!r})
from pathlib import Path
import run
history = run.open_backend({name!r}, Path({root!r}))
for turn in range({turns}):
    history.add_messages(run.pair({writer} * 1_000_000 + turn))
"""


def concurrent_writers(name: str, writers: int, turns: int) -> tuple[float, int | None, str]:
    """Wall seconds for ``writers`` processes adding ``turns`` pairs each; messages kept; notes."""
    with workspace(name) as root:
        prefill(name, root, 2)  # the session exists before the writers start
        code = [
            _WRITER.format(
                bench=str(Path(__file__).parent), name=name, root=str(root), turns=turns, writer=w
            )
            for w in range(writers)
        ]
        start = time.perf_counter()
        procs = [
            subprocess.Popen([sys.executable, "-c", c], stderr=subprocess.PIPE, text=True)
            for c in code
        ]
        errors = [p.communicate()[1] for p in procs]
        seconds = time.perf_counter() - start
        failed = [e.strip().splitlines()[-1] for p, e in zip(procs, errors) if p.returncode]
        notes = f"{len(failed)} writers crashed ({failed[0]})" if failed else ""
        try:
            kept = len(open_backend(name, root).messages) - 2 if name != RAW else _raw_lines(root)
        except Exception as error:  # what the anchor does under concurrency
            return seconds, None, f"{notes}; session unreadable afterwards ({error})".lstrip("; ")
        return seconds, kept, notes


def _raw_lines(root: Path) -> int:
    return (root / "raw.jsonl").read_bytes().count(b"\n")


def memory_per_message(name: str, count: int) -> float:
    """Bytes a loaded ``count``-message crab session holds per message (tracemalloc)."""
    from crab_langchain import CrabChatMessageHistory, SessionStore

    with workspace(name) as root:
        history = prefill(name, root, count)
        path = history.file_path
        del history
        # The connection is not the history's memory: open it before tracing.
        store = None if name == CRAB else SessionStore.from_url(
            _redis_url(), prefix=_redis_prefix(root), entry_points=False
        )  # fmt: skip
        gc.collect()
        tracemalloc.start()
        if store is None:
            loaded = CrabChatMessageHistory.from_file(path)
        else:
            loaded = store.get_session_history("bench")
        _ = loaded.messages
        current, _peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(loaded.messages) == count
        return current / count


def write_record_cost(count: int) -> dict[str, float]:
    """What the all-or-nothing write record costs a directory session, in µs per call.

    Beside each of the two storage calls a chat turn makes, what that call did
    before the record (and the readers' shared lock) existed, in the same run:

    - append a pair: ``DirectoryStorage.append`` (exclusive lock on the lock
      file, record, one write, record cleared) vs. ``flock``, one ``write``,
      unlock on a cached ``O_APPEND`` descriptor;
    - read an unchanged session: ``DirectoryStorage.read`` (shared lock,
      record, ``stat``) vs. the ``stat`` alone.
    """
    import fcntl

    from crab_langchain.storage import DirectoryStorage

    lines = [_json_line(m)[:-1] for m in pair(0)]
    data = b"".join(line + b"\n" for line in lines)
    header = b'{"agent":"crab","created_by":"user","created_at":"2026-03-23T08:06:51Z"}'
    with tempfile.TemporaryDirectory() as tmp:
        storage = DirectoryStorage(tmp)
        storage.create("s.jsonl", header)
        fd = os.open(os.path.join(tmp, "before.jsonl"), os.O_RDWR | os.O_APPEND | os.O_CREAT)

        def before_append() -> None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, data)
            fcntl.flock(fd, fcntl.LOCK_UN)

        append = _median_us(lambda: storage.append("s.jsonl", lines), count)
        append_before = _median_us(before_append, count)
        cursor = storage.read("s.jsonl", None).cursor  # type: ignore[union-attr]
        read = _median_us(lambda: storage.read("s.jsonl", cursor), count)
        path = os.path.join(tmp, "s.jsonl")
        read_before = _median_us(lambda: os.stat(path), count)
        os.close(fd)
        storage.close()
    return {
        "append_us": append,
        "append_before_us": append_before,
        "read_unchanged_us": read,
        "read_unchanged_before_us": read_before,
    }


def _median_us(call: Callable[[], object], count: int) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


# --- the run ----------------------------------------------------------------

Skips = dict[str, str]  # backend -> why it is not measured


def run(sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    results: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    results["machine"] = machine()
    results["versions"] = versions()
    with private_redis(log) as server, private_postgres(log) as postgres:
        results["redis"], results["postgres"] = server, postgres
        skip = {} if server["available"] else dict.fromkeys(REDIS_BACKENDS, server["reason"])
        if not postgres["available"]:
            skip.update(dict.fromkeys(POSTGRES_BACKENDS, postgres["reason"]))
        loop, notes = chat_loops(sizes, log, skip)
        results["chat_loop"] = {"lengths": list(sizes.lengths), "ms_per_turn": loop, "notes": notes}
        results["cold_load"] = cold_loads(sizes, log, skip)
        results["bulk_add"] = bulk_adds(sizes, log, skip)
        results["concurrent"] = concurrency(sizes, log, _estimate(loop[FILE], sizes), skip)
        results["memory"] = memory(sizes, log, skip)
        results["savers"] = checkpointers(sizes, log, server, postgres)
    log(f"open one session among {sizes.sessions:,}")
    results["open_among"] = open_among(sizes.sessions)
    log("find a session among 1,000 and among many while another process makes sessions")
    results["busy_lookups"] = busy_lookups((min(1_000, sizes.sessions), sizes.sessions))
    log("write record cost")
    results["write_record"] = write_record_cost(200 if sizes is QUICK else 5_000)
    results["run_seconds"] = time.perf_counter() - started
    results["machine"]["load_end"] = _load_average()
    return results


def checkpointers(
    sizes: Sizes, log: Callable[[str], None], server: dict[str, Any], postgres: dict[str, Any]
) -> dict[str, Any]:
    """The checkpointers' part (``savers.py``; imported here, so writer processes skip it)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import savers

    redis_url = os.environ.get(REDIS_URL_ENV) if server["available"] else None
    postgres_url = os.environ.get(POSTGRES_URL_ENV) if postgres["available"] else None
    return savers.run(sizes.saver_turns, redis_url, postgres_url, log)


def chat_loops(
    sizes: Sizes, log: Callable[[str], None], skip: Skips
) -> tuple[dict[str, list[float | None]], Skips]:
    """ms per turn of every backend at every length (None where skipped), and why skipped."""
    loop: dict[str, list[float | None]] = {}
    notes: Skips = {}
    for name in CHAT_BACKENDS:
        loop[name] = []
        for length in sizes.lengths:
            why = skip.get(name) or notes.get(name)
            if why is None and _too_slow(loop[name], sizes.lengths, length, sizes):
                why = f"skipped from {length:,} messages: over the {sizes.budget_s:.0f} s budget"
            if why:
                notes[name] = why
                loop[name].append(None)
                log(f"chat loop  {name:34} {length:>7}: {why}")
                continue
            loop[name].append(chat_loop(name, length, sizes))
            log(f"chat loop  {name:34} {length:>7}: {loop[name][-1]:9.3f} ms/turn")
    return loop, notes


def _too_slow(done: list[float | None], lengths: Sequence[int], length: int, sizes: Sizes) -> bool:
    """Whether a backend that already ran would take over the budget at ``length``.

    Cost per turn is assumed to grow linearly with the length (as it does for
    the anchors that read the whole history each turn); a run takes at least
    five turns.
    """
    if not done or done[-1] is None:
        return bool(done)
    previous = lengths[len(done) - 1]
    per_turn_s = done[-1] / 1000 * length / previous
    return per_turn_s * 5 > sizes.budget_s


def cold_loads(sizes: Sizes, log: Callable[[str], None], skip: Skips) -> dict[str, Any]:
    """Seconds of a cold load for each backend that stores, and the naive floor."""
    names = (CRAB, CRAB_REDIS, CRAB_POSTGRES, FILE, SQLITE, REDIS, POSTGRES)
    seconds, notes = _each(names, cold_load, sizes.cold, log, "cold load", skip=skip)
    seconds[NAIVE] = naive_floor(sizes.cold)
    log(f"cold load  {NAIVE:34}: {seconds[NAIVE]:.3f} s")
    return {"messages": sizes.cold, "seconds": seconds, "notes": notes}


def bulk_adds(sizes: Sizes, log: Callable[[str], None], skip: Skips) -> dict[str, Any]:
    """Seconds of one big ``add_messages`` per backend; one estimated over the budget is skipped."""
    names = (CRAB, CRAB_FSYNC, CRAB_REDIS, SQLITE, REDIS, MEMORY, RAW)
    skip = {**skip, **_bulk_over_budget(names, sizes, skip)}
    seconds, notes = _each(names, bulk_add, sizes.bulk, log, "bulk add", skip=skip)
    seconds[FILE] = None
    notes[FILE] = "skipped: rewrites the whole file per message (quadratic)"
    return {"messages": sizes.bulk, "seconds": seconds, "notes": notes}


def _bulk_over_budget(names: Sequence[str], sizes: Sizes, skip: Skips) -> Skips:
    """Backends whose bulk add, timed at a hundredth of the size, extrapolates past the budget.

    Every backend's bulk add costs about the same per message at any size
    (RedisChatMessageHistory's is one round trip a message), so linear is fair.
    """
    probe = max(sizes.bulk // 100, 2)
    over: Skips = {}
    for name in names:
        if name in skip:
            continue
        estimate = bulk_add(name, probe) * sizes.bulk / probe
        if estimate > sizes.budget_s:
            over[name] = f"skipped: about {estimate:.0f} s, over the {sizes.budget_s:.0f} s budget"
    return over


def _each(
    names: Sequence[str],
    measure: Callable[[str, int], float],
    count: int,
    log: Callable[[str], None],
    what: str,
    *,
    skip: Skips,
) -> tuple[dict[str, float | None], Skips]:
    """``measure`` each backend not in ``skip``: seconds (None if skipped), and why skipped."""
    out: dict[str, float | None] = {}
    notes: Skips = {}
    for name in names:
        if name in skip:
            out[name], notes[name] = None, skip[name]
            log(f"{what:10} {name:34}: {notes[name]}")
            continue
        seconds = measure(name, count)
        out[name] = seconds
        log(f"{what:10} {name:34}: {seconds:.3f} s")
    return out, notes


def _estimate(file_loop: list[float | None], sizes: Sizes) -> float:
    """Seconds FileChatMessageHistory would need for the writers (its cost grows with length)."""
    measured = [(n, ms) for n, ms in zip(sizes.lengths, file_loop) if ms is not None]
    if not measured:
        return float("inf")
    length, ms = measured[-1]
    final = sizes.writers * sizes.writer_turns * 2
    return sizes.writers * sizes.writer_turns * ms / 1000 * (final / 2) / length


def concurrency(
    sizes: Sizes, log: Callable[[str], None], file_estimate: float, skip: Skips
) -> dict[str, Any]:
    seconds: dict[str, float | None] = {}
    kept: dict[str, int | None] = {}
    notes: dict[str, str] = {}
    if file_estimate > sizes.budget_s:
        why = f"skipped: about {file_estimate:.0f} s (it rewrites the file per message)"
        skip = {**skip, FILE: why}
    for name in (CRAB, CRAB_FSYNC, CRAB_REDIS, SQLITE, REDIS, FILE, RAW):
        if name in skip:
            seconds[name] = kept[name] = None
            notes[name] = skip[name]
            log(f"writers    {name:34}: {notes[name]}")
            continue
        seconds[name], kept[name], notes[name] = concurrent_writers(
            name, sizes.writers, sizes.writer_turns
        )
        log(f"writers    {name:34}: {seconds[name]:.2f} s, kept {kept[name]} {notes[name]}")
    return {
        "writers": sizes.writers,
        "turns": sizes.writer_turns,
        "expected": sizes.writers * sizes.writer_turns * 2,
        "seconds": seconds,
        "kept": kept,
        "notes": notes,
    }


def memory(sizes: Sizes, log: Callable[[str], None], skip: Skips) -> dict[str, Any]:
    """Bytes per loaded message of crab_langchain on a directory and on Redis."""
    by_backend: dict[str, list[float] | None] = {}
    notes: Skips = {}
    for name in (CRAB, CRAB_REDIS):
        if name in skip:
            by_backend[name], notes[name] = None, skip[name]
            log(f"memory     {name:34}: {notes[name]}")
            continue
        per_size = [memory_per_message(name, count) for count in sizes.memory]
        by_backend[name] = per_size
        shown = ", ".join(f"{per:,.0f}" for per in per_size)
        log(f"memory     {name:34}: {shown} bytes/message at {sizes.memory}")
    return {
        "messages": list(sizes.memory),
        "bytes_per_message": by_backend[CRAB],
        "by_backend": by_backend,
        "notes": notes,
    }


@contextmanager
def private_redis(log: Callable[[str], None]) -> Iterator[dict[str, Any]]:
    """The Redis rows' own server for the block; what the results say about it."""
    server, reason = _start_redis()
    if server is None:
        log(f"redis      Redis rows skipped: {reason}")
        yield {"available": False, "reason": f"skipped: {reason}"}
        return
    os.environ[REDIS_URL_ENV] = server.url
    try:
        with server.client() as client:
            version = client.info("server")["redis_version"]
        log(f"redis      redis-server {version} on {server.url}, no persistence")
        yield {"available": True, "server": f"redis-server {version}", "args": REDIS_ARGS}
    finally:
        os.environ.pop(REDIS_URL_ENV, None)
        server.stop()


@contextmanager
def private_postgres(log: Callable[[str], None]) -> Iterator[dict[str, Any]]:
    """The PostgreSQL rows' own server for the block; what the results say about it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from postgres_servers import PostgresServer, postgres_missing

    reason = postgres_missing()
    if reason is not None:
        log(f"postgres   PostgreSQL rows skipped: {reason}")
        yield {"available": False, "reason": f"skipped: {reason}"}
        return
    with PostgresServer() as server:
        os.environ[POSTGRES_URL_ENV] = server.url
        try:
            version = server.execute("SHOW server_version")[0][0]
            log(f"postgres   PostgreSQL {version} on {server.url}")
            yield {"available": True, "server": f"PostgreSQL {version}"}
        finally:
            os.environ.pop(POSTGRES_URL_ENV, None)


def _start_redis() -> tuple[Any, str | None]:
    """A private redis-server (the tests' RedisServer), or None and why there is none."""
    if shutil.which("redis-server") is None:
        return None, "redis-server is not on PATH"
    try:
        import redis  # noqa: F401
    except ImportError as error:
        return None, f"redis-py is not installed ({error})"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from redis_servers import RedisServer, RedisStartError

    try:
        return RedisServer(), None
    except (RedisStartError, OSError) as error:
        return None, f"redis-server did not start ({str(error).splitlines()[0]})"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_start": _load_average(),
    }


def _load_average() -> float | None:
    """The 1-minute load average (other work on the machine skews the timings), if known."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "crab-langchain",
        "langchain-core",
        "langchain-community",
        "pydantic",
        "SQLAlchemy",
        "redis",
        "hiredis",
        "psycopg",
        "langchain-postgres",
        "langgraph-checkpoint-postgres",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--out", type=Path, help="where to write results (default: see above)")
    parser.add_argument(
        "--before",
        type=Path,
        metavar="JSON",
        help="results.json of an earlier run (another commit): RESULTS.md shows both",
    )
    args = parser.parse_args(argv)
    out = args.out or (Path(tempfile.mkdtemp()) if args.quick else Path(__file__).parent)
    out.mkdir(parents=True, exist_ok=True)
    results = run(QUICK if args.quick else FULL, lambda line: print(line, flush=True))
    results["quick"] = args.quick
    if args.before is not None:
        results["before"] = json.loads(args.before.read_text())
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    sys.path.insert(0, str(Path(__file__).parent))
    import report

    (out / "RESULTS.md").write_text(report.markdown(results))
    report.plot(results, out / "chat_loop.png")
    report.plot_savers(results, out / "savers.png")
    print(f"\nwrote RESULTS.md, results.json, chat_loop.png and savers.png in {out}")


if __name__ == "__main__":
    main()
