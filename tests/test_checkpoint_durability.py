"""Nothing lost: CrabSaver under killed processes and concurrent writers.

Real subprocesses run a real agent on a real backend. Each prints a line for
every checkpoint its saver acknowledged (the put returned): the checkpoint's
id and the ids of the messages it holds. Afterwards a fresh saver must give
back every acknowledged checkpoint with exactly those messages, the session
must hold no torn and no duplicated line, and the thread must go on.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from agents import CONFIG, chat_agent, human
from backends import OPEN_STORE, Backend, backend  # noqa: F401 - the fixture

from crab_langchain.checkpoint import CrabSaver
from crab_langchain.verify import verify_file, verify_log

TESTS = Path(__file__).parent
# argv: url, prefix, tests dir, writer name, turns, durability. Prints one JSON line per
# acknowledged put: {"id": checkpoint id, "messages": [message ids]}.
AGENT_WRITER = (
    OPEN_STORE
    + """
import json, sys
sys.path.insert(0, sys.argv[3])
from agents import CONFIG, chat_agent, human
from crab_langchain.checkpoint import CrabSaver
url, prefix, _, writer, turns, durability = sys.argv[1:7]

class Acknowledging(CrabSaver):
    def put(self, config, checkpoint, metadata, new_versions):
        stored = super().put(config, checkpoint, metadata, new_versions)
        messages = checkpoint["channel_values"].get("messages")
        ids = [m.id for m in messages] if isinstance(messages, list) else None
        print(json.dumps({"id": checkpoint["id"], "messages": ids}), flush=True)
        return stored

agent = chat_agent(Acknowledging(open_store(url, prefix)), turns=10_000)
for turn in range(int(turns)):
    agent.invoke(human(f"{writer}/{turn}"), CONFIG, durability=durability)
print("done", flush=True)
"""
)


def start_writer(backend: Backend, name: str, turns: int, durability: str = "sync") -> Any:
    argv = [*backend.argv, str(TESTS), name, str(turns), durability]
    return subprocess.Popen(
        [sys.executable, "-c", AGENT_WRITER, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def acknowledged(output: str) -> list[dict[str, Any]]:
    """The acknowledged puts a writer printed (a line cut by the kill is not one)."""
    acks = []
    for line in output.splitlines():
        try:
            ack = json.loads(line)
        except ValueError:
            continue
        if isinstance(ack, dict):
            acks.append(ack)
    return acks


def assert_intact(backend: Backend, acks: list[dict[str, Any]]) -> CrabSaver:
    """Every acknowledged checkpoint is there, whole; the session is clean."""
    saver = CrabSaver(backend.store())
    for ack in acks:
        config = {"configurable": {"thread_id": "alice-1", "checkpoint_id": ack["id"]}}
        found = saver.get_tuple(config)
        assert found is not None, f"acknowledged checkpoint {ack['id']} is gone"
        messages = found.checkpoint["channel_values"].get("messages")
        if ack["messages"] is not None:
            assert [m.id for m in messages] == ack["messages"]
    name = saver.store.find("alice-1")
    assert name is not None
    assert_clean_session(backend, name)
    return saver


def assert_clean_session(backend: Backend, name: str) -> None:
    lines = backend.lines(name)
    ids = [json.loads(line).get("langchain", {}).get("id") for line in lines[1:]]
    assert len(ids) == len(set(ids)), "a message line is in the session twice"
    storage = backend.storage()
    path = storage.path(name)
    report = verify_file(path) if path is not None else verify_log(storage, name)
    assert report is not None
    assert report.ok, report.problems


def test_sigkill_during_puts_loses_no_acknowledged_checkpoint(backend: Backend, stress: Any):
    rounds = stress(9)
    acks: list[dict[str, Any]] = []
    for round_ in range(rounds):
        proc = start_writer(backend, f"w{round_}", turns=1000)
        first = proc.stdout.readline()  # it is writing now
        time.sleep(random.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        acks += acknowledged(first + out)
        saver = assert_intact(backend, acks)
    assert len(acks) > rounds, "the writers were killed before writing anything"
    agent = chat_agent(saver)
    agent.invoke(human("after the crashes"), CONFIG)  # the thread goes on
    messages = agent.get_state(CONFIG).values["messages"]
    assert "after the crashes" in [m.content for m in messages]
    assert messages[-1].type == "ai"
    assert saver.store.get_session_history("alice-1").messages == messages
    assert_clean_session(backend, saver.store.find("alice-1") or "")


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_two_processes_on_one_thread(backend: Backend, durability: str, stress: Any):
    turns = stress(15)
    writers = [start_writer(backend, f"p{n}", turns, durability) for n in range(2)]
    acks = []
    for proc in writers:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        assert out.rstrip().endswith("done")
        acks += acknowledged(out)
    assert len(acks) >= 2 * turns
    saver = assert_intact(backend, acks)
    everything = list(saver.list({"configurable": {"thread_id": "alice-1"}}))
    assert {ack["id"] for ack in acks} <= {t.checkpoint["id"] for t in everything}
