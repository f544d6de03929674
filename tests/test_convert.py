"""LangChain messages <-> crabtalk messages: the mapping, losslessness, and bad values."""

from __future__ import annotations

import contextlib
import json
import re
from datetime import datetime, timezone
from typing import Any

import pytest
from conftest import FIXTURE_FILES
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    HumanMessageChunk,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call
from strategies import MESSAGES

from crab_langchain.convert import (
    AUTO_INJECTED_KEY,
    from_crab_message,
    is_auto_injected,
    mark_auto_injected,
    to_crab_message,
)
from crab_langchain.models import CrabMessage, FunctionCall, ToolCall, is_text_only

SPEC_KEYS = {
    "role",
    "content",
    "reasoning_content",
    "name",
    "tool_call_id",
    "tool_calls",
    "agent",
}


def _fixture_message_lines() -> list[bytes]:
    lines = []
    for path in FIXTURE_FILES:
        body = path.read_bytes()[:-1].split(b"\n")[1:]
        lines += [line for line in body if not line.startswith(b'{"compact"')]
    return lines


def _through_line(message: BaseMessage, **kwargs: Any) -> BaseMessage:
    """LangChain -> CrabMessage -> the line text -> CrabMessage -> LangChain."""
    line = to_crab_message(message, **kwargs).to_line()
    return from_crab_message(CrabMessage.from_line(line))


def _line_through_langchain(line: str | bytes) -> str:
    return to_crab_message(from_crab_message(CrabMessage.from_line(line))).to_line()


def _keys(message: BaseMessage, **kwargs: Any) -> dict[str, Any]:
    return json.loads(to_crab_message(message, **kwargs).to_line())


# --- the mapping: LangChain -> crabtalk ---------------------------------------------------------


def test_human_message_becomes_user():
    crab = to_crab_message(HumanMessage("hello"))
    assert (crab.role, crab.content, crab.langchain) == ("user", "hello", None)
    assert crab.to_line() == '{"role":"user","content":"hello"}'


def test_ai_message_becomes_assistant_with_json_string_arguments():
    message = AIMessage(
        "",
        tool_calls=[
            tool_call(name="get_weather", args={"city": "Lisbon", "unit": "C"}, id="call_01"),
            tool_call(name="now", args={}, id="call_02"),
        ],
    )
    crab = to_crab_message(message)
    assert crab.role == "assistant"
    assert crab.content == ""
    assert crab.tool_calls == [
        ToolCall(
            id="call_01",
            function=FunctionCall(name="get_weather", arguments='{"city":"Lisbon","unit":"C"}'),
        ),
        ToolCall(id="call_02", function=FunctionCall(name="now", arguments="{}")),
    ]
    assert crab.tool_calls[0].type == "function"
    assert crab.langchain is None


def test_ai_message_name_becomes_agent():
    crab = to_crab_message(AIMessage("from the guide", name="guide"))
    assert (crab.role, crab.agent, crab.name) == ("assistant", "guide", "")
    assert crab.to_line() == '{"role":"assistant","content":"from the guide","agent":"guide"}'


def test_ai_reasoning_content_kwarg_becomes_reasoning_content():
    message = AIMessage("4", additional_kwargs={"reasoning_content": "2+2"})
    crab = to_crab_message(message)
    assert (crab.content, crab.reasoning_content, crab.langchain) == ("4", "2+2", None)
    assert crab.to_line() == '{"role":"assistant","content":"4","reasoning_content":"2+2"}'


def test_tool_message_becomes_tool():
    crab = to_crab_message(ToolMessage("21 °C", tool_call_id="call_01", name="get_weather"))
    assert (crab.role, crab.content, crab.tool_call_id, crab.name) == (
        "tool",
        "21 °C",
        "call_01",
        "get_weather",
    )
    assert crab.to_line() == (
        '{"role":"tool","content":"21 °C","name":"get_weather","tool_call_id":"call_01"}'
    )


def test_system_message_becomes_system():
    crab = to_crab_message(SystemMessage("Be brief."))
    assert (crab.role, crab.content, crab.langchain) == ("system", "Be brief.", None)


def test_developer_system_message_becomes_developer():
    message = SystemMessage("Cite sources.", additional_kwargs={"__openai_role__": "developer"})
    crab = to_crab_message(message)
    assert (crab.role, crab.content, crab.langchain) == ("developer", "Cite sources.", None)
    assert crab.to_line() == '{"role":"developer","content":"Cite sources."}'


def test_chat_message_role_becomes_role():
    crab = to_crab_message(ChatMessage(role="critic", content="Too long."))
    assert (crab.role, crab.content, crab.langchain) == ("critic", "Too long.", None)


def test_function_message_becomes_function_role_with_type():
    crab = to_crab_message(FunctionMessage(name="lookup", content="42"))
    assert (crab.role, crab.name, crab.content) == ("function", "lookup", "42")
    assert crab.langchain == {"type": "function"}


def test_crab_field_kwargs_become_spec_keys():
    message = HumanMessage("hi", additional_kwargs={"crab": {"agent": "guide", "mood": "ok"}})
    assert _keys(message, strict=True) == {"role": "user", "content": "hi", "agent": "guide"}
    crab = to_crab_message(message)
    assert crab.agent == "guide"
    assert crab.model_extra == {"mood": "ok"}


# --- the mapping: crabtalk -> LangChain ---------------------------------------------------------


def test_user_becomes_human_message():
    message = from_crab_message(CrabMessage.from_line('{"role":"user","content":"hi"}'))
    assert type(message) is HumanMessage
    assert message == HumanMessage("hi")


def test_assistant_becomes_ai_message_with_parsed_tool_calls():
    line = (
        '{"role":"assistant","reasoning_content":"two calls","tool_calls":['
        '{"id":"call_01","type":"function","function":{"name":"get_weather",'
        '"arguments":"{\\"city\\":\\"Lisbon\\"}"}},'
        '{"id":"call_10","type":"function","function":{"name":"now","arguments":"{}"}}],'
        '"agent":"guide"}'
    )
    message = from_crab_message(CrabMessage.from_line(line))
    assert type(message) is AIMessage
    assert message.content == ""
    assert message.name == "guide"
    assert message.additional_kwargs == {"reasoning_content": "two calls"}
    assert message.tool_calls == [
        tool_call(name="get_weather", args={"city": "Lisbon"}, id="call_01"),
        tool_call(name="now", args={}, id="call_10"),
    ]
    assert message.invalid_tool_calls == []


def test_tool_becomes_tool_message():
    line = '{"role":"tool","content":"sunny","name":"get_weather","tool_call_id":"call_01"}'
    message = from_crab_message(CrabMessage.from_line(line))
    assert type(message) is ToolMessage
    assert (message.content, message.tool_call_id, message.name) == (
        "sunny",
        "call_01",
        "get_weather",
    )
    assert message.status == "success"
    assert message.artifact is None


def test_system_becomes_system_message():
    message = from_crab_message(CrabMessage.from_line('{"role":"system","content":"Be brief."}'))
    assert type(message) is SystemMessage
    assert message == SystemMessage("Be brief.")


def test_developer_becomes_developer_system_message():
    message = from_crab_message(CrabMessage.from_line('{"role":"developer","content":"Cite."}'))
    assert type(message) is SystemMessage
    assert message.content == "Cite."
    assert message.additional_kwargs == {"__openai_role__": "developer"}


@pytest.mark.parametrize("role", ["critic", "function", "User", "tg:12345"])
def test_other_role_becomes_chat_message(role: str):
    crab = CrabMessage(role=role, content="x")
    message = from_crab_message(CrabMessage.from_line(crab.to_line()))
    assert type(message) is ChatMessage
    assert (message.role, message.content) == (role, "x")


def test_function_type_extension_becomes_function_message():
    line = '{"role":"function","content":"42","name":"lookup","langchain":{"type":"function"}}'
    message = from_crab_message(CrabMessage.from_line(line))
    assert type(message) is FunctionMessage
    assert (message.name, message.content) == ("lookup", "42")


def test_spec_keys_without_langchain_field_go_to_crab_kwargs():
    line = '{"role":"user","content":"hi","tool_call_id":"t","agent":"guide"}'
    message = from_crab_message(CrabMessage.from_line(line))
    assert type(message) is HumanMessage
    assert message.additional_kwargs == {"crab": {"tool_call_id": "t", "agent": "guide"}}
    assert to_crab_message(message).to_line() == line


def test_name_on_assistant_goes_to_crab_kwargs():
    line = '{"role":"assistant","content":"x","name":"n","agent":"guide"}'
    message = from_crab_message(CrabMessage.from_line(line))
    assert message.name == "guide"
    assert message.additional_kwargs == {"crab": {"name": "n"}}
    assert to_crab_message(message).to_line() == line


def test_unknown_message_keys_go_to_crab_kwargs():
    line = '{"role":"user","content":"hi","mood":{"level":3}}'
    message = from_crab_message(CrabMessage.from_line(line))
    assert message.additional_kwargs == {"crab": {"mood": {"level": 3}}}


@pytest.mark.parametrize(
    "line",
    [
        '{"role":"user","content":"hi","mood":"ok"}',
        '{"role":"assistant","content":"x","seen":true,"score":[1,2]}',
        '{"role":"user","content":"x","agent":"guide","mood":"ok"}',
        '{"role":"tool","content":"r","tool_call_id":"c","extra":{"a":null}}',
    ],
)
def test_unknown_message_keys_round_trip_through_langchain_without_extension(line: str):
    assert _line_through_langchain(line) == line


# --- fixtures through LangChain -----------------------------------------------------------------


def test_fixture_lines_exist():
    assert len(_fixture_message_lines()) >= 20


@pytest.mark.parametrize(
    "line", _fixture_message_lines(), ids=lambda b: b[:40].decode("utf-8", "replace")
)
def test_fixture_line_round_trips_through_langchain_byte_exact(line: bytes):
    crab = CrabMessage.from_line(line)
    message = from_crab_message(crab)
    back = to_crab_message(message)
    assert back.langchain is None
    assert back.to_line().encode("utf-8") == line
    assert b'"langchain"' not in back.to_line().encode("utf-8")


# --- tool calls ---------------------------------------------------------------------------------


def _assistant_line(*calls: tuple[str, str, str]) -> str:
    return CrabMessage(
        role="assistant",
        tool_calls=[
            ToolCall(id=i, function=FunctionCall(name=n, arguments=a)) for i, n, a in calls
        ],
    ).to_line()


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ('{"q": "unterminated', "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('"text"', "not a JSON object"),
        ("null", "not a JSON object"),
        ("not json at all", "not valid JSON"),
    ],
)
def test_invalid_arguments_become_invalid_tool_calls(arguments: str, problem: str):
    line = _assistant_line(("call_bad", "search", arguments))
    message = from_crab_message(CrabMessage.from_line(line))
    assert isinstance(message, AIMessage)
    assert message.tool_calls == []
    assert len(message.invalid_tool_calls) == 1
    bad = message.invalid_tool_calls[0]
    assert (bad["name"], bad["args"], bad["id"], bad["type"]) == (
        "search",
        arguments,
        "call_bad",
        "invalid_tool_call",
    )
    assert problem in (bad["error"] or "")
    assert to_crab_message(message).to_line() == line


def test_mixed_valid_and_invalid_calls_keep_order():
    line = _assistant_line(
        ("c1", "a", '{"x":1}'),
        ("c2", "b", "{broken"),
        ("c3", "c", '{"y":[true]}'),
        ("c4", "d", "[]"),
    )
    message = from_crab_message(CrabMessage.from_line(line))
    assert [c["id"] for c in message.tool_calls] == ["c1", "c3"]
    assert [c["id"] for c in message.invalid_tool_calls] == ["c2", "c4"]
    back = to_crab_message(message)
    assert [c.id for c in back.tool_calls] == ["c1", "c2", "c3", "c4"]
    assert back.to_line() == line
    assert back.langchain is None


def test_spaced_arguments_round_trip_byte_exact():
    line = _assistant_line(("c", "f", '{"a": 1}'))
    assert '"{\\"a\\": 1}"' in line
    message = from_crab_message(CrabMessage.from_line(line))
    assert message.tool_calls == [tool_call(name="f", args={"a": 1}, id="c")]
    assert _line_through_langchain(line) == line


def test_reordered_keys_in_arguments_round_trip_byte_exact():
    line = _assistant_line(("c", "f", '{"b":2,"a":{"z":1,"y":"\\u00e9"}}'))
    assert _line_through_langchain(line) == line


def test_tool_call_without_arguments():
    line = (
        '{"role":"assistant","tool_calls":[{"id":"call_10","type":"function",'
        '"function":{"name":"now"}}]}'
    )
    message = from_crab_message(CrabMessage.from_line(line))
    assert message.tool_calls == [tool_call(name="now", args={}, id="call_10")]
    assert to_crab_message(message).to_line() == line
    # crabtalk's writer left the key out, and its flat readers then dropped the
    # message: a call from LangChain always carries it.
    fresh = to_crab_message(
        AIMessage("", tool_calls=[tool_call(name="now", args={}, id="call_10")])
    )
    assert fresh.to_line() == line.replace('"now"}', '"now","arguments":"{}"}')


def test_invalid_tool_call_from_langchain_writes_raw_args():
    message = AIMessage(
        "",
        invalid_tool_calls=[invalid_tool_call(name="s", args='{"q":', id="c9", error=None)],
    )
    crab = to_crab_message(message)
    assert crab.tool_calls == [
        ToolCall(id="c9", function=FunctionCall(name="s", arguments='{"q":'))
    ]
    assert _through_line(message) == message


def test_openai_style_raw_tool_calls_keep_their_argument_text():
    raw = [
        {
            "index": 0,
            "id": "c",
            "function": {"arguments": '{"a": 1}', "name": "f"},
            "type": "function",
        }
    ]
    message = AIMessage(
        "",
        additional_kwargs={"tool_calls": raw},
        tool_calls=[tool_call(name="f", args={"a": 1}, id="c")],
    )
    crab = to_crab_message(message)
    assert crab.tool_calls[0].function.arguments == '{"a": 1}'
    assert _through_line(message) == message


def test_raw_tool_calls_that_disagree_with_parsed_calls_are_not_written():
    raw = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 2}'}}]
    message = AIMessage(
        "",
        additional_kwargs={"tool_calls": raw},
        tool_calls=[tool_call(name="f", args={"a": 1}, id="c")],
    )
    assert to_crab_message(message).tool_calls[0].function.arguments == '{"a":1}'
    assert _through_line(message) == message


def test_langchain_tool_call_ids_and_names_round_trip():
    message = AIMessage(
        "",
        tool_calls=[
            tool_call(name="f", args={"a": [1, {"b": None}]}, id=None),
            tool_call(name="", args={}, id=""),
        ],
    )
    assert _through_line(message) == message


# --- reasoning and list content -----------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        {"type": "reasoning", "reasoning": "Think first."},
        {"type": "thinking", "thinking": "Think first.", "signature": "sig"},
    ],
)
def test_reasoning_blocks_become_reasoning_content(block: dict[str, Any]):
    message = AIMessage([block, {"type": "text", "text": "Answer."}])
    crab = to_crab_message(message)
    assert (crab.content, crab.reasoning_content) == ("Answer.", "Think first.")
    assert _through_line(message) == message
    plain = json.loads(to_crab_message(message, strict=True).to_line())
    assert plain == {"role": "assistant", "content": "Answer.", "reasoning_content": "Think first."}


def test_reasoning_kwarg_wins_and_round_trips():
    message = AIMessage(
        [{"type": "text", "text": "A"}], additional_kwargs={"reasoning_content": "from kwarg"}
    )
    assert to_crab_message(message).reasoning_content == "from kwarg"
    assert _through_line(message) == message


def test_list_content_writes_readable_text_and_reads_back_equal():
    message = HumanMessage(
        [
            {"type": "text", "text": "What is "},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            "in this picture?",
        ]
    )
    crab = to_crab_message(message)
    assert crab.content == "What is in this picture?"
    assert crab.langchain is not None
    assert _through_line(message) == message
    assert json.loads(to_crab_message(message, strict=True).to_line()) == {
        "role": "user",
        "content": "What is in this picture?",
    }


# --- lossless round trips through the line ------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        HumanMessage("hi", id="msg-1", name="bob"),
        HumanMessage(
            [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]
        ),
        HumanMessage("x", additional_kwargs={"k": [1, 2.5, None, {"n": "é"}], "flag": True}),
        AIMessage(
            "ok",
            id="run-1",
            response_metadata={"model_name": "m", "finish_reason": "stop", "logprobs": None},
            usage_metadata={
                "input_tokens": 10,
                "output_tokens": 5,
                "total_tokens": 15,
                "input_token_details": {"cache_read": 3},
            },
        ),
        AIMessage("", tool_calls=[tool_call(name="f", args={"a": 1}, id="c")], name="guide"),
        ToolMessage("boom", tool_call_id="c", status="error"),
        ToolMessage(
            "done",
            tool_call_id="c",
            name="f",
            artifact={"rows": [[1, "a"], [2, "b"]], "meta": None},
        ),
        ToolMessage("done", tool_call_id="c", artifact=[1, "two", 3.5]),
        ChatMessage(role="user", content="from a chat message"),
        ChatMessage(role="assistant", content="also chat"),
        ChatMessage(role="critic", content="custom", name="c"),
        FunctionMessage(name="lookup", content="42"),
        SystemMessage("sys", id="s1"),
        SystemMessage("dev", additional_kwargs={"__openai_role__": "developer"}, name="d"),
    ],
    ids=lambda m: f"{type(m).__name__}",
)
def test_message_reads_back_equal_through_the_line(message: BaseMessage):
    back = _through_line(message)
    assert type(back) is type(message)
    assert back == message


def test_function_message_with_empty_name_reads_back():
    message = FunctionMessage(name="", content="42")
    assert _through_line(message) == message


def test_chat_message_with_user_role_stays_chat_message():
    line = to_crab_message(ChatMessage(role="user", content="x")).to_line()
    assert json.loads(line)["role"] == "user"
    back = from_crab_message(CrabMessage.from_line(line))
    assert type(back) is ChatMessage
    assert back.role == "user"


def test_extension_holds_only_what_spec_keys_cannot_reproduce():
    message = AIMessage("ok", id="run-1", name="guide")
    data = _keys(message)
    assert data == {
        "role": "assistant",
        "content": "ok",
        "agent": "guide",
        "langchain": {"id": "run-1"},
    }


@settings(max_examples=300, deadline=None)
@given(message=MESSAGES)
def test_any_json_representable_message_reads_back_equal(message: BaseMessage):
    line = to_crab_message(message).to_line()
    back = from_crab_message(CrabMessage.from_line(line))
    assert type(back) is type(message)
    assert back == message
    data = json.loads(line)
    assert set(data) <= SPEC_KEYS | {"langchain"}


@settings(max_examples=100, deadline=None)
@given(message=MESSAGES)
def test_strict_writes_only_spec_keys(message: BaseMessage):
    crab = to_crab_message(message, strict=True)
    assert crab.langchain is None
    assert set(json.loads(crab.to_line())) <= SPEC_KEYS


# --- strict mode --------------------------------------------------------------------------------


def test_strict_writes_no_extension_and_no_unknown_keys():
    message = AIMessage(
        "ok",
        id="run-1",
        name="guide",
        response_metadata={"model": "m"},
        usage_metadata={"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
        additional_kwargs={"crab": {"mood": "ok", "name": "n"}, "other": 1},
    )
    line = to_crab_message(message, strict=True).to_line()
    assert line == '{"role":"assistant","content":"ok","name":"n","agent":"guide"}'
    assert "langchain" not in line


def test_strict_keeps_role_of_chat_and_function_messages():
    assert _keys(ChatMessage(role="user", content="x"), strict=True) == {
        "role": "user",
        "content": "x",
    }
    assert _keys(FunctionMessage(name="f", content="x"), strict=True) == {
        "role": "function",
        "content": "x",
        "name": "f",
    }


# --- chunks -------------------------------------------------------------------------------------


def test_ai_message_chunk_is_stored_as_ai_message():
    chunk = AIMessageChunk(
        content="he",
        id="run-1",
        tool_call_chunks=[{"name": "f", "args": '{"a":', "id": "c", "index": 0}],
    ) + AIMessageChunk(
        content="llo", tool_call_chunks=[{"name": None, "args": "1}", "id": None, "index": 0}]
    )
    crab = to_crab_message(chunk)
    assert crab.content == "hello"
    assert crab.tool_calls == [
        ToolCall(id="c", function=FunctionCall(name="f", arguments='{"a":1}'))
    ]
    line = crab.to_line()
    assert "chunk" not in line
    back = from_crab_message(CrabMessage.from_line(line))
    assert type(back) is AIMessage
    assert back == AIMessage(
        "hello", id="run-1", tool_calls=[tool_call(name="f", args={"a": 1}, id="c")]
    )


def test_human_message_chunk_is_stored_as_human_message():
    back = _through_line(HumanMessageChunk(content="hi"))
    assert type(back) is HumanMessage
    assert back == HumanMessage("hi")


# --- the auto-injected marker -------------------------------------------------------------------


def test_mark_auto_injected_returns_the_same_object():
    message = HumanMessage("recalled memory")
    assert not is_auto_injected(message)
    assert mark_auto_injected(message) is message
    assert is_auto_injected(message)
    assert message.additional_kwargs[AUTO_INJECTED_KEY] is True


def test_is_auto_injected_on_crab_messages():
    assert is_auto_injected(CrabMessage(role="user", auto_injected=True))
    assert not is_auto_injected(CrabMessage(role="user"))


def test_marker_must_be_exactly_true():
    assert not is_auto_injected(HumanMessage("x", additional_kwargs={AUTO_INJECTED_KEY: "yes"}))


def test_to_crab_message_sets_auto_injected_and_back():
    message = mark_auto_injected(SystemMessage("memory: likes tea"))
    crab = to_crab_message(message)
    assert crab.auto_injected is True
    assert is_auto_injected(crab)
    assert to_crab_message(message, strict=True).auto_injected is True
    back = from_crab_message(crab)
    assert is_auto_injected(back)
    assert back == message


def test_from_crab_message_marks_auto_injected():
    back = from_crab_message(CrabMessage(role="user", content="x", auto_injected=True))
    assert is_auto_injected(back)
    assert not is_auto_injected(from_crab_message(CrabMessage(role="user", content="x")))


def test_auto_injected_is_not_a_spec_key_and_the_marker_survives_the_line():
    # The spec's in-memory flag is never written; the LangChain marker travels in the
    # extension, so a message an audit plugin kept is recognised as injected on reading.
    message = mark_auto_injected(HumanMessage("memory"))
    line = to_crab_message(message).to_line()
    assert '"auto_injected"' not in line
    assert json.loads(line)["content"] == "memory"
    crab = CrabMessage.from_line(line)
    assert crab.auto_injected is False
    back = from_crab_message(crab)
    assert is_auto_injected(back)
    assert back == message


def test_strict_does_not_write_the_marker():
    message = mark_auto_injected(HumanMessage("memory"))
    assert to_crab_message(message, strict=True).to_line() == '{"role":"user","content":"memory"}'


# --- values JSON cannot hold --------------------------------------------------------------------


class _Opaque:
    pass


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (HumanMessage("x", additional_kwargs={"score": float("nan")}), "additional_kwargs"),
        (AIMessage("x", response_metadata={"at": datetime.now(timezone.utc)}), "response_metadata"),
        (ToolMessage("x", tool_call_id="c", artifact=_Opaque()), "artifact"),
        (HumanMessage("x", additional_kwargs={"k": "bad \ud800"}), "additional_kwargs"),
        (HumanMessage("x", additional_kwargs={"k": {1: "one"}}), "additional_kwargs"),
        (AIMessage("x", response_metadata={"inf": float("inf")}), "response_metadata"),
        (
            AIMessage("", tool_calls=[tool_call(name="f", args={"v": float("nan")}, id="c")]),
            "args",
        ),
        (HumanMessage("x", additional_kwargs={"crab": {"mood": float("nan")}}), "crab"),
    ],
    ids=[
        "nan-kwargs",
        "datetime-metadata",
        "object-artifact",
        "surrogate-kwargs",
        "int-key",
        "inf-metadata",
        "nan-tool-args",
        "nan-crab-field",
    ],
)
def test_unrepresentable_value_raises_naming_the_field(message: BaseMessage, field: str):
    with pytest.raises((TypeError, ValueError), match=field):
        to_crab_message(message).to_line()


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (HumanMessage("bad \ud800 text"), "content"),
        (AIMessage("x", additional_kwargs={"reasoning_content": "\udc00"}), "reasoning_content"),
        (ToolMessage("x", tool_call_id="\ud800"), "tool_call_id"),
    ],
    ids=["content", "reasoning", "tool-call-id"],
)
def test_lone_surrogate_in_spec_field_raises_naming_the_field(message: BaseMessage, field: str):
    with pytest.raises((TypeError, ValueError), match=field):
        to_crab_message(message).to_line()


def test_remove_message_is_rejected():
    with pytest.raises(ValueError, match="RemoveMessage"):
        to_crab_message(RemoveMessage(id="m1"))


# --- the extension is computed without building the decoded message ----------


def _extension_by_construction(message: BaseMessage, crab: CrabMessage) -> dict[str, Any]:
    """Reference: build what a reader of the spec keys gets and compare field by field."""
    from crab_langchain.convert import _CLASS_OF_TYPE, _decoded_kwargs

    cls = _CLASS_OF_TYPE[message.type]
    rebuilt = cls(**_decoded_kwargs(crab, cls))
    default = from_crab_message(
        CrabMessage.from_line(crab.model_copy(update={"langchain": None}).to_line())
    )
    extension: dict[str, Any] = {} if type(default) is cls else {"type": message.type}
    for field in type(message).model_fields:
        if field != "type" and getattr(message, field) != getattr(rebuilt, field, None):
            extension[field] = getattr(message, field)
    extension.update(message.model_extra or {})
    return extension


@settings(max_examples=300, deadline=None)
@given(MESSAGES)
def test_extension_matches_building_the_decoded_message(message: BaseMessage):
    crab = to_crab_message(message)
    assert (crab.langchain or {}) == _extension_by_construction(message, crab)


def test_extension_matches_construction_for_fixture_messages():
    from crab_langchain.models import parse_entry

    checked = 0
    for path in FIXTURE_FILES:
        for line in path.read_bytes().splitlines()[1:]:
            entry = parse_entry(line) if line.strip() else None
            if not isinstance(entry, CrabMessage):
                continue
            message = from_crab_message(entry)
            crab = to_crab_message(message)
            assert (crab.langchain or {}) == _extension_by_construction(message, crab), line
            checked += 1
    assert checked > 10


# --- messages from plain lines are assembled without re-validation -----------


def _assert_same_as_constructed(built: BaseMessage, crab: CrabMessage) -> None:
    from langchain_core.load import dumpd

    from crab_langchain.convert import _CLASS_OF_TYPE, _decoded_kwargs

    cls = type(built)
    constructed = cls(**_decoded_kwargs(crab, _CLASS_OF_TYPE[built.type]))
    assert built == constructed
    assert built.model_fields_set == constructed.model_fields_set
    assert list(built.__dict__) == list(constructed.__dict__)
    assert dumpd(built) == dumpd(constructed)
    assert repr(built) == repr(constructed)
    assert built.model_dump() == constructed.model_dump()


@settings(max_examples=300, deadline=None)
@given(MESSAGES)
def test_plain_line_message_equals_constructor_result(message: BaseMessage):
    crab = to_crab_message(message, strict=True)  # spec keys only: no extension
    _assert_same_as_constructed(from_crab_message(crab), crab)


def test_fixture_messages_equal_constructor_results():
    from crab_langchain.models import parse_entry

    for path in FIXTURE_FILES:
        for line in path.read_bytes().splitlines()[1:]:
            entry = parse_entry(line) if line.strip() else None
            if isinstance(entry, CrabMessage) and not entry.langchain:
                _assert_same_as_constructed(from_crab_message(entry), entry)


def test_messages_read_do_not_share_mutable_defaults():
    first = from_crab_message(CrabMessage(role="user", content="a"))
    second = from_crab_message(CrabMessage(role="user", content="b"))
    first.additional_kwargs["x"] = 1
    first.response_metadata["y"] = 2
    assert second.additional_kwargs == {}
    assert second.response_metadata == {}
    assert from_crab_message(CrabMessage(role="user", content="c")).additional_kwargs == {}


# --- messages holding only text take a short path to the same result ---------


@settings(max_examples=300, deadline=None)
@given(MESSAGES)
def test_short_path_gives_what_the_long_path_gives(message: BaseMessage):
    from crab_langchain.convert import _general_crab, _plain_crab

    short = _plain_crab(message)
    if short is not None:
        long = _general_crab(message, strict=False)
        assert short == long
        assert short.to_line() == long.to_line()
        assert from_crab_message(short) == message


@pytest.mark.parametrize(
    "message",
    [
        HumanMessage("hi"),
        HumanMessage(""),
        AIMessage("done"),
        SystemMessage("be brief"),
        HumanMessage("caf\u00e9 \u2615"),
    ],
)
def test_text_only_messages_take_the_short_path(message: BaseMessage):
    from crab_langchain.convert import _general_crab, _plain_crab

    assert _plain_crab(message) == _general_crab(message, strict=False)


@pytest.mark.parametrize(
    "message",
    [
        HumanMessage("hi", id="m1"),
        HumanMessage("hi", name=""),
        AIMessage("x", response_metadata={"model": "m"}),
        AIMessage("x", tool_calls=[tool_call(name="f", args={}, id="1")]),
        HumanMessage([{"type": "text", "text": "hi"}]),
        ToolMessage("r", tool_call_id="1"),
        HumanMessage("hi", additional_kwargs={"k": 1}),
    ],
)
def test_messages_with_more_than_text_take_the_long_path(message: BaseMessage):
    from crab_langchain.convert import _plain_crab

    assert _plain_crab(message) is None
    assert from_crab_message(to_crab_message(message)) == message


def test_short_path_still_refuses_lone_surrogates():
    with pytest.raises(TypeError, match="content"):
        to_crab_message(HumanMessage("bad \ud800 text"))


@settings(max_examples=300, deadline=None)
@given(MESSAGES)
def test_short_read_path_gives_what_the_long_path_gives(message: BaseMessage):
    from crab_langchain.convert import _CLASS_OF_ROLE, _decoded_kwargs, _plain_message

    crab = to_crab_message(message, strict=True)
    short = _plain_message(crab)
    if short is not None:
        cls = _CLASS_OF_ROLE[crab.role]
        long = cls(**_decoded_kwargs(crab, cls))
        assert short == long
        assert type(short) is type(long)
        assert short.model_fields_set == long.model_fields_set
        assert list(short.__dict__) == list(long.__dict__)


# --- encode: a message straight to its line and what reading it back gives ----


@settings(max_examples=300, deadline=None)
@given(MESSAGES, st.booleans())
def test_encode_gives_the_line_and_read_back_of_the_long_way(message: BaseMessage, strict: bool):
    from crab_langchain.convert import encode
    from crab_langchain.models import parse_entry

    crab = to_crab_message(message, strict=strict)
    encoded = encode(message, strict=strict)
    assert encoded.line == crab.to_line_bytes()
    assert encoded.auto_injected == crab.auto_injected
    if encoded.read_back is not None:
        reread = from_crab_message(parse_entry(encoded.line))
        read_back = encoded.read_back
        if not isinstance(read_back, BaseMessage):  # built when first read
            read_back = read_back()
        assert read_back == reread
        assert type(read_back) is type(reread)
        assert read_back.model_fields_set == reread.model_fields_set
        assert list(read_back.__dict__) == list(reread.__dict__)


@settings(max_examples=300, deadline=None)
@given(MESSAGES)
def test_plain_line_look_agrees_with_the_full_parser(message: BaseMessage):
    from crab_langchain.convert import _plain_message_of, decode_line
    from crab_langchain.models import parse_entry, parse_object

    line = to_crab_message(message).to_line_bytes()
    entry = parse_entry(line)
    decoded = decode_line(line)
    if isinstance(entry, CrabMessage):
        assert decoded == from_crab_message(entry)
        assert type(decoded) is type(from_crab_message(entry))
        assert decoded.model_fields_set == from_crab_message(entry).model_fields_set
    quick = _plain_message_of(parse_object(line))
    if quick is None:
        assert not is_text_only(entry) or entry.role not in ("user", "assistant", "system")
        return
    full = from_crab_message(entry)
    assert quick == full
    assert type(quick) is type(full)
    assert quick.model_fields_set == full.model_fields_set
    assert list(quick.__dict__) == list(full.__dict__)


@pytest.mark.parametrize(
    "line",
    [
        b'{"role":"user","content":"x","sender":"s"}',
        b'{"role":"user","content":NaN}',
        b'{"compact":"x"}',
        b'{"role":"","content":"x"}',
        b'{"role":"user","content":5}',
        b'{"role":"assistant","content":"x","name":"n"}',
        b'{"role":"user","content":"x","name":5}',
        b"[1]",
        b"{bad",
        b'{"role":"user","content":"x"} trailing',
        b'{"role":"developer","content":"x"}',
        b'{"role":"user","content":"x","tool_call_id":"c1"}',
        b'{"role":"tool","content":"x","tool_call_id":5}',
        b'{"role":"assistant","content":"x","langchain":{"type":"human"}}',
        b'{"role":"assistant","content":"x","langchain":[1]}',
        b'{"role":"assistant","content":"","tool_calls":[]}',
    ],
)
def test_plain_line_look_leaves_every_other_line_to_the_full_parser(line: bytes):
    from crab_langchain.convert import _plain_message_of, decode_line
    from crab_langchain.models import SessionFormatError, parse_entry, parse_object

    with contextlib.suppress(SessionFormatError):  # not an object: the full parser says why
        assert _plain_message_of(parse_object(line)) is None
    try:
        expected = parse_entry(line)
    except SessionFormatError as error:
        reason = re.escape(str(error))
        with pytest.raises(SessionFormatError, match=f"^{reason}$"):
            decode_line(line)
        return
    decoded = decode_line(line)
    assert decoded == (
        from_crab_message(expected) if isinstance(expected, CrabMessage) else expected
    )


def test_each_line_is_parsed_once_text_only_or_not(monkeypatch: pytest.MonkeyPatch):
    """decode_line parses a line once: the text-only branch and the long way share the parse."""
    import pydantic_core

    from crab_langchain import models
    from crab_langchain.convert import decode_line

    parses: list[bytes] = []
    real = pydantic_core.from_json

    def counted(data: Any, *args: Any, **kwargs: Any) -> Any:
        parses.append(data)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(models.pydantic_core, "from_json", counted)
    agent_line = b'{"role":"assistant","content":"hi","langchain":{"id":"lc_run--1"}}'
    for line in (b'{"role":"user","content":"hi"}', agent_line, b'{"compact":"so far"}'):
        parses.clear()
        decode_line(line)
        assert parses == [line]


@pytest.mark.parametrize(
    "line",
    [
        b'{"role":"assistant","content":"x","langchain":{"id":5}}',
        b'{"role":"assistant","content":"x","langchain":{"tool_calls":"no"}}',
        b'{"role":"tool","content":"x","langchain":{"tool_call_id":7}}',
        b'{"role":"tool","content":"x","name":"","langchain":{"name":"w"}}',
        b'{"role":"user","content":"x","langchain":{"content":[{"type":"text","text":"y"}]}}',
    ],
)
def test_plain_lines_with_odd_langchain_keys_read_as_the_long_way(line: bytes):
    from crab_langchain.convert import _plain_message_of, decode_line
    from crab_langchain.models import SessionFormatError, parse_entry, parse_object

    try:
        expected = from_crab_message(parse_entry(line))
    except SessionFormatError as error:
        with pytest.raises(SessionFormatError, match=f"^{re.escape(str(error))}$"):
            _plain_message_of(parse_object(line))
        return
    decoded = decode_line(line)
    assert decoded == expected
    assert list(decoded.__dict__) == list(expected.__dict__)


def test_an_agents_lines_build_no_crab_message_but_for_tool_calls(monkeypatch: pytest.MonkeyPatch):
    """A reply with its LangChain id and a tool result go straight to their messages."""
    from crab_langchain import convert

    validated: list[dict[str, Any]] = []
    real = convert.entry_of

    def counted(data: dict[str, Any]) -> Any:
        validated.append(data)
        return real(data)

    monkeypatch.setattr(convert, "entry_of", counted)
    reply = AIMessage("sunny", id="lc_run--1", response_metadata={"model_name": "m"})
    result = ToolMessage("21 C", tool_call_id="call-1", id="t1", name="weather")
    call = AIMessage("", id="lc_run--2", tool_calls=[tool_call(name="f", args={}, id="call-1")])
    for message in (reply, result, HumanMessage("hi", id="h1"), call):
        line = to_crab_message(message).to_line_bytes()
        assert convert.decode_line(line) == message
    assert [data["role"] for data in validated] == ["assistant"]  # the tool call's line only
