"""``CrabSaver``: a LangGraph checkpointer whose conversation is a crabtalk session.

LangGraph's interface, and nothing else: each method hands its work to the
saver's :class:`~crab_langchain.checkpoint.threads.Threads`, where how a
thread is read and written lives (see that module for the file format's
use). The sync and async twins run the same work.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from crab_langchain.checkpoint.threads import (
    MESSAGES,
    MissingSideLogWarning,
    Threads,
    skipped_if_bad,
)
from crab_langchain.naming import check_agent
from crab_langchain.steps import run
from crab_langchain.store import SessionStore

__all__ = ["MESSAGES", "CrabSaver", "MissingSideLogWarning"]


class CrabSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer whose conversation is a crabtalk session.

    ``create_agent(model, tools, checkpointer=CrabSaver(store))``: each thread is
    the session of ``store`` whose id is the ``thread_id``, under ``agent``.
    Its file is the one ``store.get_session_history(thread_id, agent=agent)``
    reads and continues; what else a checkpoint holds lives beside it, in
    the side log. Plugins of the store are asked as the chat history asks
    them: a message a plugin drops (auto-injected ones by default) is written
    nowhere, neither in the session nor in the side log, and is absent when
    the thread is resumed.

    Args:
        store: the sessions (a directory, or Redis through
            :meth:`SessionStore.from_url`); ``SessionStore()`` by default.
        agent: the agent the threads' sessions belong to.
        created_by: who starts a new thread's session.
        serde: the serializer for values JSON cannot hold (LangGraph's default).
    """

    def __init__(
        self,
        store: SessionStore | None = None,
        *,
        agent: str = "crab",
        created_by: str = "user",
        serde: SerializerProtocol | None = None,
    ) -> None:
        super().__init__(serde=serde)
        check_agent(agent)
        self.store = store if store is not None else SessionStore()
        self.agent = agent
        self.created_by = created_by
        self._threads = Threads(self.store, agent=agent, created_by=created_by, serde=self.serde)

    def __repr__(self) -> str:
        return f"CrabSaver({self.store!r}, agent={self.agent!r})"

    @classmethod
    @contextlib.contextmanager
    def from_conn_string(cls, conn_string: str, **kwargs: Any) -> Iterator[CrabSaver]:
        """A saver on the sessions at ``conn_string``, closed on leaving the block.

        As LangGraph's own savers: ``with CrabSaver.from_conn_string(url) as saver:``.

        Args:
            conn_string: a directory path, ``file://``, ``redis://``, ``rediss://``, ``unix://``
                or ``postgresql://`` (then call :meth:`setup` once).
            **kwargs: ``agent``, ``created_by`` and ``serde`` go to the saver; the
                rest to :meth:`SessionStore.from_url` (``prefix``, ``ttl``, ...).

        Yields:
            The saver.
        """
        own = {key: kwargs.pop(key) for key in ("agent", "created_by", "serde") if key in kwargs}
        with SessionStore.from_url(conn_string, **kwargs) as store:
            yield cls(store, **own)

    @classmethod
    @contextlib.asynccontextmanager
    async def afrom_conn_string(cls, conn_string: str, **kwargs: Any) -> AsyncIterator[CrabSaver]:
        """Async :meth:`from_conn_string`: connecting happens off the event loop.

        Yields:
            The saver.
        """
        own = {key: kwargs.pop(key) for key in ("agent", "created_by", "serde") if key in kwargs}
        store = await SessionStore.afrom_url(conn_string, **kwargs)
        async with store:
            yield cls(store, **own)

    def setup(self) -> None:
        """Make what the store's backend needs first (PostgreSQL's tables); idempotent.

        Sessions and side logs themselves are made as threads are written; a
        directory and Redis need nothing, as LangGraph's generic code expects.
        """
        self.store.setup()

    async def asetup(self) -> None:
        """Async :meth:`setup`."""
        await self.store.asetup()

    # --- the interface --------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its ``checkpoint_id``, else the newest).

        Args:
            config: ``configurable`` holds ``thread_id``, and may hold
                ``checkpoint_ns`` and ``checkpoint_id``.

        Returns:
            The checkpoint tuple, its pending writes in LangGraph's order; None
            if there is no such checkpoint.

        Raises:
            SessionFormatError: the session or side log holds a malformed line (naming it).
        """
        return run(self._threads.get(config))

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Async :meth:`get_tuple`."""
        return await self._threads.arun(self._threads.get(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """The checkpoints of a thread (or of every thread), newest first.

        Args:
            config: ``thread_id`` (and ``checkpoint_ns``, ``checkpoint_id``) to
                list; None lists every thread of the saver's agent.
            filter: metadata that each listed checkpoint has (equal values).
            before: list only checkpoints older than this one.
            limit: list at most this many.

        Returns:
            The checkpoint tuples; each rebuilds its exact message list.
        """
        for found in run(self._threads.listed(config, filter, before, limit)):
            with skipped_if_bad():
                yield run(self._threads.tuple_of(*found))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Async :meth:`list`."""
        for found in await self._threads.arun(self._threads.listed(config, filter, before, limit)):
            with skipped_if_bad():
                yield await self._threads.arun(self._threads.tuple_of(*found))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store ``checkpoint``: new messages to the session, the rest to the side log.

        Args:
            config: the thread (``thread_id``, ``checkpoint_ns``) and the
                parent checkpoint's ``checkpoint_id``, if any.
            checkpoint: the checkpoint to store.
            metadata: its metadata (with the config's, as LangGraph's savers add).
            new_versions: the channels whose values changed: only those are stored.

        Returns:
            The config of the stored checkpoint.

        Raises:
            TypeError: a message cannot be written, or a plugin returned
                something unusable; nothing of the checkpoint is stored.
        """
        return self._threads.put(config, checkpoint, metadata, new_versions)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Async :meth:`put`."""
        return await self._threads.aput(config, checkpoint, metadata, new_versions)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store the pending writes of task ``task_id`` for the checkpoint ``config`` names.

        Args:
            config: the thread, namespace and ``checkpoint_id``.
            writes: ``(channel, value)`` pairs; a task's write to a channel is
                kept once (the first), except the special channels' (errors,
                interrupts), which the last one replaces.
            task_id: the task that wrote them.
            task_path: the task's path, which orders writes within a step.
        """
        self._threads.put_writes(config, writes, task_id, task_path)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Async :meth:`put_writes`."""
        await self._threads.aput_writes(config, writes, task_id, task_path)

    def delete_thread(self, thread_id: str) -> None:
        """Delete the thread: its session and side log.

        Args:
            thread_id: the thread (a session id under the saver's agent).
        """
        self._threads.delete(thread_id)

    async def adelete_thread(self, thread_id: str) -> None:
        """Async :meth:`delete_thread`."""
        await asyncio.to_thread(self.delete_thread, thread_id)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy a thread, every checkpoint and write of it, to a new thread.

        Args:
            source_thread_id: the thread to copy (nothing happens if it does not exist).
            target_thread_id: the new thread: its session, if it has one, holds
                no message yet.

        Raises:
            FileExistsError: the target thread has a conversation or checkpoints.
        """
        run(self._threads.copy(source_thread_id, target_thread_id))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Async :meth:`copy_thread`."""
        await self._threads.arun(self._threads.copy(source_thread_id, target_thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) that runs ``run_ids`` made, in every thread.

        A rolled-back run's messages leave the session's working context: it
        is the newest remaining checkpoint's again (the run's lines archived
        in the side log), and lines a chat history appended meanwhile stay.
        Values that other checkpoints still use are kept.
        """
        self._threads.delete_for_runs(run_ids)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Async :meth:`delete_for_runs`."""
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Prune the checkpoints of ``thread_ids``.

        Args:
            thread_ids: the threads to prune.
            strategy: ``"keep_latest"`` keeps the newest checkpoint of each
                namespace (with its writes and every value it uses);
                ``"delete"`` removes every checkpoint (the side log), leaving
                the conversation in the session.

        Raises:
            ValueError: an unknown strategy.
        """
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}")
        self._threads.prune(thread_ids, strategy)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Async :meth:`prune`."""
        await asyncio.to_thread(lambda: self.prune(thread_ids, strategy=strategy))

    def get_next_version(self, current: str | int | float | None, channel: None) -> str:
        """A version after ``current``, unique to this write: ``0000000007.3fa9c1``.

        A fork from an older checkpoint counts on from there, so plain counters
        would give its values the versions of the branch it leaves; the random
        part keeps them apart (as ``InMemorySaver``'s versions do). Zero-padded,
        versions sort as they count.
        """
        number = 0 if current is None else int(str(current).split(".")[0])
        return f"{number + 1:010}.{secrets.token_hex(3)}"
