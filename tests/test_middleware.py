"""CrabHooksMiddleware in real LangChain agents: what the model sees, and what is kept.

A fake chat model records every request it receives; a recall plugin injects a
new message on each call. The injected message must be in every request, just
before the latest user message, once; and in no state, no checkpoint, no
session file, and no later request.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from agents import CONFIG, RecordingModel, comparable, human, weather
from backends import Backend, backend  # noqa: F401 - the fixture
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver

from crab_langchain import SessionStore, hookimpl, is_auto_injected, mark_auto_injected
from crab_langchain.checkpoint import CrabSaver
from crab_langchain.middleware import CrabHooksMiddleware
from crab_langchain.models import Session, SessionFormatError
from crab_langchain.storage import companion_name

SECRET = "likes green tea"


class Recall:
    """Injects one new recall message per call, and records what it was told."""

    def __init__(self) -> None:
        self.told: list[tuple[Session, list[BaseMessage]]] = []

    @hookimpl
    def crab_inject_messages(
        self, session: Session, history: Sequence[BaseMessage]
    ) -> list[BaseMessage]:
        self.told.append((session.model_copy(deep=True), list(history)))
        return [SystemMessage(f"recall #{len(self.told)}: the user {SECRET}")]


def calls(*cities: str) -> AIMessage:
    return AIMessage(
        "", tool_calls=[{"name": "weather", "args": {"city": c}, "id": c} for c in cities]
    )


def tool_turns() -> list[AIMessage]:
    """Three turns: a tool call then an answer, a plain reply, a tool call then an answer."""
    return [
        calls("Lisbon"),
        AIMessage("Sunny."),
        AIMessage("Hi."),
        calls("Porto"),
        AIMessage("Ok."),
    ]


def agent(store: SessionStore, saver: Any, model: RecordingModel) -> Any:
    middleware = CrabHooksMiddleware(store)
    return create_agent(model, [weather], middleware=[middleware], checkpointer=saver)


def savers(store: SessionStore) -> dict[str, Any]:
    return {"crab": CrabSaver(store), "memory": InMemorySaver(), "none": None}


QUESTIONS = ["weather in Lisbon?", "hello", "and Porto?"]


async def run_turns(graph: Any, *, use_async: bool, config: Any = CONFIG) -> list[Any]:
    results = []
    for question in QUESTIONS:
        given = human(question)
        results.append(
            await graph.ainvoke(given, config) if use_async else graph.invoke(given, config)
        )
    return results


def stored_bytes(store: SessionStore) -> bytes:
    """Every line the store holds: each session and the logs kept beside it."""
    out = []
    for name in store.storage.names():
        for each in (name, companion_name(name, "checkpoints")):
            try:
                chunk = store.storage.read(each, None)
            except FileNotFoundError:
                continue
            out += [line for _, line in chunk.lines] if chunk else []
    return b"\n".join(out)


def injected_in(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    return [m for m in messages if SECRET in str(m.content)]


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("saver_kind", ["crab", "memory", "none"])
async def test_every_model_request_has_this_calls_recall_before_the_latest_user_message(
    tmp_path: Path, saver_kind: str, use_async: bool
):
    recall = Recall()
    store = SessionStore(tmp_path / "sessions", [recall], entry_points=False)
    model = RecordingModel(messages=iter(tool_turns()))
    await run_turns(agent(store, savers(store)[saver_kind], model), use_async=use_async)

    assert len(model.requests) == 5  # two calls in turns 1 and 3
    for number, request in enumerate(model.requests, start=1):
        injected = injected_in(request)
        assert [m.content for m in injected] == [f"recall #{number}: the user {SECRET}"]
        assert is_auto_injected(injected[0])
        at = request.index(injected[0])
        assert isinstance(request[at + 1], HumanMessage)
        assert not any(isinstance(m, HumanMessage) for m in request[at + 2 :])
        assert request[:at] + request[at + 1 :] == recall.told[number - 1][1]
    latest = [next(m for m in reversed(r) if isinstance(m, HumanMessage)) for r in model.requests]
    assert [m.content for m in latest] == [QUESTIONS[0], *QUESTIONS, QUESTIONS[2]]


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("saver_kind", ["crab", "memory"])
async def test_injected_messages_reach_no_state_checkpoint_or_file(
    tmp_path: Path, saver_kind: str, use_async: bool
):
    store = SessionStore(tmp_path / "sessions", [Recall()], entry_points=False)
    saver = savers(store)[saver_kind]
    graph = agent(store, saver, RecordingModel(messages=iter(tool_turns())))
    results = await run_turns(graph, use_async=use_async)

    assert all(not injected_in(result["messages"]) for result in results)
    history = list(graph.get_state_history(CONFIG))
    assert len(history) > 10
    for state in history:
        assert not injected_in(state.values.get("messages", []))
    for checkpoint in saver.list(None):
        assert SECRET not in repr(checkpoint)
    assert SECRET.encode() not in stored_bytes(store)
    assert SECRET.encode() not in b"".join(
        p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
    )
    assert len(graph.get_state(CONFIG).values["messages"]) == 10


def test_a_resumed_thread_sees_no_recall_of_an_earlier_run(tmp_path: Path):
    """A new agent and a new saver on the same sessions: the earlier recalls left nothing."""
    store = SessionStore(tmp_path / "sessions", [Recall()], entry_points=False)
    agent(store, CrabSaver(store), RecordingModel(messages=iter(tool_turns()))).invoke(
        human("weather in Lisbon?"), CONFIG
    )
    recall = Recall()
    reopened = SessionStore(tmp_path / "sessions", [recall], entry_points=False)
    model = RecordingModel(messages=iter([AIMessage("Again.")]))
    agent(reopened, CrabSaver(reopened), model).invoke(human("again"), CONFIG)
    (request,) = model.requests
    assert [m.content for m in injected_in(request)] == [f"recall #1: the user {SECRET}"]
    assert [type(m).__name__ for m in request] == [
        "HumanMessage", "AIMessage", "ToolMessage", "AIMessage", "SystemMessage", "HumanMessage"
    ]  # fmt: skip


def test_with_crab_saver_the_plugins_are_told_the_threads_session(backend: Backend):
    recall = Recall()
    store = backend.store([recall])
    saver = CrabSaver(store)
    graph = agent(store, saver, RecordingModel(messages=iter(tool_turns())))
    for question in QUESTIONS:  # each checkpoint written before the next step starts
        graph.invoke(human(question), CONFIG, durability="sync")

    name = store.find("alice-1")
    assert name is not None
    for session, history in recall.told:
        assert (session.id, session.agent) == ("alice-1", "crab")
        assert session.file_path == store.storage.path(name)
        assert [m.content for m in session.history] == [m.content for m in history]
    told_lengths = [len(session.history) for session, _ in recall.told]
    assert told_lengths == [1, 3, 5, 7, 9]  # each call sees the session as the saver left it
    assert [m.role for m in recall.told[-1][0].history[-3:]] == ["user", "assistant", "tool"]


def test_a_thread_the_store_does_not_hold_is_told_as_a_session_not_written_yet(tmp_path: Path):
    recall = Recall()
    store = SessionStore(tmp_path / "sessions", [recall], entry_points=False)
    graph = agent(store, InMemorySaver(), RecordingModel(messages=iter([AIMessage("Hi.")])))
    graph.invoke(human("hello"), CONFIG)
    graph_without = agent(store, None, RecordingModel(messages=iter([AIMessage("Hi.")])))
    graph_without.invoke(human("hello"))

    (with_thread, history), (without_thread, _) = recall.told
    assert (with_thread.id, with_thread.file_path, with_thread.history) == ("alice-1", None, [])
    assert [m.content for m in history] == ["hello"]
    assert (without_thread.id, without_thread.agent) == ("", "crab")
    assert store.list_sessions() == []  # the middleware never writes


def test_auto_injected_messages_in_the_state_are_left_out_of_the_request(tmp_path: Path):
    store = SessionStore(tmp_path / "sessions", [Recall()], entry_points=False)
    model = RecordingModel(messages=iter([AIMessage("Hi.")]))
    stale = mark_auto_injected(SystemMessage("an old recall"))
    agent(store, InMemorySaver(), model).invoke({"messages": [stale, HumanMessage("hi")]}, CONFIG)
    (request,) = model.requests
    assert "an old recall" not in [m.content for m in request]
    assert [m.content for m in request] == [f"recall #1: the user {SECRET}", "hi"]


def test_without_injecting_plugins_the_request_is_untouched(tmp_path: Path):
    store = SessionStore(tmp_path / "absent", entry_points=False)
    with_middleware = RecordingModel(messages=iter(tool_turns()))
    plain = RecordingModel(messages=iter(tool_turns()))
    middleware = CrabHooksMiddleware(store)
    graph = create_agent(
        with_middleware, [weather], middleware=[middleware], checkpointer=InMemorySaver()
    )
    graph_plain = create_agent(plain, [weather], checkpointer=InMemorySaver())
    for question in QUESTIONS:
        graph.invoke(human(question), CONFIG)
        graph_plain.invoke(human(question), CONFIG)
    assert comparable(with_middleware.requests) == comparable(plain.requests)


class Garbage:
    @hookimpl
    def crab_inject_messages(self) -> Any:
        return "remember tea"


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
async def test_a_plugin_returning_garbage_is_named_and_the_model_not_called(
    tmp_path: Path, use_async: bool
):
    store = SessionStore(tmp_path / "sessions", [Garbage()], entry_points=False)
    model = RecordingModel(messages=iter([AIMessage("Hi.")]))
    graph = agent(store, CrabSaver(store), model)
    with pytest.raises(TypeError, match=r"crab_inject_messages of plugin 'Garbage' returned a str"):
        await (
            graph.ainvoke(human("hi"), CONFIG) if use_async else _sync(graph.invoke, human("hi"))
        )
    assert model.requests == []
    assert [m.content for m in graph.get_state(CONFIG).values["messages"]] == ["hi"]


async def _sync(call: Any, given: Any) -> Any:
    return call(given, CONFIG)


def test_a_hostile_agent_name_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="agent"):
        CrabHooksMiddleware(SessionStore(tmp_path, entry_points=False), agent="")


def test_a_session_deleted_between_calls_is_told_as_not_written(tmp_path: Path):
    recall = Recall()
    store = SessionStore(tmp_path / "sessions", [recall], entry_points=False)
    store.get_session_history("alice-1").add_messages([HumanMessage("before")])
    model = RecordingModel(messages=iter([AIMessage("one"), AIMessage("two"), AIMessage("3")]))
    graph = agent(store, InMemorySaver(), model)
    graph.invoke(human("first"), CONFIG)
    assert store.delete_session("alice-1")
    graph.invoke(human("second"), CONFIG)
    store.get_session_history("alice-1").add_messages([HumanMessage("again")])
    graph.invoke(human("third"), CONFIG)
    (first, _), (second, _), (third, _) = recall.told
    assert [m.content for m in first.history] == ["before"]
    assert (second.file_path, second.history) == (None, [])
    assert [m.content for m in third.history] == ["again"]


def test_a_malformed_session_is_named_and_kept(tmp_path: Path):
    store = SessionStore(tmp_path / "sessions", [Recall()], entry_points=False)
    store.get_session_history("alice-1").add_messages([HumanMessage("kept")])
    (path,) = (tmp_path / "sessions").glob("*.jsonl")
    with path.open("ab") as file:
        file.write(b"{not json\n")
    before = path.read_bytes()
    graph = agent(store, InMemorySaver(), RecordingModel(messages=iter([AIMessage("no")])))
    with pytest.raises(SessionFormatError, match=rf"{path.name}:3: not JSON"):
        graph.invoke(human("hi"), CONFIG)
    assert path.read_bytes() == before


def test_called_outside_a_graph_it_tells_a_session_without_an_id(tmp_path: Path):
    """A unit test may call the hook itself, with a request of its own and no graph running."""
    from langchain.agents.middleware import ModelRequest, ModelResponse

    recall = Recall()
    middleware = CrabHooksMiddleware(SessionStore(tmp_path, [recall], entry_points=False))
    request = ModelRequest(model=RecordingModel(messages=iter([])), messages=[HumanMessage("hi")])
    seen: list[Any] = []
    middleware.wrap_model_call(request, lambda r: seen.append(r) or ModelResponse(result=[]))
    assert [m.content for m in seen[0].messages] == [f"recall #1: the user {SECRET}", "hi"]
    assert recall.told[0][0].id == ""


class Meddler:
    """Changes the session it is told about, and records what it was told first."""

    def __init__(self) -> None:
        self.extras: list[dict[str, Any]] = []

    @hookimpl
    def crab_inject_messages(self, session: Session) -> None:
        self.extras.append(dict(session.extra))
        session.extra["meddled"] = True


def test_a_plugin_changing_the_session_it_is_told_changes_nothing_told_later(tmp_path: Path):
    meddler = Meddler()
    store = SessionStore(tmp_path / "sessions", [meddler], entry_points=False)
    model = RecordingModel(messages=iter([AIMessage("one"), AIMessage("two")]))
    graph = agent(store, InMemorySaver(), model)  # the store holds no session of the thread
    graph.invoke(human("first"), CONFIG)
    graph.invoke(human("second"), CONFIG)
    assert meddler.extras == [{}, {}]


class Editor:
    """Edits everything it is told: the session's messages and the conversation's."""

    def __init__(self) -> None:
        self.seen: list[tuple[list[Any], list[Any]]] = []

    @hookimpl
    def crab_inject_messages(self, session: Session, history: Any) -> None:
        self.seen.append(([m.content for m in session.history], [m.content for m in history]))
        for message in session.history:
            message.content = "edited by a plugin"
        session.history.append(session.history[0] if session.history else None)  # type: ignore[arg-type]
        for message in history:
            message.content = "edited by a plugin"


def test_what_a_plugin_is_told_is_read_only_in_effect(tmp_path: Path):
    editor = Editor()
    store = SessionStore(tmp_path / "sessions", [editor], entry_points=False)
    saver = CrabSaver(store)
    model = RecordingModel(messages=iter([AIMessage("one"), AIMessage("two"), AIMessage("three")]))
    graph = agent(store, saver, model)
    for text in ("first", "second", "third"):
        graph.invoke(human(text), CONFIG, durability="sync")
    assert all("edited by a plugin" not in told for seen in editor.seen for told in seen)
    expected = ["first", "one", "second", "two", "third", "three"]
    assert [m.content for m in graph.get_state(CONFIG).values["messages"]] == expected
    assert [m.content for m in store.get_session_history("alice-1").stored_messages()] == expected
    assert all("edited" not in str(m.content) for request in model.requests for m in request)


def test_the_middleware_holds_no_lock_while_it_reads_a_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A read stuck on the storage keeps no other reader of the thread waiting."""
    store = SessionStore(tmp_path, entry_points=False)
    store.get_session_history("t").add_messages([HumanMessage("one")])
    middleware = CrabHooksMiddleware(store)
    real, stuck, freed = store.storage.read, threading.Event(), threading.Event()

    def read(name: str, cursor: Any) -> Any:
        if threading.current_thread().name == "stuck":
            stuck.set()
            assert freed.wait(timeout=30), "never freed"
        return real(name, cursor)

    monkeypatch.setattr(store.storage, "read", read)
    told: list[Session] = []
    slow = threading.Thread(target=lambda: told.append(middleware._session("t")), name="stuck")
    slow.start()
    assert stuck.wait(timeout=30)
    with concurrent.futures.ThreadPoolExecutor(1) as other:
        fast = other.submit(middleware._session, "t").result(timeout=10)  # not kept waiting
    assert [m.content for m in fast.history] == ["one"]
    store.get_session_history("t").add_messages([HumanMessage("two")])
    freed.set()
    slow.join(timeout=30)
    assert [m.content for m in told[0].history] == ["one", "two"]  # it read on, from the top
    assert [m.content for m in middleware._session("t").history] == ["one", "two"]
