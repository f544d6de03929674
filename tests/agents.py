"""Real LangChain agents and LangGraph graphs for the checkpointer's tests.

Each scenario builds the same agent for any checkpointer, driven by a scripted
fake chat model (langchain_core's ``GenericFakeChatModel``), so a run with
``CrabSaver`` and one with ``InMemorySaver`` can be compared step for step.
:func:`comparable` turns a state history into what must be equal between the
two: values, metadata, ``next``, tasks and interrupts, with the ids and times
that differ from run to run left out.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import Annotated, Any

from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware, SummarizationMiddleware
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatResult
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import StateSnapshot
from pydantic import Field

CONFIG = {"configurable": {"thread_id": "alice-1"}}


class ScriptedModel(GenericFakeChatModel):
    """A fake chat model that accepts tools (it answers from its script regardless)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self


class RecordingModel(ScriptedModel):
    """A scripted model that records the messages of every request it receives."""

    requests: list[list[BaseMessage]] = Field(default_factory=list)

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        self.requests.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


@tool
def weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def _calls(*cities: str) -> AIMessage:
    calls = [{"name": "weather", "args": {"city": city}, "id": f"call-{city}"} for city in cities]
    return AIMessage("", tool_calls=calls)


def chat_script(turns: int) -> Iterator[AIMessage]:
    """Replies for ``turns`` plain turns."""
    return iter([AIMessage(f"reply {n}: " + "words " * 8) for n in range(turns)])


def tool_script() -> Iterator[AIMessage]:
    """Two parallel tool calls, then an answer; then a plain reply."""
    return iter([_calls("Lisbon", "Porto"), AIMessage("Sunny in both."), AIMessage("Bye.")])


def chat_agent(saver: Any, turns: int = 10) -> Any:
    return create_agent(ScriptedModel(messages=chat_script(turns)), [], checkpointer=saver)


def tool_agent(saver: Any) -> Any:
    return create_agent(ScriptedModel(messages=tool_script()), [weather], checkpointer=saver)


def hitl_agent(saver: Any, *, resumed: bool = False) -> Any:
    """Asks for approval of each weather call (``resumed``: its first reply was given)."""
    replies = [_calls("Lisbon", "Porto"), AIMessage("Done."), AIMessage("Bye.")]
    script = iter(replies[1:] if resumed else replies)
    middleware = HumanInTheLoopMiddleware(interrupt_on={"weather": True})
    return create_agent(
        ScriptedModel(messages=script), [weather], middleware=[middleware], checkpointer=saver
    )


def summarizing_agent(saver: Any, turns: int = 12) -> Any:
    """Summarizes when the conversation reaches 6 messages, keeping the last 2."""
    middleware = SummarizationMiddleware(
        model=ScriptedModel(messages=iter([])),
        trigger=("messages", 6),
        keep=("messages", 2),
        summarizer=lambda messages: f"We spoke {len(messages)} times. Nothing else.",
    )
    model = ScriptedModel(messages=chat_script(turns))
    return create_agent(model, [], middleware=[middleware], checkpointer=saver)


class FlakyState(MessagesState):
    attempts: Annotated[list[str], operator.add]


class Flaky:
    """A node that raises on its first call and answers on the next."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, state: FlakyState) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("the service is down")
        return {"messages": [AIMessage("recovered")], "attempts": ["ok"]}


def flaky_graph(saver: Any) -> Any:
    def first(state: FlakyState) -> dict[str, Any]:
        return {"messages": [AIMessage("first")], "attempts": ["first"]}

    builder = StateGraph(FlakyState)
    builder.add_node("first", first)
    builder.add_node("flaky", Flaky())
    builder.add_edge(START, "first")
    builder.add_edge("first", "flaky")
    builder.add_edge("flaky", END)
    return builder.compile(checkpointer=saver)


def subgraph_graph(saver: Any) -> Any:
    """A parent whose node is a compiled subgraph with its own checkpoints."""

    def inner_step(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(f"inner saw {len(state['messages'])}")]}

    inner = StateGraph(MessagesState)
    inner.add_node("inner_step", inner_step)
    inner.add_edge(START, "inner_step")
    inner.add_edge("inner_step", END)

    def outer_step(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage("outer done")]}

    outer = StateGraph(MessagesState)
    outer.add_node("inner", inner.compile(checkpointer=True))
    outer.add_node("outer_step", outer_step)
    outer.add_edge(START, "inner")
    outer.add_edge("inner", "outer_step")
    outer.add_edge("outer_step", END)
    return outer.compile(checkpointer=saver)


# --- what must be equal ----------------------------------------------------------------

_RUN_KEYS = {"run_id", "thread_id", "checkpoint_id", "checkpoint_ns"}


def comparable(value: Any) -> Any:
    """``value`` with what differs between two equal runs (ids, times) taken out."""
    if isinstance(value, BaseMessage):
        dumped = value.model_dump()
        dumped.pop("id", None)
        return comparable(dumped)
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if k not in _RUN_KEYS}
    if isinstance(value, (list, tuple)):
        return [comparable(item) for item in value]
    if hasattr(value, "value") and type(value).__name__ == "Interrupt":
        return ("interrupt", comparable(value.value))
    return value


def snapshot(state: StateSnapshot) -> dict[str, Any]:
    """A state as what must be equal: values, metadata, next, tasks and interrupts."""
    return {
        "values": comparable(state.values),
        "metadata": comparable(dict(state.metadata or {})),
        "next": state.next,
        "tasks": [
            (t.name, t.path, repr(t.error), comparable(list(t.interrupts)), comparable(t.result))
            for t in state.tasks
        ],
        "interrupts": comparable(list(state.interrupts)),
    }


def states(graph: Any, config: Any = CONFIG) -> dict[str, Any]:
    """The graph's state and its whole history, comparable."""
    return {
        "state": snapshot(graph.get_state(config)),
        "history": [snapshot(s) for s in graph.get_state_history(config)],
    }


def human(text: str) -> dict[str, Any]:
    return {"messages": [HumanMessage(text)]}
