"""``CrabChatMessageHistory``: a LangChain chat history on one crabtalk session.

Data flows one way: a LangChain message is converted to a crabtalk message,
the hooks decide whether (and as what) it is written, and storage appends its
line. Reading goes back the same way, incrementally: the history keeps what it
has read and asks storage only for lines past its cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar, overload

import pluggy
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    BaseMessage,
    HumanMessage,
    MessageLikeRepresentation,
    convert_to_messages,
)

from crab_langchain.convert import (
    AUTO_INJECTED_KEY,
    Encoded,
    encode,
    from_crab_message,
    text_message,
    to_crab_message,
)
from crab_langchain.handouts import Handouts
from crab_langchain.hooks import (
    filter_result_problem,
    filters_by_default,
    has_impls,
    inject_result_problem,
    make_plugin_manager,
    persistable,
    wrong_result,
)
from crab_langchain.models import (
    CompactMarker,
    CrabMessage,
    RunEvent,
    Session,
    SessionFormatError,
    SessionMeta,
    parse_entry,
    parse_line,
)
from crab_langchain.naming import session_id_of
from crab_langchain.storage import Chunk, Cursor, DirectoryStorage, Durability, SessionStorage

__all__ = [
    "COMPACT_MARKER_KEY",
    "COMPACT_SUMMARY_KEY",
    "CrabChatMessageHistory",
    "parse_meta",
    "read_meta",
]

COMPACT_SUMMARY_KEY = "crab_compact"
"""``additional_kwargs`` key marking, in :meth:`CrabChatMessageHistory.archive`, the
summary of a compaction marker (it stands where the marker stands)."""

COMPACT_MARKER_KEY = "crab_marker"
"""``additional_kwargs`` key holding, beside :data:`COMPACT_SUMMARY_KEY`, what else
the marker said: crabtalk's ``title`` and ``archived_at`` (2026-04-03 on)."""

Plugins = pluggy.PluginManager | Iterable[object] | None

_GC_PAUSE_FROM = 1000  # messages built at once

T = TypeVar("T")
ReadBack = list[BaseMessage | None] | None
_Batch = tuple[list[bytes], ReadBack]


class CrabChatMessageHistory(BaseChatMessageHistory):
    """A LangChain chat message history stored as a crabtalk JSONL session.

    Get one from :meth:`SessionStore.get_session_history
    <crab_langchain.SessionStore.get_session_history>` (a directory of
    sessions) or :meth:`from_file` (one existing file). Reads return the
    stored working context followed by the messages plugins inject for the
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
        :meth:`from_file` instead. ``name`` may be None for a session not yet
        written; ``locate`` then finds a log that another writer created, and
        ``create`` creates it on the first write. ``strict`` writes only the
        spec's keys (LangChain-only fields are then not kept).
        """
        if name is None and create is None:
            raise ValueError("a history without a stored log needs `create`")
        self._session = session
        self._storage = storage
        self._name = name
        self._locate = locate
        self._create = create
        self.strict = strict
        self._plugins = _manager(plugins)
        self._hook = self._plugins.hook
        self._lock = threading.RLock()
        _HISTORIES.add(self)
        self._handouts = Handouts()
        self._stored_handouts = Handouts()
        self._generation = 0
        self._reset()

    def _reset(self) -> None:
        self._cursor: Cursor | None = None
        self._new_context()

    def _new_context(self, first: tuple[bytes, BaseMessage] | None = None) -> None:
        """Start the working context afresh (a load, a clear, a compaction marker)."""
        self._context: list[BaseMessage] = [first[1]] if first else []
        # The context's lines: the session's crab messages are parsed from them
        # only when someone looks (see _synced_session), not on every load.
        self._lines: list[bytes] = [first[0]] if first else []
        self._session.history = []
        self._injected: tuple[object, list[BaseMessage]] | None = None
        self._generation += 1  # lists handed out before hold an older context

    def _synced_session(self) -> Session:
        """The session, its ``history`` brought up to the working context."""
        history = self._session.history
        if len(history) < len(self._lines):
            history.extend(CrabMessage.from_line(line) for line in self._lines[len(history) :])
        return self._session

    # --- opening ----------------------------------------------------------------

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

        Raises ``FileNotFoundError`` if there is no such file and
        :class:`~crab_langchain.SessionFormatError` if it is malformed.
        """
        path = Path(path).expanduser()
        storage = DirectoryStorage(path.parent, durability=durability)
        meta = read_meta(storage, path.name)
        session = Session(
            id=session_id_of(path.name, meta),
            agent=meta.agent,
            created_by=meta.created_by,
            created_at=meta.created_at,
            file_path=path,
        )
        history = cls(session, storage=storage, name=path.name, plugins=plugins, strict=strict)
        history._refresh()
        return history

    # --- what LangChain calls ---------------------------------------------------

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The working context, then the messages injected for the coming run.

        The list is the caller's: changing it changes nothing stored, and
        later reads never change it. (Lists that callers dropped unchanged are
        recycled, so a read costs the same at 100,000 messages as at 10; see
        :mod:`crab_langchain.handouts`.) The message objects are shared with
        the history's cache: copy one before changing it in place.
        """
        with self._lock:
            self._refresh()
            injected = self._injected_for_run()
            return self._handouts.handout(self._context, self._generation, injected)

    async def aget_messages(self) -> list[BaseMessage]:
        """Async :attr:`messages`, with the storage's async client if it has one.

        Otherwise the file is read in a worker thread.
        """
        if not self._storage.native_async:
            return await asyncio.to_thread(lambda: self.messages)
        await self._arefresh()
        with self._lock:
            injected = self._injected_for_run()
            return self._handouts.handout(self._context, self._generation, injected)

    def add_messages(self, messages: Sequence[MessageLikeRepresentation]) -> None:
        """Append ``messages`` in one write, after the hooks' say.

        Message-like values LangChain accepts (``("human", "hi")`` tuples,
        dicts, strings) are converted to messages first. Auto-injected
        messages are dropped by the default plugin. If a message cannot be
        written (a value JSON cannot hold, a hook raising) nothing of this
        call is written.
        """
        given = _as_messages(messages)
        with self._lock, _gc_paused(len(given)):
            batch = self._prepare(given)
            if batch is not None:
                self._append(*batch)

    def _prepare(self, given: list[BaseMessage]) -> _Batch | None:
        """The lines to write for ``given`` (and what reading each back gives, where known)."""
        hook = self._hook
        if filters_by_default(hook.crab_filter_message) and not has_impls(hook.crab_before_persist):
            # No plugin looks at writes: straight to lines, no crab messages between.
            return self._encoded([encode(m, strict=self.strict) for m in given])
        return self._through_hooks([to_crab_message(m, strict=self.strict) for m in given])

    def _encoded(self, batch: list[Encoded]) -> _Batch | None:
        """``batch`` as the default plugin would have it: auto-injected ones dropped."""
        kept = [encoded for encoded in batch if not encoded.auto_injected]
        return ([e.line for e in kept], [e.read_back for e in kept]) if kept else None

    def _through_hooks(self, batch: list[CrabMessage]) -> _Batch | None:
        """``batch`` after the filter and before-persist hooks had their say.

        What the plugins leave is checked before anything is written: a plugin
        must not be able to write a line that no reader can read.
        """
        session = self._synced_session()
        kept = [m for m in batch if self._verdict(session, m) is not False]
        if has_impls(self._hook.crab_before_persist):
            self._hook.crab_before_persist(session=session, messages=kept)
            kept = persistable(kept)
        return ([message.to_line_bytes() for message in kept], None) if kept else None

    def _verdict(self, session: Session, message: CrabMessage) -> bool | None:
        kwargs = {"session": session, "message": message}
        verdict = self._hook.crab_filter_message(**kwargs)
        if verdict is not None and not isinstance(verdict, bool):
            raise wrong_result(self._plugins, "crab_filter_message", kwargs, filter_result_problem)
        return verdict

    async def aadd_messages(self, messages: Sequence[MessageLikeRepresentation]) -> None:
        """Async :meth:`add_messages`, with the storage's async client if it has one.

        Otherwise the file is written in a worker thread.
        """
        given = _as_messages(messages)
        if not self._storage.native_async:
            await asyncio.to_thread(self.add_messages, given)
            return
        with self._lock, _gc_paused(len(given)):
            batch = self._prepare(given)
        if batch is not None:
            await self._aappend(*batch)

    def clear(self) -> None:
        """Remove every message; the header (and its ``created_at``) stays.

        The file is replaced atomically: a reader sees the old file or the
        cleared one, never a part of either.
        """
        with self._lock:
            name = self._current_name()
            if name is None:
                return
            try:
                self._storage.replace(name, [self._header_line(name)])
            except FileNotFoundError:
                if not self._forget_deleted():
                    raise
                return
            self._reset()

    async def aclear(self) -> None:
        """Async :meth:`clear`, with the storage's async client if it has one."""
        if not self._storage.native_async:
            await asyncio.to_thread(self.clear)
            return
        name = await self._acurrent_name()
        if name is None:
            return
        try:
            header = await asyncio.to_thread(self._header_line, name)
            await self._storage.areplace(name, [header])
        except FileNotFoundError:
            with self._lock:
                if not self._forget_deleted():
                    raise
            return
        with self._lock:
            self._reset()

    def _header_line(self, name: str) -> bytes:
        """Log ``name``'s header line byte for byte: a rewrite never re-serialises it.

        (Re-serialising would change what a reader of that header gets: a
        number such as ``1e400``, key order, escapes.)
        """
        try:
            return self._storage.read_header(name)
        except EOFError as error:
            location = self._storage.location(name)
            raise SessionFormatError(str(error), path=location, line=1) from None

    # --- beyond LangChain's interface ----------------------------------------

    def compact(self, summary: str) -> None:
        """Start a new working context from ``summary``, as newer crabtalk does.

        Appends a ``{"compact": summary}`` line; what came before stays in
        the file as archived history. The working context becomes the summary
        as a user message, followed by what is added after it.
        """
        with self._lock:
            self._append([CompactMarker(compact=summary).to_line_bytes()], None)

    def stored_messages(self) -> list[BaseMessage]:
        """The stored working context alone, without asking plugins to inject."""
        with self._lock:
            self._refresh()
            return self._stored_handouts.handout(self._context, self._generation, ())

    def archive(self) -> list[BaseMessage]:
        """Every message the file holds, compacted ones included, in order.

        Each compaction marker stands where it was written, as its summary: a
        ``HumanMessage`` with ``additional_kwargs["crab_compact"] = True`` (and
        the marker's ``title`` and ``archived_at``, where it has them, under
        ``"crab_marker"``). Run events are not messages and are left out.
        This parses the whole file; :attr:`messages` parses only what follows
        the last marker.
        """
        with self._lock:
            name = self._current_name()
            try:
                chunk = None if name is None else self._storage.read(name, None)
            except FileNotFoundError:
                if not self._forget_deleted():
                    raise
                return self.archive()
            if name is None or chunk is None:
                return []
            archived = [
                self._parse(name, number, line, _archived)
                for number, line in _body(self._storage.location(name), chunk.lines)
            ]
            return [message for message in archived if message is not None]

    @property
    def session(self) -> Session:
        """The session: id, agent, created_by, created_at, file_path, history."""
        with self._lock:
            self._refresh()
            return self._synced_session()

    @property
    def session_id(self) -> str:
        """The session's id."""
        return self._session.id

    @property
    def file_path(self) -> Path | None:
        """The session file, once it exists (None before the first write)."""
        with self._lock:
            name = self._current_name()
        return None if name is None else self._storage.path(name)

    @property
    def location(self) -> str | None:
        """Where the session is stored, for people: its file's path, or its server and key.

        None before the first write.
        """
        with self._lock:
            name = self._current_name()
        return None if name is None else self._storage.location(name)

    def __repr__(self) -> str:
        """A plain-text transcript (truncated), headed by the session's id and file."""
        from crab_langchain.display import history_text  # noqa: PLC0415 - display is optional

        return history_text(self)

    def _repr_html_(self) -> str:
        """The transcript as HTML, for Jupyter."""
        from crab_langchain.display import history_html  # noqa: PLC0415 - display is optional

        return history_html(self)

    # --- reading ------------------------------------------------------------

    def _current_name(self) -> str | None:
        if self._name is None and self._locate is not None:
            self._name = self._locate()
        return self._name

    async def _acurrent_name(self) -> str | None:
        if self._name is None and self._locate is not None:
            return await asyncio.to_thread(self._locked(self._current_name))  # a look-up: I/O
        return self._name

    def _refresh(self) -> None:
        name = self._current_name()
        if name is None:
            return
        # A first read may be a long session: pause the collector from the start.
        with _gc_paused(_GC_PAUSE_FROM if self._cursor is None else 0):
            try:
                chunk = self._storage.read(name, self._cursor)
            except FileNotFoundError:
                if not self._forget_deleted():
                    raise
                if self._current_name() is not None:  # re-created meanwhile
                    self._refresh()
                return
            if chunk is not None:
                self._take_chunk(name, chunk)

    async def _arefresh(self) -> None:
        """:meth:`_refresh` with the storage's async client; the lock is never held across I/O."""
        name = await self._acurrent_name()
        while name is not None:
            with self._lock:
                cursor = self._cursor
            try:
                chunk = await self._storage.aread(name, cursor)
            except FileNotFoundError:
                with self._lock:
                    if not self._forget_deleted():
                        raise
                name = await self._acurrent_name()  # re-created meanwhile?
                continue
            if chunk is not None and len(chunk.lines) >= _GC_PAUSE_FROM:
                # Building thousands of messages would stall the event loop: in a thread.
                taken = await asyncio.to_thread(self._take_chunk_at, name, cursor, chunk)
            else:
                taken = self._take_chunk_at(name, cursor, chunk)
            if taken:
                return
            # Another caller read or wrote meanwhile: read on from where it left us.

    def _take_chunk_at(self, name: str, cursor: Cursor | None, chunk: Chunk | None) -> bool:
        """Take ``chunk``, read from ``cursor``, unless the history moved past ``cursor`` since."""
        with self._lock:
            if self._cursor != cursor or self._name != name:
                return False
            if chunk is not None:
                self._take_chunk(name, chunk)
            return True

    def _take_chunk(self, name: str, chunk: Chunk) -> None:
        """Add the lines of ``chunk`` (all of the log, or what follows our cursor)."""
        if chunk.reset:
            self._load(name, chunk.lines)
        else:
            with _gc_paused(len(chunk.lines)):
                for number, line in chunk.lines:
                    self._take_line(name, number, line)
        self._cursor = chunk.cursor
        if chunk.reset and has_impls(self._hook.crab_after_load):
            self._hook.crab_after_load(
                session=self._synced_session(), messages=_ReadOnly(self._context)
            )

    def _load(self, name: str, lines: list[tuple[int, bytes]]) -> None:
        """Read a whole log: its header, then only what follows its last compaction marker."""
        self._reset()
        location = self._storage.location(name)
        body = _body(location, lines)
        self._take_header(self._parse(name, 1, lines[0][1], SessionMeta.from_line))
        with _gc_paused(len(body)):
            for number, line in body[self._context_start(name, body) :]:
                self._take_line(name, number, line)

    def _context_start(self, name: str, body: list[tuple[int, bytes]]) -> int:
        """Index in ``body`` of the last compaction marker (0 if none).

        crabtalk writes the marker's key as ``"compact"``, which inside a
        string would be escaped, so only lines holding those bytes are parsed.
        """
        for index in range(len(body) - 1, -1, -1):
            number, line = body[index]
            if b'"compact"' in line and isinstance(self._parse(name, number, line), CompactMarker):
                return index
        return 0

    def _parse(
        self, name: str, number: int, line: bytes, parse: Callable[[bytes], Any] = parse_entry
    ) -> Any:
        """``parse(line)``; a malformed line raises naming the file and ``number``."""
        try:
            return parse(line)
        except SessionFormatError as error:
            self._reset()
            raise error.at(self._storage.location(name), number) from None

    def _take_header(self, meta: SessionMeta) -> None:
        session = self._session
        session.agent, session.created_by = meta.agent, meta.created_by
        session.created_at, session.extra = meta.created_at, dict(meta.extra)
        session.file_path = self._storage.path(self._name) if self._name else None

    def _take_line(self, name: str, number: int, line: bytes) -> None:
        """Add what line ``number`` says to the working context."""
        self._parse(name, number, line, self._take_parsed)

    def _take_parsed(self, line: bytes) -> None:
        parsed = parse_line(line)
        if not isinstance(parsed, tuple):
            self._take_entry(parsed, line)
        elif (message := text_message(*parsed)) is not None:  # most lines: no model between
            self._keep(message, line)
        else:
            self._take_entry(CrabMessage(role=parsed[0], content=parsed[1]), line)

    def _take_entry(self, entry: CrabMessage | CompactMarker | RunEvent, line: bytes) -> None:
        if isinstance(entry, RunEvent):
            return  # a run's trace: not part of the conversation
        if isinstance(entry, CompactMarker):
            summary = CrabMessage(role="user", content=entry.compact)
            self._new_context((summary.to_line_bytes(), HumanMessage(content=entry.compact)))
            return
        message = from_crab_message(entry)
        if message.additional_kwargs.get(AUTO_INJECTED_KEY) is True:
            return  # kept by an audit plugin: stale for any later run
        self._keep(message, line)

    def _keep(self, message: BaseMessage, line: bytes) -> None:
        """Add ``message``, read from ``line``, to the working context."""
        self._context.append(message)
        self._lines.append(line)

    def _injected_for_run(self) -> list[BaseMessage]:
        hook = self._hook.crab_inject_messages
        if not has_impls(hook):
            return []
        version = (self._name, self._cursor)
        if self._injected is None or self._injected[0] != version:
            kwargs = {"session": self._synced_session(), "history": _ReadOnly(self._context)}
            results = hook(**kwargs)
            if any(inject_result_problem(result) for result in results):
                problem = inject_result_problem
                raise wrong_result(self._plugins, "crab_inject_messages", kwargs, problem)
            fresh = [_marked(message) for result in results for message in result or ()]
            self._injected = (version, fresh)
        return self._injected[1]  # callers copy it into the list they hand out

    # --- writing ------------------------------------------------------------

    def _forget_deleted(self) -> bool:
        """After the session was deleted by anyone: start afresh, if we can create it again."""
        if self._create is None:
            return False
        self._name = None
        self._reset()
        return True

    def _append(self, lines: list[bytes], read_back: ReadBack) -> None:
        """Append ``lines``; ``read_back`` holds what reading each back gives, where known."""
        name = self._current_name()
        if name is None:
            name = self._create_and_read()
        try:
            cursor = self._storage.append(name, lines, after=self._cursor)
        except FileNotFoundError:
            if not self._forget_deleted():
                raise
            name = self._create_log()
            cursor = self._storage.append(name, lines)
        if cursor is None:
            self._refresh()  # others wrote too (or first read): read it all in order
            return
        self._take_appended(name, lines, read_back, cursor)

    async def _aappend(self, lines: list[bytes], read_back: ReadBack) -> None:
        """:meth:`_append` with the storage's async client; the lock is never held across I/O."""
        name = await self._acurrent_name()
        if name is None:
            name = await asyncio.to_thread(self._locked(self._create_and_read))
        with self._lock:
            after = self._cursor
        try:
            cursor = await self._storage.aappend(name, lines, after=after)
        except FileNotFoundError:
            with self._lock:
                if not self._forget_deleted():
                    raise
            name = await asyncio.to_thread(self._locked(self._create_log))
            cursor = await self._storage.aappend(name, lines)
        with self._lock:
            if cursor is not None and self._cursor == after and self._name == name:
                self._take_appended(name, lines, read_back, cursor)
                return
        await self._arefresh()  # others wrote too (or first read): read it all in order

    def _take_appended(
        self, name: str, lines: list[bytes], read_back: ReadBack, cursor: Cursor
    ) -> None:
        """Add our own appended ``lines``, which end at ``cursor``, without reading them back."""
        first = cursor.lines - len(lines) + 1
        for index, line in enumerate(lines):
            message = read_back[index] if read_back else None
            if message is not None:
                self._keep(message, line)
            else:
                self._take_line(name, first + index, line)
        self._cursor = cursor

    def _create_and_read(self) -> str:
        """Create the log; read its header, so the first append continues our cursor."""
        name = self._create_log()
        self._refresh()
        return name

    def _locked(self, work: Callable[[], T]) -> Callable[[], T]:
        def locked() -> T:
            with self._lock:
                return work()

        return locked

    def _create_log(self) -> str:
        assert self._create is not None  # the constructor ensures it
        self._session.created_at = datetime.now(timezone.utc)
        self._name = self._create(self._session)
        return self._name


_HISTORIES: weakref.WeakSet[CrabChatMessageHistory] = weakref.WeakSet()


def _new_locks_in_child() -> None:
    """In a forked child, each history gets a new lock.

    Another thread of the parent may have held one at the fork; that thread
    does not exist in the child, so the lock would never be released there.
    """
    for history in list(_HISTORIES):
        history._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_in_child)


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


def _gc_paused(count: int) -> contextlib.AbstractContextManager[None]:
    """Pause the cyclic garbage collector while ``count`` (many) messages are built.

    Building 100,000 messages allocates a million objects, none of them in
    cycles; the collector would scan the growing heap again and again and
    take half the load time. Reference counting still frees everything. A
    few messages (a chat turn) pass straight through, at no cost.
    """
    if count < _GC_PAUSE_FROM or not gc.isenabled():
        return _NO_PAUSE
    return _GcPause()


class _GcPause:
    def __enter__(self) -> None:
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        gc.enable()


_NO_PAUSE = contextlib.nullcontext()


def _body(location: str, lines: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The lines after the header; :class:`SessionFormatError` if there is no header."""
    if not lines or lines[0][0] != 1:
        raise SessionFormatError("no header line", path=location, line=1)
    return lines[1:]


def _archived(line: bytes) -> BaseMessage | None:
    """The message line ``line`` stands for in the archive; None for a run event."""
    entry = parse_entry(line)
    if isinstance(entry, RunEvent):
        return None
    if isinstance(entry, CompactMarker):
        marked: dict[str, Any] = {COMPACT_SUMMARY_KEY: True}
        if entry.title or entry.archived_at or entry.model_extra:
            marked[COMPACT_MARKER_KEY] = entry.model_dump(exclude={"compact"})
        return HumanMessage(content=entry.compact, additional_kwargs=marked)
    return from_crab_message(entry)


def _manager(plugins: Plugins) -> pluggy.PluginManager:
    if isinstance(plugins, pluggy.PluginManager):
        return plugins
    return make_plugin_manager(plugins)


def read_meta(storage: SessionStorage, name: str) -> SessionMeta:
    """The header of log ``name``; :class:`SessionFormatError` naming it if malformed."""
    line: bytes | Exception
    try:
        line = storage.read_header(name)
    except EOFError as error:
        line = error
    return parse_meta(storage, name, line)


def parse_meta(storage: SessionStorage, name: str, header: bytes | Exception) -> SessionMeta:
    """The header line ``header`` of log ``name`` (or the error reading it) as its meta.

    An incomplete header raises :class:`SessionFormatError`, other errors as they are.
    """
    if isinstance(header, EOFError):
        raise SessionFormatError(str(header), path=storage.location(name), line=1) from None
    if isinstance(header, Exception):
        raise header
    try:
        return SessionMeta.from_line(header)
    except SessionFormatError as error:
        raise error.at(storage.location(name), 1) from None


def _marked(message: BaseMessage) -> BaseMessage:
    extra = {**message.additional_kwargs, AUTO_INJECTED_KEY: True}
    return message.model_copy(update={"additional_kwargs": extra})


class _ReadOnly(Sequence[BaseMessage]):
    """A read-only view of a list, so hooks see the context without copying it."""

    __slots__ = ("_items",)

    def __init__(self, items: list[BaseMessage]) -> None:
        self._items = items

    @overload
    def __getitem__(self, index: int) -> BaseMessage: ...
    @overload
    def __getitem__(self, index: slice) -> list[BaseMessage]: ...
    def __getitem__(self, index: int | slice) -> Any:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[BaseMessage]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"ReadOnly({self._items!r})"
