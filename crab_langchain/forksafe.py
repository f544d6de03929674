"""Locks that a forked child finds free.

A child of ``fork()`` inherits the parent's locks as they were, and only the
thread that called ``fork()``: a lock another parent thread held at that
moment would stay held in the child for ever, and the child's first use of
the object hangs. Every lock of the library that guards memory (a saver's
thread cache, a thread's state, a history's context, a middleware's
followed sessions, a store's plugins) is a :class:`ForkSafeLock`, renewed in
the child before any of its code runs. What the lock guarded is as the
forking thread left it: a lock is held only across memory updates, never
across I/O, so the child finds no half-done I/O behind one.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["ForkSafeLock"]


class ForkSafeLock:
    """A ``threading.Lock`` (or ``RLock``) renewed, free, in a forked child."""

    __slots__ = ("__weakref__", "_factory", "_lock")

    def __init__(self, factory: Callable[[], Any] = threading.Lock) -> None:
        """A new lock made by ``factory`` (``threading.Lock`` or ``threading.RLock``)."""
        self._factory = factory
        self._lock = factory()
        _LOCKS.add(self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """As ``threading.Lock.acquire``."""
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        """As ``threading.Lock.release``."""
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _renew(self) -> None:
        self._lock = self._factory()


_LOCKS: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()


def _renew_in_child() -> None:
    for lock in list(_LOCKS):
        lock._renew()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_in_child)
