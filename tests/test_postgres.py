"""What only the PostgreSQL backend has: its tables, its connections, its server's faults.

The behaviour every backend shares runs on PostgreSQL through the ``backend``
fixture (``backends.py``); here are set-up, hostile names, passwords, pools, write
ids resent after a lost reply, connections cut by the server, a server restart,
writers killed mid-transaction, and expiry.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from backends import OPEN_STORE
from langchain_core.messages import AIMessage, HumanMessage
from postgres_servers import PASSWORD, PostgresServer

from crab_langchain import SessionStore
from crab_langchain.storage import StorageUnavailableError

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("psycopg_pool")

from psycopg_pool import ConnectionPool  # noqa: E402

from crab_langchain.storage import postgres as pg  # noqa: E402
from crab_langchain.storage.postgres import PostgresStorage, StorageNotSetUpError  # noqa: E402

HOSTILE = ['x"; DROP TABLE logs; --', "o'brien", "50%_off\\", "ünï cödé", "a b"]


@pytest.fixture
def storage(postgres_url: str, postgres_schema: str) -> Iterator[PostgresStorage]:
    made = PostgresStorage.from_url(postgres_url, schema=postgres_schema)
    yield made
    made.close()


def texts(store: SessionStore, session_id: str) -> list[str]:
    return [str(m.content) for m in store.get_session_history(session_id).messages]


# --- the tables -------------------------------------------------------------------


def test_a_schema_not_set_up_says_to_run_setup_and_setup_is_idempotent(
    postgres_server: PostgresServer,
) -> None:
    store = SessionStore.from_url(postgres_server.url, prefix="fresh_schema", entry_points=False)
    try:
        with pytest.raises(StorageNotSetUpError, match=r"setup\(\)"):
            store.get_session_history("s").add_messages([HumanMessage("hi")])
        with pytest.raises(StorageNotSetUpError, match="fresh_schema"):
            store.list_sessions()
        store.setup()
        store.setup()  # again: nothing changes
        store.get_session_history("s").add_messages([HumanMessage("hi")])
        assert texts(store, "s") == ["hi"]
        versions = postgres_server.execute('SELECT version FROM "fresh_schema".version')
        assert versions == [(pg.SCHEMA_VERSION,)]
    finally:
        store.close()
        postgres_server.execute('DROP SCHEMA IF EXISTS "fresh_schema" CASCADE')


def test_tables_of_a_newer_version_are_refused(postgres_url: str, postgres_schema: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            f'INSERT INTO "{postgres_schema}".version VALUES (%s)', [pg.SCHEMA_VERSION + 1]
        )
    storage = PostgresStorage.from_url(postgres_url, schema=postgres_schema)
    try:
        with pytest.raises(StorageNotSetUpError, match="newer crab-langchain"):
            storage.setup()
    finally:
        storage.close()


def test_setups_racing_from_many_processes_make_one_schema(postgres_server: PostgresServer):
    code = (
        "import sys\nfrom crab_langchain.storage.postgres import PostgresStorage\n"
        "s = PostgresStorage.from_url(sys.argv[1], schema='raced'); s.setup(); s.close()"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, postgres_server.url], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        assert postgres_server.execute('SELECT version FROM "raced".version') == [(1,)]
    finally:
        postgres_server.execute('DROP SCHEMA IF EXISTS "raced" CASCADE')


@pytest.mark.parametrize("schema", HOSTILE)
def test_hostile_schema_names_ids_and_agents_are_data_not_sql(
    postgres_server: PostgresServer, schema: str
) -> None:
    store = SessionStore.from_url(postgres_server.url, prefix=schema, entry_points=False)
    try:
        store.setup()
        for n, name in enumerate(HOSTILE):
            agent = "".join(c for c in name if c.isalnum() or c in "_-") or "bot"
            store.get_session_history(name, agent=agent).add_messages([HumanMessage(f"m{n}")])
        again = SessionStore.from_url(postgres_server.url, prefix=schema, entry_points=False)
        for n, name in enumerate(HOSTILE):
            agent = "".join(c for c in name if c.isalnum() or c in "_-") or "bot"
            history = again.get_session_history(name, agent=agent)
            assert [str(m.content) for m in history.messages] == [f"m{n}"]
        assert sorted(info.session_id for info in again.list_sessions()) == sorted(HOSTILE)
        again.close()
        tables = postgres_server.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", schema
        )
        assert sorted(row[0] for row in tables) == ["lines", "logs", "version", "writes"]
    finally:
        store.close()
        postgres_server.execute(
            f'DROP SCHEMA IF EXISTS "{schema.replace(chr(34), 2 * chr(34))}" CASCADE'
        )


def test_finding_by_how_a_name_ends_takes_like_wildcards_literally(storage: PostgresStorage):
    for name in ("crab_1_a_b.jsonl", "crab_1_axb.jsonl", "crab_1_a%b.jsonl", "crab_1_zz%.jsonl"):
        storage.create(name, b"{}")
    assert storage.names(suffix="_a_b.jsonl") == ["crab_1_a_b.jsonl"]
    assert storage.names(suffix="a%b.jsonl") == ["crab_1_a%b.jsonl"]
    assert storage.names(suffix="%.jsonl") == ["crab_1_zz%.jsonl"]
    assert len(storage.names(suffix=".jsonl")) == 4


# --- passwords and pools -----------------------------------------------------------


def test_a_password_is_in_no_error_and_no_repr(postgres_server: PostgresServer) -> None:
    good = postgres_server.password_url
    bad = good.replace("%40word", "%40wrong")
    encoded = good.split(":")[2].split("@127")[0]
    with pytest.raises(StorageUnavailableError) as refused:
        SessionStore.from_url(bad, entry_points=False)
    for text in (str(refused.value), repr(refused.value)):
        assert PASSWORD not in text
        assert encoded not in text
        assert "password authentication failed" in text  # the server's reason is kept
    storage = PostgresStorage.from_url(good, schema="pw")
    try:
        storage.setup()
        storage.create("a.jsonl", b"{}")
        for text in (repr(storage), storage.describe(), storage.location("a.jsonl")):
            assert PASSWORD not in text
            assert encoded not in text
            assert "crabpw" in text
    finally:
        storage.close()
        postgres_server.execute('DROP SCHEMA IF EXISTS "pw" CASCADE')


def test_the_command_line_never_prints_the_password(postgres_server: PostgresServer) -> None:
    url = postgres_server.password_url
    encoded = url.split(":")[2].split("@127")[0]
    for args in (["--root", url, "list"], ["--root", url.replace("%40word", "%40x"), "list"]):
        done = subprocess.run(
            [sys.executable, "-m", "crab_langchain", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        out = done.stdout + done.stderr
        assert done.returncode != 0  # no schema yet; then a refused login
        assert "Traceback" not in out
        assert PASSWORD not in out
        assert encoded not in out
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_pool_passed_in_gets_every_connection_back_and_stays_open(
    postgres_url: str, postgres_schema: str
) -> None:
    with ConnectionPool(postgres_url, min_size=2, max_size=2, open=True) as pool:
        storage = PostgresStorage(pool, schema=postgres_schema)
        storage.create("a.jsonl", b"{}")
        with pytest.raises(FileNotFoundError):
            storage.append("missing.jsonl", [b"{}"])
        with pytest.raises(FileExistsError):
            storage.create("a.jsonl", b"{}")
        with pytest.raises(StorageNotSetUpError):
            PostgresStorage(pool, schema="no_such_schema").read("a.jsonl", None)
        storage.close()  # the caller's pool: left open
        pool.wait()
        stats = pool.get_stats()
        assert stats["pool_available"] == stats["pool_size"] == 2
        assert storage.append("a.jsonl", [b'{"x":1}']) is None
        chunk = storage.read("a.jsonl", None)
        assert chunk is not None
        assert [line for _, line in chunk.lines] == [b"{}", b'{"x":1}']


# --- faults ------------------------------------------------------------------------


def test_a_write_resent_after_its_reply_was_lost_lands_once(
    storage: PostgresStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction committed, the reply never came: the resend finds its write id."""
    real = pg._drive
    lost = {"left": 0}

    def reply_lost(conn: Any, body: Any, **options: Any) -> Any:
        result = real(conn, body, **options)
        if lost["left"]:
            lost["left"] -= 1
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return result

    monkeypatch.setattr(pg, "_drive", reply_lost)
    for call in (
        lambda: storage.create("a.jsonl", b'{"h":1}'),
        lambda: storage.append("a.jsonl", [b'{"n":1}']),
        lambda: storage.create("a.jsonl.checkpoints", b'{"side":1}'),
    ):
        lost["left"] = 1
        call()
    session = storage.read("a.jsonl", None)
    side = storage.read("a.jsonl.checkpoints", None)
    assert session is not None
    assert side is not None
    lost["left"] = 1
    at = storage.append_at("a.jsonl", [b'{"n":2}'], session.cursor)
    assert at is not None
    assert at.offset == 3
    from crab_langchain.storage import Change

    lost["left"] = 1
    change = Change(at=at, side_at=side.cursor, lines=[b'{"n":3}'], after=[b'{"c":1}'])
    assert storage.commit("a.jsonl", "a.jsonl.checkpoints", change) is not None
    monkeypatch.setattr(pg, "_drive", real)
    session = storage.read("a.jsonl", None)
    side = storage.read("a.jsonl.checkpoints", None)
    assert session is not None
    assert side is not None
    assert [line for _, line in session.lines] == [b'{"h":1}', b'{"n":1}', b'{"n":2}', b'{"n":3}']
    assert [line for _, line in side.lines] == [b'{"side":1}', b'{"c":1}']


def _acked_appends(store: SessionStore, stop: threading.Event, acked: list[str]) -> None:
    history = store.get_session_history("s")
    n = 0
    while not stop.is_set():
        history.add_messages([HumanMessage(f"q{n}"), AIMessage(f"a{n}")])
        acked += [f"q{n}", f"a{n}"]
        n += 1


def _writer_while(store: SessionStore, fault: Any, rounds: int) -> list[str]:
    """Append pairs in a thread while ``fault()`` runs ``rounds`` times, and on until ten more
    pairs are acknowledged; what was acknowledged."""
    stop, acked, errors = threading.Event(), [], []  # type: ignore[var-annotated]

    def write() -> None:
        try:
            _acked_appends(store, stop, acked)
        except BaseException as error:
            errors.append(error)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(rounds):
            time.sleep(0.05)
            fault()
        after = len(acked)
        deadline = time.monotonic() + 60
        while len(acked) < after + 20 and not errors and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        writer.join(timeout=120)
    assert not errors, errors
    return acked


def test_connections_cut_by_the_server_lose_and_repeat_nothing(
    postgres_server: PostgresServer, postgres_url: str, postgres_schema: str, stress: Any
) -> None:
    store = SessionStore.from_url(postgres_url, prefix=postgres_schema, entry_points=False)
    cut = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE pid <> pg_backend_pid() AND datname = 'postgres' AND query LIKE %s"
    )

    def terminate() -> None:
        postgres_server.execute(cut, f"%{postgres_schema}%")

    acked = _writer_while(store, terminate, stress(40))
    assert len(acked) > 10
    assert texts(SessionStore.from_url(postgres_url, prefix=postgres_schema), "s") == acked
    store.close()


def test_a_server_restart_mid_run_loses_and_repeats_nothing() -> None:
    with PostgresServer() as server:
        PostgresStorage.from_url(server.url).setup()
        store = SessionStore.from_url(server.url, entry_points=False)
        acked = _writer_while(store, server.restart, 2)
        after = SessionStore.from_url(server.url, entry_points=False)
        assert len(acked) > 10
        assert texts(after, "s") == acked
        after.close()
        store.close()


KILLED_WRITER = (
    OPEN_STORE
    + """
import sys
from langchain_core.messages import HumanMessage
history = open_store(sys.argv[1], sys.argv[2]).get_session_history("s")
for n in range(100_000):
    history.add_messages([HumanMessage(f"{n}/{i}") for i in range(20)])
    print(n, flush=True)
"""
)


def test_a_writer_killed_mid_transaction_leaves_whole_batches_only(
    postgres_url: str, postgres_schema: str, stress: Any
) -> None:
    store = SessionStore.from_url(postgres_url, prefix=postgres_schema, entry_points=False)
    store.get_session_history("s").add_messages([HumanMessage("first")])
    acked = -1
    for _ in range(stress(6)):
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITER, postgres_url, postgres_schema],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        for _ in range(3):
            acked = max(acked, int(proc.stdout.readline()))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    contents = texts(store, "s")
    assert contents[0] == "first"
    batches = [contents[i : i + 20] for i in range(1, len(contents), 20)]
    for batch in batches:  # whole batches, each once
        n = batch[0].split("/")[0]
        assert batch == [f"{n}/{i}" for i in range(20)]
    assert len(batches) >= 3 * stress(6)
    store.close()


# --- expiry ------------------------------------------------------------------------


def test_a_session_expires_whole_unless_written_and_sweep_frees_it(
    postgres_server: PostgresServer, postgres_url: str, postgres_schema: str
) -> None:
    store = SessionStore.from_url(postgres_url, prefix=postgres_schema, ttl=1.5, entry_points=False)
    store.get_session_history("kept").add_messages([HumanMessage("one")])
    store.get_session_history("gone").add_messages([HumanMessage("one")])
    store.storage.create("crab_1_gone.jsonl.checkpoints", b"{}")  # beside a session
    time.sleep(1.0)
    store.get_session_history("kept").add_messages([HumanMessage("two")])  # renewed
    time.sleep(0.8)
    assert store.find("gone") is None
    assert texts(store, "kept") == ["one", "two"]
    assert [info.session_id for info in store.list_sessions()] == ["kept"]
    assert store.storage.sweep() == 1  # type: ignore[attr-defined]
    names = postgres_server.execute(f'SELECT name FROM "{postgres_schema}".logs ORDER BY name')
    assert [row[0] for row in names] == [store.find("kept")]
    store.get_session_history("gone").add_messages([HumanMessage("new")])  # a new session
    assert texts(store, "gone") == ["new"]
    store.close()


def test_an_event_loop_ending_without_aclose_ends(postgres_url: str, postgres_schema: str) -> None:
    """asyncio.run returns although the store was never closed: nothing of ours keeps running."""
    code = (
        OPEN_STORE
        + """
import asyncio, sys
from langchain_core.messages import HumanMessage
store = open_store(sys.argv[1], sys.argv[2])
async def main():
    history = store.get_session_history("s")
    await history.aadd_messages([HumanMessage("hi")])
    return await history.aget_messages()
print(len(asyncio.run(main())))
"""
    )
    done = subprocess.run(
        [sys.executable, "-c", code, postgres_url, postgres_schema],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


async def test_an_async_pool_passed_in_serves_the_async_calls(
    postgres_url: str, postgres_schema: str
) -> None:
    from psycopg_pool import AsyncConnectionPool

    async with AsyncConnectionPool(postgres_url, min_size=1, max_size=2, open=False) as apool:
        with ConnectionPool(postgres_url, min_size=1, max_size=2, open=True) as pool:
            storage = PostgresStorage(pool, async_pool=apool, schema=postgres_schema)
            assert storage.native_async
            storage.create("a.jsonl", b"{}")
            sync_calls = pool.get_stats().get("requests_num", 0)
            await storage.aappend("a.jsonl", [b'{"x":1}'])
            chunk = await storage.aread("a.jsonl", None)
            assert chunk is not None
            assert [line for _, line in chunk.lines] == [b"{}", b'{"x":1}']
            assert apool.get_stats()["requests_num"] >= 2  # the async pool served them
            assert pool.get_stats().get("requests_num", 0) == sync_calls  # not the sync one
