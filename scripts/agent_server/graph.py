"""The Agent Server's graph: a LangChain v1 agent whose scripted model calls tools in parallel."""

from __future__ import annotations

import itertools
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import tool


class ScriptedModel(GenericFakeChatModel):
    """A fake chat model that accepts tools (it answers from its script regardless)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self


@tool
def weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def _replies() -> Any:
    for n in itertools.count():
        cities = ["Lisbon", "Porto", "Faro", "Braga"]  # four parallel tool calls
        calls = [{"name": "weather", "args": {"city": c}, "id": f"call-{n}-{c}"} for c in cities]
        yield AIMessage("", tool_calls=calls)
        yield AIMessage(f"Sunny everywhere ({n}).")


graph = create_agent(ScriptedModel(messages=_replies()), [weather])
