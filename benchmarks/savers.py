"""LangGraph checkpointers side by side: CrabSaver against InMemorySaver and SqliteSaver.

One run, the same scripted ``create_agent`` conversation for every saver:

- growth: stored bytes after every 100 turns (each turn a user message and a
  reply, three checkpoints), and the bytes the last 100 turns cost against
  the first 100;
- speed: wall-clock ms per turn over the first and the last 100 turns;
- a long thread: put, then a cold ``get_tuple`` of the newest checkpoint (a
  new saver object), then a warm one, on a thread of 20,000 messages built
  with the puts an agent makes.

``python benchmarks/savers.py`` writes ``benchmarks/SAVERS.md``;
``--quick`` runs small sizes (CI's smoke test) into ``--out``.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from agents import CONFIG, chat_agent, human  # the tests' scripted agent

from crab_langchain import SessionStore
from crab_langchain.checkpoint import CrabSaver

HERE = Path(__file__).parent


def crab_saver(root: Path) -> tuple[Any, Callable[[], int]]:
    store = SessionStore(root / "sessions", entry_points=False)
    return CrabSaver(store), lambda: sum(p.stat().st_size for p in root.glob("sessions/*.jsonl*"))


def memory_saver(root: Path) -> tuple[Any, Callable[[], int]]:
    saver = InMemorySaver()

    def size() -> int:
        stored = [c for ns in saver.storage.values() for cps in ns.values() for c in cps.values()]
        blobs = sum(len(blob[1]) for blob in saver.blobs.values())
        writes = sum(len(w[2][1]) for ws in saver.writes.values() for w in ws.values())
        return blobs + writes + sum(len(c[0][1]) + len(c[1][1]) for c in stored)

    return saver, size


def sqlite_saver(root: Path) -> tuple[Any, Callable[[], int]] | None:
    try:
        from langgraph.checkpoint.sqlite import SqliteSaver
    except ImportError:
        return None
    path = root / "checkpoints.sqlite"
    saver = SqliteSaver(sqlite3.connect(path, check_same_thread=False))
    return saver, lambda: sum(p.stat().st_size for p in root.glob("checkpoints.sqlite*"))


SAVERS = {
    "CrabSaver (directory)": crab_saver,
    "InMemorySaver": memory_saver,
    "SqliteSaver": sqlite_saver,
}


def growth(turns: int) -> dict[str, Any]:
    """Bytes and ms per turn of a ``turns``-turn agent conversation, per saver."""
    results = {}
    for name, make in SAVERS.items():
        with tempfile.TemporaryDirectory() as tmp:
            made = make(Path(tmp))
            if made is None:
                results[name] = None
                continue
            saver, size = made
            agent = chat_agent(saver, turns=turns)
            marks, times = [0], []
            for turn in range(1, turns + 1):
                start = time.perf_counter()
                agent.invoke(human(f"question {turn}: " + "words " * 8), CONFIG)
                times.append(time.perf_counter() - start)
                if turn % (turns // 5) == 0:
                    marks.append(size())
            window = turns // 5
            results[name] = {
                "bytes": marks[1:],
                "first_ms": statistics.median(times[:window]) * 1000,
                "last_ms": statistics.median(times[-window:]) * 1000,
            }
    return results


def long_thread(messages: int) -> dict[str, Any]:
    """put, cold and warm ``get_tuple`` at the head of a thread of ``messages`` messages.

    The thread is put as an agent puts one: two checkpoints a turn, a write between.
    """
    results = {}
    for name, make in SAVERS.items():
        if name == "InMemorySaver":
            continue  # nothing is cold in memory
        with tempfile.TemporaryDirectory() as tmp:
            made = make(Path(tmp))
            if made is None:
                results[name] = None
                continue
            saver, _ = made
            config = {"configurable": {"thread_id": "long", "checkpoint_ns": ""}}
            history: list[Any] = []
            version = None
            puts = []
            for turn in range(messages // 2):
                pair = [HumanMessage(f"q{turn}", id=f"q{turn}"), AIMessage("a", id=f"a{turn}")]
                history = [*history, *pair]
                for step in range(2):  # as an agent: after the input, after the model
                    version = saver.get_next_version(version, None)
                    checkpoint = empty_checkpoint()
                    values = {"messages": history, "branch:to:model": None, "step": step}
                    checkpoint["channel_values"] = values
                    checkpoint["channel_versions"] = versions = dict.fromkeys(values, version)
                    metadata = {"source": "loop", "step": len(puts)}
                    start = time.perf_counter()
                    config = saver.put(config, checkpoint, metadata, versions)
                    puts.append(time.perf_counter() - start)
                saver.put_writes(config, [("messages", history[-1:])], f"task-{turn}")
            fresh, _ = make(Path(tmp))
            start = time.perf_counter()
            found = fresh.get_tuple({"configurable": {"thread_id": "long"}})
            cold = time.perf_counter() - start
            assert found is not None
            assert len(found.checkpoint["channel_values"]["messages"]) == messages
            start = time.perf_counter()
            fresh.get_tuple({"configurable": {"thread_id": "long"}})
            warm = time.perf_counter() - start
            results[name] = {
                "put_first_ms": statistics.median(puts[:300]) * 1000,
                "put_last_ms": statistics.median(puts[-300:]) * 1000,
                "cold_ms": cold * 1000,
                "warm_ms": warm * 1000,
            }
    return results


def report(turns: int, messages: int, grown: dict[str, Any], long: dict[str, Any]) -> str:
    lines = [
        "# Checkpointers side by side",
        "",
        f"`python benchmarks/savers.py`, {sys.platform}, Python {sys.version.split()[0]}.",
        "",
        f"## A {turns}-turn `create_agent` conversation",
        "",
        "| saver | stored after each fifth (bytes) | last fifth / first fifth"
        " | ms per turn, first fifth | last fifth |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in grown.items():
        if row is None:
            lines.append(f"| {name} | not installed | | | |")
            continue
        marks = [0, *row["bytes"]]
        ratio = (marks[-1] - marks[-2]) / (marks[1] - marks[0])
        shown = ", ".join(f"{b:,}" for b in row["bytes"])
        ms = f"{row['first_ms']:.1f} | {row['last_ms']:.1f}"
        lines.append(f"| {name} | {shown} | {ratio:.2f}x | {ms} |")
    lines += [
        "",
        f"## The newest checkpoint of a thread of {messages:,} messages",
        "",
        "| saver | put, first 300 (ms) | put, last 300 (ms)"
        " | cold get_tuple (ms) | warm get_tuple (ms) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in long.items():
        if row is None:
            lines.append(f"| {name} | not installed | | | |")
            continue
        lines.append(
            f"| {name} | {row['put_first_ms']:.2f} | {row['put_last_ms']:.2f} | "
            f"{row['cold_ms']:.1f} | {row['warm_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="where SAVERS.md goes")
    args = parser.parse_args()
    turns, messages = (50, 1_000) if args.quick else (500, 20_000)
    out = args.out or (Path(tempfile.mkdtemp()) if args.quick else HERE)
    text = report(turns, messages, growth(turns), long_thread(messages))
    (out / "SAVERS.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
