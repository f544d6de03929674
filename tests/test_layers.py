"""The package's shape: layers one way down, no import cycle, no reaching around a layer.

Read from the source with ``ast`` (imports inside functions count too), so a
change that bends a layer fails here, whatever it imports at run time.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

import crab_langchain

PACKAGE = Path(crab_langchain.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def _package_modules(nodes: Iterable[ast.AST]) -> set[str]:
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("crab_langchain")}


def imports_of(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in it (functions, TYPE_CHECKING)."""
    return _package_modules(ast.walk(ast.parse(path.read_text(encoding="utf-8"))))


def loads_of(path: Path) -> set[str]:
    """The package's modules that importing ``path`` loads: its module-level imports.

    An import inside a function is deferred to its call; one under ``if
    TYPE_CHECKING:`` is for type checkers only.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return _package_modules(node for node in tree.body if not _is_type_checking(node))


def _is_type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in (
        "TYPE_CHECKING",
        "typing.TYPE_CHECKING",
    )


@functools.cache
def graph(*, loaded: bool = False) -> dict[str, frozenset[str]]:
    """Module -> the package modules it imports (``loaded``: loads when imported), built once."""
    edges = loads_of if loaded else imports_of
    return {
        name: frozenset(edges(path) & MODULES.keys() - {name}) for name, path in MODULES.items()
    }


def test_there_is_no_import_cycle():
    """Not when loading (a deferred import of a higher layer's module is no cycle)."""
    edges = graph(loaded=True)
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for target in sorted(edges[name]):
            # A package imports its own modules; they import each other, never it.
            if not target.startswith(name + "."):
                visit(target, [*path, name])
        done.add(name)

    for name in sorted(edges):
        visit(name, [])


def reaches(name: str, *, loaded: bool = False) -> set[str]:
    """Every package module ``name`` imports, directly or through others (``loaded``: loads)."""
    edges, seen, todo = graph(loaded=loaded), set(), [name]
    while todo:
        for target in edges[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("crab_langchain.models", "crab_langchain.convert"),
        ("crab_langchain.models", "crab_langchain.storage"),
        ("crab_langchain.convert", "crab_langchain.log"),
        ("crab_langchain.log", "crab_langchain.context"),
        ("crab_langchain.steps", "crab_langchain.context"),
        ("crab_langchain.storage", "crab_langchain.steps"),
        ("crab_langchain.log", "crab_langchain.hooks"),
        ("crab_langchain.context", "crab_langchain.history"),
        ("crab_langchain.context", "crab_langchain.hooks"),
        ("crab_langchain.storage", "crab_langchain.log"),
        ("crab_langchain.store", "crab_langchain.checkpoint"),
        ("crab_langchain.history", "crab_langchain.checkpoint"),
        ("crab_langchain.context", "crab_langchain.checkpoint"),
        ("crab_langchain.store", "crab_langchain.middleware"),
        ("crab_langchain.hooks", "crab_langchain.middleware"),
        ("crab_langchain.checkpoint", "crab_langchain.middleware"),
        ("crab_langchain.middleware", "crab_langchain.checkpoint"),
    ],
)
def test_a_lower_layer_never_imports_a_higher_one(lower: str, upper: str):
    assert upper not in reaches(lower)


def test_the_store_knows_nothing_of_the_history_but_the_one_door_to_it():
    """The store finds and creates sessions; the history module builds histories on them.

    Loading the store loads no history; only the method that hands one out
    imports it, when called.
    """
    assert "crab_langchain.history" not in reaches("crab_langchain.store", loaded=True)
    tree = ast.parse(MODULES["crab_langchain.store"].read_text(encoding="utf-8"))
    deferred = {
        function.name
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef)
        and "crab_langchain.history" in _package_modules(ast.walk(function))
    }
    assert deferred == {"_history"}
    assert "crab_langchain.store" in imports_of(MODULES["crab_langchain.history"])


@pytest.mark.parametrize("adapter", ["crab_langchain.checkpoint", "crab_langchain.middleware"])
def test_the_v1_doors_load_neither_the_history_nor_its_base_class(adapter: str):
    """In a fresh interpreter, as a user's program starts."""
    pytest.importorskip("langgraph.checkpoint.base")
    pytest.importorskip("langchain.agents")
    code = (
        f"import sys, {adapter}\n"
        "print(sorted(m for m in ('crab_langchain.history', 'langchain_core.chat_history')"
        " if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
    assert "crab_langchain.history" not in reaches(adapter, loaded=True)


def test_the_package_loads_the_history_on_first_use():
    code = (
        "import sys, crab_langchain\n"
        "print('crab_langchain.history' in sys.modules)\n"
        "crab_langchain.CrabChatMessageHistory\n"
        "print('crab_langchain.history' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["False", "True"]


@pytest.mark.parametrize(
    "tool",
    [
        "crab_langchain.transfer",
        "crab_langchain.verify",
        "crab_langchain.display",
        *[
            name
            for name in MODULES
            if name.startswith("crab_langchain.cli") and name != "crab_langchain.cli.demo"
        ],
    ],
)
def test_tools_use_the_log_layer_never_the_history_class(tool: str):
    """They may use the store (listing, finding), never the LangChain adapter itself."""
    direct = imports_of(MODULES[tool])
    assert "crab_langchain.history" not in direct
    assert "crab_langchain" not in direct  # the package would bring the history along
    source = MODULES[tool].read_text(encoding="utf-8")
    assert "CrabChatMessageHistory(session" not in source


def test_the_history_opens_a_directory_only_in_its_convenience_constructor():
    source = (PACKAGE / "history.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    users = {
        function.name
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.Name) and node.id == "DirectoryStorage"
    }
    assert users == {"from_file"}


def attribute_calls(path: Path) -> set[str]:
    """The names of the methods ``path`` calls on anything (``x.take(...)`` gives ``take``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }


@pytest.mark.parametrize(
    "door",
    ["crab_langchain.history", "crab_langchain.checkpoint.threads", "crab_langchain.middleware"],
)
def test_every_door_follows_its_sessions_through_the_one_follower(door: str):
    """Reading on is written once (context.Follower): no door feeds a working context itself."""
    source = MODULES[door].read_text(encoding="utf-8")
    assert "Follower" in source
    assert "read_on()" in source
    for own in ("take", "take_appended"):  # WorkingContext's: only a follower calls them
        if own in attribute_calls(MODULES[door]):
            assert f".context.{own}(" not in source, f"{door} feeds a working context itself"
    assert "OrderedDict" not in source  # its sessions are kept in context.Followed


def test_the_library_never_switches_the_garbage_collector_or_reads_reference_counts():
    for name, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        for trick in ("gc.disable", "gc.enable", "getrefcount", "__pydantic_", "__dict__"):
            assert trick not in source, f"{name} uses {trick}"


def top_level_imports(path: Path) -> set[str]:
    """The top-level packages ``path`` imports, anywhere in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    plain = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    found = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    return {name.split(".")[0] for name in plain | found}


def test_only_the_v1_adapters_import_langgraph_and_langchain():
    """The core's runtime dependencies stay langchain-core, pydantic and pluggy.

    LangGraph is the checkpointer's (the ``langgraph`` extra); LangChain's agents
    (``langchain``, not ``langchain_core``) the middleware's (the ``agents`` extra).
    """
    for name, path in MODULES.items():
        allowed = {"langgraph"} if name.startswith("crab_langchain.checkpoint") else set()
        if name == "crab_langchain.middleware":
            allowed = {"langgraph", "langchain"}
        assert not top_level_imports(path) & ({"langgraph", "langchain"} - allowed), name


@pytest.mark.parametrize(
    "adapter", ["crab_langchain.middleware", "crab_langchain.checkpoint.threads"]
)
def test_the_v1_adapters_stand_beside_the_history_never_on_it(adapter: str):
    """LangChain v1's doors never depend on the deprecated chat-history base class."""
    direct = imports_of(MODULES[adapter])
    assert not direct & {"crab_langchain.history", "crab_langchain"}
    assert {"crab_langchain.store", "crab_langchain.context", "crab_langchain.hooks"} <= direct
    assert "langchain_core.chat_history" not in MODULES[adapter].read_text(encoding="utf-8")


def test_the_checkpointer_is_an_adapter_beside_the_history():
    """It stands on the store, the log and context layers, the hooks; the history never."""
    direct = imports_of(MODULES["crab_langchain.checkpoint.threads"])
    assert "crab_langchain.history" not in direct
    assert {"crab_langchain.log", "crab_langchain.context", "crab_langchain.hooks"} <= direct


def test_the_saver_module_is_langgraphs_interface_and_nothing_else():
    """Each method of CrabSaver is one LangGraph declares (or a constructor), a few lines long,
    and none takes a thread's lock: how a thread is read and written lives in threads.py."""
    base = pytest.importorskip("langgraph.checkpoint.base").BaseCheckpointSaver
    source = MODULES["crab_langchain.checkpoint.saver"].read_text(encoding="utf-8")
    tree = ast.parse(source)
    (saver,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CrabSaver"]
    # Beside the interface, the conventions LangGraph's own savers keep.
    constructors = {"__init__", "__repr__", "from_conn_string", "afrom_conn_string"}
    constructors |= {"setup", "asetup"}
    for method in saver.body:
        if not isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        assert method.name in constructors or hasattr(base, method.name)
        statements = [s for s in method.body if not isinstance(s, ast.Expr)]  # docstrings aside
        assert len(statements) <= 6, f"CrabSaver.{method.name} is not a few lines"
    assert ".lock" not in source
    assert "Thread" not in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
