"""Side-by-side benchmark: crab_langchain against the chat histories users would pick instead.

One run, the same messages for every backend, on this machine:

- chat loop: read the history, add a human+AI pair; ms per turn at several
  history lengths;
- cold load: a new history object's ``messages`` for a long session, beside
  the naive floor (``json.loads`` per line + LangChain's constructors);
- bulk add: one ``add_messages`` call with many messages;
- concurrent writers: several processes adding pairs to one session (and
  how many messages each backend kept);
- memory: bytes per loaded message at three sizes (linear growth).

``python benchmarks/run.py`` writes ``benchmarks/RESULTS.md``,
``benchmarks/results.json`` and ``benchmarks/chat_loop.png``;
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
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, messages_to_dict

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*InMemoryChatMessageHistory.*")

CRAB = "crab_langchain"
CRAB_FSYNC = "crab_langchain (fsync)"
FILE = "FileChatMessageHistory"
SQLITE = "SQLChatMessageHistory (SQLite)"
MEMORY = "InMemoryChatMessageHistory"
RAW = "raw append"
NAIVE = "naive floor (json.loads + constructors)"
CHAT_BACKENDS = (CRAB, CRAB_FSYNC, FILE, SQLITE, MEMORY, RAW)


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


FULL = Sizes((1_000, 4_000, 20_000), 100_000, 100_000, 4, 500, (25_000, 50_000, 100_000), 120, 3)
QUICK = Sizes((200, 800, 2_000), 5_000, 5_000, 4, 50, (1_000, 2_000, 4_000), 20, 0.3)


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


def memory_history(root: Path) -> Any:
    from langchain_core.chat_history import InMemoryChatMessageHistory

    return InMemoryChatMessageHistory()


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
    elif name != RAW:
        history.add_messages(messages(count))
    return history


def open_backend(name: str, root: Path) -> Any:
    return {
        CRAB: lambda: crab_history(root),
        CRAB_FSYNC: lambda: crab_history(root, "fsync"),
        FILE: lambda: file_history(root),
        SQLITE: lambda: sqlite_history(root),
        MEMORY: lambda: memory_history(root),
        RAW: lambda: RawAppend(root),
    }[name]()


# --- measuring --------------------------------------------------------------


def chat_loop(name: str, length: int, sizes: Sizes) -> float:
    """Median ms per turn (read the history, add a pair) at ``length`` messages."""
    with tempfile.TemporaryDirectory() as tmp:
        history = prefill(name, Path(tmp), length)
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
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
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


def bulk_add(name: str, count: int) -> float:
    batch = messages(count)
    with tempfile.TemporaryDirectory() as tmp:
        history = open_backend(name, Path(tmp))
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
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prefill(name, root, 2)  # the session exists before the writers start
        code = [
            _WRITER.format(
                bench=str(Path(__file__).parent), name=name, root=tmp, turns=turns, writer=w
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


def memory_per_message(count: int) -> float:
    """Bytes allocated per message by loading a ``count``-message session (tracemalloc)."""
    with tempfile.TemporaryDirectory() as tmp:
        history = prefill(CRAB, Path(tmp), count)
        path = history.file_path
        del history
        gc.collect()
        from crab_langchain import CrabChatMessageHistory

        tracemalloc.start()
        loaded = CrabChatMessageHistory.from_file(path)
        _ = loaded.messages
        current, _peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return current / count


# --- the run ----------------------------------------------------------------


def run(sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    results: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    results["machine"] = machine()
    results["versions"] = versions()
    loop: dict[str, list[float | None]] = {}
    for name in CHAT_BACKENDS:
        loop[name] = []
        for length in sizes.lengths:
            if _too_slow(loop[name], sizes.lengths, length, sizes):
                loop[name].append(None)
                log(f"chat loop  {name:34} {length:>7}: skipped (over {sizes.budget_s:.0f} s)")
                continue
            loop[name].append(chat_loop(name, length, sizes))
            log(f"chat loop  {name:34} {length:>7}: {loop[name][-1]:9.3f} ms/turn")
    results["chat_loop"] = {"lengths": list(sizes.lengths), "ms_per_turn": loop}
    results["cold_load"] = {
        "messages": sizes.cold,
        "seconds": _each(
            {CRAB: cold_load, FILE: cold_load, SQLITE: cold_load}, sizes.cold, log, "cold load"
        ),
    }
    results["cold_load"]["seconds"][NAIVE] = naive_floor(sizes.cold)
    log(f"cold load  {NAIVE:34}: {results['cold_load']['seconds'][NAIVE]:.3f} s")
    bulk = dict.fromkeys((CRAB, CRAB_FSYNC, SQLITE, MEMORY, RAW), bulk_add)
    results["bulk_add"] = {
        "messages": sizes.bulk,
        "seconds": _each(bulk, sizes.bulk, log, "bulk add"),
    }
    results["bulk_add"]["seconds"][FILE] = None  # one full rewrite per message: O(n²)
    results["concurrent"] = concurrency(sizes, log, _estimate(loop[FILE], sizes))
    results["memory"] = {
        "messages": list(sizes.memory),
        "bytes_per_message": [memory_per_message(count) for count in sizes.memory],
    }
    log(f"memory     bytes/message at {sizes.memory}: {results['memory']['bytes_per_message']}")
    return results


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


def _each(
    backends: dict[str, Callable[[str, int], float]],
    count: int,
    log: Callable[[str], None],
    what: str,
) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, measure in backends.items():
        out[name] = measure(name, count)
        log(f"{what:10} {name:34}: {out[name]:.3f} s")
    return out


def _estimate(file_loop: list[float | None], sizes: Sizes) -> float:
    """Seconds FileChatMessageHistory would need for the writers (its cost grows with length)."""
    measured = [(n, ms) for n, ms in zip(sizes.lengths, file_loop) if ms is not None]
    if not measured:
        return float("inf")
    length, ms = measured[-1]
    final = sizes.writers * sizes.writer_turns * 2
    return sizes.writers * sizes.writer_turns * ms / 1000 * (final / 2) / length


def concurrency(sizes: Sizes, log: Callable[[str], None], file_estimate: float) -> dict[str, Any]:
    seconds: dict[str, float | None] = {}
    kept: dict[str, int | None] = {}
    notes: dict[str, str] = {}
    for name in (CRAB, CRAB_FSYNC, SQLITE, FILE, RAW):
        if name == FILE and file_estimate > sizes.budget_s:
            seconds[name] = kept[name] = None
            notes[name] = f"skipped: about {file_estimate:.0f} s (it rewrites the file per message)"
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


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count()}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "crab-langchain",
        "langchain-core",
        "langchain-community",
        "pydantic",
        "SQLAlchemy",
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
    args = parser.parse_args(argv)
    out = args.out or (Path(tempfile.mkdtemp()) if args.quick else Path(__file__).parent)
    out.mkdir(parents=True, exist_ok=True)
    results = run(QUICK if args.quick else FULL, lambda line: print(line, flush=True))
    results["quick"] = args.quick
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    sys.path.insert(0, str(Path(__file__).parent))
    import report

    (out / "RESULTS.md").write_text(report.markdown(results))
    report.plot(results, out / "chat_loop.png")
    print(f"\nwrote {out / 'RESULTS.md'}, {out / 'results.json'}, {out / 'chat_loop.png'}")


if __name__ == "__main__":
    main()
