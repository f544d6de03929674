"""CrabSaver follows LangGraph's saver conventions; missing extras are named."""

from __future__ import annotations

import subprocess
import sys

import pytest
from agents import CONFIG, chat_agent, human
from backends import Backend, backend  # noqa: F401 - the fixture

from crab_langchain import SessionStore
from crab_langchain.checkpoint import CrabSaver


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
