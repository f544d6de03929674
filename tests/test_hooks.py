"""Plugins: entry-point discovery, the order hooks are asked in, and how results combine.

Every test that stores something runs on each backend (see ``backends.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pluggy
import pytest
from backends import Backend, stored_lines
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from crab_langchain import (
    AUTO_INJECTED_KEY,
    CrabMessage,
    SessionStore,
    from_crab_message,
    hookimpl,
    is_auto_injected,
    make_plugin_manager,
    mark_auto_injected,
)
from crab_langchain.hooks import ENTRY_POINT_GROUP


def file_lines(store: SessionStore, session_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stored_lines(store, session_id)[1:]]


def contents(store: SessionStore, session_id: str) -> list[str]:
    return [line.get("content", "") for line in file_lines(store, session_id)]


# --- entry points -------------------------------------------------------------------------

PLUGIN_MODULE = """
from langchain_core.messages import SystemMessage
from crab_langchain import hookimpl

@hookimpl
def crab_inject_messages(history):
    return [SystemMessage(f"recall from entry point ({len(history)} stored)")]

@hookimpl
def crab_filter_message(message):
    return False if "SECRET" in message.content else None
"""

# Opens the backend's sessions as a host would: entry points as the mode says.
PROBE_SCRIPT = """
import json, sys
from langchain_core.messages import HumanMessage
from crab_langchain import SessionStore

from crab_langchain import hookimpl

class KeepAll:
    @hookimpl
    def crab_filter_message(self, message):
        return True

url, prefix, mode = sys.argv[1:4]
options = {"prefix": prefix} if prefix else {}
if mode == "default":
    store = SessionStore.from_url(url, **options)
elif mode == "host-keeps-all":
    store = SessionStore.from_url(url, plugins=[KeepAll()], **options)
else:
    store = SessionStore.from_url(url, entry_points=False, **options)
history = store.get_session_history("ep")
history.add_messages([HumanMessage("hello"), HumanMessage("the SECRET is 7")])
print(json.dumps({
    "plugins": [name for name, _ in store.plugin_manager.list_name_plugin()],
    "dists": [dist.project_name for _, dist in store.plugin_manager.list_plugin_distinfo()],
    "messages": [[m.type, m.text, m.additional_kwargs] for m in history.messages],
}))
"""


@pytest.fixture
def installed_plugin(tmp_path: Path) -> Path:
    """A plugin distribution on a directory, as pip would lay it out."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "myplugin_mod.py").write_text(PLUGIN_MODULE, encoding="utf-8")
    dist_info = site / "myplugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n", encoding="utf-8"
    )
    (dist_info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nmyplugin = myplugin_mod\n", encoding="utf-8"
    )
    return site


def probe(site: Path, backend: Backend, workdir: Path, mode: str) -> dict[str, Any]:
    """Run PROBE_SCRIPT with ``site`` installed; what it saw, and the session's stored text."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    workdir = workdir / f"cwd-{mode}"
    workdir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", PROBE_SCRIPT, *backend.argv, mode],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    seen["file"] = "".join(line.decode() + "\n" for line in stored_lines(backend.store(), "ep"))
    return seen


def test_entry_point_plugin_is_loaded_by_default(
    installed_plugin: Path, backend: Backend, tmp_path: Path
) -> None:
    seen = probe(installed_plugin, backend, tmp_path, "default")

    assert "myplugin" in seen["plugins"]
    assert seen["dists"] == ["myplugin"]
    assert seen["messages"] == [
        ["human", "hello", {}],
        ["system", "recall from entry point (1 stored)", {AUTO_INJECTED_KEY: True}],
    ]
    lines = seen["file"].splitlines()
    assert [json.loads(line) for line in lines[1:]] == [{"role": "user", "content": "hello"}]


def test_entry_points_false_does_not_load_the_plugin(
    installed_plugin: Path, backend: Backend, tmp_path: Path
) -> None:
    seen = probe(installed_plugin, backend, tmp_path, "no-entry-points")

    assert "myplugin" not in seen["plugins"]
    assert seen["dists"] == []
    assert seen["messages"] == [["human", "hello", {}], ["human", "the SECRET is 7", {}]]
    assert "SECRET" in seen["file"]
    assert "recall" not in seen["file"]


def test_host_plugin_is_asked_before_entry_point_plugins(
    installed_plugin: Path, backend: Backend, tmp_path: Path
) -> None:
    seen = probe(installed_plugin, backend, tmp_path, "host-keeps-all")

    assert "myplugin" in seen["plugins"]
    assert [m[1] for m in seen["messages"]] == [
        "hello",
        "the SECRET is 7",
        "recall from entry point (2 stored)",
    ]
    assert "the SECRET is 7" in seen["file"]


# --- order: host plugins before the default one -------------------------------------------


class Audit:
    """Keeps every message, auto-injected ones included."""

    @hookimpl
    def crab_filter_message(self, message: CrabMessage) -> bool:
        return True


class LateAudit:
    """Keeps every message, and asks to be asked late."""

    @hookimpl(trylast=True)
    def crab_filter_message(self, message: CrabMessage) -> bool:
        return True


@pytest.mark.parametrize("audit", [Audit, LateAudit])
def test_host_filter_is_asked_before_the_default_plugin(backend: Backend, audit: type) -> None:
    store = backend.store([audit()])
    history = store.get_session_history("audit")

    history.add_messages([HumanMessage("hi"), mark_auto_injected(SystemMessage("recall: x"))])

    lines = file_lines(store, "audit")
    assert [(line["role"], line["content"]) for line in lines] == [
        ("user", "hi"),
        ("system", "recall: x"),
    ]
    assert is_auto_injected(from_crab_message(CrabMessage.from_line(json.dumps(lines[1]))))
    # Kept for the audit, but stale: never handed to a later run.
    assert store.get_session_history("audit").messages == [HumanMessage("hi")]


def test_without_host_filter_the_default_plugin_drops_injected(backend: Backend) -> None:
    store = backend.store()
    history = store.get_session_history("plain")

    history.add_messages([HumanMessage("hi"), mark_auto_injected(SystemMessage("recall: x"))])

    assert contents(store, "plain") == ["hi"]


def test_default_plugin_wraps_the_filter_so_every_other_plugin_is_asked_first() -> None:
    manager = make_plugin_manager([Audit()], entry_points=False)
    impls = manager.hook.crab_filter_message.get_hookimpls()
    default = [impl for impl in impls if impl.plugin_name == "crab_langchain.default"]
    # A wrapper sees the result of all plain implementations, whatever their order.
    assert len(default) == 1
    assert default[0].wrapper
    assert any(isinstance(impl.plugin, Audit) and not impl.wrapper for impl in impls)


# --- order: tryfirst, trylast, first non-None result --------------------------------------


def keeps(plugins: Sequence[object], backend: Backend) -> bool:
    """Whether a plain user message is written with ``plugins`` registered in this order."""
    store = backend.store(plugins)
    history = store.get_session_history("s")
    history.add_messages([HumanMessage("first"), HumanMessage("probe")])
    return "probe" in contents(store, "s")


def probe_filter(verdict: bool | None, log: list[str], label: str, **opts: bool) -> object:
    """A filter that only has a say about the message "probe"; logs when it is asked."""

    class Filter:
        @hookimpl(**opts)
        def crab_filter_message(self, message: CrabMessage) -> bool | None:
            if message.content != "probe":
                return None
            log.append(label)
            return verdict

    return Filter()


def test_last_registered_plugin_is_asked_first(backend: Backend) -> None:
    log: list[str] = []
    plugins = [probe_filter(False, log, "dropper"), probe_filter(True, log, "keeper")]

    assert keeps(plugins, backend)
    assert log == ["keeper"]


def test_tryfirst_plugin_is_asked_before_later_registered_ones(backend: Backend) -> None:
    log: list[str] = []
    plugins = [
        probe_filter(False, log, "dropper", tryfirst=True),
        probe_filter(True, log, "keeper"),
    ]

    assert not keeps(plugins, backend)
    assert log == ["dropper"]


def test_trylast_plugin_is_asked_after_earlier_registered_ones(backend: Backend) -> None:
    log: list[str] = []
    plugins = [
        probe_filter(True, log, "keeper"),
        probe_filter(False, log, "dropper", trylast=True),
    ]

    assert keeps(plugins, backend)
    assert log == ["keeper"]


def test_none_passes_the_decision_to_the_next_plugin(backend: Backend) -> None:
    log: list[str] = []
    plugins = [
        probe_filter(False, log, "dropper"),
        probe_filter(None, log, "abstainer"),
        probe_filter(None, log, "abstainer2"),
    ]

    assert not keeps(plugins, backend)
    assert log == ["abstainer2", "abstainer", "dropper"]


def test_first_non_none_result_wins_and_stops_the_call(backend: Backend) -> None:
    log: list[str] = []
    plugins = [
        probe_filter(False, log, "never asked"),
        probe_filter(True, log, "keeper"),
        probe_filter(None, log, "abstainer"),
    ]

    assert keeps(plugins, backend)
    assert log == ["abstainer", "keeper"]


# --- injection from several plugins -------------------------------------------------------


class Inject:
    def __init__(self, *messages: BaseMessage | None) -> None:
        self.result = None if messages == (None,) else list(messages)

    @hookimpl
    def crab_inject_messages(self) -> list[BaseMessage] | None:
        return self.result


def test_results_of_all_injecting_plugins_are_concatenated(backend: Backend) -> None:
    plugins = [
        Inject(SystemMessage("a1"), SystemMessage("a2")),
        Inject(HumanMessage("b1")),
        Inject(None),
        Inject(),
        Inject(AIMessage("c1"), SystemMessage("c2")),
    ]
    history = backend.store(plugins).get_session_history("multi")
    history.add_messages([HumanMessage("stored")])

    messages = history.messages

    assert [(m.type, m.text) for m in messages] == [
        ("human", "stored"),
        # Plugins are asked last-registered first; each plugin's messages keep their order.
        ("ai", "c1"),
        ("system", "c2"),
        ("human", "b1"),
        ("system", "a1"),
        ("system", "a2"),
    ]
    assert [is_auto_injected(m) for m in messages] == [False] + [True] * 5
    assert history.stored_messages() == [HumanMessage("stored")]


def test_injected_messages_from_several_plugins_are_not_written(backend: Backend) -> None:
    plugins = [Inject(SystemMessage("a")), Inject(HumanMessage("b"))]
    store = backend.store(plugins)
    history = store.get_session_history("multi")

    history.add_messages([HumanMessage("q"), *history.messages[-2:], AIMessage("r")])

    assert contents(store, "multi") == ["q", "r"]


# --- plugin shapes ------------------------------------------------------------------------


def test_module_and_instance_plugins_both_work(backend: Backend) -> None:
    module = types.ModuleType("crab_test_module_plugin")

    @hookimpl
    def crab_inject_messages() -> list[BaseMessage]:
        return [SystemMessage("from a module")]

    @hookimpl
    def crab_before_persist(messages: list[CrabMessage]) -> None:
        for message in messages:
            message.content = message.content.replace("password", "********")

    module.crab_inject_messages = crab_inject_messages  # type: ignore[attr-defined]
    module.crab_before_persist = crab_before_persist  # type: ignore[attr-defined]

    store = backend.store([module, Inject(SystemMessage("from an instance"))])
    history = store.get_session_history("shapes")
    history.add_messages([HumanMessage("my password is hunter2")])

    assert [m.text for m in history.messages] == [
        "my ******** is hunter2",
        "from an instance",
        "from a module",
    ]
    assert contents(store, "shapes") == ["my ******** is hunter2"]


def test_plugin_module_from_a_file_is_registered(backend: Backend, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "crab_file_plugin.py").write_text(textwrap.dedent(PLUGIN_MODULE), encoding="utf-8")
    sys.path.insert(0, str(source))
    try:
        import crab_file_plugin  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(source))
        sys.modules.pop("crab_file_plugin", None)

    store = backend.store([crab_file_plugin])
    history = store.get_session_history("file")
    history.add_messages([HumanMessage("keep"), HumanMessage("SECRET drop")])

    assert contents(store, "file") == ["keep"]
    assert history.messages[-1].text == "recall from entry point (1 stored)"


def test_hook_implementations_may_take_fewer_arguments(backend: Backend) -> None:
    calls: list[str] = []

    class Minimal:
        @hookimpl
        def crab_filter_message(self, message: CrabMessage) -> bool | None:
            calls.append(f"filter {message.content}")
            return False if message.content == "drop" else None

        @hookimpl
        def crab_inject_messages(self) -> list[BaseMessage]:
            calls.append("inject")
            return [SystemMessage("hint")]

        @hookimpl
        def crab_before_persist(self, messages: list[CrabMessage]) -> None:
            calls.append(f"persist {len(messages)}")

        @hookimpl
        def crab_session_created(self) -> None:
            calls.append("created")

    store = backend.store([Minimal()])
    history = store.get_session_history("few")
    history.add_messages([HumanMessage("keep"), HumanMessage("drop")])

    assert [m.text for m in history.messages] == ["keep", "hint"]
    assert contents(store, "few") == ["keep"]
    assert calls[:3] == ["filter keep", "filter drop", "persist 1"]
    assert sorted(calls[3:]) == ["created", "inject"]


# --- validation ---------------------------------------------------------------------------


class UnknownHook:
    @hookimpl
    def crab_on_before_run(self, session: Any) -> None:
        """Not a hook of crab_langchain (crabtalk's name for inject)."""


def test_unknown_crab_hook_is_reported_by_check_pending() -> None:
    # pluggy accepts an implementation of a hook it has no spec for at register time
    # (the spec might be added later); check_pending is where it reports it.
    manager = make_plugin_manager(entry_points=False)
    manager.register(UnknownHook())

    with pytest.raises(pluggy.PluginValidationError, match="unknown hook 'crab_on_before_run'"):
        manager.check_pending()


def test_unknown_crab_hook_on_a_store_is_reported_by_check_pending(backend: Backend) -> None:
    store = backend.store([UnknownHook()])

    with pytest.raises(pluggy.PluginValidationError, match="crab_on_before_run"):
        store.plugin_manager.check_pending()


def test_known_hooks_pass_check_pending(backend: Backend) -> None:
    store = backend.store([Audit(), Inject()])

    store.plugin_manager.check_pending()


def test_hook_with_an_argument_the_spec_lacks_is_rejected_on_register(backend: Backend) -> None:
    class Wrong:
        @hookimpl
        def crab_filter_message(self, message: CrabMessage, agent: str) -> bool | None:
            return None

    with pytest.raises(pluggy.PluginValidationError, match="agent"):
        backend.store([Wrong()])


def test_unmarked_functions_are_not_hooks(backend: Backend) -> None:
    class Unmarked:
        def crab_filter_message(self, message: CrabMessage) -> bool:
            return False

    store = backend.store([Unmarked()])
    store.get_session_history("u").add_messages([HumanMessage("kept")])

    assert contents(store, "u") == ["kept"]


# --- hooks see the session's history as it stands -------------------------------


class SessionWatcher:
    """Records, at each hook call, the contents of ``session.history``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[str]]] = []

    def _note(self, hook: str, session: Any) -> None:
        self.seen.append((hook, [m.content for m in session.history]))

    @hookimpl
    def crab_inject_messages(self, session: Any) -> None:
        self._note("inject", session)

    @hookimpl
    def crab_before_persist(self, session: Any) -> None:
        self._note("before_persist", session)

    @hookimpl
    def crab_after_load(self, session: Any) -> None:
        self._note("after_load", session)


def test_hooks_see_session_history_up_to_date(backend: Backend) -> None:
    watcher = SessionWatcher()
    history = backend.store([watcher]).get_session_history("s")
    history.add_messages([HumanMessage("one"), AIMessage("two")])
    _ = history.messages
    history.add_messages([HumanMessage("three")])
    history.compact("summary")
    _ = history.messages
    assert ("before_persist", []) in watcher.seen
    assert ("inject", ["one", "two"]) in watcher.seen
    assert ("before_persist", ["one", "two"]) in watcher.seen
    assert ("inject", ["summary"]) in watcher.seen
    reopened = backend.store([watcher])
    assert [m.content for m in reopened.get_session_history("s").session.history] == ["summary"]
    assert ("after_load", ["summary"]) in watcher.seen


def test_session_history_matches_the_file_without_plugins(backend: Backend) -> None:
    from crab_langchain.models import parse_entry

    store = backend.store()
    history = store.get_session_history("s")
    history.add_messages([HumanMessage("a"), AIMessage("b", id="x"), HumanMessage("c")])
    lines = stored_lines(store, "s")[1:]
    assert history.session.history == [parse_entry(line) for line in lines]
    history.add_messages([AIMessage("d")])
    assert [m.content for m in history.session.history] == ["a", "b", "c", "d"]
    history.clear()
    assert history.session.history == []
