"""``list`` and ``get_tuple`` as LangGraph's own savers answer them, argument for argument.

The same checkpoints (two threads, a root and a subgraph namespace, metadata,
parents) are put into ``CrabSaver``, ``InMemorySaver`` and ``SqliteSaver``;
every combination of ``config``, ``filter``, ``before`` and ``limit`` must
list the same checkpoints. Order: ``InMemorySaver`` goes thread by thread and
namespace by namespace, ``SqliteSaver`` by checkpoint id across them; within
one namespace both go newest first, and so must ``CrabSaver``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver, empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver

from crab_langchain import SessionStore
from crab_langchain.checkpoint import CrabSaver

# (thread, namespace, checkpoint id, parent id, metadata)
PUTS = [
    ("t1", "", "c01", None, {"source": "input", "step": -1}),
    ("t1", "", "c02", "c01", {"source": "loop", "step": 0}),
    ("t1", "inner", "c03", None, {"source": "loop", "step": 0, "run_id": "r1"}),
    ("t1", "", "c04", "c02", {"source": "loop", "step": 1, "run_id": "r1"}),
    ("t2", "", "c05", None, {"source": "input", "step": -1}),
    ("t1", "inner", "c06", "c03", {"source": "loop", "step": 1, "run_id": "r1"}),
    ("t2", "", "c07", "c05", {"source": "loop", "step": 0, "run_id": "r2"}),
    ("t1", "", "c08", "c04", {"source": "update", "step": 2}),
]


def put_all(saver: BaseCheckpointSaver[Any]) -> BaseCheckpointSaver[Any]:
    messages: dict[tuple[str, str], list[Any]] = {}
    for n, (thread, ns, checkpoint_id, parent, metadata) in enumerate(PUTS):
        checkpoint = empty_checkpoint()
        checkpoint["id"] = checkpoint_id
        said = messages.setdefault((thread, ns), [])
        said += [HumanMessage(f"q{n}", id=f"q{n}"), AIMessage(f"a{n}", id=f"a{n}")]
        checkpoint["channel_values"] = {"messages": list(said), "count": n}
        versions = {"messages": n + 1, "count": n + 1}
        checkpoint["channel_versions"] = versions
        configurable = {"thread_id": thread, "checkpoint_ns": ns}
        if parent:
            configurable["checkpoint_id"] = parent
        saver.put({"configurable": configurable}, checkpoint, metadata, versions)
    return saver


@pytest.fixture(scope="module")
def savers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    sqlite = pytest.importorskip("langgraph.checkpoint.sqlite")
    root = tmp_path_factory.mktemp("listing")
    with sqlite.SqliteSaver.from_conn_string(str(root / "db.sqlite")) as on_sqlite:
        yield {
            "crab": put_all(CrabSaver(SessionStore(root / "sessions", entry_points=False))),
            "memory": put_all(InMemorySaver()),
            "sqlite": put_all(on_sqlite),
        }


def configs() -> list[dict[str, Any] | None]:
    found: list[dict[str, Any] | None] = [None]
    for thread in ("t1", "t2", "nobody"):
        found.append({"configurable": {"thread_id": thread}})
        for ns in ("", "inner"):
            found.append({"configurable": {"thread_id": thread, "checkpoint_ns": ns}})
        found.append({"configurable": {"thread_id": thread, "checkpoint_id": "c04"}})
        found.append(
            {
                "configurable": {
                    "thread_id": thread,
                    "checkpoint_ns": "inner",
                    "checkpoint_id": "c06",
                }
            }
        )
    return found


FILTERS = [None, {}, {"source": "loop"}, {"run_id": "r1"}, {"step": 0, "source": "loop"}, {"x": 1}]
# (A `before` without a checkpoint id: InMemorySaver ignores it, SqliteSaver lists nothing.)
BEFORES = [
    None,
    {"configurable": {"checkpoint_id": "c06"}},
    {"configurable": {"checkpoint_id": "c02"}},
]
LIMITS = [None, 0, 1, 3]


def listed(saver: BaseCheckpointSaver[Any], config: Any, **options: Any) -> list[tuple[str, ...]]:
    return [
        (
            t.config["configurable"]["thread_id"],
            t.config["configurable"]["checkpoint_ns"],
            t.checkpoint["id"],
        )
        for t in saver.list(config, **options)
    ]


@pytest.mark.parametrize("config", configs(), ids=str)
def test_list_answers_as_langgraphs_savers(savers: dict[str, Any], config: Any):
    for filter_, before, limit in itertools.product(FILTERS, BEFORES, LIMITS):
        options = {"filter": filter_, "before": before, "limit": limit}
        crab = listed(savers["crab"], config, **options)
        memory = listed(savers["memory"], config, **options)
        sqlite = listed(savers["sqlite"], config, **options)
        where = f"{config} {options}"
        if limit is None:
            assert sorted(crab) == sorted(memory) == sorted(sqlite), where
        else:  # which ones a limit keeps follows each saver's own order
            assert len(crab) == len(memory) == len(sqlite), where
            assert set(crab) <= set(listed(savers["memory"], config, **{**options, "limit": None}))
        for key in {(t, ns) for t, ns, _ in crab}:  # within a namespace: newest first
            ids = [i for t, ns, i in crab if (t, ns) == key]
            assert ids == sorted(ids, reverse=True), where
        if config is not None and "checkpoint_ns" in config["configurable"]:
            assert crab == sqlite, where  # one namespace: one order


@pytest.mark.parametrize("config", [c for c in configs() if c is not None], ids=str)
def test_get_tuple_answers_as_langgraphs_savers(savers: dict[str, Any], config: Any):
    def got(saver: BaseCheckpointSaver[Any]) -> Any:
        found = saver.get_tuple(config)
        if found is None:
            return None
        values = found.checkpoint["channel_values"]
        parent = found.parent_config["configurable"] if found.parent_config else None
        return (
            found.config["configurable"],
            values,
            {k: v for k, v in found.metadata.items() if k in ("source", "step", "run_id")},
            None if parent is None else parent["checkpoint_id"],
        )

    assert got(savers["crab"]) == got(savers["memory"]) == got(savers["sqlite"])


def test_the_listing_covers_every_checkpoint_of_every_thread(savers: dict[str, Any]):
    assert sorted(listed(savers["crab"], None)) == sorted((t, ns, i) for t, ns, i, _, _ in PUTS)


def test_a_directory_holds_two_sessions_for_two_threads(savers: dict[str, Any], tmp_path: Path):
    store = savers["crab"].store
    assert sorted(info.session_id for info in store.list_sessions()) == ["t1", "t2"]
