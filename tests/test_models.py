"""The crabtalk line codec: messages, tool calls, compact markers, the header, time stamps."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydantic
import pytest
from conftest import FIXTURE_FILES, FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st

from crab_langchain.models import (
    CompactMarker,
    CrabMessage,
    FunctionCall,
    NestedLine,
    SessionFormatError,
    SessionMeta,
    ToolCall,
    format_rfc3339,
    is_text_only,
    parse_entry,
    parse_rfc3339,
)


def _lines(path: Path) -> list[bytes]:
    """The lines of a fixture, split on b"\\n" only (U+2028 inside a line is not a break)."""
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def _message_lines() -> list[bytes]:
    return [line for path in FIXTURE_FILES for line in _lines(path)[1:]]


def _compact(data: dict) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


# --- fixtures: every line, byte for byte --------------------------------------------------------


def test_fixtures_are_present():
    assert len(FIXTURE_FILES) >= 3
    assert any(b'"compact"' in line for line in _message_lines())


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_fixture_header_round_trips_byte_exact(path: Path):
    header = _lines(path)[0]
    meta = SessionMeta.from_line(header)
    assert meta.to_line().encode("utf-8") == header
    assert SessionMeta.from_line(header.decode("utf-8")).to_line().encode("utf-8") == header


@pytest.mark.parametrize("line", _message_lines(), ids=lambda b: b[:40].decode("utf-8", "replace"))
def test_fixture_entry_round_trips_byte_exact(line: bytes):
    entry = parse_entry(line)
    assert entry.to_line().encode("utf-8") == line
    assert parse_entry(line.decode("utf-8")) == entry


def test_fixture_compact_marker_parses_as_marker():
    markers = [parse_entry(line) for line in _message_lines() if line.startswith(b'{"compact"')]
    assert markers == [
        CompactMarker(compact="The user flies to Lisbon on Friday; day one is Alfama then Belém.")
    ]


def test_fixture_file_has_exactly_one_line_per_newline():
    # research_bot's content holds a raw U+2028; str.splitlines would cut the line there.
    path = FIXTURES / "research_bot_1777593600_3.jsonl"
    text = path.read_text("utf-8")
    assert "\u2028" in text
    assert len(text.splitlines()) > len(_lines(path))
    for line in _lines(path)[1:]:
        parse_entry(line)


def test_fixture_message_fields_are_read():
    path = FIXTURES / "crab_1775158803_12.jsonl"
    entries = [parse_entry(line) for line in _lines(path)[1:]]
    tool_result = entries[5]
    assert isinstance(tool_result, CrabMessage)
    assert (tool_result.role, tool_result.name, tool_result.tool_call_id) == (
        "tool",
        "ask_agent",
        "call_9",
    )
    guest = entries[6]
    assert (guest.role, guest.agent, guest.content) == (
        "assistant",
        "guide",
        "A seafood place by the river fits day one.",
    )
    no_args = entries[7]
    assert no_args.content == ""
    assert no_args.tool_calls == [ToolCall(id="call_10", function=FunctionCall(name="now"))]
    assert no_args.tool_calls[0].function.arguments is None  # the key is absent


# --- key order and omission ---------------------------------------------------------------------


def test_all_keys_written_in_crabtalk_order():
    message = CrabMessage(
        agent="g",
        tool_calls=[ToolCall(id="c", function=FunctionCall(name="f", arguments="{}"))],
        tool_call_id="t",
        name="n",
        reasoning_content="r",
        content="c",
        role="assistant",
    )
    line = message.to_line()
    assert line == (
        '{"role":"assistant","content":"c","reasoning_content":"r","name":"n",'
        '"tool_call_id":"t","tool_calls":[{"id":"c","type":"function",'
        '"function":{"name":"f","arguments":"{}"}}],"agent":"g"}'
    )
    assert list(json.loads(line)) == [
        "role",
        "content",
        "reasoning_content",
        "name",
        "tool_call_id",
        "tool_calls",
        "agent",
    ]


def test_empty_fields_are_omitted():
    assert CrabMessage(role="assistant").to_line() == '{"role":"assistant"}'
    explicit = CrabMessage(
        role="user", content="", reasoning_content="", name="", tool_call_id="", tool_calls=[]
    )
    assert explicit.to_line() == '{"role":"user"}'


def test_tool_call_type_always_written_and_empty_parts_omitted():
    message = CrabMessage(role="assistant", tool_calls=[ToolCall()])
    assert (
        message.to_line() == '{"role":"assistant","tool_calls":[{"type":"function","function":{}}]}'
    )
    custom = CrabMessage(role="assistant", tool_calls=[ToolCall(type="custom")])
    assert '"type":"custom"' in custom.to_line()


def test_line_without_content_is_accepted():
    line = (
        '{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f"}}]}'
    )
    message = CrabMessage.from_line(line)
    assert message.content == ""
    assert message.to_line() == line


def test_in_memory_fields_are_never_written():
    message = CrabMessage(
        role="user",
        content="hi",
        sender="tg:12345",
        auto_injected=True,
        tool_calls=[ToolCall(id="c", index=4)],
    )
    line = message.to_line()
    assert "sender" not in line
    assert "auto_injected" not in line
    assert "index" not in line
    assert line == (
        '{"role":"user","content":"hi","tool_calls":[{"id":"c","type":"function","function":{}}]}'
    )


def test_in_memory_fields_are_never_read():
    message = CrabMessage.from_line(
        '{"role":"user","content":"hi","sender":"tg:1","auto_injected":true}'
    )
    assert message.auto_injected is False
    assert message.sender == ""
    assert message.to_line() == '{"role":"user","content":"hi"}'


def test_tool_call_index_is_never_read():
    line = (
        '{"role":"assistant","tool_calls":[{"id":"c","index":3,"type":"function",'
        '"function":{"name":"f"}}]}'
    )
    message = CrabMessage.from_line(line)
    assert message.tool_calls[0].index is None


@pytest.mark.parametrize(
    "line",
    [
        '{"role":"user","content":"hi","sender":5}',
        '{"role":"user","content":"hi","auto_injected":"yes"}',
        '{"role":"assistant","tool_calls":[{"index":"x","type":"function","function":{}}]}',
    ],
)
def test_in_memory_keys_of_any_type_in_a_line_do_not_fail_the_read(line: str):
    # Never read means never validated either: such a key is not the reader's business.
    message = CrabMessage.from_line(line)
    assert message.sender == ""
    assert message.auto_injected is False


# --- unknown keys ---------------------------------------------------------------------------------


def test_unknown_message_keys_are_kept_and_written_back():
    line = '{"role":"user","content":"hi","mood":{"level":3,"tags":["a"]},"seen":true}'
    message = CrabMessage.from_line(line)
    assert message.model_extra == {"mood": {"level": 3, "tags": ["a"]}, "seen": True}
    assert message.to_line() == line


def test_unknown_tool_call_keys_are_kept_and_written_back():
    line = (
        '{"role":"assistant","tool_calls":[{"id":"c","type":"function",'
        '"function":{"name":"f","arguments":"{}","strict":true},"extra":[1,2]}]}'
    )
    message = CrabMessage.from_line(line)
    call = message.tool_calls[0]
    assert call.model_extra == {"extra": [1, 2]}
    assert call.function.model_extra == {"strict": True}
    assert message.to_line() == line


def test_unknown_header_keys_are_kept_and_written_back():
    line = (
        '{"agent":"crab","created_by":"user","created_at":"2026-04-02T19:40:03.500+00:00",'
        '"title":"Trip ☀️","uptime_secs":842,"tags":{"x":[1,null]}}'
    )
    meta = SessionMeta.from_line(line)
    assert meta.extra == {"title": "Trip ☀️", "uptime_secs": 842, "tags": {"x": [1, None]}}
    assert meta.to_line() == line


def test_header_extra_cannot_override_spec_keys():
    meta = SessionMeta(
        agent="crab",
        created_by="user",
        created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
        extra={"agent": "evil", "title": "t"},
    )
    assert json.loads(meta.to_line()) == {
        "agent": "crab",
        "created_by": "user",
        "created_at": "2026-01-01T00:00:00+00:00",
        "title": "t",
    }


# --- arguments text and string escaping ---------------------------------------------------------


def test_tool_call_arguments_text_is_kept_verbatim():
    line = (
        '{"role":"assistant","tool_calls":[{"id":"c","type":"function",'
        '"function":{"name":"f","arguments":"{\\"a\\": 1}"}}]}'
    )
    message = CrabMessage.from_line(line)
    assert message.tool_calls[0].function.arguments == '{"a": 1}'
    assert message.to_line() == line


def test_arguments_that_are_not_json_are_kept():
    call = ToolCall(function=FunctionCall(name="s", arguments='{"q": "unterminated'))
    line = CrabMessage(role="assistant", tool_calls=[call]).to_line()
    assert CrabMessage.from_line(line).tool_calls[0].function.arguments == '{"q": "unterminated'


def test_escaping_matches_serde_json_for_known_characters():
    text = 'a"b\\c/d\x01\x1f\x7f\u2028\u2029\x85\n\t\r\b\f日本😀'
    line = CrabMessage(role="user", content=text).to_line()
    assert line == (
        '{"role":"user","content":"a\\"b\\\\c/d\\u0001\\u001f\x7f\u2028\u2029\x85'
        '\\n\\t\\r\\b\\f日本😀"}'
    )


@settings(max_examples=300, deadline=None)
@given(role=st.text(min_size=1), content=st.text())
def test_to_line_matches_serde_json_and_parses_back(role: str, content: str):
    message = CrabMessage(role=role, content=content)
    expected = {"role": role, "content": content} if content else {"role": role}
    line = message.to_line()
    assert line == _compact(expected)
    assert "\n" not in line
    assert CrabMessage.from_line(line) == message
    assert CrabMessage.from_line(line.encode("utf-8")) == message


@settings(max_examples=100, deadline=None)
@given(
    before=st.text(),
    separator=st.sampled_from(["\u2028", "\u2029", "\x85", "\r", "\x0b", "\x0c", "\x1c"]),
    after=st.text(),
)
def test_unicode_line_separators_do_not_split_a_line(before: str, separator: str, after: str):
    content = before + separator + after
    line = CrabMessage(role="user", content=content).to_line()
    data = (line + "\n" + line + "\n").encode("utf-8")
    pieces = data.split(b"\n")
    assert pieces[2] == b""
    assert [CrabMessage.from_line(piece).content for piece in pieces[:2]] == [content, content]


# --- bad lines ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json", "not JSON"),
        ('{"role":"user"', "not JSON"),
        (b'{"role":"user","content":"\xff\xfe"}', "not UTF-8"),
        ("[1]", "expected a JSON object, got list"),
        ('"text"', "expected a JSON object, got str"),
        ("null", "expected a JSON object"),
        ('{"content":"hi"}', "no 'role'"),
        ("{}", "no 'role'"),
        ('{"role":""}', "role"),
        ('{"role":5}', "role"),
        ('{"role":null}', "role"),
        ('{"role":"user","content":5}', "content"),
        ('{"role":"user","content":["a"]}', "content"),
        ('{"role":"user","content":null}', "content"),
        ('{"role":"assistant","tool_calls":{}}', "tool_calls"),
        ('{"role":"assistant","tool_calls":"x"}', "tool_calls"),
        ('{"role":"assistant","tool_calls":[5]}', "tool_calls"),
        ('{"role":"assistant","tool_calls":[{"function":{"arguments":{"a":1}}}]}', "arguments"),
        ('{"compact":5}', "compact"),
        ('{"compact":null}', "compact"),
    ],
)
def test_bad_line_raises_format_error_with_reason(line: str | bytes, reason: str):
    with pytest.raises(SessionFormatError) as caught:
        parse_entry(line)
    assert reason in caught.value.reason
    assert isinstance(caught.value, ValueError)
    assert caught.value.path is None
    assert caught.value.line is None


def test_bad_compact_marker_reason_says_compact_marker():
    with pytest.raises(SessionFormatError, match="bad compact marker"):
        parse_entry('{"compact":5}')


@pytest.mark.parametrize(
    "line",
    [
        '{"role":"user","content":"x","n":NaN}',
        '{"role":"user","content":"x","n":Infinity}',
        '{"role":"user","content":"x","n":-Infinity}',
    ],
)
def test_non_json_number_literals_are_rejected(line: str):
    # serde_json (crabtalk) refuses these; accepting them would rewrite them as null.
    with pytest.raises(SessionFormatError, match="not JSON"):
        parse_entry(line)


def test_header_with_nan_literal_is_rejected():
    line = '{"agent":"a","created_by":"u","created_at":"2026-01-01T00:00:00+00:00","n":NaN}'
    with pytest.raises(SessionFormatError, match="not JSON"):
        SessionMeta.from_line(line)


def test_from_line_rejects_a_compact_marker():
    with pytest.raises(SessionFormatError, match="compact marker"):
        CrabMessage.from_line('{"compact":"summary"}')


def test_compact_marker_round_trips():
    marker = parse_entry('{"compact":"line one\\nline \\"two\\""}')
    assert marker == CompactMarker(compact='line one\nline "two"')
    assert marker.to_line() == '{"compact":"line one\\nline \\"two\\""}'


def test_format_error_located_str_has_path_and_line():
    error = SessionFormatError("not JSON", path="/x/s.jsonl", line=3)
    assert str(error) == "/x/s.jsonl:3: not JSON"
    moved = SessionFormatError("bad").at(Path("/a.jsonl"), 7)
    assert (moved.path, moved.line, moved.reason, str(moved)) == (
        "/a.jsonl",
        7,
        "bad",
        "/a.jsonl:7: bad",
    )
    assert str(SessionFormatError("bad")) == "bad"


def test_constructing_message_with_empty_role_fails():
    with pytest.raises(pydantic.ValidationError, match="role"):
        CrabMessage(role="")


# --- the header ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"created_by":"u","created_at":"2026-01-01T00:00:00+00:00"}', "'agent'"),
        ('{"agent":"a","created_at":"2026-01-01T00:00:00+00:00"}', "'created_by'"),
        ('{"agent":"a","created_by":"u"}', "'created_at'"),
        ('{"agent":5,"created_by":"u","created_at":"2026-01-01T00:00:00+00:00"}', "'agent'"),
        ('{"agent":"a","created_by":"u","created_at":1774253211}', "'created_at'"),
        ('{"agent":"a","created_by":"u","created_at":"yesterday"}', "RFC 3339"),
        ('{"agent":"a","created_by":"u","created_at":"2026-01-01T00:00:00"}', "RFC 3339"),
        ('{"agent":"a","created_by":"u","created_at":"2026-01-01"}', "RFC 3339"),
        ('{"agent":"a","created_by":"u","created_at":"2026-13-01T00:00:00Z"}', "header"),
        ('{"role":"user","content":"hi"}', "'agent'"),
        ("[]", "JSON object"),
        ("{", "not JSON"),
    ],
)
def test_bad_header_raises_format_error(line: str, reason: str):
    with pytest.raises(SessionFormatError) as caught:
        SessionMeta.from_line(line)
    assert reason in caught.value.reason


def test_naive_created_at_is_rejected():
    with pytest.raises(pydantic.ValidationError, match="timezone-aware"):
        SessionMeta(agent="a", created_by="u", created_at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        format_rfc3339(datetime(2026, 1, 1))


def test_nine_fraction_digits_parse_truncated_and_are_written_back_as_read():
    line = '{"agent":"crab","created_by":"user","created_at":"2026-03-23T08:06:51.482913999+00:00"}'
    meta = SessionMeta.from_line(line)
    assert meta.created_at == datetime(2026, 3, 23, 8, 6, 51, 482913, tzinfo=timezone.utc)
    assert meta.to_line() == line


def test_offset_time_stamp_is_written_back_as_read():
    line = '{"agent":"crab","created_by":"user","created_at":"2026-03-23T10:06:51.4829+02:00"}'
    meta = SessionMeta.from_line(line)
    assert meta.created_at == datetime(2026, 3, 23, 8, 6, 51, 482900, tzinfo=timezone.utc)
    assert meta.to_line() == line


def test_changed_created_at_is_formatted_not_the_stale_text():
    meta = SessionMeta.from_line(
        '{"agent":"crab","created_by":"user","created_at":"2026-03-23T08:06:51.482913000+00:00"}'
    )
    moved = meta.model_copy(
        update={"created_at": datetime(2027, 1, 2, 3, 4, 5, tzinfo=timezone.utc)}
    )
    assert moved.to_line() == (
        '{"agent":"crab","created_by":"user","created_at":"2027-01-02T03:04:05+00:00"}'
    )


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2026, 5, 1, tzinfo=timezone.utc), "2026-05-01T00:00:00+00:00"),
        (
            datetime(2026, 4, 2, 19, 40, 3, 500000, tzinfo=timezone.utc),
            "2026-04-02T19:40:03.500+00:00",
        ),
        (
            datetime(2026, 4, 2, 19, 40, 3, 1000, tzinfo=timezone.utc),
            "2026-04-02T19:40:03.001+00:00",
        ),
        (
            datetime(2026, 3, 23, 8, 6, 51, 482913, tzinfo=timezone.utc),
            "2026-03-23T08:06:51.482913+00:00",
        ),
        (
            datetime(2026, 3, 23, 8, 6, 51, 1, tzinfo=timezone.utc),
            "2026-03-23T08:06:51.000001+00:00",
        ),
        (
            datetime(2026, 3, 23, 10, 6, 51, tzinfo=timezone(timedelta(hours=2))),
            "2026-03-23T08:06:51+00:00",
        ),
        (
            datetime(2025, 12, 31, 20, 0, tzinfo=timezone(timedelta(hours=-5))),
            "2026-01-01T01:00:00+00:00",
        ),
    ],
)
def test_new_header_formats_created_at_like_chrono(moment: datetime, text: str):
    assert format_rfc3339(moment) == text
    meta = SessionMeta(agent="crab", created_by="user", created_at=moment)
    assert meta.to_line() == f'{{"agent":"crab","created_by":"user","created_at":"{text}"}}'
    assert SessionMeta.from_line(meta.to_line()).created_at == moment


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-03-23T08:06:51Z", datetime(2026, 3, 23, 8, 6, 51, tzinfo=timezone.utc)),
        ("2026-03-23t08:06:51z", datetime(2026, 3, 23, 8, 6, 51, tzinfo=timezone.utc)),
        ("2026-03-23 08:06:51+00:00", datetime(2026, 3, 23, 8, 6, 51, tzinfo=timezone.utc)),
        (
            "2026-03-23T08:06:51.5+05:30",
            datetime(
                2026, 3, 23, 8, 6, 51, 500000, tzinfo=timezone(timedelta(hours=5, minutes=30))
            ),
        ),
        (
            "2026-03-23T08:06:51.123456789-08:00",
            datetime(2026, 3, 23, 8, 6, 51, 123456, tzinfo=timezone(timedelta(hours=-8))),
        ),
    ],
)
def test_parse_rfc3339_handles_z_and_offsets(text: str, moment: datetime):
    parsed = parse_rfc3339(text)
    assert parsed == moment
    assert parsed.utcoffset() == moment.utcoffset()


def test_parse_rfc3339_offset_is_applied():
    assert parse_rfc3339("2026-03-23T10:06:51+02:00") == parse_rfc3339("2026-03-23T08:06:51Z")
    assert parse_rfc3339("2026-03-23T03:06:51-05:00") == parse_rfc3339("2026-03-23T08:06:51Z")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-03-23",
        "2026-03-23T08:06:51",
        "2026-03-23T08:06Z",
        "x2026-03-23T08:06:51Z",
        "2026-03-23T08:06:51+0200",
    ],
)
def test_parse_rfc3339_rejects_non_rfc3339(text: str):
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339(text)


@settings(max_examples=200, deadline=None)
@given(
    moment=st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9998, 12, 30),
        timezones=st.just(timezone.utc),
    )
)
def test_format_then_parse_rfc3339_is_identity(moment: datetime):
    text = format_rfc3339(moment)
    assert parse_rfc3339(text) == moment
    fraction = text[len("2026-01-01T00:00:00") : -len("+00:00")]
    assert len(fraction) in (0, 4, 7)


# --- role-and-text lines take a short way to the same bytes --------------------


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["user", "assistant", "system", "tool", "custom"]), st.text())
def test_text_only_line_bytes_equal_the_serializer(role: str, content: str):
    from crab_langchain.models import _dump_bytes

    message = CrabMessage(role=role, content=content)
    try:
        expected = _dump_bytes(message)
    except ValueError:
        with pytest.raises(ValueError, match="JSON"):  # a lone surrogate: both ways refuse it
            message.to_line_bytes()
        return
    assert message.to_line_bytes() == expected == message.to_line().encode()


@pytest.mark.parametrize(
    "message",
    [
        CrabMessage(role="user", content="x", name="n"),
        CrabMessage(role="assistant", content="", reasoning_content="r"),
        CrabMessage(role="tool", content="x", tool_call_id="1"),
        CrabMessage(role="assistant", agent="guest"),
        CrabMessage(role="user", content="x", langchain={"id": "1"}),
        CrabMessage.model_validate({"role": "user", "content": "x", "future": 1}),
        CrabMessage(
            role="assistant",
            tool_calls=[ToolCall(id="1", function=FunctionCall(name="f", arguments="{}"))],
        ),
    ],
)
def test_lines_with_more_than_text_take_the_serializer(message: CrabMessage):
    from crab_langchain.models import _dump_bytes

    assert message.to_line_bytes() == _dump_bytes(message) == message.to_line().encode()


# --- field lists are derived from the model -----------------------------------------

_SET = {
    "reasoning_content": "thinking",
    "name": "n",
    "tool_call_id": "call_1",
    "tool_calls": [ToolCall(id="c", function=FunctionCall(name="f", arguments="{}"))],
    "agent": "guest",
    "langchain": {"id": "x"},
    "nested": NestedLine(),
}


@pytest.mark.parametrize(
    "field",
    [
        f
        for f in CrabMessage.model_fields
        if f not in ("role", "content", "sender", "auto_injected")
    ],
)
def test_every_field_beyond_the_text_takes_a_message_off_the_text_only_path(field: str):
    """A new field must be listed here, and is then known to every shortcut."""
    message = CrabMessage(role="user", content="c", **{field: _SET[field]})
    assert not is_text_only(message)
    assert parse_entry(message.to_line_bytes()) == message
