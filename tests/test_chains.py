"""End to end: real LangChain chains, fake chat models, and sessions on every backend.

Every chain is ``ChatPromptTemplate | <recorder> | <fake chat model>`` wrapped in
``RunnableWithMessageHistory(chain, store.get_session_history, ...)``. The recorder
keeps what the model was given, so the tests can check both sides of a run: what the
model saw (history, injected context) and what ended up in the session's lines (a JSONL
file, or a Redis list of the same lines; see ``backends.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import pytest
from backends import OPEN_STORE, Backend, stored_lines
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    FakeMessagesListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    messages_from_dict,
)
from langchain_core.prompt_values import PromptValue
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel
from langchain_core.runnables.history import RunnableWithMessageHistory

from crab_langchain import AUTO_INJECTED_KEY, SessionStore, hookimpl

SYSTEM = "You are a crab who knows about crabs."
QUESTIONS = ["Where do crabs live?", "What do they eat?", "How long do they live?"]
ANSWERS = [
    "Mostly in the sea and on beaches.",
    "Algae, worms, snails and whatever the tide brings.",
    "Some live for decades.",
]
MODES = ["messages", "dict", "output"]
STYLES = ["invoke", "ainvoke", "stream", "astream"]


# --- helpers ------------------------------------------------------------------------


class Recorder:
    """A runnable placed just before the model: keeps every prompt the model gets."""

    def __init__(self) -> None:
        self.inputs: list[list[BaseMessage]] = []

    def _record(self, prompt: PromptValue) -> PromptValue:
        self.inputs.append(prompt.to_messages())
        return prompt

    def runnable(self) -> Runnable[PromptValue, PromptValue]:
        return RunnableLambda(self._record)


def build(
    mode: str, store: SessionStore, model: Runnable[Any, Any], recorder: Recorder
) -> RunnableWithMessageHistory:
    """A chain with history in one of RunnableWithMessageHistory's three shapes."""
    if mode == "messages":
        prompt = ChatPromptTemplate.from_messages(
            [("system", SYSTEM), MessagesPlaceholder("messages")]
        )
        return RunnableWithMessageHistory(
            prompt | recorder.runnable() | model, store.get_session_history
        )
    prompt = ChatPromptTemplate.from_messages(
        [("system", SYSTEM), MessagesPlaceholder("history"), ("human", "{question}")]
    )
    chain = prompt | recorder.runnable() | model
    if mode == "dict":
        return RunnableWithMessageHistory(
            chain,
            store.get_session_history,
            input_messages_key="question",
            history_messages_key="history",
        )
    assert mode == "output"
    return RunnableWithMessageHistory(
        RunnableParallel(answer=chain, question=itemgetter("question")),
        store.get_session_history,
        input_messages_key="question",
        history_messages_key="history",
        output_messages_key="answer",
    )


def user_input(mode: str, text: str) -> Any:
    return [HumanMessage(text)] if mode == "messages" else {"question": text}


def answer_text(mode: str, output: Any) -> str:
    message = output["answer"] if mode == "output" else output
    assert isinstance(message, AIMessage)
    return message.text


def streamed_text(mode: str, chunks: list[Any]) -> str:
    if mode == "output":
        chunks = [chunk["answer"] for chunk in chunks if "answer" in chunk]
    return "".join(chunk.text for chunk in chunks)


def config(session_id: str) -> dict[str, Any]:
    return {"configurable": {"session_id": session_id}}


async def run_turn(
    runnable: RunnableWithMessageHistory, mode: str, inp: Any, style: str, session_id: str
) -> str:
    """One turn in ``style``; returns the answer text (streamed chunks joined)."""
    cfg = config(session_id)
    if style == "invoke":
        return answer_text(mode, runnable.invoke(inp, cfg))
    if style == "ainvoke":
        return answer_text(mode, await runnable.ainvoke(inp, cfg))
    if style == "stream":
        chunks = list(runnable.stream(inp, cfg))
    else:
        chunks = [chunk async for chunk in runnable.astream(inp, cfg)]
    answer_chunks = [c["answer"] for c in chunks if "answer" in c] if mode == "output" else chunks
    assert len(answer_chunks) > 1, "the answer was not streamed in pieces"
    assert all(type(chunk).__name__ == "AIMessageChunk" for chunk in answer_chunks)
    return streamed_text(mode, chunks)


def stored_text(store: SessionStore, session_id: str) -> str:
    """Everything stored for ``session_id``, as the file's text."""
    return "".join(line.decode("utf-8") + "\n" for line in stored_lines(store, session_id))


def message_lines(store: SessionStore, session_id: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stored_lines(store, session_id)]
    assert "agent" in lines[0]
    assert "role" not in lines[0]
    return lines[1:]


def roles(lines: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(line["role"], line.get("content", "")) for line in lines]


def brief(messages: Sequence[BaseMessage]) -> list[tuple[str, str]]:
    return [(message.type, message.text) for message in messages]


def real_turns(n: int) -> list[tuple[str, str]]:
    """The first ``n`` turns of the scripted conversation as (role, content) lines."""
    turns = []
    for question, answer in zip(QUESTIONS[:n], ANSWERS[:n], strict=True):
        turns += [("user", question), ("assistant", answer)]
    return turns


def as_model_view(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    kinds = {"user": "human", "assistant": "ai"}
    return [(kinds[role], content) for role, content in turns]


def scripted_model() -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(answer) for answer in ANSWERS]))


class RecallInjector:
    """Injects one memory message per run, naming how much history it was given."""

    def __init__(self, kind: type[BaseMessage] = SystemMessage) -> None:
        self.kind = kind
        self.calls = 0

    @hookimpl
    def crab_inject_messages(self, history: Sequence[BaseMessage]) -> list[BaseMessage]:
        self.calls += 1
        return [self.kind(f"recall: {len(history)} stored")]


class GrowingInjector:
    """Injects ``n`` messages on its ``n``-th call: a different count every run."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def crab_inject_messages(self) -> list[BaseMessage]:
        self.calls += 1
        return [SystemMessage(f"memory {self.calls}.{i}") for i in range(1, self.calls + 1)]


class SecretFilter:
    @hookimpl
    def crab_filter_message(self, message: Any) -> bool | None:
        return False if "SECRET" in message.content else None


# --- the three modes, each sync, async and streaming ------------------------------------


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("mode", MODES)
async def test_each_turn_is_stored_and_replayed_to_the_model(
    backend: Backend, mode: str, style: str
) -> None:
    store = backend.store()
    recorder = Recorder()
    runnable = build(mode, store, scripted_model(), recorder)

    for n, question in enumerate(QUESTIONS):
        answer = await run_turn(runnable, mode, user_input(mode, question), style, "s1")
        assert answer == ANSWERS[n]
        assert brief(recorder.inputs[n]) == [
            ("system", SYSTEM),
            *as_model_view(real_turns(n)),
            ("human", question),
        ]
        lines = message_lines(store, "s1")
        assert roles(lines) == real_turns(n + 1)

    assert len(recorder.inputs) == len(QUESTIONS)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("style", ["stream", "astream"])
async def test_streamed_answer_is_stored_as_one_message_not_chunks(
    backend: Backend, mode: str, style: str
) -> None:
    store = backend.store()
    model = GenericFakeChatModel(messages=iter(["one two three four five"]))
    runnable = build(mode, store, model, Recorder())

    answer = await run_turn(runnable, mode, user_input(mode, "count"), style, "s")

    assert answer == "one two three four five"
    lines = message_lines(store, "s")
    assert roles(lines) == [("user", "count"), ("assistant", "one two three four five")]
    assert "chunk" not in json.dumps(lines[1]).lower()
    reread = store.get_session_history("s").messages
    assert type(reread[1]) is AIMessage


async def test_fake_list_model_streams_characters_into_one_stored_message(
    backend: Backend,
) -> None:
    store = backend.store()
    runnable = build("dict", store, FakeListChatModel(responses=["pinch", "scuttle"]), Recorder())

    first = [c async for c in runnable.astream({"question": "a"}, config("s"))]
    second = list(runnable.stream({"question": "b"}, config("s")))

    assert [c.text for c in first] == list("pinch")
    assert "".join(c.text for c in second) == "scuttle"
    assert roles(message_lines(store, "s")) == [
        ("user", "a"),
        ("assistant", "pinch"),
        ("user", "b"),
        ("assistant", "scuttle"),
    ]


# --- batches: many sessions in one call -------------------------------------------------

BATCH_SESSIONS = [f"b{n}" for n in range(4)]


@pytest.mark.parametrize("style", ["batch", "abatch"])
@pytest.mark.parametrize("mode", MODES)
async def test_batch_of_sessions_keeps_each_session_to_itself(
    backend: Backend, mode: str, style: str
) -> None:
    # batch runs the inputs in threads, abatch as concurrent tasks: the sessions' reads
    # and writes interleave, and each must still see and store only its own turns.
    store = backend.store([RecallInjector()])
    recorder = Recorder()
    runnable = build(mode, store, FakeListChatModel(responses=["noted"]), recorder)
    configs = [config(session_id) for session_id in BATCH_SESSIONS]

    for turn in ("first", "second"):
        inputs = [user_input(mode, f"{session_id} {turn}") for session_id in BATCH_SESSIONS]
        if style == "batch":
            outputs = runnable.batch(inputs, configs)
        else:
            outputs = await runnable.abatch(inputs, configs)
        assert [answer_text(mode, output) for output in outputs] == ["noted"] * len(BATCH_SESSIONS)

    assert len(recorder.inputs) == 2 * len(BATCH_SESSIONS)
    second_runs = {run[-1].text: run for run in recorder.inputs if run[-1].text.endswith("second")}
    reader = backend.store()
    for session_id in BATCH_SESSIONS:
        turns = [("user", f"{session_id} first"), ("assistant", "noted")]
        turns += [("user", f"{session_id} second"), ("assistant", "noted")]
        assert roles(message_lines(store, session_id)) == turns
        assert brief(second_runs[f"{session_id} second"]) == [
            ("system", SYSTEM),
            *as_model_view(turns[:2]),
            ("system", "recall: 2 stored"),
            ("human", f"{session_id} second"),
        ]
        assert brief(reader.get_session_history(session_id).stored_messages()) == (
            as_model_view(turns)
        )


# --- a conversation with tool calls ---------------------------------------------------

WEATHER_CALL = {"name": "get_weather", "args": {"city": "Lisbon"}, "id": "call_01"}
TIME_CALL = {"name": "get_time", "args": {"tz": "Europe/Lisbon", "h24": True}, "id": "call_02"}


def tool_conversation_model() -> FakeMessagesListChatModel:
    return FakeMessagesListChatModel(
        responses=[
            AIMessage("", tool_calls=[WEATHER_CALL, TIME_CALL]),
            AIMessage("It is 22°C and 14:05 in Lisbon."),
            AIMessage("You're welcome."),
        ]
    )


def tool_turn_inputs() -> list[list[BaseMessage]]:
    return [
        [HumanMessage("Weather and time in Lisbon?")],
        [
            ToolMessage("22°C, sunny", tool_call_id="call_01", name="get_weather"),
            ToolMessage("14:05", tool_call_id="call_02", name="get_time"),
        ],
        [HumanMessage("Thanks!")],
    ]


def build_tool_chain(mode: str, store: SessionStore, recorder: Recorder) -> Any:
    model = tool_conversation_model()
    if mode == "messages":
        return build("messages", store, model, recorder)
    prompt = ChatPromptTemplate.from_messages(
        [("system", SYSTEM), MessagesPlaceholder("history"), MessagesPlaceholder("input")]
    )
    return RunnableWithMessageHistory(
        prompt | recorder.runnable() | model,
        store.get_session_history,
        input_messages_key="input",
        history_messages_key="history",
    )


def assert_tool_conversation_file(lines: list[dict[str, Any]]) -> None:
    assert [line["role"] for line in lines] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]
    assert lines[0]["content"] == "Weather and time in Lisbon?"
    call_line = lines[1]
    assert "content" not in call_line
    assert call_line["tool_calls"] == [
        {
            "id": "call_01",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Lisbon"}'},
        },
        {
            "id": "call_02",
            "type": "function",
            "function": {"name": "get_time", "arguments": '{"tz":"Europe/Lisbon","h24":true}'},
        },
    ]
    for call in call_line["tool_calls"]:
        assert isinstance(call["function"]["arguments"], str)
    weather, clock = lines[2], lines[3]
    assert (weather["content"], weather["tool_call_id"], weather["name"]) == (
        "22°C, sunny",
        "call_01",
        "get_weather",
    )
    assert (clock["content"], clock["tool_call_id"], clock["name"]) == (
        "14:05",
        "call_02",
        "get_time",
    )
    spec_keys = [k for k in weather if k != "langchain"]
    assert spec_keys == ["role", "content", "name", "tool_call_id"]
    assert lines[4]["content"] == "It is 22°C and 14:05 in Lisbon."
    assert "tool_calls" not in lines[4]
    assert roles(lines[5:]) == [("user", "Thanks!"), ("assistant", "You're welcome.")]


@pytest.mark.parametrize("mode", ["messages", "dict"])
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_tool_call_conversation_is_stored_turn_by_turn(
    backend: Backend, mode: str, asynchronous: bool
) -> None:
    store = backend.store()
    recorder = Recorder()
    runnable = build_tool_chain(mode, store, recorder)

    outputs = []
    for messages in tool_turn_inputs():
        inp = messages if mode == "messages" else {"input": messages}
        if asynchronous:
            outputs.append(await runnable.ainvoke(inp, config("t")))
        else:
            outputs.append(runnable.invoke(inp, config("t")))

    assert [c["id"] for c in outputs[0].tool_calls] == ["call_01", "call_02"]
    assert_tool_conversation_file(message_lines(store, "t"))
    # The model's second run saw its own tool calls back, intact, then the results.
    second = recorder.inputs[1]
    assert [type(m).__name__ for m in second] == [
        "SystemMessage",
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "ToolMessage",
    ]
    assert [(c["name"], c["args"], c["id"]) for c in second[2].tool_calls] == [
        ("get_weather", {"city": "Lisbon"}, "call_01"),
        ("get_time", {"tz": "Europe/Lisbon", "h24": True}, "call_02"),
    ]
    assert [m.tool_call_id for m in second[3:]] == ["call_01", "call_02"]
    assert brief(recorder.inputs[2][-2:]) == [
        ("ai", "It is 22°C and 14:05 in Lisbon."),
        ("human", "Thanks!"),
    ]
    assert len(recorder.inputs[2]) == 1 + 5 + 1


# --- stopped and resumed ------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_new_store_over_same_directory_resumes_with_full_history(
    backend: Backend, mode: str
) -> None:
    first_store = backend.store()
    runnable = build(mode, first_store, scripted_model(), Recorder())
    for question in QUESTIONS[:2]:
        runnable.invoke(user_input(mode, question), config("long"))
    before = stored_lines(first_store, "long")
    del runnable, first_store

    store = backend.store()
    recorder = Recorder()
    model = GenericFakeChatModel(messages=iter([AIMessage(ANSWERS[2])]))
    resumed = build(mode, store, model, recorder)
    answer = answer_text(
        mode, await resumed.ainvoke(user_input(mode, QUESTIONS[2]), config("long"))
    )

    assert answer == ANSWERS[2]
    assert brief(recorder.inputs[0]) == [
        ("system", SYSTEM),
        *as_model_view(real_turns(2)),
        ("human", QUESTIONS[2]),
    ]
    after = stored_lines(store, "long")
    assert after[: len(before)] == before
    added = after[len(before) :]
    assert [json.loads(line)["role"] for line in added] == ["user", "assistant"]
    assert store.storage.names() == [store.find("long")]  # resumed, not a second session
    assert roles(message_lines(store, "long")) == real_turns(3)


CHILD_SCRIPT = (
    OPEN_STORE
    + """
import json, sys
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import HumanMessage, messages_to_dict
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory

store = open_store(sys.argv[1], sys.argv[2])
session_id, question = sys.argv[3:5]
seen = []

def record(prompt):
    seen.extend(prompt.to_messages())
    return prompt

prompt = ChatPromptTemplate.from_messages([("system", "child"), MessagesPlaceholder("messages")])
model = FakeListChatModel(responses=["answer from the child"])
runnable = RunnableWithMessageHistory(prompt | RunnableLambda(record) | model,
                                      store.get_session_history)
for chunk in runnable.stream([HumanMessage(question)],
                             {"configurable": {"session_id": session_id}}):
    pass
print(json.dumps(messages_to_dict(seen)))
"""
)


def test_session_continues_in_another_process_and_back(backend: Backend) -> None:
    store = backend.store()
    recorder = Recorder()
    runnable = build_tool_chain("messages", store, recorder)
    for messages in tool_turn_inputs()[:2]:
        runnable.invoke(messages, config("shared"))
    before = stored_lines(store, "shared")
    parent_history = store.get_session_history("shared").messages

    child = subprocess.run(
        [sys.executable, "-c", CHILD_SCRIPT, *backend.argv, "shared", "And tomorrow?"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr

    seen = messages_from_dict(json.loads(child.stdout.strip().splitlines()[-1]))
    assert seen[0] == SystemMessage("child")
    assert seen[1:-1] == parent_history
    assert seen[-1] == HumanMessage("And tomorrow?")
    assert seen[2].tool_calls == [
        {**WEATHER_CALL, "type": "tool_call"},
        {**TIME_CALL, "type": "tool_call"},
    ]
    after = stored_lines(store, "shared")
    assert after[: len(before)] == before
    added = [json.loads(line) for line in after[len(before) :]]
    assert roles(added) == [("user", "And tomorrow?"), ("assistant", "answer from the child")]

    # Back in this process: the next run sees the child's turn too.
    again = Recorder()
    model = FakeListChatModel(responses=["back home"])
    build("messages", store, model, again).invoke([HumanMessage("Bye")], config("shared"))
    assert brief(again.inputs[0][-3:]) == [
        ("human", "And tomorrow?"),
        ("ai", "answer from the child"),
        ("human", "Bye"),
    ]
    assert len(again.inputs[0]) == 1 + 5 + 2 + 1
    assert len(message_lines(store, "shared")) == 5 + 2 + 2


# --- injecting plugins ------------------------------------------------------------------


def assert_injected_before_latest(
    model_input: list[BaseMessage], injected: list[BaseMessage], turn: int
) -> None:
    """``[system, <real turns so far>, *injected, <latest question>]``."""
    k = len(injected)
    assert brief(model_input[: 1 + 2 * turn]) == [
        ("system", SYSTEM),
        *as_model_view(real_turns(turn)),
    ]
    assert model_input[1 + 2 * turn : -1] == injected
    assert brief(model_input[-1:]) == [("human", QUESTIONS[turn])]
    assert len(model_input) == 1 + 2 * turn + k + 1
    for message in injected:
        assert message.additional_kwargs.get(AUTO_INJECTED_KEY) is True


def assert_file_holds_real_turns_only(store: SessionStore, session_id: str, n: int) -> None:
    lines = message_lines(store, session_id)
    assert roles(lines) == real_turns(n)
    text = stored_text(store, session_id)
    assert "recall" not in text
    assert "memory" not in text
    assert AUTO_INJECTED_KEY not in text


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("mode", MODES)
async def test_injected_memory_reaches_the_model_but_never_the_file(
    backend: Backend, mode: str, style: str
) -> None:
    injector = RecallInjector()
    store = backend.store([injector])
    recorder = Recorder()
    runnable = build(mode, store, scripted_model(), recorder)

    for n, question in enumerate(QUESTIONS):
        answer = await run_turn(runnable, mode, user_input(mode, question), style, "mem")
        assert answer == ANSWERS[n]
        recalled = recorder.inputs[n][-2]
        assert type(recalled) is SystemMessage
        assert recalled.text == f"recall: {2 * n} stored"
        assert_injected_before_latest(recorder.inputs[n], [recalled], n)
        assert sum("recall" in m.text for m in recorder.inputs[n]) == 1
        assert_file_holds_real_turns_only(store, "mem", n + 1)

    assert injector.calls == len(QUESTIONS)


@pytest.mark.parametrize("style", STYLES)
async def test_injected_human_message_is_not_mistaken_for_the_users(
    backend: Backend, style: str
) -> None:
    store = backend.store([RecallInjector(HumanMessage)])
    recorder = Recorder()
    runnable = build("messages", store, scripted_model(), recorder)

    for n, question in enumerate(QUESTIONS):
        await run_turn(runnable, "messages", [HumanMessage(question)], style, "h")
        recalled = recorder.inputs[n][-2]
        assert type(recalled) is HumanMessage
        assert recalled.text == f"recall: {2 * n} stored"
        assert_injected_before_latest(recorder.inputs[n], [recalled], n)

    assert_file_holds_real_turns_only(store, "h", len(QUESTIONS))


@pytest.mark.parametrize("style", STYLES)
async def test_injection_of_a_different_size_each_run_keeps_the_file_exact(
    backend: Backend, style: str
) -> None:
    # Messages-only mode: RunnableWithMessageHistory reads `messages` again after the
    # run and cuts the chain's input by that length. Were the injector asked again (now
    # returning one more message), the cut would eat the new user message.
    injector = GrowingInjector()
    store = backend.store([injector])
    recorder = Recorder()
    runnable = build("messages", store, scripted_model(), recorder)

    for n, question in enumerate(QUESTIONS):
        await run_turn(runnable, "messages", [HumanMessage(question)], style, "grow")
        expected = [SystemMessage(f"memory {n + 1}.{i}") for i in range(1, n + 2)]
        injected = recorder.inputs[n][1 + 2 * n : -1]
        assert [m.text for m in injected] == [m.text for m in expected]
        assert_injected_before_latest(recorder.inputs[n], injected, n)
        assert_file_holds_real_turns_only(store, "grow", n + 1)


# --- a filtering plugin -------------------------------------------------------------------


@pytest.mark.parametrize("style", ["invoke", "astream"])
@pytest.mark.parametrize("mode", MODES)
async def test_filter_plugin_keeps_secrets_out_of_the_file(
    backend: Backend, mode: str, style: str
) -> None:
    store = backend.store([SecretFilter()])
    recorder = Recorder()
    model = GenericFakeChatModel(
        messages=iter(["Hello there.", "Noted, I will forget it.", "The SECRET was 42 here."])
    )
    runnable = build(mode, store, model, recorder)
    questions = ["Hi crab.", "My SECRET is 42.", "What was my secret?"]

    for question in questions:
        await run_turn(runnable, mode, user_input(mode, question), style, "sec")

    assert ("human", "My SECRET is 42.") in brief(recorder.inputs[1])
    assert all("SECRET" not in m.text for m in recorder.inputs[2])
    assert roles(message_lines(store, "sec")) == [
        ("user", "Hi crab."),
        ("assistant", "Hello there."),
        ("assistant", "Noted, I will forget it."),
        ("user", "What was my secret?"),
    ]
    assert "SECRET" not in stored_text(store, "sec")
