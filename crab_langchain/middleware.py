"""Crab hooks as LangChain v1 agent middleware (the ``agents`` extra).

``create_agent(model, tools, middleware=[CrabHooksMiddleware(store)])``: before
every model call the plugins of ``store`` are asked what to inject for it
(``crab_inject_messages``, memory recall for instance), and their messages are
added to that one model request, just before the latest user message, where
crabtalk inserts them. They are never part of the agent's state, so no
checkpoint, session file or later request ever holds them, and they never pile
up. Works with any checkpointer, or none; with
:class:`~crab_langchain.checkpoint.CrabSaver` on the same store and agent, the
session the plugins are told about is the thread's session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from crab_langchain.extras import needs_extra

try:
    from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
except ImportError as error:  # pragma: no cover - exercised in a subprocess without it
    raise needs_extra("crab_langchain.middleware", "agents", " (Python 3.11+)") from error

from langchain_core.messages import BaseMessage, HumanMessage
from langgraph.config import get_config

from crab_langchain.context import Followed, Follower
from crab_langchain.convert import is_auto_injected
from crab_langchain.hooks import has_impls, injected_messages
from crab_langchain.log import SessionLog
from crab_langchain.models import Session
from crab_langchain.naming import check_agent
from crab_langchain.steps import run
from crab_langchain.store import SessionStore

__all__ = ["CrabHooksMiddleware"]

_KNOWN_THREADS = 1024  # threads whose session one middleware keeps reading from where it stopped

Handler = Callable[[ModelRequest[Any]], ModelResponse[Any]]
AsyncHandler = Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]]


class CrabHooksMiddleware(AgentMiddleware[Any, Any, Any]):
    """Agent middleware that adds what crab plugins inject to each model request, and only there.

    Before each model call (``invoke`` or ``ainvoke``), the plugins' ``crab_inject_messages``
    are called with the thread's session and the conversation the model is about
    to see (without auto-injected messages). Their messages are marked
    auto-injected and inserted just before the latest user message of that request.
    The agent's state is not touched: the model's reply is all the call adds.
    Messages marked auto-injected that reach the state some other way are left
    out of the request, as crabtalk strips them before each run.

    The session told to the plugins is the one of ``store`` whose id is the
    ``thread_id`` (the one ``CrabSaver(store, agent=agent)`` writes), read
    incrementally: a model call reads only what was appended since the last.
    It keeps what it read of the 1,024 threads it saw last (their working
    contexts in memory, as ``CrabSaver`` keeps its own); a thread it let go of
    is read from the start when it comes back.
    Under LangGraph's default ``durability="async"`` a checkpoint may still be
    on its way while the next model call starts, so ``session.history`` can
    lag behind the step just taken (on a thread's first call the session may
    not be written yet); the ``history`` argument is always the conversation
    of this request. A thread whose session is not in the store (another
    checkpointer) is told as a session not written yet, with an empty
    ``history``; a run without a ``thread_id`` as one with the id ``""``. The
    middleware never writes to the store.

    Args:
        store: the sessions and their plugins; ``SessionStore()`` by default.
        agent: the agent the threads' sessions belong to.
        created_by: who starts a session, as told for one not written yet.

    Raises:
        ValueError: ``agent`` cannot be part of a file name.
    """

    def __init__(
        self, store: SessionStore | None = None, *, agent: str = "crab", created_by: str = "user"
    ) -> None:
        super().__init__()
        check_agent(agent)
        self.store = store if store is not None else SessionStore()
        self.agent = agent
        self.created_by = created_by
        self._followed: Followed[Follower] = Followed(_KNOWN_THREADS)

    def __repr__(self) -> str:
        return f"CrabHooksMiddleware({self.store!r}, agent={self.agent!r})"

    def wrap_model_call(self, request: ModelRequest[Any], handler: Handler) -> ModelResponse[Any]:
        """Call the model with what the plugins inject for this call.

        Args:
            request: the model request the agent built from its state.
            handler: calls the model (and the middleware inside this one).

        Returns:
            The model's response, untouched.

        Raises:
            TypeError: a plugin returned something other than a list of
                messages or None (naming it); the model is not called.
            SessionFormatError: the thread's session is malformed (naming the line).
        """
        if not self._asked():
            return handler(request)
        return handler(self._injected(request, self._session(_thread_id())))

    async def awrap_model_call(
        self, request: ModelRequest[Any], handler: AsyncHandler
    ) -> ModelResponse[Any]:
        """Async :meth:`wrap_model_call`; the session is read off the event loop."""
        await self.store.aready()
        if not self._asked():
            return await handler(request)
        session = await asyncio.to_thread(self._session, _thread_id())
        return await handler(self._injected(request, session))

    def _asked(self) -> bool:
        return has_impls(self.store.plugin_manager.hook.crab_inject_messages)

    def _injected(self, request: ModelRequest[Any], session: Session) -> ModelRequest[Any]:
        """``request`` with the plugins' messages before its latest user message."""
        conversation: list[BaseMessage] = [m for m in request.messages if not is_auto_injected(m)]
        # The agent's state holds these objects: plugins get copies, so an edit stays theirs.
        told = [message.model_copy() for message in conversation]
        injected = injected_messages(self.store.plugin_manager, session, told)
        at = _latest_user_message(conversation)
        messages: list[Any] = [*conversation[:at], *injected, *conversation[at:]]
        return request.override(messages=messages)

    def _session(self, thread_id: str | None) -> Session:
        """The session the plugins are told about: the thread's, as stored now.

        Raises:
            SessionFormatError: the session is malformed (naming the line).
        """
        if thread_id is None:
            return self._unwritten("")
        follower = self._followed.get(thread_id, lambda: self._follow(thread_id))
        if follower is None:
            return self._unwritten(thread_id)
        try:
            run(follower.read_on())
        except FileNotFoundError:  # deleted since: it may be written again, under a new name
            self._followed.forget(thread_id, follower)
            return self._unwritten(thread_id)
        with follower.lock:
            meta = follower.context.meta
            # Copies: a plugin that edits what it is told changes nothing told later.
            history = [message.model_copy() for message in follower.context.crab_messages()]
        if meta is None:
            return self._unwritten(thread_id)
        path = follower.log.path
        return Session.from_meta(thread_id, meta, file_path=path, history=history)

    def _follow(self, thread_id: str) -> Follower | None:
        """A follower of the thread's session, if the store holds one. Does I/O."""
        name = self.store.find(thread_id, self.agent)
        return None if name is None else Follower(SessionLog(self.store.storage, name), thread_id)

    def _unwritten(self, session_id: str) -> Session:
        now = datetime.now(timezone.utc)
        return Session(id=session_id, agent=self.agent, created_by=self.created_by, created_at=now)


def _thread_id() -> str | None:
    """The running graph's ``thread_id``; None if it has none, or if no graph is running."""
    try:
        config = get_config()
    except RuntimeError:  # called outside a graph's run (a test calling the hook itself)
        return None
    thread_id: Any = config.get("configurable", {}).get("thread_id")
    return None if thread_id is None else str(thread_id)


def _latest_user_message(messages: list[BaseMessage]) -> int:
    """The index of the latest user message (``len(messages)`` if there is none)."""
    for index in range(len(messages) - 1, -1, -1):
        if isinstance(messages[index], HumanMessage):
            return index
    return len(messages)
