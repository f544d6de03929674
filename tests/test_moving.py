"""Moving threads in: LangGraph's SqliteSaver and PostgresSaver to CrabSaver, on every backend.

Real agents write the source threads (a tool call, an interrupted approval,
a subgraph); after ``copy_threads`` (or ``crab-sessions import-checkpoints``)
each thread's ``get_state_history`` from CrabSaver equals the source's, checkpoint
ids and times included, and the moved thread goes on where it stopped.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import CONFIG, hitl_agent, human, states, subgraph_graph, tool_agent
from backends import Backend
from langgraph.types import Command

from crab_langchain.checkpoint import CrabSaver, ThreadMoved, copy_threads

SqliteSaver = pytest.importorskip("langgraph.checkpoint.sqlite").SqliteSaver

ALICE = CONFIG
BOB = {"configurable": {"thread_id": "bob"}}
CAROL = {"configurable": {"thread_id": "carol"}}


def written(saver: Any) -> Any:
    """Three threads on ``saver``: tools, an approval waiting (pending writes), a subgraph."""
    tools = tool_agent(saver)
    tools.invoke(human("Weather in Lisbon and Porto?"), ALICE)
    tools.invoke(human("Bye."), ALICE)
    hitl_agent(saver).invoke(human("Weather?"), BOB)
    subgraph_graph(saver).invoke(human("go"), CAROL)
    return saver


def assert_moved(source: Any, target: CrabSaver) -> None:
    for build, config in ((tool_agent, ALICE), (hitl_agent, BOB), (subgraph_graph, CAROL)):
        assert states(build(target), config) == states(build(source), config)
        ids = [
            (s.config["configurable"]["checkpoint_id"], s.created_at)
            for s in build(target).get_state_history(config)
        ]
        assert ids == [
            (s.config["configurable"]["checkpoint_id"], s.created_at)
            for s in build(source).get_state_history(config)
        ]
    # The moved thread goes on: the approval given on CrabSaver finishes the run.
    resumed = hitl_agent(target, resumed=True)
    resumed.invoke(Command(resume={"decisions": [{"type": "approve"}] * 2}), BOB)
    messages = resumed.get_state(BOB).values["messages"]
    assert [m.type for m in messages][-3:] == ["tool", "tool", "ai"]


@pytest.fixture
def sqlite_saver(tmp_path: Path) -> Iterator[Any]:
    conn = sqlite3.connect(tmp_path / "checkpoints.db", check_same_thread=False)
    yield written(SqliteSaver(conn))
    conn.close()


@pytest.fixture
def postgres_saver(postgres_server: Any, postgres_schema: str) -> Iterator[Any]:
    """LangGraph's PostgresSaver in a database of this test's own."""
    postgres = pytest.importorskip("langgraph.checkpoint.postgres")
    postgres_server.execute(f'CREATE DATABASE "{postgres_schema}"')
    url = postgres_server.url.rsplit("/", 1)[0] + f"/{postgres_schema}"
    with postgres.PostgresSaver.from_conn_string(url) as saver:
        saver.setup()
        saver.url = url
        yield written(saver)
    postgres_server.execute(f'DROP DATABASE "{postgres_schema}" WITH (FORCE)')


@pytest.mark.parametrize("source", ["sqlite_saver", "postgres_saver"])
def test_every_checkpoint_moves_and_the_history_reads_the_same(
    backend: Backend, source: str, request: pytest.FixtureRequest
) -> None:
    reader = request.getfixturevalue(source)
    target = CrabSaver(backend.store())
    moved = copy_threads(reader, target)
    assert sorted(moved, key=lambda m: m.thread_id) == sorted(
        [
            ThreadMoved("alice-1", *counts(reader, ALICE)),
            ThreadMoved("bob", *counts(reader, BOB)),
            ThreadMoved("carol", *counts(reader, CAROL)),
        ],
        key=lambda m: m.thread_id,
    )
    assert_moved(reader, CrabSaver(backend.store()))  # read by another saver, from storage


def counts(saver: Any, config: dict[str, Any]) -> tuple[int, int]:
    tuples = list(saver.list(config))
    return len(tuples), sum(len(t.pending_writes or []) for t in tuples)


def test_a_thread_already_there_is_refused_whole(sqlite_saver: Any, tmp_path: Path) -> None:
    from crab_langchain import SessionStore

    target = CrabSaver(SessionStore(tmp_path / "sessions", entry_points=False))
    copy_threads(sqlite_saver, target, ["bob"])
    before = sorted(p.read_bytes() for p in (tmp_path / "sessions").iterdir())
    with pytest.raises(ValueError, match="'bob' is already in the target"):
        copy_threads(sqlite_saver, target, ["bob"])
    with pytest.raises(ValueError, match="no thread 'nobody'"):
        copy_threads(sqlite_saver, target, ["nobody"])
    assert sorted(p.read_bytes() for p in (tmp_path / "sessions").iterdir()) == before


def test_the_command_moves_sqlite_and_postgres_threads_in(
    sqlite_saver: Any, postgres_saver: Any, tmp_path: Path
) -> None:
    for name, url in (
        ("from-sqlite", f"sqlite:///{tmp_path}/checkpoints.db"),
        ("from-postgres", postgres_saver.url),
    ):
        root = tmp_path / name
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "crab_langchain",
                "--root",
                str(root),
                "import-checkpoints",
                "--from",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert sorted(line.split(":")[0] for line in done.stdout.splitlines()) == [
            "alice-1",
            "bob",
            "carol",
        ]
        assert "imported 3 threads" in done.stderr
        source = sqlite_saver if name == "from-sqlite" else postgres_saver
        from crab_langchain import SessionStore

        assert_moved(source, CrabSaver(SessionStore(root, entry_points=False)))
