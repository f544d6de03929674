"""Hypothesis strategies for LangChain messages whose values JSON can hold."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from langchain_core.messages import (
    AIMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call

from crab_langchain.convert import AUTO_INJECTED_KEY, CRAB_FIELDS_KEY, NESTED_LINE_KEY

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
# The package's own keys hold what it wrote there (they have their own tests): a
# random value under one is not a message anyone stores. Hypothesis draws string
# constants from the code under test, so they must be left out by name.
OWN_KEYS = (CRAB_FIELDS_KEY, NESTED_LINE_KEY, AUTO_INJECTED_KEY)
KWARG_KEYS = st.text(max_size=8).filter(lambda key: key not in OWN_KEYS) | st.sampled_from(
    ["reasoning_content", "tool_calls", "type", "id", "name", "content", "refusal"]
)
KWARGS = st.dictionaries(KWARG_KEYS, JSON_VALUES, max_size=3)
METADATA = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3)
TEXT = st.text(max_size=20)
BLOCK = st.one_of(
    TEXT,
    st.builds(lambda t: {"type": "text", "text": t}, TEXT),
    st.builds(lambda u: {"type": "image_url", "image_url": {"url": u}}, TEXT),
    st.builds(lambda r: {"type": "reasoning", "reasoning": r}, TEXT),
    st.builds(lambda r: {"type": "thinking", "thinking": r}, TEXT),
    st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3),
)
CONTENT = TEXT | st.lists(BLOCK, max_size=4)
OPTIONAL_TEXT = st.none() | TEXT


def _common() -> dict[str, Any]:
    return {
        "content": CONTENT,
        "additional_kwargs": KWARGS,
        "response_metadata": METADATA,
        "name": OPTIONAL_TEXT,
        "id": OPTIONAL_TEXT,
    }


TOOL_CALLS = st.lists(
    st.builds(
        tool_call,
        name=TEXT,
        args=st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3),
        id=OPTIONAL_TEXT,
    ),
    max_size=3,
)
INVALID_TOOL_CALLS = st.lists(
    st.builds(
        invalid_tool_call,
        name=OPTIONAL_TEXT,
        args=OPTIONAL_TEXT,
        id=OPTIONAL_TEXT,
        error=OPTIONAL_TEXT,
    ),
    max_size=2,
)
USAGE = st.none() | st.builds(
    lambda i, o: {"input_tokens": i, "output_tokens": o, "total_tokens": i + o},
    st.integers(0, 10**6),
    st.integers(0, 10**6),
)
MESSAGES = st.one_of(
    st.builds(HumanMessage, **_common()),
    st.builds(
        AIMessage,
        **_common(),
        tool_calls=TOOL_CALLS,
        invalid_tool_calls=INVALID_TOOL_CALLS,
        usage_metadata=USAGE,
    ),
    st.builds(SystemMessage, **_common()),
    st.builds(
        lambda content, kwargs, name: SystemMessage(
            content, name=name, additional_kwargs={**kwargs, "__openai_role__": "developer"}
        ),
        CONTENT,
        KWARGS,
        OPTIONAL_TEXT,
    ),
    st.builds(
        ToolMessage,
        **_common(),
        tool_call_id=TEXT,
        status=st.sampled_from(["success", "error"]),
        artifact=JSON_VALUES,
    ),
    st.builds(
        ChatMessage,
        **_common(),
        role=st.text(min_size=1, max_size=10)
        | st.sampled_from(["user", "assistant", "system", "tool", "developer", "function"]),
    ),
    st.builds(FunctionMessage, **{**_common(), "name": st.text(max_size=10)}),
)
