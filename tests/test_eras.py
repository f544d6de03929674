"""crabtalk's JSONL eras (2026-03-23 to 2026-04-09): every file opens, every line round-trips.

The fixtures in ``tests/fixtures/crabtalk-eras/`` were written by crabtalk's
own serde types at each era's commit. What a reader must give is crabtalk's
loader's working context, each line read as its writer meant it (an absent
key is an empty value): :func:`crabtalk_context` says that from the spec
alone, with the standard library's ``json``, independently of our models.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import crab, isolated  # noqa: F401
from conftest import ERA_FILES, FIXTURE_FILES
from hypothesis import assume, given
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from strategies import MESSAGES

from crab_langchain import (
    COMPACT_MARKER_KEY,
    COMPACT_SUMMARY_KEY,
    NESTED_LINE_KEY,
    CompactMarker,
    CrabChatMessageHistory,
    CrabMessage,
    RunEvent,
    SessionStore,
    from_crab_message,
    hookimpl,
    to_crab_message,
)
from crab_langchain.convert import decode_line
from crab_langchain.models import parse_entry

ERA_IDS = [f"{path.parent.name}/{path.name}" for path in ERA_FILES]


def body_lines(path: Path) -> list[bytes]:
    """The file's lines after the header, without their newlines."""
    return path.read_bytes().split(b"\n")[1:-1]


def crabtalk_context(path: Path) -> list[dict[str, Any]]:
    """crabtalk's working context of ``path``, each message as a plain dict.

    The last marker's summary as a user message, then every message line
    after it; events are not messages; flat and nested lines alike.
    """
    entries = [json.loads(line) for line in body_lines(path) if line.strip()]
    start, context = 0, []
    for index, entry in enumerate(entries):
        if isinstance(entry.get("compact"), str):
            start, context = index + 1, [{**_EMPTY, "role": "user", "content": entry["compact"]}]
    for entry in entries[start:]:
        if "compact" in entry or "event" in entry:
            continue
        message = entry.get("message", entry)
        context.append(
            {
                "role": message["role"],
                "content": message.get("content") or "",
                "reasoning": message.get("reasoning_content") or "",
                "name": message.get("name") or "",
                "tool_call_id": message.get("tool_call_id") or "",
                "agent": entry.get("agent") or "",
                "calls": [
                    (
                        call.get("id") or "",
                        call["function"].get("name") or "",
                        call["function"].get("arguments") or "",
                    )
                    for call in message.get("tool_calls") or []
                ],
            }
        )
    return context


_EMPTY: dict[str, Any] = dict.fromkeys(
    ("content", "reasoning", "name", "tool_call_id", "agent"), ""
) | {"calls": []}
_ROLES = {"human": "user", "ai": "assistant", "tool": "tool", "system": "system"}


def as_plain(message: BaseMessage) -> dict[str, Any]:
    """What a LangChain message says, in :func:`crabtalk_context`'s terms."""
    is_ai, is_tool = isinstance(message, AIMessage), isinstance(message, ToolMessage)
    return {
        "role": _ROLES[message.type],
        "content": message.content,
        "reasoning": message.additional_kwargs.get("reasoning_content", ""),
        "name": (message.name or "") if is_tool else "",
        "tool_call_id": message.tool_call_id if is_tool else "",
        "agent": (message.name or "") if is_ai else "",
        "calls": [(c["id"] or "", c["name"], c["args"]) for c in message.tool_calls]
        if is_ai
        else [],
    }


# --- 1. every era reads, as its writer meant ------------------------------------------


def test_the_fixtures_are_there():
    assert len(ERA_FILES) == 18
    assert len({path.name for path in ERA_FILES}) == 18  # they can share one directory


@pytest.mark.parametrize("path", ERA_FILES, ids=ERA_IDS)
def test_every_era_file_gives_crabtalks_working_context(path: Path):
    history = CrabChatMessageHistory.from_file(path)
    expected = [
        {**message, "calls": [(i, n, json.loads(a or "{}")) for i, n, a in message["calls"]]}
        for message in crabtalk_context(path)
    ]
    assert [as_plain(message) for message in history.messages] == expected
    assert len(expected) >= 2


@pytest.mark.parametrize("path", ERA_FILES, ids=ERA_IDS)
def test_the_archive_holds_every_message_line_and_no_event(path: Path):
    archive = CrabChatMessageHistory.from_file(path).archive()
    entries = [json.loads(line) for line in body_lines(path)]
    assert len(archive) == sum(1 for entry in entries if "event" not in entry)
    summaries = [m.content for m in archive if m.additional_kwargs.get(COMPACT_SUMMARY_KEY)]
    assert summaries == [entry["compact"] for entry in entries if "compact" in entry]


def _era(name: str) -> Path:
    return next(path for path in ERA_FILES if path.name == name)


def test_a_seed_era_call_without_arguments_keeps_its_message_and_result():
    messages = CrabChatMessageHistory.from_file(_era("crab_1774273202_2.jsonl")).messages
    call = messages[1]
    assert isinstance(call, AIMessage)
    assert [(c["name"], c["args"]) for c in call.tool_calls] == [("now", {})]
    assert isinstance(messages[2], ToolMessage)
    assert messages[2].tool_call_id == call.tool_calls[0]["id"]


def test_a_marker_starts_the_context_with_its_summary():
    messages = CrabChatMessageHistory.from_file(_era("crab_user.jsonl")).messages
    assert type(messages[0]) is HumanMessage
    assert messages[0].content.startswith("The user is planning Saturday 2026-03-28 in Lisbon")
    assert [m.content for m in messages[1:]] == [
        "Evening: fado at a small tasca in Alfama around 21:00. "
        "Tram 28 runs every ~12 minutes until 22:35.",
        "Perfect, thanks! 🙏",
        "Enjoy Lisbon! 🦀",
    ]


def test_a_titled_marker_keeps_its_title_and_time_in_the_archive():
    archive = CrabChatMessageHistory.from_file(_era("crab_user_6_dinner-in-alfama.jsonl")).archive()
    (summary,) = [m for m in archive if m.additional_kwargs.get(COMPACT_SUMMARY_KEY)]
    assert summary.additional_kwargs[COMPACT_MARKER_KEY] == {
        "title": "Dinner in Alfama: options Marisqueira Alfama (4.",
        "archived_at": "2026-04-03T19:30:02.808825279+00:00",
    }


def test_event_lines_are_not_messages():
    path = _era("crab_user_9.jsonl")
    messages = CrabChatMessageHistory.from_file(path).messages
    assert len(messages) == 7  # 13 lines after the header, 6 of them events
    assert [m.content for m in messages if isinstance(m, HumanMessage)] == [
        "What time is it, and list my reminders",
        "actually only tomorrow's reminders",  # the steering message is a message line too
    ]


def test_nested_lines_read_as_messages():
    messages = CrabChatMessageHistory.from_file(_era("crab_user_11.jsonl")).messages
    assert len(messages) == 10
    guest = messages[5]
    assert isinstance(guest, AIMessage)
    assert (guest.name, guest.content) == (
        "guide",
        "Book the first slot next time, and bring headphones — it helps.",
    )
    no_text = messages[7]  # "content": null, "arguments": ""
    assert isinstance(no_text, AIMessage)
    assert no_text.content == ""
    assert [(c["name"], c["args"]) for c in no_text.tool_calls] == [("now", {})]


def test_header_keys_of_every_era_are_kept():
    session = CrabChatMessageHistory.from_file(_era("crab_user_2.jsonl")).session
    assert session.extra == {"title": "", "uptime_secs": 2}
    seed = CrabChatMessageHistory.from_file(_era("crab_1774263912_1.jsonl")).session
    assert (seed.agent, seed.created_by, seed.extra) == ("crab", "user", {})


def test_an_unknown_header_key_and_event_name_are_read(tmp_path: Path):
    path = tmp_path / "crab_future_1.jsonl"
    path.write_bytes(
        b'{"agent":"crab","created_by":"user","created_at":"2026-04-09T20:01:01Z",'
        b'"title":"t","uptime_secs":3,"mood":{"x":[1.5]}}\n'
        b'{"message":{"role":"user","content":"hi"}}\n'
        b'{"event":"thinking","ts":"2026-04-09T20:01:01Z","depth":1e3}\n'
        b'{"event":"done","usage":null}\n'
        b'{"message":{"role":"assistant","content":"hello"}}\n'
    )
    history = CrabChatMessageHistory.from_file(path)
    assert [m.content for m in history.messages] == ["hi", "hello"]
    assert history.session.extra["mood"] == {"x": [1.5]}


# --- 2. byte-exact both ways -------------------------------------------------------


def round_trip(line: bytes) -> bytes:
    """line -> CrabMessage -> LangChain message -> CrabMessage -> line."""
    message = CrabMessage.from_line(line)
    return to_crab_message(from_crab_message(message)).to_line_bytes()


@pytest.mark.parametrize("path", ERA_FILES + FIXTURE_FILES, ids=lambda p: p.name)
def test_every_message_line_round_trips_through_langchain(path: Path):
    for line in body_lines(path):
        entry = parse_entry(line)
        if isinstance(entry, CrabMessage):
            assert round_trip(line) == line
        else:
            assert entry.to_line_bytes() == line


@pytest.mark.parametrize("path", ERA_FILES, ids=ERA_IDS)
def test_what_a_history_reads_writes_back_as_the_same_lines(path: Path):
    archive = CrabChatMessageHistory.from_file(path).archive()
    written = [
        to_crab_message(m).to_line_bytes()
        for m in archive
        if not m.additional_kwargs.get(COMPACT_SUMMARY_KEY)
    ]
    assert written == [
        line for line in body_lines(path) if isinstance(parse_entry(line), CrabMessage)
    ]


def test_a_nested_message_says_so_in_langchain():
    line = (
        b'{"message":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"c",'
        b'"type":"function","function":{"name":"now","arguments":""}}]}}'
    )
    message = from_crab_message(CrabMessage.from_line(line))
    assert message.additional_kwargs[NESTED_LINE_KEY] == {"null_content": True, "indexes": [0]}
    plain = from_crab_message(CrabMessage.from_line(b'{"message":{"role":"user","content":"x"}}'))
    assert plain.additional_kwargs == {NESTED_LINE_KEY: {}}
    assert to_crab_message(plain).to_line_bytes() == b'{"message":{"role":"user","content":"x"}}'


def test_a_nested_message_stays_nested_through_a_before_persist_hook(tmp_path: Path):
    class Shout:
        @hookimpl
        def crab_before_persist(self, session: Any, messages: list[CrabMessage]) -> None:
            for message in messages:
                message.content = message.content.upper()

    source = _era("crab_user_13.jsonl")
    line = body_lines(source)[-1]  # {"agent":"guide","message":{...}}
    message = from_crab_message(CrabMessage.from_line(line))
    history = SessionStore(tmp_path, [Shout()], entry_points=False).get_session_history("s")
    history.add_messages([message])
    assert history.file_path is not None
    written = history.file_path.read_bytes().split(b"\n")[1]
    expected = json.loads(line)
    expected["message"]["content"] = expected["message"]["content"].upper()
    assert written == serde(expected)


@pytest.mark.parametrize("path", ERA_FILES, ids=ERA_IDS)
def test_appending_to_an_era_file_keeps_every_byte_and_writes_flat_lines(
    path: Path, tmp_path: Path
):
    copy = tmp_path / path.name
    shutil.copyfile(path, copy)
    before = copy.read_bytes()
    history = CrabChatMessageHistory.from_file(copy)
    context = history.messages
    history.add_messages([HumanMessage("one more"), AIMessage("sure")])
    assert copy.read_bytes() == (
        before + b'{"role":"user","content":"one more"}\n{"role":"assistant","content":"sure"}\n'
    )
    assert history.messages == [*context, HumanMessage("one more"), AIMessage("sure")]
    assert CrabChatMessageHistory.from_file(copy).messages == history.messages


# --- hypothesis: lines as each era's writer wrote them ---------------------------------

TEXT = st.text(max_size=12)
NON_EMPTY = st.text(min_size=1, max_size=12)
ROLES = st.sampled_from(["user", "assistant", "tool", "system"]) | NON_EMPTY
ARGUMENTS = st.one_of(
    st.just(""), TEXT, st.dictionaries(TEXT, st.integers() | TEXT, max_size=2).map(json.dumps)
)


def serde(value: Any) -> bytes:
    """``value`` as serde_json prints it: compact, non-ASCII raw (ints and strings only here)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _set(target: dict[str, Any], key: str, value: Any) -> None:
    if value:
        target[key] = value


@st.composite
def flat_lines(draw: st.DrawFn) -> bytes:
    """A message line as the flat writers wrote it (empty values left out)."""
    line: dict[str, Any] = {"role": draw(ROLES)}
    for key in ("content", "reasoning_content", "name", "tool_call_id"):
        _set(line, key, draw(TEXT))
    calls = []
    for _ in range(draw(st.integers(0, 2))):
        call: dict[str, Any] = {}
        _set(call, "id", draw(TEXT))
        call["type"] = "function"
        call["function"] = {}
        _set(call["function"], "name", draw(TEXT))
        _set(call["function"], "arguments", draw(ARGUMENTS))
        calls.append(call)
    _set(line, "tool_calls", calls)
    _set(line, "agent", draw(TEXT))
    return serde(line)


@st.composite
def nested_lines(draw: st.DrawFn) -> bytes:
    """A message line as 387d691f and 7531c145 wrote it."""
    calls = [
        {
            **({"index": index} if draw(st.booleans()) else {}),
            "id": draw(NON_EMPTY),
            "type": "function",
            "function": {"name": draw(NON_EMPTY), "arguments": draw(ARGUMENTS)},
        }
        for index in range(draw(st.integers(0, 3)))
    ]
    text = draw(st.none() | TEXT)
    message: dict[str, Any] = {"role": draw(ROLES), "content": text}
    _set(message, "tool_calls", calls)
    for key in ("tool_call_id", "name", "reasoning_content"):
        _set(message, key, draw(TEXT))
    extra = draw(st.dictionaries(st.sampled_from(["refusal", "audio", "x"]), TEXT, max_size=2))
    line: dict[str, Any] = {}
    _set(line, "agent", draw(TEXT))
    return serde({**line, "message": {**message, **extra}})


markers = st.builds(
    lambda summary, title, at: serde(
        {
            "compact": summary,
            **({"title": title} if title else {}),
            **({"archived_at": at} if at else {}),
        }
    ),
    TEXT,
    TEXT,
    TEXT,
)
events = st.builds(
    lambda name, fields: serde({"event": name, **fields}),
    st.sampled_from(["tool_start", "tool_result", "user_steered", "done"]) | TEXT,
    st.dictionaries(
        st.text(max_size=8).filter(lambda key: key not in ("event", "compact")),
        st.integers() | TEXT | st.lists(st.integers(), max_size=2),
        max_size=3,
    ),
)


@given(flat_lines() | nested_lines())
def test_generated_message_lines_round_trip_byte_exact(line: bytes):
    assert round_trip(line) == line


@given(flat_lines() | nested_lines() | markers | events)
def test_the_text_only_shortcut_reads_every_line_as_the_long_way(line: bytes):
    entry = parse_entry(line)
    decoded = decode_line(line)
    if isinstance(entry, CrabMessage):
        long = from_crab_message(entry)
        assert decoded == long
        assert type(decoded) is type(long)
        assert decoded.model_fields_set == long.model_fields_set  # type: ignore[union-attr]
    else:
        assert decoded == entry


@given(markers | events)
def test_generated_markers_and_events_are_not_messages_and_keep_their_bytes(line: bytes):
    entry = parse_entry(line)
    assert isinstance(entry, (CompactMarker, RunEvent))
    assert entry.to_line_bytes() == line


@given(st.lists(flat_lines() | nested_lines() | markers | events, max_size=12))
def test_generated_files_give_crabtalks_working_context(tmp_path_factory, lines: list[bytes]):
    path = tmp_path_factory.mktemp("era") / "crab_user_1.jsonl"
    header = b'{"agent":"crab","created_by":"user","created_at":"2026-04-08T12:00:00+00:00"}'
    path.write_bytes(b"".join(line + b"\n" for line in [header, *lines]))
    history = CrabChatMessageHistory.from_file(path)
    assert [_plain_crab(m) for m in history.session.history] == crabtalk_context(path)


def _plain_crab(message: CrabMessage) -> dict[str, Any]:
    return {
        "role": message.role,
        "content": message.content,
        "reasoning": message.reasoning_content,
        "name": message.name,
        "tool_call_id": message.tool_call_id,
        "agent": message.agent,
        "calls": [(c.id, c.function.name, c.function.arguments or "") for c in message.tool_calls],
    }


# --- 3. what we write, every flat-era reader reads ------------------------------------


def _lacks_arguments_on_purpose(message: BaseMessage) -> bool:
    """Raw calls without ``arguments``: how a crabtalk line without them reads (kept as is)."""
    raw = message.additional_kwargs.get("tool_calls")
    return isinstance(raw, list) and any(
        not isinstance(call, dict)
        or not isinstance(call.get("function"), dict)
        or "arguments" not in call["function"]
        for call in raw
    )


def missing_keys(line: bytes) -> list[str]:
    """The keys the strictest flat-era reader requires that ``line`` lacks."""
    data = json.loads(line)
    missing = [] if isinstance(data.get("role"), str) else ["role"]
    for index, call in enumerate(data.get("tool_calls") or []):
        function = call.get("function")
        if not isinstance(function, dict):
            missing.append(f"tool_calls[{index}].function")
        elif not isinstance(function.get("arguments"), str):
            missing.append(f"tool_calls[{index}].function.arguments")
    return missing


@given(MESSAGES)
def test_every_line_we_write_carries_what_flat_readers_require(message: BaseMessage):
    assume(not _lacks_arguments_on_purpose(message))
    for strict in (False, True):
        assert missing_keys(to_crab_message(message, strict=strict).to_line_bytes()) == []


def test_a_call_without_arguments_is_written_with_empty_arguments():
    message = AIMessage("", tool_calls=[{"name": "now", "args": {}, "id": "c1"}])
    line = to_crab_message(message).to_line_bytes()
    assert line == (
        b'{"role":"assistant","tool_calls":[{"id":"c1","type":"function",'
        b'"function":{"name":"now","arguments":"{}"}}]}'
    )
    invalid = AIMessage(
        "", invalid_tool_calls=[{"name": "f", "args": None, "id": "c2", "error": "cut off"}]
    )
    assert missing_keys(to_crab_message(invalid).to_line_bytes()) == []


# --- keys that would make crabtalk read our line as something else ---------------------


@pytest.mark.parametrize("key", ["compact", "event", "message"])
def test_an_extra_key_that_changes_the_lines_kind_is_refused(key: str, tmp_path: Path):
    with pytest.raises(ValueError, match=f"unknown key '{key}'"):
        CrabMessage(role="user", content="x", **{key: "y"}).to_line_bytes()
    history = SessionStore(tmp_path, entry_points=False).get_session_history("s")
    history.add_messages([HumanMessage("kept")])
    with pytest.raises(ValueError, match=key):
        history.add_messages(
            [HumanMessage("a"), HumanMessage("b", additional_kwargs={"crab": {key: "y"}})]
        )
    assert [m.content for m in history.messages] == ["kept"]


def test_a_line_with_role_and_compact_is_a_marker_as_crabtalk_reads_it():
    assert isinstance(parse_entry(b'{"role":"user","compact":"s"}'), CompactMarker)
    assert isinstance(parse_entry(b'{"role":"user","event":"done"}'), RunEvent)


# --- 4. crabtalk's directories list and open -----------------------------------------


@pytest.fixture
def crabtalk_home(tmp_path: Path) -> Path:
    """One sessions directory with every era's files and the hand-written fixtures."""
    directory = tmp_path / "crabtalk"  # the directory backend's is tmp_path / "sessions"
    directory.mkdir()
    for path in ERA_FILES + FIXTURE_FILES:
        shutil.copyfile(path, directory / path.name)
    return directory


EXPECTED_IDS = {
    "crab_1774263912_1.jsonl": "1",  # the seed's naming: the id is the last part
    "crab_tg-12345.jsonl": "tg-12345",
    "crab_user_1_lisbon-weekend-trip.jsonl": "user_1_lisbon-weekend-trip",
    "crab_tg-12345_1.jsonl": "tg-12345_1",
    "crab_user_13.jsonl": "user_13",
}


def test_a_directory_of_every_era_lists_with_titles(crabtalk_home: Path):
    infos = SessionStore(crabtalk_home, entry_points=False).list_sessions()
    by_name = {info.name: info for info in infos}
    assert set(by_name) == {path.name for path in ERA_FILES + FIXTURE_FILES}
    for name, session_id in EXPECTED_IDS.items():
        assert by_name[name].session_id == session_id
    titled = by_name["crab_user_12_spain-weather.jsonl"]
    assert (titled.agent, titled.created_by, titled.title) == ("crab", "user", "Spain Weather")
    assert titled.created_at.isoformat() == "2026-04-09T12:30:02.192170+00:00"
    assert by_name["crab_tg-12345.jsonl"].title is None  # before titles existed


def test_each_listed_session_opens_by_its_id(crabtalk_home: Path):
    store = SessionStore(crabtalk_home, entry_points=False)
    for info in store.list_sessions():
        history = store.get_session_history(info.session_id, agent=info.agent)
        assert history.file_path == info.path
        assert history.messages == CrabChatMessageHistory.from_file(info.path).messages


def test_a_title_with_letters_we_would_encode_opens_by_its_id(backend, tmp_path: Path):
    # crabtalk's title slugs keep non-ASCII letters; our own names would percent-encode them.
    source = tmp_path / "source"
    source.mkdir()
    path = source / "crab_user_14_café-à-beira-rio.jsonl"
    shutil.copyfile(_era("crab_user_13.jsonl"), path)
    backend.put(path)
    store = backend.store()
    (info,) = store.list_sessions()
    assert info.session_id == "user_14_café-à-beira-rio"
    history = store.get_session_history(info.session_id)
    assert [m.content for m in history.messages][-1].startswith("Tapas bars")


def test_a_file_renamed_without_its_agent_opens_by_its_stem(tmp_path: Path):
    shutil.copyfile(_era("crab_user_13.jsonl"), tmp_path / "dinner notes.jsonl")
    store = SessionStore(tmp_path, entry_points=False)
    assert [info.session_id for info in store.list_sessions()] == ["dinner notes"]
    assert store.find("dinner notes") == "dinner notes.jsonl"
    assert store.find("notes") is None  # a suffix of the name is not the id


def test_a_new_session_still_gets_the_seeds_naming(crabtalk_home: Path):
    store = SessionStore(crabtalk_home, entry_points=False)
    history = store.get_session_history("fresh")
    history.add_messages([HumanMessage("hi")])
    assert history.file_path is not None
    agent, seconds, session_id = history.file_path.name.removesuffix(".jsonl").split("_")
    assert (agent, session_id) == ("crab", "fresh")
    assert seconds.isdigit()


def test_a_hostile_id_never_names_a_file_outside(crabtalk_home: Path):
    store = SessionStore(crabtalk_home, entry_points=False)
    for hostile in ("../sessions/crab_user_13", "/etc/passwd", "x\n", "."):
        assert store.find(hostile) is None


def test_an_era_file_without_a_usable_header_is_skipped_with_a_warning(crabtalk_home: Path):
    (crabtalk_home / "crab_user_99.jsonl").write_bytes(b'{"agent":"crab"}\n')
    with pytest.warns(UserWarning, match="crab_user_99.jsonl"):
        infos = SessionStore(crabtalk_home, entry_points=False).list_sessions()
    assert len(infos) == len(ERA_FILES + FIXTURE_FILES)


def test_era_files_copied_to_another_storage_list_and_open_there(backend, crabtalk_home: Path):
    for path in ERA_FILES:
        backend.put(crabtalk_home / path.name)
    store = backend.store()
    infos = {info.name: info for info in store.list_sessions()}
    assert set(infos) == {path.name for path in ERA_FILES}
    history = store.get_session_history("user_8_weather-in-lisbon")
    assert [m.content for m in history.messages][-2:] == ["👍", "Enjoy! 🦀"]
    assert backend.lines("crab_user_8_weather-in-lisbon.jsonl")[1:] == body_lines(
        crabtalk_home / "crab_user_8_weather-in-lisbon.jsonl"
    )


# --- 5. the CLI shows what is there ---------------------------------------------------


def test_show_prints_events_as_notes_and_markers_with_their_title(crabtalk_home: Path):
    done = crab("--root", crabtalk_home, "show", "user_8_weather-in-lisbon")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "11 messages" in lines[0]
    assert "title 'Weather in Lisbon'" in lines[0]
    assert (
        "· get_weather returned after 388 ms (id=call_0_66a29c08-d852-d8e5-35ca-60bd9d385971)"
        in lines
    )
    assert (
        "· run done: deepseek-chat, 3 iterations, text_response, "
        "tokens 2840 in, 104 out (2064 in from cache)"
    ) in lines
    assert any(
        line.startswith(
            "--- compacted (Lisbon this week: now 20 °C clear; Wed 21, Thu 19, Fri 17);"
        )
        for line in lines
    )
    assert not any('"event"' in line for line in lines)


def test_show_notes_a_steered_run_and_an_unknown_event(tmp_path: Path):
    path = tmp_path / "crab_user_1.jsonl"
    path.write_bytes(_era("crab_user_9.jsonl").read_bytes() + b'{"event":"napped","ts":"x"}\n')
    done = crab("show", path)
    assert done.returncode == 0, done.stderr
    assert "· user steered the run: actually only tomorrow's reminders" in done.stdout
    assert "· tool call started: now()" in done.stdout
    assert "· event 'napped'" in done.stdout


def test_show_opens_an_era_session_by_id_with_the_agent(crabtalk_home: Path):
    done = crab("--root", crabtalk_home, "show", "--agent", "crab", "tg-12345_1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "assistant: Auckland is UTC+13 now, so it's 21:20 there."


def test_verify_counts_event_lines_as_fine(crabtalk_home: Path):
    done = crab("--root", crabtalk_home, "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(ERA_FILES + FIXTURE_FILES)} files checked, 0 with problems" in done.stderr


def test_list_json_has_each_title(crabtalk_home: Path):
    done = crab("--root", crabtalk_home, "list", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["session_id"]: row for row in json.loads(done.stdout)}
    assert rows["user_3_rust-lifetimes-question"]["title"] == "Rust Lifetimes Question"
    assert rows["user_2"]["title"] == ""
    assert rows["tg-12345"]["title"] is None
    assert rows["user_8_weather-in-lisbon"]["messages"] == 11  # event lines are not messages
    header, *rows = crab("--root", crabtalk_home, "list").stdout.splitlines()
    assert header.split()[-1] == "TITLE"
    assert any(row.endswith("  Rust Lifetimes Question") for row in rows)


def test_no_warning_reading_any_era():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in ERA_FILES:
            CrabChatMessageHistory.from_file(path).archive()
