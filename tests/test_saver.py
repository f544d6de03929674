"""CrabSaver (``checkpoint/saver.py``): the files it writes, the hooks, what it reads, bad input.

The checkpoints here are put directly (as LangGraph puts them), so each test
controls exactly what a checkpoint holds; ``test_checkpoint_agents.py`` runs
real agents.
"""

from __future__ import annotations

import itertools
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from backends import Backend, backend  # noqa: F401 - the fixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.types import ERROR, INTERRUPT

from crab_langchain import SessionFormatError, SessionStore, hookimpl, mark_auto_injected
from crab_langchain.checkpoint import CrabSaver, sidelog
from crab_langchain.checkpoint import threads as threads_module
from crab_langchain.log import header_identity
from crab_langchain.models import CrabMessage
from crab_langchain.storage import DirectoryStorage
from crab_langchain.transfer import copy_sessions
from crab_langchain.verify import verify_file

THREAD = "alice-1"


class Thread:
    """Puts checkpoints on one thread as LangGraph does: each a child of the last."""

    def __init__(self, saver: CrabSaver, thread_id: str = THREAD, ns: str = "") -> None:
        self.saver, self.thread_id, self.ns = saver, thread_id, ns
        self.parent: str | None = None
        self.version = 0

    def put(self, values: dict[str, Any], *, parent: str | None = None, **metadata: Any) -> str:
        """Put a checkpoint whose channels ``values`` are all new; its id."""
        self.version += 1
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = dict(values)
        checkpoint["channel_versions"] = dict.fromkeys(values, self.version)
        configurable = {"thread_id": self.thread_id, "checkpoint_ns": self.ns}
        if parent or self.parent:
            configurable["checkpoint_id"] = parent or self.parent
        stored = self.saver.put(
            {"configurable": configurable},
            checkpoint,
            {"source": "loop", "step": self.version, **metadata},
            dict.fromkeys(values, self.version),
        )
        self.parent = stored["configurable"]["checkpoint_id"]
        return self.parent

    def config(self, checkpoint_id: str | None = None) -> dict[str, Any]:
        configurable = {"thread_id": self.thread_id, "checkpoint_ns": self.ns}
        if checkpoint_id:
            configurable["checkpoint_id"] = checkpoint_id
        return {"configurable": configurable}

    def messages(self, checkpoint_id: str | None = None, saver: CrabSaver | None = None) -> Any:
        found = (saver or self.saver).get_tuple(self.config(checkpoint_id))
        assert found is not None
        return found.checkpoint["channel_values"].get("messages")


def in_memory(put: Any) -> dict[str, Any]:
    """The channel values ``InMemorySaver`` gives back for the checkpoint ``put(saver)`` puts."""
    saver = InMemorySaver()
    checkpoint_id = put(saver)
    found = saver.get_tuple(Thread(saver).config(checkpoint_id))
    assert found is not None
    return found.checkpoint["channel_values"]


def turn(n: int) -> list[BaseMessage]:
    return [HumanMessage(f"question {n}", id=f"q{n}"), AIMessage(f"answer {n}", id=f"a{n}")]


def saver_at(path: Path, plugins: Any = None) -> CrabSaver:
    return CrabSaver(SessionStore(path, plugins, entry_points=False))


def files(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The session's lines and the side log's, parsed."""
    (session,) = [p for p in path.glob("*.jsonl")]
    side = session.with_name(session.name + ".checkpoints")
    return (
        [json.loads(line) for line in session.read_bytes().splitlines()],
        [json.loads(line) for line in side.read_bytes().splitlines()],
    )


# --- what is written where -------------------------------------------------------------


def test_a_growing_conversation_appends_only_its_new_messages(tmp_path: Path):
    thread = Thread(saver_at(tmp_path))
    messages: list[BaseMessage] = []
    sizes = []
    for n in range(5):
        messages = [*messages, *turn(n)]
        thread.put({"messages": messages})
        sizes.append(sum(p.stat().st_size for p in tmp_path.glob("*.jsonl*")))
    session, side = files(tmp_path)
    assert [line.get("content") for line in session[1:]] == [m.content for m in messages]
    session_file = next(tmp_path.glob("*.jsonl"))
    header = session_file.read_bytes().split(b"\n")[0]
    assert side[0] == {
        "crab_checkpoints": 1,
        "session": session_file.name,
        "identity": header_identity(header),  # this incarnation of the session
    }
    places = [record["checkpoint"]["values"][0][2] for record in side if "checkpoint" in record]
    assert places == [{"session": [0, 1 + 2 * n]} for n in range(1, 6)]
    intents = [record["intent"] for record in side if "intent" in record]
    assert [(i["epoch"], i["first"], i["last"]) for i in intents] == [
        (0, 2 * n, 1 + 2 * n) for n in range(1, 6)
    ]
    ids = [record["checkpoint"]["id"] for record in side if "checkpoint" in record]
    assert [i["checkpoint"] for i in intents] == ids  # each finished by its own checkpoint
    lines = [json.dumps(line, separators=(",", ":")).encode() for line in session[1:]]
    assert [i["digest"] for i in intents] == [
        sidelog.lines_digest(lines[2 * n - 2 : 2 * n]) for n in range(1, 6)
    ]
    growth = [b - a for a, b in itertools.pairwise(sizes)]
    assert max(growth) - min(growth) <= 4  # each turn costs the same, however long the thread


def test_values_are_readable_json_where_json_holds_them(tmp_path: Path):
    thread = Thread(saver_at(tmp_path))
    values = {
        "count": 3,
        "notes": {"a": [1, 2.5, None, True, "ü"]},
        "pair": (1, 2),
        "blob": b"\x00\xff",
        "tools": [AIMessage("x", id="m")],
        "kinds": {"set"},
    }
    checkpoint_id = thread.put(values)
    _, side = files(tmp_path)
    stored = {channel: value for channel, _, value in side[-1]["checkpoint"]["values"]}
    assert stored["count"] == {"json": 3}
    assert stored["notes"] == {"json": {"a": [1, 2.5, None, True, "ü"]}}
    assert stored["tools"] == {
        "messages": [{"role": "assistant", "content": "x", "langchain": {"id": "m"}}]
    }
    assert set(stored["pair"]) == {"typed"}  # a tuple would come back a list from JSON
    got = thread.saver.get_tuple(thread.config(checkpoint_id))
    assert got is not None
    assert got.checkpoint["channel_values"] == in_memory(lambda saver: Thread(saver).put(values))


class KeepInjected:
    @hookimpl
    def crab_filter_message(self, message: CrabMessage) -> bool | None:
        return True if message.auto_injected else None


def test_an_injected_message_an_audit_plugin_keeps_keeps_its_mark(tmp_path: Path):
    thread = Thread(saver_at(tmp_path, [KeepInjected()]))
    recalled = [mark_auto_injected(HumanMessage("recalled", id="r"))]
    checkpoint_id = thread.put({"recalled": recalled})
    _, side = files(tmp_path)
    assert set(side[-1]["checkpoint"]["values"][0][2]) == {"typed"}  # a line would lose the mark
    got = saver_at(tmp_path).get_tuple(thread.config(checkpoint_id))
    assert got is not None
    assert got.checkpoint["channel_values"]["recalled"] == recalled


def test_the_state_a_caller_changes_is_not_the_saved_one(tmp_path: Path):
    thread = Thread(saver_at(tmp_path))
    first = thread.put({"count": {"n": 1}})
    got = thread.saver.get_tuple(thread.config(first))
    assert got is not None
    got.checkpoint["channel_versions"]["count"] = 99
    got.checkpoint["channel_values"]["count"]["n"] = 99
    again = thread.saver.get_tuple(thread.config(first))
    assert again is not None
    assert again.checkpoint["channel_values"] == {"count": {"n": 1}}
    assert again.checkpoint["channel_versions"] == {"count": 1}


def test_special_writes_and_their_order(tmp_path: Path):
    def write(saver: Any) -> str:
        thread = Thread(saver)
        config = thread.config(thread.put({"count": 1}))
        saver.put_writes(config, [("b", 1), ("a", 2)], "task-2", "~path, 2")
        saver.put_writes(config, [("b", 9)], "task-2", "~path, 2")  # the first one stays
        saver.put_writes(config, [(ERROR, "first"), (INTERRUPT, {"why": 1})], "task-1", "~p, 1")
        saver.put_writes(config, [(ERROR, "second")], "task-1", "~p, 1")  # the last one stays
        return config["configurable"]["checkpoint_id"]

    thread = Thread(saver_at(tmp_path))
    checkpoint_id = write(thread.saver)
    got = saver_at(tmp_path).get_tuple(thread.config(checkpoint_id))
    assert got is not None
    assert got.pending_writes == [
        ("task-1", INTERRUPT, {"why": 1}),
        ("task-1", ERROR, "second"),
        ("task-2", "b", 1),
        ("task-2", "a", 2),
    ]
    memory = InMemorySaver()
    expected = memory.get_tuple(Thread(memory).config(write(memory)))
    assert expected is not None
    assert got.pending_writes == expected.pending_writes


def test_a_messages_channel_of_other_things_is_an_ordinary_value(tmp_path: Path):
    thread = Thread(saver_at(tmp_path))
    thread.put({"messages": ["not", "messages"]})
    session, side = files(tmp_path)
    assert session[1:] == []
    assert side[-1]["checkpoint"]["values"][0][2] == {"json": ["not", "messages"]}
    assert thread.messages(saver=saver_at(tmp_path)) == ["not", "messages"]


def test_a_message_json_cannot_hold_stores_nothing_of_its_checkpoint(tmp_path: Path):
    thread = Thread(saver_at(tmp_path))
    first = thread.put({"messages": turn(0)})
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.jsonl*")}
    bad = HumanMessage("x", id="bad", additional_kwargs={"when": object()})
    with pytest.raises(TypeError, match=r"additional_kwargs\.when"):
        thread.put({"messages": [*turn(0), bad], "count": 1})
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.jsonl*")} == before
    assert thread.saver.get_tuple(thread.config()).checkpoint["id"] == first


def test_namespaces_and_ids_with_quotes_and_backslashes(tmp_path: Path):
    thread = Thread(saver_at(tmp_path), ns='child:"quoted"\\back')
    checkpoint_id = thread.put({"count": 1})
    fresh = saver_at(tmp_path)
    got = fresh.get_tuple(thread.config(checkpoint_id))
    assert got is not None
    assert got.config["configurable"]["checkpoint_ns"] == 'child:"quoted"\\back'
    assert [t.checkpoint["id"] for t in fresh.list(thread.config())] == [checkpoint_id]


def test_a_hostile_thread_id_stays_in_the_directory(tmp_path: Path):
    root = tmp_path / "sessions"
    thread = Thread(saver_at(root), thread_id="../../etc/passwd\x00")
    thread.put({"messages": turn(0)})
    assert {p.parent for p in tmp_path.rglob("*") if p.is_file()} == {root}
    assert thread.messages() == turn(0)


def test_one_bad_record_hurts_one_checkpoint_and_is_named(tmp_path: Path):
    thread = Thread(saver_at(tmp_path))
    first = thread.put({"messages": turn(0), "topic": "a"})
    second = thread.put({"messages": [*turn(0), *turn(1)], "topic": "b"})
    Thread(thread.saver, "bob-2").put({"messages": turn(2)})
    side = next(p for p in tmp_path.glob("*alice-1.jsonl.checkpoints"))
    lines = side.read_bytes().split(b"\n")
    broken = next(n for n, line in enumerate(lines, 1) if first.encode() in line[:80])
    lines[broken - 1] = lines[broken - 1].split(b',"parent"')[0] + b',"parent":oops}}'
    lines.insert(len(lines) - 1, b'{"something": "else"}')  # a foreign line, last
    side.write_bytes(b"\n".join(lines))
    fresh = saver_at(tmp_path)
    with pytest.warns(sidelog.BadRecordWarning, match=f"{side}:{len(lines) - 1}"):
        assert thread.messages(second, fresh) == [*turn(0), *turn(1)]  # the others read
    with pytest.raises(SessionFormatError) as raised:
        fresh.get_tuple(thread.config(first))
    assert f"{side}:{broken}" in str(raised.value)
    for config in (thread.config(), None):
        with pytest.warns(sidelog.BadRecordWarning, match=f"{side}:{broken}"):
            listed = [t.checkpoint["id"] for t in fresh.list(config)]
        assert second in listed
        assert first not in listed
    assert len(listed) == 2  # bob's too
    problems = verify_file(next(tmp_path.glob("*alice-1.jsonl"))).problems
    assert any(f"checkpoints:{len(lines) - 1}: not a checkpoint record" in p for _, p in problems)
    assert fresh.store.get_session_history(THREAD).messages == [*turn(0), *turn(1)]


def test_a_side_log_that_is_not_one_is_refused_by_name(tmp_path: Path):
    thread = Thread(saver_at(tmp_path))
    thread.put({"count": 1})
    side = next(tmp_path.glob("*.checkpoints"))
    side.write_bytes(b'{"agent":"crab"}\n')
    with pytest.raises(SessionFormatError, match="not a checkpointer's side log") as raised:
        saver_at(tmp_path).get_tuple(thread.config())
    assert str(side) in str(raised.value)


# --- rewrites ----------------------------------------------------------------------------


def summary(text: str) -> HumanMessage:
    return HumanMessage(text, id="sum", additional_kwargs={"lc_source": "summarization"})


def test_a_summary_is_a_compaction_marker_and_comes_back_whole(tmp_path: Path):
    thread = Thread(saver_at(tmp_path))
    old = thread.put({"messages": [*turn(0), *turn(1)]})
    compacted = [summary("Here is a summary. They asked twice."), *turn(1)]
    new = thread.put({"messages": compacted})
    session, side = files(tmp_path)
    marker = session[5]
    assert marker["compact"] == "Here is a summary. They asked twice."
    assert marker["title"] == "Here is a summary."
    assert marker["archived_at"].endswith("+00:00")
    assert marker["langchain"] == {"additional_kwargs": {"lc_source": "summarization"}, "id": "sum"}
    assert [line.get("content") for line in session[6:]] == ["question 1", "answer 1"]
    assert not [record for record in side if "archive" in record]
    fresh = saver_at(tmp_path)
    assert thread.messages(new, fresh) == compacted
    assert thread.messages(old, fresh) == [*turn(0), *turn(1)]
    assert fresh.store.get_session_history(THREAD).messages == compacted


def test_a_rewrite_archives_the_old_lines_and_every_checkpoint_keeps_its_messages(
    tmp_path: Path,
):
    thread = Thread(saver_at(tmp_path))
    first = thread.put({"messages": [*turn(0), *turn(1)]})
    second = thread.put({"messages": turn(1)})  # the first turn removed
    session, side = files(tmp_path)
    assert [line.get("content") for line in session[1:]] == ["question 1", "answer 1"]
    (archive,) = [record["archive"] for record in side if "archive" in record]
    assert archive["epoch"] == 0
    assert [line["content"] for line in archive["lines"]] == [
        "question 0",
        "answer 0",
        "question 1",
        "answer 1",
    ]
    fresh = saver_at(tmp_path)
    assert thread.messages(first, fresh) == [*turn(0), *turn(1)]
    assert thread.messages(second, fresh) == turn(1)


def test_a_fork_keeps_the_lines_it_shares_and_archives_only_the_branch_it_leaves(
    tmp_path: Path,
):
    thread = Thread(saver_at(tmp_path))
    shared = [*turn(0), *turn(1)]
    base = thread.put({"messages": shared})
    left = thread.put({"messages": [*shared, *turn(2)]})
    session_before, _ = files(tmp_path)
    forked = thread.put({"messages": [*shared, *turn(3)]}, parent=base)
    session, side = files(tmp_path)
    assert session[:5] == session_before[:5]  # header and shared lines, as they were
    assert [line.get("content") for line in session[5:]] == ["question 3", "answer 3"]
    (archive,) = [record["archive"] for record in side if "archive" in record]
    assert (archive["epoch"], archive["first"], archive["base"]) == (0, 6, 5)
    assert [line["content"] for line in archive["lines"]] == ["question 2", "answer 2"]
    fresh = saver_at(tmp_path)
    assert thread.messages(left, fresh) == [*shared, *turn(2)]
    assert thread.messages(forked, fresh) == [*shared, *turn(3)]
    assert thread.messages(base, fresh) == shared


def test_removing_every_message_empties_the_session_and_keeps_it_archived(tmp_path: Path):
    thread = Thread(saver_at(tmp_path))
    first = thread.put({"messages": turn(0)})
    emptied = thread.put({"messages": []})
    session, side = files(tmp_path)
    assert len(session) == 1  # the header alone
    assert [record["archive"]["epoch"] for record in side if "archive" in record] == [0]
    fresh = saver_at(tmp_path)
    assert thread.messages(emptied, fresh) == []
    assert thread.messages(first, fresh) == turn(0)


Operation = tuple[str, int]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.tuples(st.sampled_from(["grow", "summarize", "remove", "fork"]), st.integers(0, 50)),
        min_size=1,
        max_size=8,
    )
)
def test_every_checkpoint_gives_back_its_exact_messages(
    tmp_path: Path, operations: list[Operation]
):
    root = tmp_path / uuid.uuid4().hex
    thread = Thread(saver_at(root))
    expected: dict[str, list[BaseMessage]] = {}
    current: list[BaseMessage] = []
    for made, (kind, pick) in enumerate(operations):
        parent = None
        if kind == "grow" or not current:
            current = [*current, *turn(made)]
        elif kind == "summarize":
            current = [summary(f"Summary {made}. Of {len(current)}."), *current[-1:]]
        elif kind == "remove":
            current = [m for i, m in enumerate(current) if i != pick % len(current)]
        else:  # fork from an older checkpoint
            parent = list(expected)[pick % len(expected)]
            current = [*expected[parent], SystemMessage(f"fork {made}", id=f"f{made}")]
        expected[thread.put({"messages": current}, parent=parent)] = current
    fresh = saver_at(root)
    for checkpoint_id, messages in expected.items():
        assert thread.messages(checkpoint_id) == messages
        assert thread.messages(checkpoint_id, fresh) == messages
    listed = {
        t.checkpoint["id"]: t.checkpoint["channel_values"]["messages"]
        for t in fresh.list(thread.config())
    }
    assert listed == expected
    assert fresh.store.get_session_history(THREAD).messages == current


# --- reading -----------------------------------------------------------------------------


class CountingStorage(DirectoryStorage):
    """A directory that counts the lines each read returns."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.read_lines: list[tuple[str, int]] = []

    def read(self, name: str, cursor: Any) -> Any:
        chunk = super().read(name, cursor)
        self.read_lines.append((name, 0 if chunk is None else len(chunk.lines)))
        return chunk


def test_reading_the_head_reads_only_what_was_appended(tmp_path: Path):
    writer = Thread(saver_at(tmp_path))
    messages: list[BaseMessage] = []
    for n in range(50):
        messages = [*messages, *turn(n)]
        writer.put({"messages": messages, "count": n})
    storage = CountingStorage(tmp_path)
    reader = CrabSaver(SessionStore(backend=storage, entry_points=False))
    assert writer.messages(saver=reader) == messages  # the first read: everything
    storage.read_lines.clear()
    messages = [*messages, *turn(50)]
    writer.put({"messages": messages, "count": 50})
    assert writer.messages(saver=reader) == messages  # the writer's put, seen
    assert sum(lines for _, lines in storage.read_lines) == 4  # 2 session lines, 2 records
    storage.read_lines.clear()
    assert writer.messages(saver=reader) == messages
    assert sum(lines for _, lines in storage.read_lines) == 0


def put_agent_steps(saver: CrabSaver, turns: int) -> list[str]:
    """Checkpoints as an agent puts them: the input, then the model's reply.

    ``__start__`` gets a new version with each input and is left empty (LangGraph
    consumes it); ``branch:to:model`` likewise. Returns the checkpoint ids.
    """
    config: Any = {"configurable": {"thread_id": THREAD, "checkpoint_ns": ""}}
    messages: list[BaseMessage] = []
    versions: dict[str, Any] = {}
    ids = []
    for n in range(turns):
        for step, new in enumerate(turn(n)):
            messages = [*messages, new]
            checkpoint = empty_checkpoint()
            changed = ["messages", "__start__" if step == 0 else "branch:to:model"]
            for channel in changed:
                versions[channel] = saver.get_next_version(versions.get(channel), None)
            checkpoint["channel_values"] = {"messages": messages}
            checkpoint["channel_versions"] = dict(versions)
            new_versions = {channel: versions[channel] for channel in changed}
            config = saver.put(config, checkpoint, {"step": len(ids)}, new_versions)
            ids.append(config["configurable"]["checkpoint_id"])
    return ids


def test_a_cold_read_of_the_head_parses_only_the_newest_records(tmp_path: Path, monkeypatch):
    """A channel LangGraph left empty is recorded so: no reader walks back to its first write."""
    put_agent_steps(saver_at(tmp_path), 40)
    parsed: list[int] = []
    real = sidelog._parsed
    monkeypatch.setattr(sidelog, "_parsed", lambda *args: parsed.append(1) or real(*args))
    found = saver_at(tmp_path).get_tuple({"configurable": {"thread_id": THREAD}})
    assert found is not None
    assert len(found.checkpoint["channel_values"]["messages"]) == 80
    assert "__start__" not in found.checkpoint["channel_values"]
    assert len(parsed) <= 3  # the newest checkpoint record, and the one before it


def test_listing_with_a_limit_parses_only_the_records_it_lists(tmp_path: Path, monkeypatch):
    put_agent_steps(saver_at(tmp_path), 40)
    parsed: list[int] = []
    real = sidelog._parsed
    monkeypatch.setattr(sidelog, "_parsed", lambda *args: parsed.append(1) or real(*args))
    listed = list(saver_at(tmp_path).list({"configurable": {"thread_id": THREAD}}, limit=10))
    assert [len(t.checkpoint["channel_values"]["messages"]) for t in listed] == list(
        range(80, 70, -1)
    )
    assert len(parsed) <= 12  # the ten listed, and what their values need; not all 80


def test_earlier_checkpoints_since_the_last_marker_decode_no_line_again(
    tmp_path: Path, monkeypatch
):
    saver = saver_at(tmp_path)
    ids = put_agent_steps(saver, 20)
    reader = saver_at(tmp_path)
    newest = Thread(reader).messages()
    monkeypatch.setattr(threads_module, "context_of", None)  # any re-decoding fails
    for back, checkpoint_id in enumerate(reversed(ids)):
        assert Thread(reader).messages(checkpoint_id) == newest[: len(newest) - back]
    listed = list(reader.list({"configurable": {"thread_id": THREAD}}, limit=10))
    assert [len(t.checkpoint["channel_values"]["messages"]) for t in listed] == list(
        range(40, 30, -1)
    )


def test_pruning_and_deleting_runs_leave_a_chat_historys_session_alone(tmp_path: Path):
    saver = saver_at(tmp_path)
    saver.store.get_session_history(THREAD).add_messages(turn(0))
    saver.prune([THREAD])
    saver.prune([THREAD], strategy="delete")
    saver.delete_for_runs(["run-1"])
    assert not list(tmp_path.glob("*.checkpoints"))  # nothing to prune: no side log made
    assert saver.store.get_session_history(THREAD).messages == turn(0)
    with pytest.raises(ValueError, match="unknown prune strategy"):
        saver.prune([THREAD], strategy="keep_all")


def test_a_reader_whose_session_read_came_before_the_record_reads_the_line(tmp_path: Path):
    """A reader may read the session, then the side log after a put added a line to both."""
    from crab_langchain.steps import run

    writer = Thread(saver_at(tmp_path))
    writer.put({"messages": turn(0)})
    reader = saver_at(tmp_path)._threads
    thread = run(reader._thread(writer.config(), create=False))
    run(reader._refresh(thread))
    writer.put({"messages": [*turn(0), HumanMessage("late", id="late")]})
    run(reader._read_side(thread))  # the record, without the session line it points past
    found = thread.index.checkpoint("", thread.index.newest(""))
    got = run(reader.tuple_of(thread, "", found, {}))
    assert got.checkpoint["channel_values"]["messages"][-1].content == "late"


def test_list_filters_and_pages(tmp_path: Path):
    thread = Thread(saver_at(tmp_path))
    ids = [thread.put({"count": n}, run_id=f"run-{n % 2}") for n in range(6)]
    listed = [t.checkpoint["id"] for t in thread.saver.list(thread.config())]
    assert listed == ids[::-1]
    odd = thread.saver.list(thread.config(), filter={"run_id": "run-1"})
    assert [t.checkpoint["id"] for t in odd] == [ids[5], ids[3], ids[1]]
    page = thread.saver.list(thread.config(), before=thread.config(ids[3]), limit=2)
    assert [t.checkpoint["id"] for t in page] == [ids[2], ids[1]]
    other = Thread(thread.saver, thread_id="bob")
    other.put({"count": 0})
    every = {t.config["configurable"]["thread_id"] for t in thread.saver.list(None)}
    assert every == {THREAD, "bob"}


# --- hooks -------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.created: list[str] = []
        self.loaded: list[list[Any]] = []

    @hookimpl
    def crab_session_created(self, session: Any) -> None:
        self.created.append(session.id)

    @hookimpl
    def crab_after_load(self, session: Any, messages: Any) -> None:
        self.loaded.append([m.content for m in messages])


class DropSecrets:
    @hookimpl
    def crab_filter_message(self, message: CrabMessage) -> bool | None:
        return False if "secret" in message.content else None

    @hookimpl
    def crab_before_persist(self, messages: list[CrabMessage]) -> None:
        for message in messages:
            message.content = message.content.replace("hunter2", "*******")


def test_plugins_decide_what_is_written_through_the_saver(tmp_path: Path):
    recorder = Recorder()
    thread = Thread(saver_at(tmp_path, [recorder, DropSecrets()]))
    injected = mark_auto_injected(HumanMessage("recalled memory", id="mem"))
    secret = HumanMessage("my secret is 42", id="s")
    messages = [HumanMessage("my password is hunter2", id="p"), injected, secret, AIMessage("ok")]
    checkpoint_id = thread.put({"messages": messages, "__start__": {"messages": [secret]}})
    thread.saver.put_writes(thread.config(checkpoint_id), [("messages", [secret, injected])], "t")
    everything = b"".join(p.read_bytes() for p in tmp_path.glob("*.jsonl*"))
    assert b"secret" not in everything
    assert b"recalled memory" not in everything
    assert b"hunter2" not in everything
    assert recorder.created == [THREAD]
    fresh = saver_at(tmp_path, [recorder])
    got = fresh.get_tuple(thread.config())
    assert got is not None
    contents = [m.content for m in got.checkpoint["channel_values"]["messages"]]
    assert contents == ["my password is *******", "ok"]  # absent after a resume
    assert got.checkpoint["channel_values"]["__start__"] == {"messages": []}
    assert got.pending_writes == [("t", "messages", [])]
    assert recorder.loaded[-1] == contents  # the fresh saver read the session


# --- one session, two doors, and the tools ------------------------------------------------


def test_the_store_and_the_tools_treat_the_side_log_as_part_of_its_session(tmp_path: Path):
    root = tmp_path / "sessions"
    thread = Thread(saver_at(root))
    thread.put({"messages": turn(0), "count": 1})
    store = SessionStore(root, entry_points=False)
    assert [info.session_id for info in store.list_sessions()] == [THREAD]
    (session,) = root.glob("*.jsonl")
    assert verify_file(session).ok
    target = tmp_path / "copy"
    (result,) = copy_sessions(store.storage, DirectoryStorage(target))
    assert not isinstance(result, Exception)
    assert saver_at(target).get_tuple(thread.config()) is not None
    assert Thread(saver_at(target)).messages() == turn(0)
    side = session.with_name(session.name + ".checkpoints")
    bad = len(side.read_bytes().splitlines()) + 1
    with side.open("ab") as file:
        file.write(b"not json\n")
    report = verify_file(session)
    assert not report.ok
    assert f"checkpoints:{bad}: not a JSON object" in report.problems[0][1]
    assert store.delete_session(THREAD)
    assert not [p for p in root.iterdir() if not p.name.startswith(".crab_langchain")]


def test_the_history_door_reads_and_continues_a_savers_session(backend: Backend):
    saver = CrabSaver(backend.store())
    thread = Thread(saver)
    thread.put({"messages": turn(0)})
    history = backend.store().get_session_history(THREAD)
    assert history.messages == turn(0)
    history.add_messages(turn(1))
    thread.put({"messages": [*turn(0), *turn(1), *turn(2)]})  # the saver's next turn
    assert backend.store().get_session_history(THREAD).messages == [*turn(0), *turn(1), *turn(2)]
    assert len(backend.lines(backend.store().find(THREAD) or "")) == 7  # nothing twice


def test_pruning_keeps_which_lines_puts_wrote(tmp_path: Path):
    thread = Thread(saver_at(tmp_path))
    thread.put({"messages": [*turn(0), *turn(1)]})
    thread.saver.prune([THREAD])  # the intents go; what they said stays
    cold = Thread(saver_at(tmp_path))
    cold.parent = thread.parent
    cold.put({"messages": turn(1)})  # the first turn removed, by a saver that read nothing
    session, _ = files(tmp_path)
    assert [line.get("content") for line in session[1:]] == ["question 1", "answer 1"]


def deeply_nested(depth: int = 5000) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def test_deep_nesting_on_any_write_is_a_value_error_naming_the_field_and_stores_nothing(
    tmp_path: Path,
):
    saver = saver_at(tmp_path)
    thread = Thread(saver)
    thread.put({"messages": turn(0)})
    before = sorted((p.name, p.read_bytes()) for p in tmp_path.glob("*.jsonl*"))
    deep = AIMessage("hi", additional_kwargs={"deep": deeply_nested()})
    with pytest.raises(
        ValueError, match=r"AIMessage\.additional_kwargs: a value nested too deeply"
    ):
        thread.put({"messages": [*turn(0), deep]})
    with pytest.raises(ValueError, match="channel 'other': a value nested too deeply"):
        thread.put({"messages": [*turn(0), *turn(1)], "other": deeply_nested()})
    with pytest.raises(ValueError, match="the checkpoint's metadata: a value nested too deeply"):
        thread.put({"messages": [*turn(0), *turn(1)]}, extra=deeply_nested())
    config = thread.config(thread.parent)
    with pytest.raises(ValueError, match="channel 'ch': a value nested too deeply"):
        saver.put_writes(config, [("ch", deeply_nested())], "task")
    with pytest.raises(ValueError, match=r"AIMessage\.additional_kwargs: a value nested too deep"):
        saver.store.get_session_history(THREAD).add_messages([deep])
    assert sorted((p.name, p.read_bytes()) for p in tmp_path.glob("*.jsonl*")) == before


class LoadsTold:
    """What ``crab_after_load`` is told: the session's id, the view's type, the contents."""

    def __init__(self) -> None:
        self.told: list[tuple[str, str, list[Any]]] = []

    @hookimpl
    def crab_after_load(self, session: Any, messages: Any) -> None:
        assert not hasattr(messages, "append")  # a view: nothing to change in place
        self.told.append((session.id, type(messages).__name__, [m.content for m in messages]))


def test_every_door_tells_a_load_as_the_one_follower_does(backend: Backend):
    """The history and the saver follow a session through one piece of code: same hook call."""
    backend.store().get_session_history("t").add_messages([HumanMessage("a")])
    loads = LoadsTold()
    backend.store([loads]).get_session_history("t").messages  # noqa: B018 - the read is the point
    CrabSaver(backend.store([loads])).get_tuple({"configurable": {"thread_id": "t"}})
    assert loads.told == [("t", "ReadOnlyMessages", ["a"])] * 2
