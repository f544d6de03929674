"""Hooks a host implements to decide what a session injects, keeps and writes.

Write a plugin as any object (a module, a class instance) with functions named
after the hooks below, decorated with :data:`hookimpl`; pass it as
``plugins=[...]`` to :class:`~crab_langchain.SessionStore` or
:meth:`~crab_langchain.CrabChatMessageHistory.from_file`, or publish it under
the ``crab_langchain`` entry-point group. A plugin may implement any subset.

Hook functions are called with keyword arguments, and a plugin may leave out
arguments it does not need. Plugins are asked last-registered first; the
built-in :class:`DefaultPlugin` decides only what no other plugin decided.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import pluggy
from langchain_core.messages import BaseMessage
from pydantic import ValidationError

from crab_langchain.context import ReadOnlyMessages
from crab_langchain.convert import (
    AUTO_INJECTED_KEY,
    Encoded,
    ReadBack,
    check_json,
    encode,
    is_auto_injected,
    to_crab_message,
)
from crab_langchain.models import CrabMessage

if TYPE_CHECKING:
    from crab_langchain.models import Session

__all__ = [
    "ENTRY_POINT_GROUP",
    "PROJECT_NAME",
    "Batch",
    "CrabHookSpecs",
    "DefaultPlugin",
    "ReadBacks",
    "ReadOnlyMessages",
    "asked",
    "drops",
    "hookimpl",
    "hookspec",
    "injected_messages",
    "make_plugin_manager",
    "prepare_writes",
    "verdict_of",
]

PROJECT_NAME = "crab_langchain"
ENTRY_POINT_GROUP = "crab_langchain"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marks a hook specification (used by this module only)."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marks a plugin's hook implementation: ``@hookimpl`` or ``@hookimpl(tryfirst=True)``."""


class CrabHookSpecs:
    """The hooks of crab_langchain, each documented where it is declared."""

    @hookspec
    def crab_inject_messages(
        self, session: Session, history: Sequence[BaseMessage]
    ) -> Sequence[BaseMessage] | None:
        """Return messages to inject for the coming run, or None for none.

        Like crabtalk's ``on_before_run``. A chat history calls it when it is
        read for a run (``messages``, ``aget_messages``), and not again until
        the session changes, so every read within one run returns the same
        list (``RunnableWithMessageHistory`` relies on that); the messages go
        at the end of what the read returns, where the new input follows.
        :class:`~crab_langchain.middleware.CrabHooksMiddleware` calls it
        before every model call of an agent and inserts the messages into
        that request only, just before the latest user message. Either way
        the results of all plugins are concatenated, each plugin's in its
        order, and marked auto-injected; they are never written, unless a
        :func:`crab_filter_message` plugin keeps them.

        :param session: the session (id, agent, created_by, created_at,
            file_path, and ``history``, its stored working context).
        :param history: the conversation the run is about (a history's
            stored working context; the messages of an agent's model
            request), without injected messages; read-only.
        """

    @hookspec(firstresult=True)
    def crab_filter_message(self, session: Session, message: CrabMessage) -> bool | None:
        """Decide whether ``message`` is written to the session.

        Called for every message passed to ``add_messages``, after conversion.
        The first non-None result wins: False drops the message, True keeps
        it, None leaves the decision to the next plugin. When every plugin
        returns None, the default plugin drops auto-injected messages
        (``message.auto_injected``) and the rest are kept; return True to
        keep injected ones (audit) or False to drop others (secrets).

        :param session: the session written to.
        :param message: the converted message; do not modify it here.
        """

    @hookspec
    def crab_before_persist(self, session: Session, messages: list[CrabMessage]) -> None:
        """Inspect or change the messages about to be written, in place.

        Called once per ``add_messages`` call with the messages that passed
        :func:`crab_filter_message`, just before they are encoded. A plugin
        may edit a message (for example redact its ``content``) or remove
        items from the list. Raising aborts the write: nothing is written.

        :param session: the session written to.
        :param messages: the batch, in order; changes apply to what is written.
        """

    @hookspec
    def crab_after_load(self, session: Session, messages: Sequence[BaseMessage]) -> None:
        """Observe a session read from storage from its first line.

        Called when a history first reads its file, and again whenever it has
        to re-read it from the start (after a clear or a rewrite by anyone).

        :param session: the session as read (header fields, ``file_path``).
        :param messages: the working context read; read-only.
        """

    @hookspec
    def crab_session_created(self, session: Session) -> None:
        """Observe that a new session was written to storage (its header line)."""


class DefaultPlugin:
    """The spec's behaviour: auto-injected messages are never persisted.

    Its filter wraps the hook call instead of taking a place in it, so every
    other plugin is asked first however and whenever it was registered
    (``trylast`` included), and it decides only when they all return None.
    """

    @hookimpl(wrapper=True)
    def crab_filter_message(
        self, message: CrabMessage
    ) -> Generator[None, bool | None, bool | None]:
        """Drop auto-injected messages no other plugin decided on."""
        verdict = yield
        return default_verdict(message.auto_injected) if verdict is None else verdict


def default_verdict(auto_injected: bool) -> bool | None:
    """The spec's rule, for a message no plugin decided on: an auto-injected one is dropped.

    Returns False (drop) for an auto-injected message, else None (keep).
    """
    return False if auto_injected else None


def make_plugin_manager(
    plugins: Iterable[object] | None = None, *, entry_points: bool = True
) -> pluggy.PluginManager:
    """A plugin manager with the hook specs, the default plugin, and ``plugins``.

    With ``entry_points`` (the default) plugins published under the
    ``crab_langchain`` entry-point group are loaded as well.
    """
    manager = pluggy.PluginManager(PROJECT_NAME)
    manager.add_hookspecs(CrabHookSpecs)
    manager.register(DefaultPlugin(), name="crab_langchain.default")
    if entry_points:
        manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in plugins or ():
        manager.register(plugin)
    return manager


def has_impls(hook: Any) -> bool:
    """Whether any plugin implements ``hook`` (so callers can skip building its arguments)."""
    return bool(hook.get_hookimpls())


def filters_by_default(hook: Any) -> bool:
    """Whether only :class:`DefaultPlugin` implements ``crab_filter_message``.

    Then :func:`default_verdict` decides every message, and a writer may ask
    it directly instead of making a hook call per message.
    """
    impls = hook.get_hookimpls()
    return len(impls) == 1 and isinstance(impls[0].plugin, DefaultPlugin)


# --- checking what plugins return -------------------------------------------------------


def inject_result_problem(result: object) -> str | None:
    """What is wrong with one plugin's ``crab_inject_messages`` result; None if nothing."""
    if result is None:
        return None
    if isinstance(result, (str, bytes, BaseMessage, Mapping)) or not isinstance(result, Sequence):
        return f"a {type(result).__name__}; expected a list of messages or None"
    for index, item in enumerate(result):
        if not isinstance(item, BaseMessage):
            return f"a {type(item).__name__} at index {index}; expected messages only"
    return None


def filter_result_problem(result: object) -> str | None:
    """What is wrong with a ``crab_filter_message`` verdict; None if nothing."""
    if result is None or isinstance(result, bool):
        return None
    return f"a {type(result).__name__}; expected True, False or None"


def asked(
    manager: pluggy.PluginManager,
    name: str,
    kwargs: Mapping[str, Any],
    problem: Callable[[object], str | None],
    *,
    first: bool = False,
) -> list[Any]:
    """Every plugin's answer to hook ``name`` (None left out), each checked as it comes.

    Each implementation is asked once, in pluggy's own order (the last
    registered first, ``tryfirst``/``trylast`` kept), through its public
    ``get_hookimpls``: so a result ``problem`` objects to names the plugin
    that gave it, and no plugin is asked twice. ``first``: stop at the first
    answer (a ``firstresult`` hook). The default plugin's filter wrapper is
    left to the caller (:func:`verdict_of`); another plugin's hook wrapper
    needs pluggy's own call: then the combined results are checked, and the
    error cannot name a plugin.

    Raises:
        TypeError: an answer ``problem`` objects to, naming hook and plugin.
    """
    caller = getattr(manager.hook, name)
    impls = [i for i in caller.get_hookimpls() if not isinstance(i.plugin, DefaultPlugin)]
    if any(impl.hookwrapper or impl.wrapper for impl in impls):
        combined = caller(**kwargs)
        results = ([] if combined is None else [combined]) if first else list(combined)
        for result in results:
            why = problem(result)
            if why:
                raise TypeError(f"{name} returned {why} (a plugin behind a hook wrapper)")
        return results
    results = []
    for impl in reversed(impls):  # pluggy calls the last of the list first
        result = impl.function(*(kwargs[arg] for arg in impl.argnames))
        if result is None:
            continue
        why = problem(result)
        if why:
            raise TypeError(f"{name} of plugin {_plugin_name(impl.plugin)} returned {why}")
        results.append(result)
        if first:
            break
    return results


def _plugin_name(plugin: object) -> str:
    named = getattr(plugin, "__name__", None)  # a module, or a class registered as is
    return repr(named if isinstance(named, str) else type(plugin).__qualname__)


def injected_messages(
    manager: pluggy.PluginManager, session: Session, history: list[BaseMessage]
) -> list[BaseMessage]:
    """What the plugins' ``crab_inject_messages`` give for the coming run, marked auto-injected.

    Every door onto a session asks here, so a plugin injects the same way
    into a chat history's read and an agent's model request. Each plugin's
    messages are copied before they are marked: a plugin may hand out the
    same message objects on every call.

    Args:
        manager: the plugin manager.
        session: the session told to the plugins.
        history: the conversation without injected messages; the plugins get
            a read-only view of it.

    Returns:
        Every plugin's messages, in order (a new list; empty if none).

    Raises:
        TypeError: a plugin returned something other than a list of messages
            or None (naming it).
    """
    kwargs = {"session": session, "history": ReadOnlyMessages(history)}
    results = asked(manager, "crab_inject_messages", kwargs, inject_result_problem)
    return [_marked(message) for result in results for message in result]


def _marked(message: BaseMessage) -> BaseMessage:
    extra = {**message.additional_kwargs, AUTO_INJECTED_KEY: True}
    return message.model_copy(update={"additional_kwargs": extra})


def persistable(batch: list[Any]) -> list[CrabMessage]:
    """The batch ``crab_before_persist`` left, each message checked as a reader will read it.

    Plugins edit messages in place, past pydantic's validation, so each one
    is validated again. Raises ``TypeError`` naming the index and the field;
    the caller then writes nothing.
    """
    checked: list[CrabMessage] = []
    for index, message in enumerate(batch):
        where = f"crab_before_persist left, at index {index} of the batch,"
        if not isinstance(message, CrabMessage):
            raise TypeError(f"{where} a {type(message).__name__}, not a CrabMessage")
        try:
            fields = message.model_dump(warnings=False)
            fields["nested"] = message.nested  # not a key of the line: the dump leaves it out
            valid = CrabMessage.model_validate(fields, strict=True)
            check_json(valid.model_extra or {}, "extra keys")
            check_json(valid.langchain, "langchain")
        except ValidationError as error:
            detail = error.errors(include_url=False, include_input=False)[0]
            field = ".".join(str(part) for part in detail["loc"]) or "the message"
            reason = f"{field}: {detail['msg']}"
            raise TypeError(f"{where} a message whose {reason}; nothing was written") from None
        except TypeError as error:
            raise TypeError(f"{where} a message that JSON cannot hold ({error})") from None
        checked.append(valid)
    return checked


# --- what a writer writes -----------------------------------------------------------

ReadBacks = list[ReadBack] | None
"""What reading each written line back gives (see :data:`~crab_langchain.convert.ReadBack`),
where the writer knows it."""

Batch = tuple[list[bytes], ReadBacks]
"""The lines to write, and :data:`ReadBacks` for them."""


def prepare_writes(
    manager: pluggy.PluginManager,
    given: Sequence[BaseMessage],
    session: Callable[[], Session],
    *,
    strict: bool = False,
) -> Batch | None:
    """The lines to write for ``given``, as the plugins decide; None if none is kept.

    Every writer of a session (the chat history, the checkpointer) writes
    through here, so the plugins have the same say whichever door a message
    comes through. ``session`` gives the session the hooks are told about;
    it is called only if some plugin looks at writes. What the plugins leave
    is checked before anything is written: a plugin must not be able to
    write a line that no reader can read.

    Raises:
        TypeError: a plugin returned something unusable (naming it), or a
            message cannot be written as JSON.
    """
    hook = manager.hook
    if filters_by_default(hook.crab_filter_message) and not has_impls(hook.crab_before_persist):
        # No plugin looks at writes: straight to lines, no crab messages between.
        return _kept([encode(m, strict=strict) for m in given])
    batch = [to_crab_message(m, strict=strict) for m in given]
    told = session()
    kept = [m for m in batch if verdict_of(manager, told, m) is not False]
    if has_impls(hook.crab_before_persist):
        hook.crab_before_persist(session=told, messages=kept)
        kept = persistable(kept)
    return ([message.to_line_bytes() for message in kept], None) if kept else None


def drops(
    manager: pluggy.PluginManager,
    session: Callable[[], Session],
    message: BaseMessage,
    *,
    strict: bool = False,
) -> bool:
    """Whether the plugins drop ``message`` (a LangChain message) from what is written.

    ``session`` is called only if a plugin other than the default one decides.
    """
    if filters_by_default(manager.hook.crab_filter_message):
        return default_verdict(is_auto_injected(message)) is False
    crab = to_crab_message(message, strict=strict)
    return verdict_of(manager, session(), crab) is False


def verdict_of(
    manager: pluggy.PluginManager, session: Session, message: CrabMessage
) -> bool | None:
    """What ``crab_filter_message`` says of ``message`` (False: drop it).

    Raises:
        TypeError: a plugin returned something other than a bool or None (naming it).
    """
    kwargs = {"session": session, "message": message}
    verdicts = asked(manager, "crab_filter_message", kwargs, filter_result_problem, first=True)
    verdict = cast("bool | None", verdicts[0]) if verdicts else None
    return default_verdict(message.auto_injected) if verdict is None else verdict


def _kept(batch: list[Encoded]) -> Batch | None:
    """``batch`` as the default plugin decides it (no other plugin filters)."""
    kept = [encoded for encoded in batch if default_verdict(encoded.auto_injected) is not False]
    return ([e.line for e in kept], [e.read_back for e in kept]) if kept else None
