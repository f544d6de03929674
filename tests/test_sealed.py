"""CrabSaver honours an encrypting serializer: nothing of a thread is stored in plaintext."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agents import CONFIG, chat_agent, comparable, human, states, tool_agent
from backends import Backend, backend  # noqa: F401 - the fixture
from langgraph.checkpoint.memory import InMemorySaver

from crab_langchain import SessionFormatError, SessionStore
from crab_langchain.checkpoint import CrabSaver

pytest.importorskip("Crypto", reason="pycryptodome (the test extra) for LangGraph's AES")
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer

KEY = b"0123456789abcdef0123456789abcdef"
SECRETS = ["weather?", "Lisbon", "Porto", "sunny in", "Sunny in both.", "Bye."]


def encrypted(key: bytes = KEY) -> EncryptedSerializer:
    return EncryptedSerializer.from_pycryptodome_aes(key=key)


def postgres_rows(backend: Backend) -> list[bytes]:
    """Every row of every table of the backend's schema, as text."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(backend.url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            [backend.prefix],
        ).fetchall()
        found = []
        for (table,) in tables:
            query = sql.SQL("SELECT t::text FROM {} t").format(
                sql.Identifier(backend.prefix, table)
            )
            found += [row[0].encode() for row in conn.execute(query)]
        for (line,) in conn.execute(
            sql.SQL("SELECT line FROM {}").format(sql.Identifier(backend.prefix, "lines"))
        ):
            found.append(bytes(line))
    return found


def stored_bytes(backend: Backend, store: SessionStore) -> bytes:
    """Every byte the thread's backend holds: files, every key's value, or every table's rows."""
    if not backend.is_server:
        return b"".join(p.read_bytes() for p in Path(backend.url).iterdir() if p.is_file())
    if backend.kind == "postgres":
        return b"\n".join(postgres_rows(backend))
    client = store.storage.client  # type: ignore[attr-defined]
    found = []
    for key in client.scan_iter(match=f"{backend.prefix}:*"):
        kind = client.type(key)
        if kind == b"list":
            found += client.lrange(key, 0, -1)
        elif kind == b"hash":
            found += [k + v for k, v in client.hgetall(key).items()]
        elif kind == b"zset":
            found += client.zrange(key, 0, -1)
    return b"\n".join(found)


def test_no_text_or_value_is_stored_in_plaintext_and_the_thread_works_as_without(
    backend: Backend,
):
    store = backend.store()
    saver = CrabSaver(store, serde=encrypted())
    agent = tool_agent(saver)
    agent.invoke(human("weather?"), CONFIG)
    agent.invoke(human("Bye."), CONFIG)
    everything = stored_bytes(backend, store)
    assert everything  # the thread is there
    for secret in SECRETS:
        assert secret.encode() not in everything, secret
    expected = tool_agent(InMemorySaver())
    expected.invoke(human("weather?"), CONFIG)
    expected.invoke(human("Bye."), CONFIG)
    resumed = tool_agent(CrabSaver(backend.store(), serde=encrypted()))
    assert states(resumed) == states(expected)  # every checkpoint, as InMemorySaver keeps it
    # A fork from an older checkpoint, through update_state.
    older = list(resumed.get_state_history(CONFIG))[-3].config
    resumed.update_state(older, {"messages": [human("forked")["messages"][0]]})
    forked = resumed.get_state(CONFIG).values["messages"]
    assert forked[-1].content == "forked"
    assert b"forked" not in stored_bytes(backend, store)


def test_the_session_stays_a_crabtalk_session_of_sealed_lines(tmp_path: Path):
    store = SessionStore(tmp_path, entry_points=False)
    chat_agent(CrabSaver(store, serde=encrypted())).invoke(human("my secret"), CONFIG)
    history = store.get_session_history("alice-1").stored_messages()
    assert [m.type for m in history] == ["human", "ai"]  # roles kept, for crabtalk and the history
    assert [m.content for m in history] == ["", ""]
    assert all("crab_sealed" in m.additional_kwargs for m in history)


def test_a_wrong_key_is_a_clear_error_not_garbage(tmp_path: Path):
    store = SessionStore(tmp_path, entry_points=False)
    chat_agent(CrabSaver(store, serde=encrypted())).invoke(human("my secret"), CONFIG)
    wrong = CrabSaver(SessionStore(tmp_path, entry_points=False), serde=encrypted(b"x" * 32))
    with pytest.raises(SessionFormatError, match="does not open"):
        wrong.get_tuple(CONFIG)


def test_comparable_states_ignore_nothing_secret(backend: Backend):
    """The states compared above hold the texts: the comparison is not vacuous."""
    agent = tool_agent(CrabSaver(backend.store(), serde=encrypted()))
    agent.invoke(human("weather?"), CONFIG)
    texts = str(comparable(agent.get_state(CONFIG).values))
    assert "Sunny in both." in texts
    assert "sunny in Lisbon" in texts


def test_values_decode_as_before(tmp_path: Path) -> None:
    values: list[Any] = []
    saver = CrabSaver(SessionStore(tmp_path, entry_points=False), serde=encrypted())
    agent = chat_agent(saver)
    agent.invoke(human("q"), CONFIG)
    values.append(agent.get_state(CONFIG).values)
    assert values[0]["messages"][0].content == "q"
