"""The storage calls a piece of work is made of, run sync or async by one driver.

Work that has a sync and an async twin (a session followed, a checkpointer's
operations) is written once, as a generator that yields the storage calls it
needs (:class:`Read`, :class:`Append`, ...) and is sent back their results
(or has their errors thrown in). :func:`run` performs the calls
directly; :func:`arun` awaits their async twins, which are native where the
storage has an async client (Redis) and in a worker thread where it has not.
So the sync and async twins of every method share one body and cannot drift
apart, and no async path blocks the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from crab_langchain.log import SessionLog
from crab_langchain.storage import Change, Chunk, Committed, Cursor, Tail

__all__ = [
    "Append",
    "Blocking",
    "Commit",
    "Read",
    "ReadTail",
    "Steps",
    "arun",
    "run",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Read:
    """``log.read(cursor)``."""

    log: SessionLog
    cursor: Cursor | None

    def run(self) -> Chunk | None:
        return self.log.read(self.cursor)

    async def arun(self) -> Chunk | None:
        return await self.log.aread(self.cursor)


@dataclass(frozen=True)
class ReadTail:
    """``log.read_tail(count)``."""

    log: SessionLog
    count: int

    def run(self) -> Tail:
        return self.log.read_tail(self.count)

    async def arun(self) -> Tail:
        return await self.log.aread_tail(self.count)


@dataclass(frozen=True)
class Append:
    """``log.append(lines, after)``."""

    log: SessionLog
    lines: Sequence[bytes]
    after: Cursor | None

    def run(self) -> Cursor | None:
        return self.log.append(self.lines, self.after)

    async def arun(self) -> Cursor | None:
        return await self.log.aappend(self.lines, self.after)


@dataclass(frozen=True)
class Commit:
    """``session.commit(side, change)``: where both logs stand, or None (moved: not written)."""

    session: SessionLog
    side: SessionLog
    change: Change

    def run(self) -> Committed | None:
        return self.session.commit(self.side, self.change)

    async def arun(self) -> Committed | None:
        return await self.session.acommit(self.side, self.change)


@dataclass(frozen=True)
class Blocking:
    """Any other storage work, ``call()``: in a worker thread when async."""

    call: Callable[[], Any]

    def run(self) -> Any:
        return self.call()

    async def arun(self) -> Any:
        return await asyncio.to_thread(self.call)


Step = Read | ReadTail | Append | Commit | Blocking
Steps = Generator[Step, Any, T]
"""A piece of work: yields storage calls, is sent their results, returns its own."""


def run(steps: Steps[T]) -> T:
    """Do ``steps``, each storage call as it comes."""
    reply: Any = None
    failed = False
    while True:
        try:
            step = steps.throw(reply) if failed else steps.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        try:
            reply, failed = step.run(), False
        except Exception as error:  # handed to the work, which may recover
            reply, failed = error, True


async def arun(steps: Steps[T]) -> T:
    """Async :func:`run`: every storage call awaited, none blocking the loop."""
    reply: Any = None
    failed = False
    while True:
        try:
            step = steps.throw(reply) if failed else steps.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        try:
            reply, failed = await step.arun(), False
        except Exception as error:  # handed to the work, which may recover
            reply, failed = error, True
