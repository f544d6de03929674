"""LangGraph's Agent Server (``langgraph dev``) with CrabSaver as its checkpointer, driven.

Starts ``langgraph dev`` on ``scripts/agent_server/`` (a LangChain v1 agent
whose model calls four tools in parallel; ``langgraph.json`` names
``CrabSaver.afrom_conn_string`` as the checkpointer) with four jobs per
worker, then through ``langgraph-sdk``: several threads, each given runs at
once (enqueued, and one rolled back), histories, a copy and a delete. It
checks that every run ends, that each thread's state is its session's
working context as a chat history reads it, that nothing of a deleted thread
stays, and that the server stops on SIGTERM. Needs ``langgraph-cli[inmem]``
and ``langgraph-sdk`` (``--install``)::

    .venv/bin/python scripts/agent_server.py --install

Exit status 0 if all held. Not part of CI (it installs the server).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent / "agent_server"
# The model is one script for all threads: a run may get a tool call or a plain answer.
THREADS, RUNS = 4, 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="install the server and SDK first")
    args = parser.parse_args()
    if args.install:
        tools = ["langgraph-cli[inmem]", "langgraph-sdk"]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *tools], check=True)
    sessions = Path(tempfile.mkdtemp(prefix="agent-server-"))
    port = free_port()
    server = start(sessions, port)
    try:
        asyncio.run(drive(f"http://127.0.0.1:{port}", sessions))
    finally:
        stopped = stop(server)
    print(f"server stopped on SIGTERM: {stopped}")
    return 0 if stopped else 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(sessions: Path, port: int) -> subprocess.Popen[bytes]:
    cli = Path(sys.executable).with_name("langgraph")
    env = {**os.environ, "CRAB_SESSIONS": str(sessions), "LANGSMITH_TRACING": "false"}
    command = [str(cli), "dev", "--no-browser", "--no-reload", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--n-jobs-per-worker", "4"],
        cwd=HERE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ok", timeout=1):
                return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("the server did not start")


def stop(server: subprocess.Popen[bytes]) -> bool:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        return False
    return True


async def drive(url: str, sessions: Path) -> None:
    from langgraph_sdk import get_client  # noqa: PLC0415 - installed by --install

    from crab_langchain import SessionStore  # noqa: PLC0415 - after the server is up

    client = get_client(url=url)
    threads = [await client.threads.create() for _ in range(THREADS)]
    started = time.monotonic()
    runs = [
        await client.runs.create(
            thread["thread_id"],
            "agent",
            input={"messages": [{"role": "user", "content": f"weather? ({n})"}]},
            multitask_strategy="enqueue",
        )
        for thread in threads
        for n in range(RUNS)
    ]
    await asyncio.wait_for(
        asyncio.gather(*(client.runs.join(r["thread_id"], r["run_id"]) for r in runs)), 300
    )
    print(f"{len(runs)} runs on {THREADS} threads, four tool calls each: "
          f"{time.monotonic() - started:.1f} s")  # fmt: skip
    for run in runs:
        done = await client.runs.get(run["thread_id"], run["run_id"])
        assert done["status"] == "success", done
    store = SessionStore(sessions, entry_points=False)
    for thread in threads:
        asked = [f"weather? ({n})" for n in range(RUNS)]
        await same_as_session(client, store, thread["thread_id"], expected=asked)
    # A run rolled back while it waits behind another: the session keeps no trace of it.
    first = threads[0]["thread_id"]
    await client.runs.create(first, "agent", input=human("slow"), multitask_strategy="enqueue")
    await client.runs.create(
        first, "agent", input=human("rolled back"), multitask_strategy="rollback"
    )
    await asyncio.sleep(5)
    await same_as_session(client, store, first, expected=None)
    history = await client.threads.get_history(first, limit=5)
    assert len(history) == 5, history
    copied = await client.threads.copy(first)
    await same_as_session(client, store, copied["thread_id"], expected=None)
    await client.threads.delete(threads[1]["thread_id"])
    assert store.find(threads[1]["thread_id"]) is None
    leftovers = [p.name for p in sessions.iterdir() if threads[1]["thread_id"] in p.name]
    assert leftovers == [], leftovers
    print("states equal their sessions; rollback, history, copy and delete as expected")


def human(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def same_as_session(
    client: Any, store: Any, thread_id: str, expected: list[str] | None
) -> None:
    for _ in range(100):  # a run still finishing: its last checkpoint on its way
        state = await client.threads.get_state(thread_id)
        if not state["next"]:
            break
        await asyncio.sleep(0.1)
    texts = [m["content"] for m in state["values"]["messages"]]
    stored = [m.content for m in store.get_session_history(thread_id).stored_messages()]
    assert texts == stored, (thread_id, texts, stored)
    assert expected is None or all(text in texts for text in expected), (thread_id, texts)


if __name__ == "__main__":
    raise SystemExit(main())
