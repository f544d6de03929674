"""The read and write protocol of a checkpointer's threads: what ``CrabSaver`` stands on.

A thread is the session whose id is its ``thread_id``. The root namespace's
``messages`` channel of the thread's newest checkpoint is the session's
working context, written as the message lines a chat history writes; the
rest of every checkpoint goes to the side log beside it
(:mod:`crab_langchain.checkpoint.sidelog`). A checkpoint keeps its messages
as a place in the session (the working context as it stood at one line), so
while a conversation grows a checkpoint costs its new messages and a record
of a few hundred bytes.

How a new message list reaches the session:

- it continues the working context: its new messages are appended;
- it starts with a summary (``SummarizationMiddleware``'s rewrite): a
  compaction marker holding the summary, then the kept messages, appended;
- anything else (a message removed or replaced, a fork from an older
  checkpoint): the session's lines go to the side log as an archived epoch,
  and the session is replaced by the new context, in the same commit.

Writers of one thread take turns through the storage's own atomic step
(:meth:`~crab_langchain.storage.SessionStorage.commit`): a ``put`` writes its
session lines and side-log records only if both logs stand where it last
read them (pending writes aside); otherwise it reads what is new and decides
again. Nobody holds a thread, waits on a lease or polls; readers take what
was appended since they last read.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import itertools
import operator
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple, TypeVar, cast

from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    empty_checkpoint,
    get_checkpoint_id,
    get_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer

from crab_langchain.checkpoint.sealed import Sealer
from crab_langchain.checkpoint.sidelog import (
    EMPTY,
    SIDE_KIND,
    SNAPSHOT_EVERY,
    WRITES_PREFIX,
    BadRecordWarning,
    Kept,
    Record,
    SideIndex,
    archive_record,
    checkpoint_record,
    decode_value,
    encode_value,
    intent_record,
    lines_digest,
    side_header,
    writes_record,
    written_record,
)
from crab_langchain.checkpoint.thread import Base, Thread
from crab_langchain.context import Followed, Follower, context_of
from crab_langchain.convert import ReadBack, decode_line, encode, marker_line, too_deep
from crab_langchain.hooks import (
    Batch,
    drops,
    filters_by_default,
    prepare_writes,
)
from crab_langchain.log import NumberedLines, SessionLog, header_identity, split_header
from crab_langchain.models import SessionFormatError
from crab_langchain.steps import (
    Append,
    Blocking,
    Commit,
    Read,
    ReadTail,
    Steps,
    arun,
    run,
)
from crab_langchain.storage import Change, Chunk, Committed, Cursor, companion_name
from crab_langchain.store import SessionStore

T = TypeVar("T")
Messages = list[BaseMessage]
Lines = list[bytes]
Spans = list[tuple[int, int]]
"""Session lines ``(first, last)``, both included."""
_MOVES = 100
"""Tries of one write whose session other writers keep moving: past that, an error."""
Listed = list[tuple[Thread, str, dict[str, Any], dict[str, NumberedLines]]]

MESSAGES = "messages"
"""The channel that is the conversation (``create_agent``'s and ``MessagesState``'s)."""

_SUMMARY_SOURCE = "summarization"  # SummarizationMiddleware marks its summary so
# ... and opens it so; the title of its marker is the summary's own first sentence.
_SUMMARY_PREFACE = "Here is a summary of the conversation to date:"
_KNOWN_THREADS = 1024  # threads whose side log one saver keeps indexed
_DELETED_RETRIES = 100  # a thread deleted again and again under one write: give up after this
_TAIL_LINES = (2 * SNAPSHOT_EVERY, 16 * SNAPSHOT_EVERY)
"""Side-log lines a cold read of the newest checkpoint reads from the end, and then, if
they hold no snapshot, reads again."""
_LINE_IDS = uuid.UUID("5d1c0f0e-6b8a-4c55-9a53-6372616274a1")  # ids of messages stored without
SESSION_ALONE = "session_alone"  # marks the checkpoint made from a session with no side log


class View(NamedTuple):
    """Where a put read a thread's two logs: what its decision rests on."""

    at: Cursor | None
    side_at: Cursor | None
    epoch: int


class MissingSideLogWarning(UserWarning):
    """A thread's side log went away: the thread reads as its session's working context."""


class Threads:
    """The threads of one saver: found, followed, read and written.

    Each thread's session is followed (:class:`~crab_langchain.context.Follower`)
    and its side log indexed (:class:`~crab_langchain.checkpoint.thread.Thread`);
    the 1,024 used last are kept. Every operation is written once as the
    storage calls it yields (:mod:`crab_langchain.steps`), run sync or async.
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        agent: str,
        created_by: str,
        serde: SerializerProtocol,
    ) -> None:
        self.store = store
        self.agent = agent
        self.created_by = created_by
        self.serde = serde
        # An encrypting serializer: nothing of the thread is written in plaintext.
        self._sealer = Sealer(serde) if isinstance(serde, EncryptedSerializer) else None
        self._kept: Followed[Thread] = Followed(_KNOWN_THREADS)

    # --- what the saver calls ---------------------------------------------------

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store ``checkpoint`` (see :meth:`CrabSaver.put`)."""
        return self.write(
            config, lambda thread: self._put(thread, config, checkpoint, metadata, new_versions)
        )

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Async :meth:`put`."""
        return await self.awrite(
            config, lambda thread: self._put(thread, config, checkpoint, metadata, new_versions)
        )

    def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, path: str
    ) -> None:
        """Store a task's pending writes (see :meth:`CrabSaver.put_writes`)."""
        self.write(config, lambda thread: self._put_writes(thread, config, writes, task_id, path))

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, path: str
    ) -> None:
        """Async :meth:`put_writes`."""
        await self.awrite(
            config, lambda thread: self._put_writes(thread, config, writes, task_id, path)
        )

    def delete(self, thread_id: str) -> None:
        """Delete the thread's session and side log (in one step of the storage)."""
        self.forget(thread_id)
        # A put landing meanwhile finds its logs gone and writes the thread anew, whole.
        self.store.delete_session(thread_id, self.agent)
        self.forget(thread_id)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Roll back the runs ``run_ids`` in every thread (:meth:`CrabSaver.delete_for_runs`)."""
        for thread_id in run(self.thread_ids(None)) if run_ids else []:
            self.rewrite_side(
                thread_id,
                lambda index: index.not_of_runs(set(run_ids), self.serde),
                roll_back=True,
            )

    def prune(self, thread_ids: Sequence[str], strategy: str) -> None:
        """Prune the checkpoints of ``thread_ids`` (see :meth:`CrabSaver.prune`)."""
        for thread_id in thread_ids:
            if strategy == "delete":
                self.rewrite_side(thread_id, lambda index: None)
            else:
                self.rewrite_side(thread_id, SideIndex.newest_of_each)

    # --- writing: whole, or not at all ------------------------------------------

    def write(
        self,
        config: RunnableConfig,
        work: Callable[[Thread], Steps[T]],
        abandoned: threading.Event | None = None,
    ) -> T:
        """``work`` on the thread ``config`` names (created if new).

        Raises:
            _AbandonedError: ``abandoned`` was set before the work began; nothing written.
        """
        for attempt in range(_DELETED_RETRIES):
            try:
                thread = run(self._writable(config))
                if abandoned is not None and abandoned.is_set():
                    raise _AbandonedError
                return run(work(thread))
            except FileNotFoundError:  # the thread was deleted under it: write it anew
                self.forget(_thread_id(config))
                if attempt == _DELETED_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")  # the last attempt returns or raises

    async def arun(self, steps: Steps[T]) -> T:
        """:func:`arun`, the store ready first (its first use does blocking I/O: not here)."""
        await self.store.aready()
        return await arun(steps)

    async def awrite(self, config: RunnableConfig, work: Callable[[Thread], Steps[T]]) -> T:
        """Async :meth:`write`: once begun, the work goes on to its end.

        A caller cancelled before the work began leaves nothing; after, the
        work finishes anyway (its one commit lands whole or not at all), so a
        put is never left half-told to this saver's view of the thread.
        """
        abandoned = threading.Event()
        if self.store.storage.native_async:
            running = self._anative_write(config, work, abandoned)
        else:
            running = asyncio.to_thread(self.write, config, work, abandoned)
        task = asyncio.ensure_future(running)
        task.add_done_callback(_observed)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            abandoned.set()
            raise

    async def _anative_write(
        self, config: RunnableConfig, work: Callable[[Thread], Steps[T]], abandoned: threading.Event
    ) -> T:
        for attempt in range(_DELETED_RETRIES):
            try:
                thread = await self.arun(self._writable(config))
                # One turn of the loop first: a caller cancelled as it called (its
                # cancellation not yet delivered) is told before anything is written.
                await asyncio.sleep(0)
                if abandoned.is_set():
                    raise _AbandonedError
                return await self.arun(work(thread))
            except FileNotFoundError:  # as in write
                self.forget(_thread_id(config))
                if attempt == _DELETED_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    # --- threads ----------------------------------------------------------------

    def _thread(self, config: RunnableConfig, *, create: bool) -> Steps[Thread | None]:
        thread_id = _thread_id(config)
        known = self._kept.get(thread_id, lambda: None)  # kept: no I/O
        if known is not None:
            return known
        made: Thread | None = yield Blocking(lambda: self._made(thread_id, create=create))
        return None if made is None else self._kept.get(thread_id, lambda: made)

    def _writable(self, config: RunnableConfig) -> Steps[Thread]:
        """The thread ``config`` names, its session created if it has none yet."""
        thread = yield from self._thread(config, create=True)
        assert thread is not None  # created
        return thread

    def _made(self, thread_id: str, *, create: bool) -> Thread | None:
        """The thread of session ``thread_id``, found (or, if ``create``, created); None if none."""
        name = self.store.session_name(thread_id, self.agent, self.created_by, create=create)
        if name is None:
            return None
        unseal = None if self._sealer is None else self._sealer.unseal
        log = SessionLog(self.store.storage, name)
        follower = Follower(log, thread_id, transform=unseal, after_load=self._after_load)
        return Thread(thread_id, follower)

    def _after_load(self) -> Any:
        return self._hook.crab_after_load

    def forget(self, thread_id: str) -> None:
        self._kept.forget(thread_id)

    def thread_ids(self, config: RunnableConfig | None) -> Steps[Sequence[str]]:
        if config is not None:
            return [_thread_id(config)]
        storage = self.store.storage
        with_side = yield Blocking(
            lambda: [
                info.session_id
                for info in self.store.list_sessions(agent=self.agent)
                if storage.exists(companion_name(info.name, SIDE_KIND))
            ]
        )
        return list(with_side)

    # --- reading ------------------------------------------------------------------

    def _refresh(self, thread: Thread, *, whole: bool = True) -> Steps[None]:
        """Bring ``thread`` up to its logs (its side log read whole, unless not ``whole``).

        The session is read between two reads of the side log: a rewrite
        archives the session's lines in the side log as it replaces them, so
        if no archive appeared meanwhile, the session read belongs to the
        epoch the side log says. Not ``whole``, a side log not read yet is
        read from its last snapshot on (see :meth:`SideIndex.resumed`).
        """
        while whole and thread.index.partial:
            # Read whole, then taken in one step: a put or a write racing this one
            # meanwhile finds the partial index (and reads whole too), never none.
            try:
                chunk = yield Read(thread.side, None)
            except FileNotFoundError:
                with thread.lock:
                    thread.forget_side()
                break
            thread.take_whole(chunk)
        # A thread deleted and made anew while it was read, or a side log a put made
        # for the session just deleted (it deletes it again at once): read both again.
        mismatches = 0
        while True:
            yield from self._read_side(thread, whole=whole)
            epoch = thread.index.epoch
            yield from self._read_session(thread)
            yield from self._read_side(thread)
            if thread.index.epoch == epoch:
                if _owned(thread) or mismatches == _MOVES:
                    _check_owner(thread)
                    return
                mismatches += 1
                with thread.lock:
                    thread.forget_side()
            with thread.lock:
                thread.context.reset()

    def _read_side(self, thread: Thread, *, whole: bool = True) -> Steps[None]:
        if not whole and thread.side_cursor is None and (yield from self._read_side_end(thread)):
            return
        while True:
            cursor = thread.side_cursor
            try:
                chunk = yield Read(thread.side, cursor)
            except FileNotFoundError:
                lost = cursor is not None  # it was there: deleted, evicted or pruned away
                if lost and (
                    yield Blocking(lambda: thread.session.storage.exists(thread.session.name))
                ):
                    warnings.warn(
                        f"{thread.side.location}: the side log is gone; the thread reads as "
                        "its session's working context",
                        MissingSideLogWarning,
                        stacklevel=2,
                    )
                with thread.lock:
                    thread.forget_side()
                return
            if thread.take_side(cursor, chunk):
                return

    def _read_side_end(self, thread: Thread) -> Steps[bool]:
        """Read the side log from its last snapshot on, if its end holds one; else False.

        A cold read of the newest checkpoint then costs the records since,
        not every checkpoint before them. The end is read once more, longer,
        if it holds no snapshot (many pending writes since); a side log whose
        end holds none (an older release's) is then read whole.
        """
        for count in _TAIL_LINES:
            try:
                tail = yield ReadTail(thread.side, count)
            except FileNotFoundError:
                return False  # read again the usual way, which says what that means
            if tail.whole:  # the whole log, read at once
                chunk = Chunk([(1, tail.header), *tail.lines], tail.cursor, reset=True)
                return thread.take_side(None, chunk)
            index = SideIndex.resumed(thread.side, tail.lines)
            if index is not None:
                thread.take_tail(tail, index)
                return True
        return False

    def _read_session(self, thread: Thread) -> Steps[None]:
        yield from thread.follower.read_on()

    @property
    def _hook(self) -> Any:
        return self.store.plugin_manager.hook

    def get(self, config: RunnableConfig) -> Steps[CheckpointTuple | None]:
        thread = yield from self._get_thread(_thread_id(config), whole=False)
        if thread is None:
            return None
        ns = _ns(config)
        record = _record_of(thread, ns, get_checkpoint_id(config))
        if thread.index.partial and not self._answerable(thread, ns, record):
            thread = yield from self._get_thread(_thread_id(config))  # read the side log whole
            if thread is None:
                return None
            record = _record_of(thread, ns, get_checkpoint_id(config))
        if record is None:
            return None
        found = yield from self.tuple_of(thread, ns, record, {})
        # As LangGraph's savers: a config naming its checkpoint is given back as it came.
        return found._replace(config=config) if get_checkpoint_id(config) else found

    def _answerable(self, thread: Thread, ns: str, record: dict[str, Any] | None) -> bool:
        """Whether a partial index (see :meth:`SideIndex.resumed`) tells all of ``record``.

        It does for the newest root checkpoint, and one close to it, when every
        value it has is among the records read or the snapshot, and its
        messages are in the session's epoch now (not in an archived one).
        """
        index = thread.index
        if record is None or ns != "" or index.read_whole:
            return False
        try:
            state = decode_value(self.serde, record["state"])
            for channel, version in state["channel_versions"].items():
                found = index.blob(("", channel, version))
                if found is None:
                    return False
                if isinstance(found[0], dict) and "session" in found[0]:
                    epoch, line = (int(number) for number in found[0]["session"])
                    while epoch < index.epoch and index.bases.get(epoch, -1) >= line:
                        epoch += 1
                    if epoch != index.epoch:
                        return False
        except SessionFormatError:
            return False  # the whole log says where
        return True

    def listed(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> Steps[Listed]:
        """The checkpoints that match, newest first, ready for :meth:`_tuple`.

        Only ids and (with a filter) metadata are looked at here; each tuple
        is built as the caller comes to it.
        """
        wanted = None if limit is None else max(limit, 0)
        listed: Listed = []
        for thread_id in (yield from self.thread_ids(config)):
            if wanted is not None and len(listed) >= wanted:
                break
            room = None if wanted is None else wanted - len(listed)
            # The newest few of one thread may be read from the side log's end.
            thread = yield from self._get_thread(thread_id, whole=config is None or room is None)
            if thread is not None and thread.index.partial:
                newest = self._newest_from_end(thread, config, filter, before, room)
                if newest is not None:
                    listed += newest
                    continue
                thread = yield from self._get_thread(thread_id)  # read the side log whole
            if thread is not None:
                listed += itertools.islice(self._matching(thread, config, filter, before), room)
        return listed

    def _newest_from_end(
        self,
        thread: Thread,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        room: int | None,
    ) -> Listed | None:
        """The ``room`` newest checkpoints that match, if a partial index tells them all.

        It does when they are of the root namespace, at least as new as its
        first checkpoint (every one before it is older), and each is
        :meth:`_answerable`; None when it does not.
        """
        index = thread.index
        wanted_ns = config["configurable"].get("checkpoint_ns") if config is not None else None
        if room is None or index.floor is None or wanted_ns != "":
            return None
        found = [
            item
            for item in itertools.islice(self._matching(thread, config, filter, before), room)
            if item[2]["id"] >= index.floor
        ]
        if len(found) < room or not all(self._answerable(thread, "", i[2]) for i in found):
            return None
        return found

    def _matching(
        self,
        thread: Thread,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
    ) -> Iterator[tuple[Thread, str, dict[str, Any], dict[str, NumberedLines]]]:
        """The thread's checkpoints that match, newest first; each record parsed as reached."""
        # As LangGraph's own savers: no checkpoint_ns lists every namespace of the thread.
        wanted_ns = config["configurable"].get("checkpoint_ns") if config is not None else None
        wanted_id = get_checkpoint_id(config) if config is not None else None
        before_id = get_checkpoint_id(before) if before is not None else None
        bodies: dict[str, NumberedLines] = {}  # one read of the session serves them all
        namespaces: list[tuple[str, Mapping[str, Record | dict[str, Any]]]]
        namespaces = list(thread.index.checkpoints.items())
        alone = _session_record(thread, None)
        if alone is not None:
            namespaces.insert(0, ("", {alone["id"]: alone}))
        for ns, records in namespaces:
            if wanted_ns is not None and ns != wanted_ns:
                continue
            for checkpoint_id in sorted(records, reverse=True):
                if (wanted_id and checkpoint_id != wanted_id) or (
                    before_id and checkpoint_id >= before_id
                ):
                    continue
                found = records[checkpoint_id]
                with skipped_if_bad():
                    record = found if isinstance(found, dict) else found.body(thread.index.log)
                    metadata = decode_value(self.serde, record["metadata"])
                    if not filter or _matches(metadata, filter):
                        yield (thread, ns, record, bodies)

    def _get_thread(self, thread_id: str, *, whole: bool = True) -> Steps[Thread | None]:
        """The thread, brought up to its logs; None if it has none (or they were just deleted).

        Not ``whole``: a side log not read yet may be read from its last snapshot on.
        """
        config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
        thread = yield from self._thread(config, create=False)
        if thread is None:
            return None
        try:
            yield from self._refresh(thread, whole=whole)
        except FileNotFoundError:  # deleted meanwhile
            self.forget(thread_id)
            return None
        return thread

    def tuple_of(
        self,
        thread: Thread,
        ns: str,
        record: dict[str, Any],
        bodies: dict[str, NumberedLines],
    ) -> Steps[CheckpointTuple]:
        index = thread.index
        state = decode_value(self.serde, record["state"])
        newest = ns == "" and record["id"] == index.newest("")
        values: dict[str, Any] = {}
        if SESSION_ALONE in record:  # the session's working context, with no side log
            assert thread.context.cursor is not None  # read before it was made
            place = (index.epoch, thread.context.cursor.lines)
            values[MESSAGES] = yield from self._messages_at(thread, place, bodies, True)
        for channel, version in state["channel_versions"].items():
            if SESSION_ALONE in record:
                break
            found = index.blob((ns, channel, version))
            if found is None or found[0] == EMPTY:
                continue
            encoded = found[0]
            if "session" in encoded:
                place = encoded["session"]
                messages = yield from self._messages_at(thread, place, bodies, newest)
                after = encoded.get("after")
                values[channel] = messages + (decode_value(self.serde, after) if after else [])
            else:
                values[channel] = decode_value(self.serde, encoded)
        checkpoint_id, parent = record["id"], record["parent"]
        told = values.get(MESSAGES)
        if (newest or SESSION_ALONE in record) and isinstance(told, list):
            with thread.lock:  # the ids are read only by a rewrite (_seen_by): a pointer here
                if thread.first_told is None or thread.first_told[0] != checkpoint_id:
                    thread.first_told = (checkpoint_id, index.epoch, list(told))
        writes = [
            (w.task_id, w.channel, decode_value(self.serde, w.value))
            for w in index.ordered_writes(ns, checkpoint_id)
        ]
        return CheckpointTuple(
            config=_config(thread.thread_id, ns, checkpoint_id),
            checkpoint=cast("Checkpoint", {**state, "channel_values": values}),
            metadata=decode_value(self.serde, record["metadata"]),
            parent_config=_config(thread.thread_id, ns, parent) if parent else None,
            pending_writes=writes,
        )

    def _messages_at(
        self,
        thread: Thread,
        place: tuple[int, int],
        bodies: dict[str, NumberedLines],
        newest: bool,
    ) -> Steps[Messages]:
        """The working context as it stood at line ``place[1]`` of the session's epoch ``place[0]``.

        The ``newest`` checkpoint, if its put wrote the last lines a put wrote,
        holds the session's working context now: what a chat history added
        after those is the conversation too. Lines of other puts are not
        (another process's, or a put under way or killed: its intent says so).
        """
        epoch, line = place
        with thread.lock:
            context, index = thread.context, thread.index
            current, cursor = index.epoch, context.cursor
            # Lines a later epoch kept as they were are that epoch's too.
            while epoch < current and index.bases.get(epoch, -1) >= line:
                epoch += 1
            # A put killed after its intent may have left lines: not the conversation.
            settled = not any(intent.epoch == current for intent in index.pending)
            last_put = index.written.get(epoch, 0) == line and settled
            # The context may have been read before the side log told of this line.
            read_past = epoch == current and cursor is not None and cursor.lines >= line
            if read_past and cursor is not None and (cursor.lines == line or (newest and last_put)):
                line = cursor.lines  # nothing to read: the context as it stands
            known = context.as_of(line) if epoch == current else None
            version = context.version
        if known is not None:  # the context, or an earlier checkpoint's prefix of it
            return self._handed_out(thread, Base(epoch, version, line, known[0]), known[1], newest)
        log = thread.session if epoch == current else thread.side
        body = yield from self._epoch_body(thread, epoch, bodies)
        upto = bisect.bisect_right(body, line, key=lambda item: item[0])
        messages, numbers = context_of(log, body[:upto], thread.context.transform)
        return self._handed_out(thread, Base(epoch, -1, line, messages), numbers, False)

    def _handed_out(
        self, thread: Thread, base: Base, numbers: Sequence[int], newest: bool
    ) -> Messages:
        """Copies of ``base``'s messages for LangGraph, each with an id, sharing nothing.

        LangGraph and its users change the messages they are given (its
        reducer gives an id to one without; LangGraph's docs edit a tool
        call's arguments in place before ``update_state``), so they get copies
        down to the last dict: nothing cached changes, and a put compares what
        comes back with what was handed out. A message stored without an id
        gets one made from its place, the same in every process.
        """
        with thread.lock:
            for message, number in zip(base.messages, numbers, strict=True):
                if message.id is None:
                    message.id = _line_id(thread, base.epoch, number)
            if newest:
                thread.handed = base
        return [_detached(message) for message in base.messages]

    def _epoch_body(
        self, thread: Thread, epoch: int, bodies: dict[str, NumberedLines]
    ) -> Steps[NumberedLines]:
        """The session's lines (after its header) as they were in ``epoch``.

        An epoch archived in part takes its first lines from the next one.
        """
        index = thread.index
        chain, newer = [], epoch
        while newer != index.epoch and newer in index.bases:
            chain.append(newer)
            newer += 1
        if newer == index.epoch:
            body = yield from self._session_body(thread, bodies)
        elif newer in index.archives:
            body = index.archives[newer]
        else:
            raise SessionFormatError(
                f"a checkpoint refers to epoch {epoch} of the session, which no record keeps",
                path=thread.side.location,
            )
        for older in reversed(chain):
            shared = bisect.bisect_right(body, index.bases[older], key=lambda item: item[0])
            body = [*body[:shared], *index.archives[older]]
        return body

    def _session_body(
        self, thread: Thread, bodies: dict[str, NumberedLines]
    ) -> Steps[NumberedLines]:
        """The session's lines after its header, read once for all of ``bodies``' users."""
        if "session" not in bodies:
            chunk = yield Read(thread.session, None)
            bodies["session"] = split_header(thread.session.location, chunk.lines)[1]
        return bodies["session"]

    # --- writing ------------------------------------------------------------------

    def _put(
        self,
        thread: Thread,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Steps[RunnableConfig]:
        if thread.context.cursor is None or thread.index.partial:  # its decision needs all
            yield from self._refresh(thread)
        ns = _ns(config)
        given = checkpoint["channel_values"]
        values: dict[str, list[Any]] = {}
        # Every other value is encoded first: one that cannot be leaves the session untouched.
        for channel, version in new_versions.items():
            if channel not in given:  # LangGraph's "empty" channel, said so: no reader looks back
                values[channel] = [channel, version, EMPTY]
            elif not (ns == "" and channel == MESSAGES and isinstance(given[channel], list)):
                values[channel] = [channel, version, self._encoded(thread, channel, given[channel])]
        state = {key: value for key, value in checkpoint.items() if key != "channel_values"}
        with _nested_at("the checkpoint's metadata"):
            encoded_metadata = self._encode(get_checkpoint_metadata(config, metadata))
        encoded_state = self._encode(state)
        parent = config["configurable"].get("checkpoint_id")

        def record(messages: dict[str, Any] | None = None) -> bytes:
            if messages is not None:
                values[MESSAGES] = [MESSAGES, new_versions[MESSAGES], messages]
            stored = [values[channel] for channel in new_versions if channel in values]
            return checkpoint_record(
                ns, checkpoint["id"], parent, encoded_metadata, encoded_state, stored
            )

        done = _config(thread.thread_id, ns, checkpoint["id"])
        carried = {c: v for c, v in checkpoint["channel_versions"].items() if c not in new_versions}
        snapshot = _snapshots(thread, checkpoint["id"], carried) if ns == "" else _no_snapshot
        if not (ns == "" and isinstance(given.get(MESSAGES), list) and MESSAGES in new_versions):
            yield from self._append_record(thread, record(), snapshot)
            return done
        for _ in range(_MOVES):
            if thread.context.cursor is None:  # unread, or of an epoch gone: the decision needs it
                yield from self._refresh(thread)
            # What this attempt decides on: its commit lands only if neither log moved
            # past it meanwhile (other puts of this process read on, too).
            with thread.lock:
                view = View(thread.context.cursor, thread.side_cursor, thread.index.epoch)
                newest = thread.index.newest(ns)
            # The session follows the newest checkpoint: one older than it (a concurrent
            # run's, landing late) keeps its messages beside it, as any other value.
            if newest is None or checkpoint["id"] > newest:
                stored = yield from self._store_messages(
                    thread,
                    view,
                    given[MESSAGES],
                    checkpoint["id"],
                    parent,
                    record=record,
                    snapshot=snapshot,
                )
                if stored:
                    return done
                yield from self._refresh(thread)  # another writer moved on: decide again
            else:
                # Checked by no commit (the session may move on meanwhile), so decided on
                # a session read in the epoch the side log says.
                yield from self._refresh(thread)
                beside = self._beside(thread, given[MESSAGES])
                encoded = beside or self._encoded(thread, MESSAGES, given[MESSAGES])
                yield from self._append_record(thread, record(encoded))
                return done
        raise RuntimeError(f"{thread.session.location}: kept changing while a put wrote it")

    def _encoded(self, thread: Thread, channel: str, value: Any) -> dict[str, Any]:
        with _nested_at(f"channel {channel!r}"):
            return self._encode(self._without_dropped(thread, value))

    def _put_writes(
        self,
        thread: Thread,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> Steps[None]:
        # A write is one record appended: nothing needs reading first, but the
        # session's header when plugins are to be told of it.
        looks = not filters_by_default(self.store.plugin_manager.hook.crab_filter_message)
        if looks and thread.context.meta is None:
            yield from self._read_session(thread)
        items = [
            [idx, channel, self._encoded(thread, channel, value)]
            for idx, (channel, value) in enumerate(writes)
        ]
        checkpoint_id = config["configurable"]["checkpoint_id"]
        record = writes_record(_ns(config), checkpoint_id, task_id, task_path, items)
        # Pending writes bear on no put's decision: a put racing this one passes them
        # by, and the next read takes them (nothing to read back now).
        yield from self._append_side(thread, [record])

    def _append_side(self, thread: Thread, lines: Sequence[bytes]) -> Steps[None]:
        """Append ``lines`` to the side log, taking them if nothing came between.

        For pending writes, which bear on no put's decision: a put racing
        this one passes them by, and the next read takes them.
        """
        yield from self._ensure_side(thread)
        cursor = thread.side_cursor
        after = yield Append(thread.side, lines, cursor)
        if after is not None and cursor is not None:
            thread.take_side(cursor, Chunk(list(enumerate(lines, cursor.lines + 1)), after))

    def _append_record(
        self, thread: Thread, record: bytes, snapshot: Snapshot | None = None
    ) -> Steps[None]:
        """Append a checkpoint's ``record`` to the side log, and take what the log holds since.

        ``snapshot`` gives the snapshot to go before it, if one is due.
        """
        yield from self._ensure_side(thread)
        for _ in range(_MOVES):
            side_at = thread.side_cursor
            before = snapshot(side_at) if snapshot is not None else []
            change = Change(None, side_at, before=before, after=[record], passing=WRITES_PREFIX)
            committed = yield Commit(thread.session, thread.side, change)
            if committed is not None:
                yield from self._take(thread, side_at, committed)
                return
            yield from self._read_side(thread)  # another checkpoint came first: after it
        raise RuntimeError(f"{thread.side.location}: kept changing while a put wrote it")

    def _ensure_side(self, thread: Thread) -> Steps[None]:
        """Create the thread's side log if it has none (and read it)."""
        if thread.side_cursor is None:
            header = yield Blocking(thread.session.header_line)
            yield Blocking(lambda: _create_side(thread, header))
            yield from self._read_side(thread)

    def _beside(self, thread: Thread, messages: Messages) -> dict[str, Any] | None:
        """The messages of a put older than the newest checkpoint, kept beside the session.

        They continue the session as it stood at some line (a concurrent run
        that lost the race, or a cancelled caller's put landing late): that
        place, and the messages after it. None if they continue no place known.
        """
        base = self._base_of(thread, messages)
        if base is None:
            return None
        after = self._encode(self._without_dropped(thread, messages[len(base.messages) :]))
        if "json" not in after and "messages" not in after:
            return None  # not lines: kept whole, by the serializer
        return {**_place(base.epoch, base.line, base.unseen), "after": after}

    def _store_messages(
        self,
        thread: Thread,
        view: View,
        messages: Messages,
        checkpoint_id: str,
        parent: str | None,
        *,
        record: Callable[[dict[str, Any]], bytes],
        snapshot: Snapshot,
    ) -> Steps[bool]:
        """Make ``messages`` the session's working context, with the checkpoint's ``record``
        (and ``snapshot``'s, if one is due: see :func:`_snapshots`).

        The session is the truth: lines another writer (a chat history)
        appended past the last put's are kept, after the new messages; only
        lines of a killed put of this saver's (announced, never finished)
        are removed. ``record`` is given the place that holds the messages
        (or, if ``messages`` holds something else, their encoding). False,
        and nothing written, if either log moved since this saver read it.
        """
        base = self._base_of(thread, messages)
        fresh = messages if base is None else messages[len(base.messages) :]
        if not all(isinstance(item, BaseMessage) for item in fresh):
            yield from self._append_record(
                thread, record(self._encoded(thread, MESSAGES, messages)), snapshot
            )
            return True
        landed = yield from self._landed(thread)
        written = thread.index.written.get(thread.index.epoch, 0)
        continues = base is not None and base.line >= written
        if continues and landed:  # a killed put's lines: gone, and nothing else
            if not (yield from self._cut(thread, view, landed)):
                return False  # moved: decide again
            # The lines up to ``base`` are as they were: go on from there.
            yield from self._refresh(thread)
            with thread.lock:
                view = View(thread.context.cursor, thread.side_cursor, thread.index.epoch)
        if view.side_at is None:
            yield from self._ensure_side(thread)
            return False  # decide again, with it
        if continues:
            assert base is not None
            place = yield from self._append_messages(
                thread, view, [], fresh, checkpoint_id, record=record, snapshot=snapshot, base=base
            )
        elif self._summary(messages) and not landed:
            marker = _marker(messages[0])
            place = yield from self._append_messages(
                thread,
                view,
                [marker],
                messages[1:],
                checkpoint_id,
                record=record,
                snapshot=snapshot,
                base=None,
            )
        else:
            seen = yield from self._seen_by(thread, parent)
            place = yield from self._rewrite(
                thread,
                view,
                messages,
                base,
                landed=landed,
                seen=seen,
                checkpoint_id=checkpoint_id,
                record=record,
                snapshot=snapshot,
            )
        if place is None:
            return False
        with thread.lock:
            version = thread.context.version
            thread.puts.append(Base(place.epoch, version, place.line, list(messages), place.unseen))
        return True

    def _between(self, thread: Thread, after: int, before: int | None) -> frozenset[str]:
        """Ids of the working context's messages on lines past ``after``, before ``before``.

        What another door appended since LangGraph was told the conversation,
        that a put appended after: it stays, and its run never saw it.
        """
        with thread.lock:
            context, epoch = thread.context, thread.index.epoch
            start = bisect.bisect_right(context.lines, after)
            lines = context.lines
            end = len(lines) if before is None else bisect.bisect_left(lines, before)
            found = zip(context.messages[start:end], context.lines[start:end], strict=True)
            return frozenset(m.id or _line_id(thread, epoch, n) for m, n in found)

    def _base_of(self, thread: Thread, messages: Messages) -> Base | None:
        """The longest known message list ``messages`` starts with, if any.

        The lists of this saver's puts are LangGraph's own objects, found by
        pointer comparison; the newest checkpoint handed out was copies,
        compared by value (an edit made to one is a change); the working
        context itself is compared last.
        """
        with thread.lock:
            context, epoch = thread.context, thread.index.epoch
            end = context.cursor.lines if context.cursor is not None else 0
            now = Base(epoch, context.version, end, list(context.messages))
            lines = context.lines
            handed, puts = thread.handed, list(thread.puts)
        valid = [b for b in puts if b[:2] == now[:2] and b.line <= end]
        found = max(
            (b for b in valid if _starts_with(messages, b.messages)), key=_line, default=None
        )
        if handed is not None and handed[:2] == now[:2] and handed.line <= end:
            # Compared by value, once a turn: what a put continues is found above.
            newer = found is None or found.line < handed.line
            if newer and messages[: len(handed.messages)] == handed.messages:
                found = handed
        if found is None:
            return now if messages[: len(now.messages)] == now.messages else None
        # What another writer appended since, if the new list holds it too (equal: a copy).
        later = now.messages[bisect.bisect_right(lines, found.line) :]
        taken = len(found.messages)
        if later and messages[taken : taken + len(later)] == later:
            return now._replace(messages=messages[: taken + len(later)])
        return found

    def _landed(self, thread: Thread) -> Steps[Spans]:
        """Session lines ``(first, last)`` that a killed put of this epoch left (its intent's).

        Checked against the intent's digest: lines another writer appended
        where the killed put's would have gone are not its.
        """
        epoch = thread.index.epoch
        cursor = thread.context.cursor
        end = cursor.lines if cursor is not None else 0
        pending = thread.index.pending
        intents = [i for i in pending if i.epoch == epoch and i.digest and i.last <= end]
        if not intents:
            return []
        body = dict((yield from self._session_body(thread, {})))
        return [
            (i.first, i.last)
            for i in intents
            if lines_digest(body.get(n, b"") for n in range(i.first, i.last + 1)) == i.digest
        ]

    def _cut(self, thread: Thread, view: View, landed: Spans) -> Steps[bool]:
        """Remove the lines ``landed`` from the session; every other line stays where it is.

        Only if neither log moved since ``view``: a put still at work (on a
        directory its intent is written before its lines) finishes first, and
        its record tells that the lines are its own.
        """
        assert view.at is not None  # landed lines were read
        chunk = yield Read(thread.session, None)
        if (chunk.cursor.identity, chunk.cursor.lines) != (view.at.identity, view.at.lines):
            return False
        header, body = split_header(thread.session.location, chunk.lines)
        kept = [line for number, line in body if not _within(number, landed)]
        change = Change(
            chunk.cursor, view.side_at, [header, *kept], replace=True, passing=WRITES_PREFIX
        )
        if (yield Commit(thread.session, thread.side, change)) is None:
            return False
        with thread.lock:
            thread.context.reset()
        return True

    def _append_messages(
        self,
        thread: Thread,
        view: View,
        first: Lines,
        messages: Sequence[BaseMessage],
        checkpoint_id: str,
        *,
        record: Callable[[dict[str, Any]], bytes],
        snapshot: Snapshot,
        base: Base | None,
    ) -> Steps[Base | None]:
        """Append the lines of ``first`` and ``messages`` with ``record``, in one commit.

        Returns where the session then stands (``messages`` left empty); None,
        and nothing written, if either log moved since this saver read it.
        """
        lines, read_back = self._lines_of(thread, messages)
        if first:
            lines, read_back = [*first, *lines], None
        at, side_at, epoch = view
        assert at is not None  # read before any write
        unseen = (
            frozenset()
            if base is None
            else base.unseen | self._between(thread, base.line, at.lines + 1)
        )
        place = Base(epoch, -1, at.lines + len(lines), [], unseen)
        finished = record(_place(epoch, place.line, unseen))
        if not lines:
            yield from self._append_record(thread, finished, snapshot)
            return place
        # The intent says where the lines go: a directory killed after it tells on them.
        announced = intent_record(epoch, at.lines + 1, lines, checkpoint_id)
        before = [*snapshot(side_at), announced]
        change = Change(at, side_at, lines, before=before, after=[finished], passing=WRITES_PREFIX)
        committed = yield Commit(thread.session, thread.side, change)
        if committed is None:
            return None
        yield from self._take(thread, side_at, committed)
        if not thread.follower.take_appended(at, lines, read_back, committed.session):
            yield from self._read_session(thread)
        return place

    def _take(self, thread: Thread, side_at: Cursor | None, committed: Committed) -> Steps[None]:
        """Take what a commit says of the side log (or read both logs, if it cannot say)."""
        if committed.side is None:  # a resent commit's, whose first reply was lost: read
            with thread.lock:
                thread.context.reset()
                thread.forget_side()
            yield from self._refresh(thread)
        elif not thread.take_side(side_at, committed.side):
            yield from self._read_side(thread)

    def _lines_of(self, thread: Thread, messages: Sequence[BaseMessage]) -> Batch:
        """The session lines for ``messages`` (as plugins decide), and what each reads back as.

        Sealed: plugins decide on the messages themselves; what they keep is
        written sealed, and read back as it was before sealing.
        """
        plugins, strict = self.store.plugin_manager, self.store.strict
        batch = prepare_writes(plugins, messages, thread.follower.session, strict=strict)
        if batch is None:
            return [], None
        if self._sealer is None:
            return batch
        kept = [_line_message(line) for line in batch[0]]
        sealed = [encode(self._sealer.seal(m), strict=strict).line for m in kept]
        read_back: list[ReadBack] = [*kept]
        return sealed, read_back

    def _encode(self, value: Any) -> dict[str, Any]:
        """``value`` for the side log: readable JSON where it can be, unless sealed."""
        return encode_value(self.serde, value, readable=self._sealer is None)

    def _summary(self, messages: Messages) -> bool:
        """Whether ``messages`` start with a summary that becomes a compaction marker.

        Not when sealed: a marker's title and summary would be plaintext.
        """
        return bool(messages) and self._sealer is None and _is_summary(messages[0])

    def _seen_by(self, thread: Thread, parent: str | None) -> Steps[set[str]]:
        """The ids of the messages the put's run was surely told of: its parent checkpoint's.

        Another door's message the run holds no more, it removed; one it may
        never have been told of stays. So: the parent's messages up to its
        place (less those a put appended after without holding them), and
        what the parent was first handed out with.
        """
        stored = None if parent is None else thread.index.messages_value(parent, self.serde)
        told: list[Any] = []
        unseen: set[str] = set()
        if isinstance(stored, dict) and "session" in stored:
            place = (int(stored["session"][0]), int(stored["session"][1]))
            told = yield from self._messages_at(thread, place, {}, False)
            unseen = set(stored.get("unseen", ()))
        elif stored is not None and stored != EMPTY:
            told = decode_value(self.serde, stored)
        seen = {m.id for m in told if isinstance(m, BaseMessage) and m.id} - unseen
        with thread.lock:
            first, epoch = thread.first_told, thread.index.epoch
        if first is not None and first[0] == parent and first[1] == epoch:
            seen |= {m.id for m in first[2] if isinstance(m, BaseMessage) and m.id}
        return seen

    def _rewrite(
        self,
        thread: Thread,
        view: View,
        messages: Messages,
        base: Base | None,
        *,
        landed: Spans,
        seen: set[str],
        checkpoint_id: str,
        record: Callable[[dict[str, Any]], bytes],
        snapshot: Snapshot,
    ) -> Steps[Base | None]:
        """Archive the session's lines in the side log and replace them by ``messages``, at once.

        A fork continuing ``base`` (an earlier state of this epoch) keeps the
        lines up to it as they are and archives only those after it: a
        branch left behind costs its own lines. Lines no put wrote whose
        messages are neither in ``messages`` nor ``seen`` (the ids the put's
        run was told of, see ``_seen_by``) stay, after ``messages``: no door
        drops what another wrote and the run never saw. None, and nothing
        written, if either log moved since this saver read it.
        """
        at, side_at, epoch = view
        with thread.lock:
            puts = list(thread.index.written_spans.get(epoch, []))
        chunk = yield Read(thread.session, None)
        if at is None or (chunk.cursor.identity, chunk.cursor.lines) != (at.identity, at.lines):
            return None  # moved since the thread was read
        header, body = split_header(thread.session.location, chunk.lines)
        foreign = self._foreign(thread, body, puts, landed)
        told = {message.id for message in messages if message.id} | seen
        unseen = [n for n, _ in body if n in foreign and foreign[n] not in told]
        others = [_with_id(text, foreign[n]) for n, text in body if n in unseen]
        kept = 0 if base is None else bisect.bisect_right(body, base.line, key=lambda i: i[0])
        shifted = kept and body[kept - 1][0] != kept + 1  # blank lines: numbers would shift
        fork, kept = (None, 0) if shifted else (base, kept)
        fresh = messages if fork is None else messages[len(fork.messages) :]
        first = [_marker(fresh[0])] if self._summary(fresh) else []
        lines, _ = self._lines_of(thread, fresh[1:] if first else fresh)
        new = [*first, *lines]
        start = 2 + kept  # the first new line's number
        # Another door's messages the run holds, written again: still not a put's own.
        ids = set(foreign.values())
        carried = [start + i for i, line in enumerate(new) if _message_id(line) in ids]
        announced = intent_record(epoch + 1, start, new, checkpoint_id, carried)
        archive = archive_record(epoch, body[kept:], fork.line if fork is not None else None)
        owned = _clipped(puts, 1 + kept)  # the kept lines are whose they were
        kept_lines = [written_record(epoch + 1, owned)] if owned else []
        session = [header, *(line for _, line in body[:kept]), *new, *others]
        left = frozenset(foreign[n] for n in unseen)
        place = Base(epoch + 1, -1, len(session), [], left)
        change = Change(
            chunk.cursor,
            side_at,
            session,
            replace=True,
            before=[*snapshot(side_at), archive, *kept_lines, *([announced] if new else [])],
            after=[record(_place(place.epoch, place.line, left))],
            passing=WRITES_PREFIX,
        )
        committed = yield Commit(thread.session, thread.side, change)
        if committed is None:
            return None
        yield from self._take(thread, side_at, committed)
        with thread.lock:
            thread.context.reset()
        yield from self._read_session(thread)
        return place

    def _foreign(
        self, thread: Thread, body: NumberedLines, puts: Spans, landed: Spans
    ) -> dict[int, str]:
        """The lines of ``body`` no put wrote (another door's): number to message id.

        A line without an id (a message's, or a marker's) has the one it is
        handed out with.
        """
        epoch = thread.index.epoch
        foreign = {}
        for number, line in body:
            if _within(number, puts) or _within(number, landed):
                continue
            foreign[number] = _message_id(line) or _line_id(thread, epoch, number)
        return foreign

    def _without_dropped(self, thread: Thread, value: Any) -> Any:
        """``value`` without the messages plugins drop (lists and dicts looked into)."""
        if type(value) is list:
            return [
                self._without_dropped(thread, item)
                for item in value
                if not (isinstance(item, BaseMessage) and self._drops(thread, item))
            ]
        if type(value) is dict:
            return {key: self._without_dropped(thread, item) for key, item in value.items()}
        return value

    def _drops(self, thread: Thread, message: BaseMessage) -> bool:
        plugins, strict = self.store.plugin_manager, self.store.strict
        return drops(plugins, thread.follower.session, message, strict=strict)

    # --- copying and deleting ---------------------------------------------------------

    def copy(self, source_id: str, target_id: str) -> Steps[None]:
        source = yield from self._get_thread(source_id)
        if source is None:
            return
        session = yield Read(source.session, None)
        side = yield Read(source.side, None)
        target = yield from self._writable(_config(target_id, "", None))
        assert session is not None
        assert side is not None
        present = yield Read(target.session, None)
        if present is not None and len(present.lines) > 1:
            raise FileExistsError(f"thread {target_id!r} has a conversation already")
        header = yield Blocking(target.session.header_line)
        yield Blocking(lambda: _create_side(target, header, exist_ok=False))
        body = split_header(source.session.location, session.lines)[1]
        if body:
            yield Append(target.session, [line for _, line in body], None)
        records = split_header(source.side.location, side.lines)[1]
        if records:
            yield Append(target.side, [line for _, line in records], None)

    def rewrite_side(
        self,
        thread_id: str,
        keep: Callable[[SideIndex], Kept | None],
        *,
        roll_back: bool = False,
    ) -> None:
        """Replace the side log of ``thread_id`` by the records ``keep(index)`` chooses.

        ``keep`` returns the ``(ns, checkpoint id)`` pairs to keep, or None to
        delete the side log. Values the kept checkpoints use are kept. With
        ``roll_back``, the session's lines of puts newer than the newest kept
        checkpoint go too (:meth:`_rolled_back`).
        """
        thread = run(self._thread(_config(thread_id, "", None), create=False))
        if thread is None:
            return
        for _ in range(_MOVES):
            run(self._refresh(thread))
            if thread.side_cursor is None:
                return  # a session with no checkpoints (a chat history's)
            kept = keep(thread.index)
            if kept is None:
                thread.side.delete()
                break
            identity = header_identity(thread.session.header_line())
            header = side_header(thread.session.name, identity)
            lines = [header, *thread.index.kept_lines(kept, self.serde)]
            session = run(self._rolled_back(thread, kept)) if roll_back else None
            # Written only if nothing was added to either log since it was read (no
            # pending write either: it would be dropped), else read again.
            if session is None:
                change = Change(None, thread.side_cursor, before=lines, side_replace=True)
            else:
                change = Change(
                    session[2],
                    thread.side_cursor,
                    session[0],
                    replace=True,
                    before=[*lines, *session[1]],
                    side_replace=True,
                )
            if thread.session.commit(thread.side, change) is not None:
                break
        else:
            raise RuntimeError(f"{thread.session.location}: kept changing while it was pruned")
        with thread.lock:
            thread.forget_side()
            thread.context.reset()

    def _rolled_back(self, thread: Thread, kept: Kept) -> Steps[tuple[Lines, Lines, Cursor] | None]:
        """``(session lines, side-log records, where read)`` without puts past the newest kept.

        The session goes back to the newest kept root checkpoint's messages,
        followed by every line no put wrote (a chat history's); the lines
        left are archived as the epoch they were. None if nothing changes, or
        the newest kept checkpoint is in an earlier epoch (then the session
        stays as it is).
        """
        index = thread.index
        epoch = index.epoch
        newest = max((cid for ns, cid in kept if ns == ""), default=None)
        place = [epoch, 1] if newest is None else index.messages_place(newest, self.serde)
        if place is None or place[0] != epoch:
            return None
        line = place[1]
        chunk = yield Read(thread.session, None)
        header, body = split_header(thread.session.location, chunk.lines)
        gone = [span for span in index.put_lines(epoch) if span[1] > line]
        if not any(_within(number, gone) for number, _ in body):
            return None
        shared = bisect.bisect_right(body, line, key=lambda item: item[0])
        if shared and body[shared - 1][0] != shared + 1:
            return None  # blank lines: the numbers would shift (not a session we wrote)
        stays = [text for number, text in body[shared:] if not _within(number, gone)]
        session = [header, *[text for _, text in body[:shared]], *stays]
        archived = archive_record(epoch, body[shared:], line)
        records = [archived, written_record(epoch + 1, [(2, line)])]
        return session, records, chunk.cursor


# --- helpers ---------------------------------------------------------------------------


def _thread_id(config: RunnableConfig) -> str:
    thread_id = config["configurable"]["thread_id"]
    if isinstance(thread_id, int) and not isinstance(thread_id, bool):
        return str(thread_id)
    if not isinstance(thread_id, str):
        raise TypeError(f"thread_id must be a str, not {type(thread_id).__name__}")
    return thread_id


def _ns(config: RunnableConfig) -> str:
    return str(config["configurable"].get("checkpoint_ns") or "")


def _config(thread_id: str, ns: str, checkpoint_id: str | None) -> RunnableConfig:
    configurable: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": ns}
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def _line_message(line: bytes) -> BaseMessage:
    """What a message line written a moment ago reads back as."""
    message = decode_line(line)
    assert isinstance(message, BaseMessage)  # plugins leave message lines only
    return message


def _message_id(line: bytes) -> str | None:
    """The id a session line's message has, if it is a message line with one."""
    try:
        message = decode_line(line)
    except (SessionFormatError, ValueError):
        return None
    return message.id if isinstance(message, BaseMessage) else None


def _with_id(line: bytes, message_id: str) -> bytes:
    """``line`` holding ``message_id`` as its message's id (as handed out), if it had none.

    A line kept after a rewrite changes place, and so would the id made from
    its place: the one LangGraph was given is written down instead.
    """
    try:
        message = decode_line(line)
    except (SessionFormatError, ValueError):
        return line
    if not isinstance(message, BaseMessage) or message.id is not None:
        return line
    message.id = message_id
    return encode(message).line


def _place(epoch: int, line: int, unseen: frozenset[str]) -> dict[str, Any]:
    """The stored value of messages that are the session's up to ``line`` of ``epoch``."""
    return {"session": [epoch, line], **({"unseen": sorted(unseen)} if unseen else {})}


def _clipped(spans: Spans, last: int) -> Spans:
    """``spans`` cut off past line ``last``."""
    return [(first, min(end, last)) for first, end in spans if first <= last]


def _is_summary(message: BaseMessage) -> bool:
    return message.additional_kwargs.get("lc_source") == _SUMMARY_SOURCE


def _marker(summary: BaseMessage) -> bytes:
    """The compaction marker of a summary: titled by the summary, not by LangChain's preface."""
    text = summary.content if isinstance(summary.content, str) else ""
    proper = (
        text.removeprefix(_SUMMARY_PREFACE).strip() if text.startswith(_SUMMARY_PREFACE) else None
    )
    return marker_line(summary, datetime.now(timezone.utc).isoformat(), titled=proper)


@contextlib.contextmanager
def _nested_at(where: str) -> Iterator[None]:
    """A value nested past Python's recursion limit, as a ``ValueError`` saying where."""
    try:
        yield
    except RecursionError:
        raise too_deep(where) from None


@contextlib.contextmanager
def skipped_if_bad() -> Iterator[None]:
    """Listing goes on past a checkpoint that does not read, saying which and where."""
    try:
        yield
    except SessionFormatError as error:
        warnings.warn(f"skipping a checkpoint: {error}", BadRecordWarning, stacklevel=4)


class _AbandonedError(Exception):
    """A write whose caller was cancelled before it held its thread: nothing was written."""


def _observed(task: asyncio.Future[Any]) -> None:
    """Take a detached write's outcome, so a cancelled caller's error is not reported as lost."""
    if not task.cancelled():
        task.exception()


def _starts_with(messages: Messages, start: Messages) -> bool:
    """Whether ``messages`` starts with the very objects of ``start`` (pointer comparison)."""
    return len(start) <= len(messages) and all(map(operator.is_, messages, start))


def _line(base: Base) -> int:
    return base.line


def _detached(message: BaseMessage) -> BaseMessage:
    """A copy of ``message`` sharing no list or dict with it (at any depth)."""
    update = {
        name: copy.deepcopy(value) if value else type(value)()
        for name in type(message).model_fields
        if isinstance(value := getattr(message, name), (dict, list))
    }
    return message.model_copy(update=update)


def _within(number: int, spans: Spans) -> bool:
    return any(first <= number <= last for first, last in spans)


def _line_id(thread: Thread, epoch: int, line: int) -> str:
    """The id of a message stored without one: its session, epoch and line, as a UUID.

    A line later epochs kept as it was keeps the id of the epoch it was written in.
    """
    while epoch > 0 and thread.index.bases.get(epoch - 1, -1) >= line:
        epoch -= 1
    return str(uuid.uuid5(_LINE_IDS, f"{thread.session.name}\n{epoch}\n{line}"))


Snapshot = Callable[[Cursor | None], list[bytes]]
"""What goes before a put's records written after side-log cursor ``side_at``: a snapshot,
if one is due, or nothing."""


def _snapshots(thread: Thread, checkpoint_id: str, carried: Mapping[str, Any]) -> Snapshot:
    """A put's :data:`Snapshot` for root checkpoint ``checkpoint_id``, whose channels
    ``carried`` (channel to version) keep values an earlier checkpoint stored.

    One goes before the record of a root checkpoint newer than every other,
    when the last snapshot is :data:`SNAPSHOT_EVERY` lines back: the records
    after it then hold the newest root checkpoint.
    """

    def snapshot(side_at: Cursor | None) -> list[bytes]:
        with thread.lock:
            index = thread.index
            newest = index.newest("")
            if side_at is None or index.partial or (newest is not None and checkpoint_id <= newest):
                return []
            return [index.snapshot(carried)] if index.snapshot_due(side_at.lines) else []

    return snapshot


def _no_snapshot(side_at: Cursor | None) -> list[bytes]:
    return []


def _record_of(thread: Thread, ns: str, checkpoint_id: str | None) -> dict[str, Any] | None:
    """The record of checkpoint ``checkpoint_id`` of namespace ``ns`` (None: the newest)."""
    checkpoint_id = checkpoint_id or thread.index.newest(ns)
    record = thread.index.checkpoint(ns, checkpoint_id) if checkpoint_id else None
    if record is None and ns == "":
        record = _session_record(thread, checkpoint_id)
    return record


def _session_record(thread: Thread, checkpoint_id: str | None) -> dict[str, Any] | None:
    """The one checkpoint of a thread whose session has messages but no root checkpoint.

    A session a chat history wrote, or one whose side log was deleted,
    evicted or pruned away: its working context is the thread's
    ``messages`` (the other channels empty), so the next turn continues it.
    Its id is made from the session's creation time: the same in every
    process, and older than any checkpoint put after it.
    """
    context = thread.context
    if thread.index.newest("") is not None or context.meta is None or not context.messages:
        return None
    created = context.meta.created_at
    alone_id = _checkpoint_id_at(created)
    if checkpoint_id is not None and checkpoint_id != alone_id:
        return None
    state = {
        **empty_checkpoint(),
        "id": alone_id,
        "ts": created.isoformat(),
        "channel_versions": {MESSAGES: f"{1:010}.000000"},
    }
    del state["channel_values"]
    metadata = {"source": "update", "step": -1, "parents": {}}
    return {
        "ns": "",
        "id": alone_id,
        "parent": None,
        "metadata": {"json": metadata},
        "state": {"json": state},
        SESSION_ALONE: True,
    }


def _checkpoint_id_at(moment: datetime) -> str:
    """A UUID 6 (LangGraph's checkpoint ids) for ``moment``, with no random part."""
    ticks = int(moment.timestamp() * 10_000_000) + 0x01B21DD213814000
    number = ((ticks >> 12) & 0xFFFFFFFFFFFF) << 80 | 6 << 76 | (ticks & 0x0FFF) << 64
    return str(uuid.UUID(int=number | 1 << 63))  # version 6, RFC 4122 variant


def _matches(metadata: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(metadata.get(key) == value for key, value in wanted.items())


def _owned(thread: Thread) -> bool:
    """Whether the side log read belongs to the session read (or either is unread)."""
    identity, header = thread.side_identity, thread.context.header
    return identity is None or header is None or identity == header_identity(header)


def _check_owner(thread: Thread) -> None:
    """Raise if the side log read belongs to another incarnation of the session."""
    if _owned(thread):
        return
    raise SessionFormatError(
        f"the side log {thread.side.location} belongs to an earlier session of this name, "
        f"not to {thread.session.location}; move or delete it",
        path=thread.side.location,
        line=1,
    )


def _create_side(thread: Thread, session_header: bytes, *, exist_ok: bool = True) -> None:
    """Create the thread's side log for the session whose header is ``session_header``.

    Never without that session: if it was deleted (or deleted and made
    anew) meanwhile, the side log just made goes too.

    Raises:
        FileNotFoundError: the session is gone, or is another one now.
        FileExistsError: the side log exists, and not ``exist_ok``.
    """
    try:
        thread.side.create(side_header(thread.session.name, header_identity(session_header)))
    except FileExistsError:
        if not exist_ok:
            raise
        return
    try:
        same = thread.session.header_line() == session_header
    except FileNotFoundError:
        same = False
    if not same:
        thread.side.delete()
        raise FileNotFoundError(2, "the session was deleted", thread.session.location)
