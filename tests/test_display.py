"""The Jupyter and plain-text display: escaping, truncation, marks, and never raising.

What renders stored sessions runs on every backend (see ``backends.py``); on Redis
the header names the server and key where a directory names the file.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest
from backends import Backend
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from crab_langchain import (
    CrabChatMessageHistory,
    DirectoryStorage,
    Session,
    SessionStore,
    hookimpl,
    mark_auto_injected,
)
from crab_langchain.display import history_html, history_text, message_line, store_html

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "crabtalk"
SCRIPT = '<script>alert("x")</script>'


class Html(HTMLParser):
    """The parts of rendered HTML the tests look at."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []
        self.messages: list[str] = []  # text of each .crab-message block
        self.details: list[str] = []  # text inside each <details>
        self.rows: list[list[str]] = []  # <tbody> cells
        self._open: list[tuple[str, list[str]]] = []  # (tag, text parts) of tracked elements
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        classes = dict(attrs).get("class") or ""
        if tag == "div" and "crab-message" in classes:
            self._open.append(("message", []))
        elif tag in ("details", "tr", "td"):
            self._open.append((tag, []))
        elif tag == "div" and self._open:
            self._open.append(("div", []))

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("div", "details", "tr", "td") or not self._open:
            return
        kind, parts = self._open.pop()
        text = "".join(parts)
        if kind == "message":
            self.messages.append(text)
        elif kind == "details":
            self.details.append(text)
        elif kind == "td" and self._open and self._open[-1][0] == "tr":
            self._open[-1][1].append(text + "\x00")
        elif kind == "tr" and "\x00" in text:
            self.rows.append(text.split("\x00")[:-1])

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        for kind, parts in self._open:
            if kind != "tr":
                parts.append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def store(backend: Backend, plugins: list[object] | None = None) -> SessionStore:
    return backend.store(plugins)


def written(backend: Backend, messages: list[BaseMessage], **kwargs: str) -> CrabChatMessageHistory:
    history = store(backend).get_session_history(kwargs.pop("session_id", "s1"), **kwargs)
    history.add_messages(messages)
    return history


class Inject:
    """Injects one system message before each run."""

    def __init__(self, text: str = "Recall: the user likes trains.") -> None:
        self.text = text

    @hookimpl
    def crab_inject_messages(self, session: Session) -> list[BaseMessage]:
        return [SystemMessage(self.text)]


# --- escaping ---------------------------------------------------------------------

HOSTILE_MESSAGES = {
    "content": [HumanMessage(SCRIPT)],
    "list content": [HumanMessage([{"type": "text", "text": SCRIPT}])],
    "message name": [HumanMessage("hi", name=SCRIPT)],
    "tool call name": [AIMessage("", tool_calls=[{"name": SCRIPT, "args": {}, "id": "c1"}])],
    "tool call id": [AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": SCRIPT}])],
    "tool call arg value": [
        AIMessage("", tool_calls=[{"name": "f", "args": {"q": SCRIPT}, "id": "c1"}])
    ],
    "tool call arg key": [
        AIMessage("", tool_calls=[{"name": "f", "args": {SCRIPT: 1}, "id": "c"}])
    ],
    "invalid tool call args": [
        AIMessage(
            "",
            invalid_tool_calls=[
                {
                    "name": "f",
                    "args": SCRIPT,
                    "id": "c1",
                    "error": "bad",
                    "type": "invalid_tool_call",
                }
            ],
        )
    ],
    "reasoning": [AIMessage("ok", additional_kwargs={"reasoning_content": SCRIPT})],
    "tool result": [ToolMessage(SCRIPT, tool_call_id=SCRIPT, name=SCRIPT, status="error")],
}


@pytest.mark.parametrize("messages", HOSTILE_MESSAGES.values(), ids=HOSTILE_MESSAGES.keys())
def test_script_in_a_message_is_shown_as_text_never_as_a_tag(
    backend: Backend, messages: list[BaseMessage]
):
    page = Html(history_html(written(backend, messages)))
    assert "script" not in page.tags
    assert SCRIPT in page.all_text or json.dumps(SCRIPT) in page.all_text


def test_script_in_session_id_and_agent_is_escaped(backend: Backend):
    history = written(backend, [HumanMessage("hi")], session_id=SCRIPT, agent=SCRIPT)
    page = Html(history_html(history))
    assert "script" not in page.tags
    assert page.all_text.count(SCRIPT) >= 2  # the id and the agent, as text


def test_script_in_store_table_is_escaped(backend: Backend):
    sessions = store(backend)
    sessions.get_session_history(SCRIPT, agent=SCRIPT).add_messages([HumanMessage("hi")])
    page = Html(store_html(sessions))
    assert "script" not in page.tags
    assert page.rows[0][:2] == [SCRIPT, SCRIPT]


def test_injected_script_is_neither_run_nor_shown(backend: Backend):
    history = store(backend, [Inject(SCRIPT)]).get_session_history("s1")
    history.add_messages([HumanMessage("hi")])
    page = Html(history_html(history))
    assert "script" not in page.tags
    assert SCRIPT not in page.all_text  # a transcript asks no plugin to inject


# --- what a transcript shows ------------------------------------------------------


def test_injected_mark_only_on_injected_messages():
    injected = mark_auto_injected(HumanMessage("Recall: the user likes trains."))
    lines = [message_line(m) for m in (HumanMessage("hello"), AIMessage("hi"), injected)]
    assert ["injected, not stored" in line for line in lines] == [False, False, True]


class Recorded:
    """Records every hook call it gets."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def crab_inject_messages(self) -> list[BaseMessage]:
        self.calls.append("crab_inject_messages")
        return [HumanMessage("Recall: the user likes trains.")]

    @hookimpl
    def crab_after_load(self) -> None:
        self.calls.append("crab_after_load")


def test_repr_runs_no_plugin_hook_and_leaves_the_history_as_it_was(backend: Backend):
    plugin = Recorded()
    sessions = store(backend, [plugin])
    sessions.get_session_history("s1").add_messages([HumanMessage("hello"), AIMessage("hi")])
    history = sessions.get_session_history("s1")
    plugin.calls.clear()
    text, page = repr(history), Html(history._repr_html_())
    assert plugin.calls == []
    assert len(text.splitlines()) == 3  # the header and the two stored messages
    assert "2 messages" in text
    assert len(page.messages) == 2
    assert "Recall" not in text + page.all_text
    assert [m.content for m in history.messages] == [  # the first read still loads, and asks
        "hello",
        "hi",
        "Recall: the user likes trains.",
    ]
    assert plugin.calls == ["crab_after_load", "crab_inject_messages"]


def test_tool_call_shows_name_id_and_pretty_args(backend: Backend):
    args = {"city": "Lisbon", "days": [1, 2]}
    call = {"name": "get_weather", "args": args, "id": "call_1"}
    history = written(backend, [AIMessage("", tool_calls=[call])])
    (message,) = Html(history_html(history)).messages
    assert "get_weather" in message
    assert "call_1" in message
    assert json.dumps(args, indent=2) in message
    assert history_text(history).splitlines()[1] == (
        'assistant: [tool call get_weather(city="Lisbon", days=[1, 2]) id=call_1]'
    )


def test_invalid_tool_call_shows_raw_args_and_error(backend: Backend):
    bad = {"name": "search", "args": '{"q": "unterm', "id": "c9", "error": "not JSON"}
    history = written(backend, [AIMessage("", invalid_tool_calls=[bad])])
    (message,) = Html(history_html(history)).messages
    assert '{"q": "unterm' in message
    assert "search" in message
    assert "c9" in message


def test_tool_result_shows_name_call_id_and_error_status(backend: Backend):
    results = [
        ToolMessage("21 C", tool_call_id="call_1", name="get_weather"),
        ToolMessage("boom", tool_call_id="call_2", name="get_time", status="error"),
    ]
    history = written(backend, results)
    ok, failed = Html(history_html(history)).messages
    assert all(part in ok for part in ("get_weather", "call_1", "21 C"))
    assert "error" not in ok
    assert all(part in failed for part in ("get_time", "call_2", "boom", "error"))
    assert history_text(history).splitlines()[2] == "tool get_time id=call_2 (error): boom"


@pytest.mark.parametrize(
    "message",
    [
        AIMessage("answer", additional_kwargs={"reasoning_content": "step one, step two"}),
        AIMessage(
            [
                {"type": "reasoning", "reasoning": "step one, step two"},
                {"type": "text", "text": "answer"},
            ]
        ),
    ],
    ids=["reasoning_content", "reasoning block"],
)
def test_reasoning_is_collapsed_in_details(backend: Backend, message: AIMessage):
    page = Html(history_html(written(backend, [message])))
    assert len(page.details) == 1
    assert "step one, step two" in page.details[0]
    assert page.all_text.count("step one, step two") == 1  # not repeated outside
    assert "answer" in page.messages[0]


def test_image_block_is_a_placeholder_not_its_data(backend: Backend):
    data = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB" * 10
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "base64": data, "mime_type": "image/png"},
    ]
    history = written(backend, [HumanMessage(content)])
    (message,) = Html(history_html(history)).messages
    assert "what is this?" in message
    assert "[image]" in message
    assert data not in message
    assert history_text(history).splitlines()[1] == "user: what is this? [image]"


def test_header_names_session_agent_file_and_count(backend: Backend):
    history = written(backend, [HumanMessage("a"), AIMessage("b")], agent="crab")
    if backend.is_server:  # no file: where it is, the server and the key
        assert history.file_path is None
        assert history.location is not None
        place = f"{backend.prefix}.logs " if backend.kind == "postgres" else f"{backend.prefix}:"
        assert history.location.startswith(f"{backend.url} {place}")
        where = history.location
        shown = f"at={where!r}"
    else:
        assert history.file_path is not None
        where = str(history.file_path)
        shown = f"file={where!r}"
    first = history_text(history).splitlines()[0]
    assert first == f"CrabChatMessageHistory(session_id='s1', agent='crab', {shown}, 2 messages)"
    page = Html(history_html(history)).all_text
    assert all(part in page for part in ("s1", "crab", "user", where))


def test_control_characters_never_reach_the_text_repr(backend: Backend):
    history = written(backend, [HumanMessage("red \x1b[31mALERT\x1b[0m\nsecond line")])
    text = history_text(history)
    assert "\x1b" not in text
    assert text.splitlines()[1] == "user: red \\x1b[31mALERT\\x1b[0m\\nsecond line"


def test_crabtalk_fixture_renders_every_message(backend: Backend):
    backend.put(FIXTURES / "crab_1774253211_7.jsonl")
    history = store(backend).get_session_history("7")
    page = Html(history_html(history))
    assert len(page.messages) == len(history.messages) == 8
    assert "Two cities: call the weather tool twice." in page.details[0]
    assert "Livraria Lello" in page.messages[-1]


# --- truncation -------------------------------------------------------------------


def chat(count: int) -> list[BaseMessage]:
    return [HumanMessage(f"message {i}") for i in range(count)]


def test_long_session_shows_the_last_50_and_counts_the_rest(backend: Backend):
    history = written(backend, chat(63))
    page = Html(history_html(history))
    assert len(page.messages) == 50
    assert "message 13" in page.messages[0]
    assert "message 62" in page.messages[-1]
    assert "13 earlier messages hidden" in page.all_text
    lines = history_text(history).splitlines()
    assert lines[1] == "… 13 earlier messages hidden"
    assert lines[2:] == [f"user: message {i}" for i in range(13, 63)]


def test_limit_keyword_and_no_note_when_nothing_is_hidden(backend: Backend):
    history = written(backend, chat(5))
    assert len(Html(history_html(history, limit=2)).messages) == 2
    assert "3 earlier messages hidden" in history_text(history, limit=2)
    assert "hidden" not in history_html(history)
    assert "hidden" not in history_text(history)


def test_huge_content_is_clipped_in_html(backend: Backend):
    history = written(backend, [HumanMessage("x" * 25_000)])
    (message,) = Html(history_html(history)).messages
    assert "x" * 10_000 in message
    assert "x" * 10_001 not in message
    assert "15000 more characters" in message


def test_long_lines_are_cut_in_the_repr(backend: Backend):
    history = written(backend, [HumanMessage("y" * 1000)])
    line = history_text(history).splitlines()[1]
    assert line.startswith("user: yyy")
    assert line.endswith("…")
    assert len(line) <= 200


# --- never raising ----------------------------------------------------------------


def test_repr_of_a_malformed_file_names_the_problem(backend: Backend):
    history = written(backend, [HumanMessage("hi")])
    where = history.location
    assert where is not None
    name = store(backend).find("s1")
    assert name is not None
    backend.storage().append(name, [b"{not json"])  # as a broken writer would
    text = repr(history)
    assert "\n" not in text
    assert "SessionFormatError" in text
    assert f"{where}:3" in text
    assert "SessionFormatError" in Html(history._repr_html_()).all_text


def test_repr_of_a_deleted_file_names_the_problem(tmp_path: Path):
    copy = tmp_path / "crab_1774253211_7.jsonl"
    copy.write_bytes((FIXTURES / copy.name).read_bytes())
    history = CrabChatMessageHistory.from_file(copy)
    copy.unlink()
    assert "FileNotFoundError" in repr(history)
    assert str(copy) in repr(history)
    assert "FileNotFoundError" in Html(history._repr_html_()).all_text


def test_repr_survives_a_malformed_file(tmp_path: Path):
    path = tmp_path / "broken.jsonl"
    path.write_bytes(
        b'{"agent":"crab","created_by":"user","created_at":"2026-01-01T00:00:00Z"}\nnot json\n'
    )
    history = CrabChatMessageHistory(
        Session(id="broken", agent="crab", created_at=datetime.now(timezone.utc)),
        storage=DirectoryStorage(tmp_path),
        name=path.name,
    )
    assert "SessionFormatError" in repr(history)
    assert f"{path}:2" in repr(history)
    assert "SessionFormatError" in Html(history._repr_html_()).all_text


def test_unwritten_history_renders_empty(backend: Backend):
    history = store(backend).get_session_history("fresh")
    assert repr(history) == "CrabChatMessageHistory(session_id='fresh', not written yet)"
    page = Html(history._repr_html_())
    assert page.messages == []
    assert "not written yet" in page.all_text


# --- the store --------------------------------------------------------------------


def fixture_store(backend: Backend) -> SessionStore:
    for source in sorted(FIXTURES.glob("*.jsonl")):
        backend.put(source)
    return store(backend)


def test_store_table_rows_match_list_sessions(backend: Backend):
    sessions = fixture_store(backend)
    sessions.get_session_history("new", agent="guide").add_messages([HumanMessage("hi")])
    rows = Html(store_html(sessions)).rows
    expected = [
        [i.agent, i.session_id, i.created_by, i.created_at.isoformat(), i.title or "", i.name]
        for i in sessions.list_sessions()
    ]
    assert [row[:5] + row[6:] for row in rows] == expected
    assert "Trip planning" in {row[4] for row in rows}


def test_store_table_shows_each_sessions_size(backend: Backend):
    sessions = fixture_store(backend)
    sizes = {row[6]: row[5] for row in Html(store_html(sessions)).rows}
    assert sizes["research_bot_1777593600_3.jsonl"] == "571 B"


def test_store_table_is_truncated_with_a_count(backend: Backend):
    sessions = fixture_store(backend)
    page = Html(store_html(sessions, limit=2))
    newest = [info.name for info in sessions.list_sessions()[:2]]
    assert [row[-1] for row in page.rows] == newest
    assert "1 older hidden" in page.all_text


def test_store_with_missing_root_is_an_empty_table(backend: Backend):
    sessions = store(backend)  # a directory not made yet; a prefix with no keys
    page = Html(sessions._repr_html_())
    assert page.rows == []
    assert "table" in page.tags
    assert "0 sessions" in page.all_text
