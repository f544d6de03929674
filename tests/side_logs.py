"""Threads of many checkpoints for the side-log tests, put without an agent.

Kept apart from ``agents.py`` so that tests of the side log and its tools
run where langchain (which real agents need) is not installed.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.checkpoint.base import empty_checkpoint

from crab_langchain.checkpoint import CrabSaver

THREAD = "alice-1"


def put_counter_steps(saver: CrabSaver, steps: int) -> None:
    """200 messages, then ``steps`` checkpoints that change a counter and not the messages."""
    messages: list[BaseMessage] = [
        HumanMessage(f"q{n}") if n % 2 == 0 else AIMessage(f"a{n}") for n in range(200)
    ]
    config: Any = {"configurable": {"thread_id": THREAD, "checkpoint_ns": ""}}
    versions: dict[str, Any] = {}
    for step in range(steps + 1):
        changed = ["messages", "counter"] if step == 0 else ["counter"]
        for channel in changed:
            versions[channel] = saver.get_next_version(versions.get(channel), None)
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"messages": messages, "counter": step}
        checkpoint["channel_versions"] = dict(versions)
        new_versions = {channel: versions[channel] for channel in changed}
        config = saver.put(config, checkpoint, {"step": step}, new_versions)
