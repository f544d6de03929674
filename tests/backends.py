"""One behaviour suite, every backend: the ``backend`` fixture and what tests ask of it.

A test that takes ``backend`` runs four times: on a directory, on a real
Redis server, on a real three-node Redis Cluster (see ``redis_servers.py``)
and on a real PostgreSQL server, in a schema of its own (``postgres_servers.py``).
It makes stores with ``backend.store()`` (each call a new store object on the
same sessions, as another worker would have), reads
the raw lines with ``backend.lines(...)`` and seeds crabtalk's own files with
``backend.put(...)``. Subprocesses open the same sessions with
``SessionStore.from_url(*backend.argv)`` (see ``OPEN_STORE``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crab_langchain import CrabChatMessageHistory, SessionStore
from crab_langchain.storage import DirectoryStorage, SessionStorage
from crab_langchain.transfer import copy_session

BACKENDS = ["directory", "redis", "redis-cluster", "postgres"]

# For subprocess code: `store = open_store(sys.argv[1], sys.argv[2])` (argv from backend.argv).
OPEN_STORE = """
from crab_langchain import SessionStore
def open_store(url, prefix, **options):
    if prefix:
        options["prefix"] = prefix
    return SessionStore.from_url(url, entry_points=False, **options)
"""


# Started together: each opens the backend, writes ready-<n>, waits for the "go" file, then
# appends its turns. argv: url, prefix, gate, writer, turns.
GATED_WRITER = (
    OPEN_STORE
    + """
import os, sys, time
from langchain_core.messages import AIMessage, HumanMessage
url, prefix, gate, writer, turns = sys.argv[1:5] + [int(sys.argv[5])]
history = open_store(url, prefix).get_session_history("s")
open(os.path.join(gate, "ready-" + writer), "w").close()
for _ in range(30_000):
    if os.path.exists(os.path.join(gate, "go")):
        break
    time.sleep(0.001)
else:
    sys.exit("no go")
for turn in range(turns):
    history.add_messages([HumanMessage(f"{writer}/{turn}/q"), AIMessage(f"{writer}/{turn}/a")])
"""
)


class Backend:
    """Where a test's sessions live, and how to reach them from anywhere."""

    def __init__(self, kind: str, url: str, prefix: str | None) -> None:
        self.kind = kind
        self.url = url
        self.prefix = prefix
        self._storages: list[SessionStorage] = []

    @property
    def is_server(self) -> bool:
        """Whether the sessions live on a server (no files)."""
        return self.kind != "directory"

    @property
    def is_redis(self) -> bool:
        return self.kind.startswith("redis")

    @property
    def argv(self) -> list[str]:
        """``[url, prefix]`` for a subprocess (prefix empty for a directory)."""
        return [self.url, self.prefix or ""]

    def store(self, plugins: Any = None, **options: Any) -> SessionStore:
        """A new store object on this backend's sessions (entry points off)."""
        if self.prefix is not None:
            options["prefix"] = self.prefix
        store = SessionStore.from_url(self.url, plugins, entry_points=False, **options)
        self._storages.append(store.storage)
        return store

    def storage(self) -> SessionStorage:
        return self.store().storage

    def lines(self, what: CrabChatMessageHistory | str) -> list[bytes]:
        """The raw lines of a history's log (or of log ``what`` by name), header first."""
        name = what if isinstance(what, str) else log_name(what)
        chunk = self.storage().read(name, None)
        return [] if chunk is None else [line for _, line in chunk.lines]

    def raw_bytes(self, name: str) -> bytes:
        """Log ``name`` as the server holds it, read around the storage: its lines, each
        followed by a newline (what its file would hold). A directory's file is read as is."""
        if self.kind == "directory":
            return (Path(self.url) / name).read_bytes()
        if self.kind == "postgres":
            import psycopg
            from psycopg import sql

            query = sql.SQL(
                "SELECT l.line FROM {}.logs g JOIN {}.lines l ON l.incarnation = g.incarnation"
                " WHERE g.name = %s ORDER BY l.number"
            ).format(sql.Identifier(self.prefix or ""), sql.Identifier(self.prefix or ""))
            with psycopg.connect(self.url) as conn:
                rows = conn.execute(query, [name]).fetchall()
            return b"".join(bytes(row[0]) + b"\n" for row in rows)
        storage = self.storage()
        key = storage.location(name).rsplit(" ", 1)[1]  # a Redis location is "<url> <key>"
        items = storage.client.lrange(key, 0, -1)  # type: ignore[attr-defined]
        return b"".join(item + b"\n" for item in items)

    def server_rows(self) -> dict[str, int]:
        """PostgreSQL: how many rows the schema's logs and lines tables hold."""
        import psycopg
        from psycopg import sql

        counts = {}
        with psycopg.connect(self.url) as conn:
            for table in ("logs", "lines"):
                query = sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(self.prefix or "", table)
                )
                counts[table] = conn.execute(query).fetchone()[0]  # type: ignore[index]
        return counts

    def put(self, source: Path) -> str:
        """Store the session file ``source`` (a crabtalk fixture) here; return its log name."""
        copy_session(DirectoryStorage(source.parent), self.storage(), source.name)
        return source.name

    def close(self) -> None:
        for storage in self._storages:
            storage.close()


def run_gated_writers(backend: Backend, gate: Path, writers: int, turns: int) -> None:
    """Start ``writers`` processes on session "s" of ``backend``; release them at once; wait."""
    gate.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", GATED_WRITER, *backend.argv, str(gate), str(w), str(turns)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(writers)
    ]
    try:
        for _ in range(6000):
            if len(list(gate.glob("ready-*"))) == writers:
                break
            assert all(p.poll() is None for p in procs), "a writer died early"
            time.sleep(0.005)
        else:
            raise AssertionError("writers did not start")
        (gate / "go").touch()
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def stored_lines(store: SessionStore, session_id: str) -> list[bytes]:
    """The stored lines of ``session_id``, header first; a file holds exactly these."""
    name = store.find(session_id)
    assert name is not None, f"no log for session {session_id!r}"
    chunk = store.storage.read(name, None)
    assert chunk is not None
    lines = [line for _, line in chunk.lines]
    path = store.storage.path(name)
    if path is not None:
        assert path.read_bytes() == b"".join(line + b"\n" for line in lines)
    return lines


def log_name(history: CrabChatMessageHistory) -> str:
    log = history._current_log(create=False)
    assert log is not None, "the session has no log yet"
    return log.name


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The test's sessions on a directory, on Redis, on Redis Cluster, then on PostgreSQL."""
    kind = request.param
    if kind == "directory":
        made = Backend(kind, str(tmp_path / "sessions"), None)
    elif kind == "postgres":
        made = Backend(kind, request.getfixturevalue("postgres_url"), None)
        made.prefix = request.getfixturevalue("postgres_schema")
    else:
        url = request.getfixturevalue("redis_url" if kind == "redis" else "redis_cluster_url")
        made = Backend(kind, url, request.getfixturevalue("redis_prefix"))
    yield made
    made.close()
