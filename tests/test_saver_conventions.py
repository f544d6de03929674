"""CrabSaver follows LangGraph's saver conventions; missing extras are named."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import pluggy
import pytest
from agents import CONFIG, chat_agent, human
from backends import Backend, backend  # noqa: F401 - the fixture
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage

from crab_langchain import SessionStore
from crab_langchain.checkpoint import CrabSaver
from crab_langchain.middleware import CrabHooksMiddleware


def options(backend: Backend) -> dict[str, str]:
    return {"prefix": backend.prefix} if backend.prefix else {}


def test_from_conn_string_opens_and_closes_a_saver(backend: Backend):
    with CrabSaver.from_conn_string(backend.url, agent="bot", **options(backend)) as saver:
        saver.setup()
        saver.setup()  # idempotent
        chat_agent(saver).invoke(human("q"), CONFIG)
        assert saver.agent == "bot"
    store = backend.store()
    assert store.get_session_history("alice-1", agent="bot").messages[0].content == "q"


async def test_afrom_conn_string_opens_and_closes_a_saver(backend: Backend):
    async with CrabSaver.afrom_conn_string(backend.url, **options(backend)) as saver:
        await saver.asetup()
        await chat_agent(saver).ainvoke(human("q"), CONFIG)
    history = backend.store().get_session_history("alice-1")
    assert history.messages[0].content == "q"


class EntryPointScans:
    """Which threads scanned the installed packages for plugins (an I/O walk)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.threads: list[int] = []
        real = pluggy.PluginManager.load_setuptools_entrypoints

        def recorded(manager: Any, group: str, name: str | None = None) -> int:
            self.threads.append(threading.get_ident())
            return real(manager, group, name)

        monkeypatch.setattr(pluggy.PluginManager, "load_setuptools_entrypoints", recorded)


async def test_stores_built_in_a_running_loop_scan_for_plugins_off_it(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
):
    scans = EntryPointScans(monkeypatch)
    loop_thread = threading.get_ident()
    store = SessionStore.from_url(backend.url, **options(backend))  # entry points on
    assert scans.threads == []  # not when built
    await chat_agent(CrabSaver(store)).ainvoke(human("q"), CONFIG)
    assert len(scans.threads) == 1
    assert loop_thread not in scans.threads
    ready = await SessionStore.afrom_url(backend.url, **options(backend))
    assert len(scans.threads) == 2
    assert loop_thread not in scans.threads
    async with CrabSaver.afrom_conn_string(backend.url, **options(backend)) as saver:
        await chat_agent(saver).ainvoke(human("q2"), {"configurable": {"thread_id": "t2"}})
    assert len(scans.threads) == 3
    assert loop_thread not in scans.threads
    hooked = SessionStore.from_url(backend.url, **options(backend))
    model = FakeMessagesListChatModel(responses=[AIMessage("a")])
    agent = create_agent(model, [], middleware=[CrabHooksMiddleware(hooked)])
    await agent.ainvoke(human("q3"), {"configurable": {"thread_id": "t3"}})
    assert len(scans.threads) == 4
    assert loop_thread not in scans.threads
    chained = SessionStore.from_url(backend.url, **options(backend))
    history = chained.get_session_history("t4")  # LangChain's factory, called on the loop
    await history.aadd_messages([AIMessage("h")])
    assert [m.content for m in await history.aget_messages()] == ["h"]
    assert len(scans.threads) == 5
    assert loop_thread not in scans.threads
    for each in (store, ready, hooked, chained):
        await each.aclose()


def test_a_store_is_a_context_manager(tmp_path):
    with SessionStore(tmp_path, entry_points=False) as store:
        store.get_session_history("s").add_user_message("hi")
    assert store.get_session_history("s").messages[0].content == "hi"  # reopened when used


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("crab_langchain.checkpoint", "langgraph", "langgraph"),
        ("crab_langchain.middleware", "langchain", "agents"),
    ],
)
def test_a_missing_extra_is_named_with_its_install_command(module: str, blocked: str, extra: str):
    code = f"import sys; sys.modules[{blocked!r}] = None; import {module}"
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:")
    assert f"'{extra}' extra" in last
    assert f"pip install 'crab-langchain[{extra}]'" in last
