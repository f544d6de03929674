"""``CrabChatMessageHistory``: a LangChain chat history on one crabtalk session.

The LangChain adapter on top of the session log (:mod:`crab_langchain.log`)
and its working context (:mod:`crab_langchain.context`). What it adds is
LangChain's interface and the hooks: data flows one way, a LangChain
message is converted to a line, the hooks decide whether it is written, and
the log appends it. Reading goes back the same way, incrementally, through
the session's :class:`~crab_langchain.context.Follower` (the one piece of
code every door follows a session with: no lock held across I/O or a
plugin's hook, a read taken only if nobody moved the context meanwhile).
The history's own lock guards only which log it is on and the injected
messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    BaseMessage,
    HumanMessage,
    MessageLikeRepresentation,
    convert_to_messages,
)

from crab_langchain.context import OFF_LOOP_FROM, Follower, WorkingContext, read_context
from crab_langchain.convert import from_crab_message
from crab_langchain.forksafe import ForkSafeLock
from crab_langchain.hooks import (
    Batch,
    ReadBacks,
    has_impls,
    injected_messages,
    make_plugin_manager,
    prepare_writes,
)
from crab_langchain.log import SessionLog
from crab_langchain.models import (
    CompactMarker,
    Entry,
    RunEvent,
    Session,
    SessionFormatError,
    SessionMeta,
)
from crab_langchain.naming import session_id_of
from crab_langchain.steps import Steps, arun, run
from crab_langchain.storage import DirectoryStorage, Durability, SessionStorage

if TYPE_CHECKING:
    from crab_langchain.store import SessionStore

__all__ = [
    "COMPACT_MARKER_KEY",
    "COMPACT_SUMMARY_KEY",
    "CrabChatMessageHistory",
]

COMPACT_SUMMARY_KEY = "crab_compact"
"""``additional_kwargs`` key marking, in :meth:`CrabChatMessageHistory.archive`, the
summary of a compaction marker (it stands where the marker stands)."""

COMPACT_MARKER_KEY = "crab_marker"
"""``additional_kwargs`` key holding, beside :data:`COMPACT_SUMMARY_KEY`, what else
the marker said: crabtalk's ``title`` and ``archived_at`` (2026-04-03 on)."""

Plugins = pluggy.PluginManager | Callable[[], pluggy.PluginManager] | Iterable[object] | None

# From this many messages or lines on, async calls convert or parse them in a
# worker thread: thousands at once would stall the event loop.
# A session deleted again and again while one call works on it: give up after this.
_DELETED_RETRIES = 8

T = TypeVar("T")


class CrabChatMessageHistory(BaseChatMessageHistory):
    """A LangChain chat message history stored as a crabtalk JSONL session.

    Get one from :meth:`SessionStore.get_session_history
    <crab_langchain.SessionStore.get_session_history>` (a directory of
    sessions, or Redis) or :meth:`from_file` (one existing file). Reads return
    the stored working context followed by the messages plugins inject for the
    coming run; writes append one line per message, so their cost does not
    grow with the session. Safe to share between threads; other instances and
    processes on the same session see each other's writes on their next read.
    """

    def __init__(
        self,
        session: Session,
        *,
        storage: SessionStorage,
        name: str | None = None,
        plugins: Plugins = None,
        strict: bool = False,
        locate: Callable[[], str | None] | None = None,
        create: Callable[[Session], str] | None = None,
    ) -> None:
        """Bind a history to ``session``, stored as log ``name`` in ``storage``.

        Most code uses :class:`~crab_langchain.SessionStore` or
        :meth:`from_file` instead. Nothing is read or written here.

        Args:
            session: the session's id, agent and creator (the header, once read,
                fills in the rest).
            storage: where the session's log lives.
            name: the log's name, or None for a session whose log is found by
                ``locate`` (on the first read or write) or created by ``create``
                (on the first write).
            plugins: a plugin manager, plugins to register on a new one, or a
                function giving the manager when first needed (a store's: its
                entry points load then, off the event loop in async calls).
            strict: write only the spec's keys (LangChain-only fields are then
                not kept).
            locate: finds the log's name (None while there is none).
            create: creates the log of a session and returns its name.

        Raises:
            ValueError: ``name`` and ``create`` are both None.
        """
        if name is None and create is None:
            raise ValueError("a history without a stored log needs `create`")
        self._session = session
        self._storage = storage
        self._follower = None if name is None else self._follow(SessionLog(storage, name))
        self._locate = locate
        self._create = create
        self.strict = strict
        if callable(plugins) and not isinstance(plugins, pluggy.PluginManager):
            self._plugin_source: Callable[[], pluggy.PluginManager] | None = plugins
            self._manager: pluggy.PluginManager | None = None
        else:
            self._plugin_source, self._manager = None, _manager(plugins)
        self._lock = ForkSafeLock(threading.RLock)  # guards the two attributes above and below
        self._injected: tuple[object, list[BaseMessage]] | None = None

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        plugins: Plugins = None,
        *,
        strict: bool = False,
        durability: Durability = "flush",
    ) -> CrabChatMessageHistory:
        """Open an existing session file, crabtalk's own included.

        Args:
            path: the session file.
            plugins: plugins to register (no entry points are loaded for them).
            strict: write only the spec's keys.
            durability: ``"flush"`` or ``"fsync"`` for each append.

        Returns:
            The history, its working context read.

        Raises:
            FileNotFoundError: there is no such file.
            SessionFormatError: the file is malformed (naming the line).
        """
        path = Path(path).expanduser()
        log = SessionLog(DirectoryStorage(path.parent, durability=durability), path.name)
        meta = log.meta()
        session = Session.from_meta(session_id_of(path.name, meta), meta, file_path=path)
        history = cls(session, storage=log.storage, name=log.name, plugins=plugins, strict=strict)
        history._refresh()
        return history

    # --- what LangChain calls ---------------------------------------------------

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The working context, then the messages injected for the coming run.

        A new list on every read: changing it changes nothing stored. The
        message objects are shared with the history's cache: copy one before
        changing it in place.
        """
        self._refresh()
        return self._with_injected()

    @property
    def _plugins(self) -> pluggy.PluginManager:
        if self._manager is None:
            assert self._plugin_source is not None
            self._manager = self._plugin_source()
        return self._manager

    @property
    def _hook(self) -> Any:
        return self._plugins.hook

    async def _aplugins_ready(self) -> None:
        """Get the plugin manager off the event loop, if it is still to be had."""
        if self._manager is None:
            await asyncio.to_thread(lambda: self._plugins)

    async def aget_messages(self) -> list[BaseMessage]:
        """Async :attr:`messages`; storage I/O never blocks the event loop."""
        await self._aplugins_ready()
        await self._arefresh()
        return self._with_injected()

    def add_messages(self, messages: Sequence[MessageLikeRepresentation]) -> None:
        """Append ``messages`` in one write, after the hooks' say.

        Message-like values LangChain accepts (``("human", "hi")`` tuples,
        dicts, strings) are converted to messages first. Auto-injected
        messages are dropped by the default plugin.

        Args:
            messages: the messages, in order.

        Raises:
            TypeError: a message holds a value JSON cannot hold, or a plugin
                returned something it must not; nothing of this call is written.
            ValueError: a message has no place in a history (such as
                ``RemoveMessage``); nothing of this call is written.
        """
        batch = self._prepare(_as_messages(messages))
        if batch is not None:
            self._append(*batch)

    async def aadd_messages(self, messages: Sequence[MessageLikeRepresentation]) -> None:
        """Async :meth:`add_messages`; storage I/O never blocks the event loop."""
        await self._aplugins_ready()
        given = _as_messages(messages)
        if len(given) >= OFF_LOOP_FROM:
            batch = await asyncio.to_thread(self._prepare, given)
        else:
            batch = self._prepare(given)
        if batch is not None:
            await self._aappend(*batch)

    def clear(self) -> None:
        """Remove every message; the header (and its ``created_at``) stays, byte for byte.

        The log is replaced atomically: a reader sees the old one or the
        cleared one, never a part of either.
        """
        self._on_log(lambda follower: follower.log.clear())
        self._reset()

    async def aclear(self) -> None:
        """Async :meth:`clear`; storage I/O never blocks the event loop."""
        await self._aplugins_ready()
        await self._aon_log(lambda follower: follower.log.aclear())
        self._reset()

    # --- beyond LangChain's interface ----------------------------------------

    def compact(self, summary: str) -> None:
        """Start a new working context from ``summary``, as newer crabtalk does.

        Appends a ``{"compact": summary}`` line; what came before stays in
        the file as archived history. The working context becomes the summary
        as a user message, followed by what is added after it.

        Args:
            summary: the summary of the conversation so far.
        """
        self._append([CompactMarker(compact=summary).to_line_bytes()], None)

    def stored_messages(self) -> list[BaseMessage]:
        """The stored working context alone, without asking plugins to inject (a new list)."""
        self._refresh()
        return self._stored(self._follower)[0]

    def archive(self) -> list[BaseMessage]:
        """Every message the file holds, compacted ones included, in order.

        Each compaction marker stands where it was written, as its summary: a
        ``HumanMessage`` with ``additional_kwargs["crab_compact"] = True`` (and
        the marker's ``title`` and ``archived_at``, where it has them, under
        ``"crab_marker"``). Run events are not messages and are left out.
        This parses the whole file; :attr:`messages` parses only what follows
        the last marker.

        Raises:
            SessionFormatError: a line is malformed (naming it).
        """
        return self._on_log(lambda follower: _archive(follower.log)) or []

    def snapshot(self) -> WorkingContext:
        """The stored working context and header as the log holds them now, read afresh.

        Runs no plugin hook and changes nothing in this history (its
        ``repr`` shows this). It reads what follows the last marker, so it
        costs a load.

        Raises:
            SessionFormatError: a line is malformed (naming it).
        """
        return self._on_log(lambda follower: read_context(follower.log), forget=False) or (
            WorkingContext()
        )

    @property
    def session(self) -> Session:
        """The session: id, agent, created_by, created_at, file_path, history.

        ``history`` is the working context in crabtalk's form.
        """
        self._refresh()
        with self._lock:
            return self._synced_session()

    @property
    def session_id(self) -> str:
        """The session's id."""
        return self._session.id

    @property
    def file_path(self) -> Path | None:
        """The session file, once it exists (None before the first write, or on a server)."""
        log = self._current_log(create=False)
        return None if log is None else log.path

    @property
    def location(self) -> str | None:
        """Where the session is stored, for people: its file's path, or its server and key.

        None before the first write.
        """
        log = self._current_log(create=False)
        return None if log is None else log.location

    def __repr__(self) -> str:
        """A plain-text transcript (truncated), headed by the session's id and file.

        It runs no plugin hook (see :meth:`snapshot`).
        """
        from crab_langchain.display import history_text  # noqa: PLC0415 - display is optional

        return history_text(self)

    def _repr_html_(self) -> str:
        """The transcript as HTML, for Jupyter; it runs no plugin hook."""
        from crab_langchain.display import history_html  # noqa: PLC0415 - display is optional

        return history_html(self)

    # --- the session's log: finding it, following it, losing it -----------------

    def _follow(self, log: SessionLog) -> Follower:
        return Follower(log, self._session.id, after_load=lambda: self._hook.crab_after_load)

    def _current_log(self, *, create: bool) -> SessionLog | None:
        """The session's log: known, found, or (if ``create``) created. May do I/O."""
        follower = self._current(create=create)
        return None if follower is None else follower.log

    def _current(self, *, create: bool) -> Follower | None:
        """The follower of the session's log (see :meth:`_current_log`). May do I/O."""
        if self._follower is not None:
            return self._follower
        name = self._locate() if self._locate is not None else None
        if name is None and create:
            assert self._create is not None  # the constructor ensures it
            self._session.created_at = datetime.now(timezone.utc)
            name = self._create(self._session)
        if name is not None:
            with self._lock:
                if self._follower is None:
                    self._follower = self._follow(SessionLog(self._storage, name))
        return self._follower

    async def _acurrent(self, *, create: bool) -> Follower | None:
        if self._follower is not None:
            return self._follower
        return await asyncio.to_thread(lambda: self._current(create=create))

    def _forgot(self, log: SessionLog) -> bool:
        """``log`` was deleted (by anyone): start afresh, if the session can be created again.

        Returns False if it cannot (a history of one file): the caller raises.
        """
        if self._create is None:
            return False
        with self._lock:
            if self._follower is not None and self._follower.log == log:
                self._follower, self._injected = None, None
        return True

    def _on_log(
        self, work: Callable[[Follower], T], *, create: bool = False, forget: bool = True
    ) -> T | None:
        """``work(follower)`` on the session's log; None if there is none and not ``create``.

        The one place that copes with a session deleted under us: the history
        then starts afresh (``forget``), finds the log another writer created
        meanwhile or creates one (``create``), and does the work again there.
        """
        for attempt in range(_DELETED_RETRIES):
            follower = self._current(create=create)
            if follower is None:
                return None
            try:
                return work(follower)
            except FileNotFoundError:
                if not forget or attempt == _DELETED_RETRIES - 1 or not self._forgot(follower.log):
                    raise
        raise AssertionError("unreachable")  # the last attempt returns or raises

    async def _aon_log(
        self, work: Callable[[Follower], Awaitable[T]], *, create: bool = False
    ) -> T | None:
        """Async :meth:`_on_log`."""
        for attempt in range(_DELETED_RETRIES):
            follower = await self._acurrent(create=create)
            if follower is None:
                return None
            try:
                return await work(follower)
            except FileNotFoundError:
                if attempt == _DELETED_RETRIES - 1 or not self._forgot(follower.log):
                    raise
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _reset(self) -> None:
        with self._lock:
            if self._follower is not None:
                self._follower.reset()
            self._injected = None

    # --- reading ------------------------------------------------------------

    def _refresh(self) -> None:
        """Bring the working context up to the log: read only what follows its cursor."""
        self._on_log(lambda follower: run(follower.read_on()))

    async def _arefresh(self) -> None:
        await self._aon_log(lambda follower: arun(follower.read_on()))

    def _stored(self, follower: Follower | None) -> tuple[list[BaseMessage], object]:
        """The stored working context (a new list), and the state it is of."""
        if follower is None:
            return [], None
        with follower.lock:
            context = follower.context
            return list(context.messages), (follower, context.version, context.cursor)

    def _synced_session(self) -> Session:
        """The session, its header and ``history`` brought up to what was read."""
        follower = self._follower
        if follower is None:
            return self._session
        with follower.lock:
            if follower.context.meta is not None:  # read from line 1: the header too
                _take_header(self._session, follower.context.meta, follower.log)
            self._session.history = follower.context.crab_messages()
        return self._session

    def _with_injected(self) -> list[BaseMessage]:
        """The stored context (a new list), then what the plugins inject for the coming run.

        The plugins are asked once per state of the context, outside the lock.
        """
        asked = has_impls(self._hook.crab_inject_messages)
        with self._lock:
            stored, version = self._stored(self._follower)
            if not asked:
                return stored
            if self._injected is not None and self._injected[0] == version:
                return [*stored, *self._injected[1]]
            session = self._synced_session()
        fresh = injected_messages(self._plugins, session, stored)
        with self._lock:
            self._injected = (version, fresh)
        return [*stored, *fresh]

    # --- writing ------------------------------------------------------------

    def _prepare(self, given: list[BaseMessage]) -> Batch | None:
        """The lines to write for ``given`` (and what reading each back gives, where known)."""

        def session() -> Session:
            with self._lock:
                return self._synced_session()

        return prepare_writes(self._plugins, given, session, strict=self.strict)

    def _append(self, lines: list[bytes], read_back: ReadBacks) -> None:
        """Append ``lines``; ``read_back`` holds what reading each back gives, where known."""

        def append(follower: Follower) -> bool:
            run(_read_first(follower))
            after = follower.cursor
            return follower.take_appended(
                after, lines, read_back, follower.log.append(lines, after)
            )

        if not self._on_log(append, create=True):
            self._refresh()  # others wrote too (or nothing read yet): read it all in order

    async def _aappend(self, lines: list[bytes], read_back: ReadBacks) -> None:
        async def append(follower: Follower) -> bool:
            await arun(_read_first(follower))
            after = follower.cursor
            cursor = await follower.log.aappend(lines, after)
            return follower.take_appended(after, lines, read_back, cursor)

        if not await self._aon_log(append, create=True):
            await self._arefresh()  # others wrote too (or nothing read yet): read it all in order


def _as_messages(messages: Sequence[MessageLikeRepresentation]) -> list[BaseMessage]:
    # A str is a sequence too: "hello" would be five one-letter messages.
    if isinstance(messages, (str, bytes, BaseMessage, Mapping)) or not isinstance(
        messages, Sequence
    ):
        raise TypeError(
            f"add_messages takes a sequence of messages, not a {type(messages).__name__}; "
            "wrap one message in a list"
        )
    # Chains hand over ("human", "text") tuples and dicts as well as messages;
    # take whatever LangChain itself accepts as a message.
    if all(isinstance(message, BaseMessage) for message in messages):
        return list(messages)  # type: ignore[arg-type]
    return convert_to_messages(messages)


def _read_first(follower: Follower) -> Steps[None]:
    """Before a first write, read the log: then our lines follow our cursor, unread.

    A malformed line does not stop the write: the log is read again after
    it, and a compaction marker written now makes that line archived history.
    """
    if follower.cursor is None:
        with contextlib.suppress(SessionFormatError):
            yield from follower.read_on()


def _take_header(session: Session, meta: SessionMeta, log: SessionLog) -> None:
    session.agent, session.created_by = meta.agent, meta.created_by
    session.created_at, session.extra = meta.created_at, dict(meta.extra)
    session.file_path = log.path


def _archive(log: SessionLog) -> list[BaseMessage]:
    """Every message and marker summary of ``log``, in order (see ``archive``)."""
    archived: list[BaseMessage] = []
    for number, entry in log.entries():
        try:
            message = _archived(entry)
        except SessionFormatError as error:
            raise log.error(error, number) from None
        if message is not None:
            archived.append(message)
    return archived


def _archived(entry: Entry) -> BaseMessage | None:
    """The message an entry stands for in the archive; None for a run event."""
    if isinstance(entry, RunEvent):
        return None
    if isinstance(entry, CompactMarker):
        marked: dict[str, Any] = {COMPACT_SUMMARY_KEY: True}
        if entry.title or entry.archived_at or entry.model_extra:
            marked[COMPACT_MARKER_KEY] = entry.model_dump(exclude={"compact"})
        return HumanMessage(content=entry.compact, additional_kwargs=marked)
    return from_crab_message(entry)


def history_of(
    store: SessionStore, session: Session, name: str | None = None
) -> CrabChatMessageHistory:
    """A history of ``session`` in ``store``: on log ``name``, or found (or made) when first used.

    What :meth:`SessionStore.get_session_history` hands out: the store finds
    and creates sessions; the history follows one.
    """
    return CrabChatMessageHistory(
        session,
        storage=store.storage,
        name=name,
        plugins=lambda: store.plugin_manager,  # the entry points load on first use
        strict=store.strict,
        locate=lambda: store.find(session.id, session.agent),
        create=store.create_log,
    )


def _manager(plugins: pluggy.PluginManager | Iterable[object] | None) -> pluggy.PluginManager:
    if isinstance(plugins, pluggy.PluginManager):
        return plugins
    return make_plugin_manager(plugins)
