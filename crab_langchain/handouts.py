"""Lists of messages handed to callers: theirs to change, and cheap to hand out again.

``history.messages`` must return a list the caller may change without
corrupting the history's cache, so each read needs a list of its own. Copying
the cache on every read costs O(n): about 50 µs at 20,000 messages here, more
than the rest of a chat turn. Yet in a chat loop the list from the last read
is usually dropped by the time of the next one. So the lists handed out are
recycled: a list that no caller references any more and that nobody changed
is brought up to date with what was added since (O(new messages)) and handed
out again. A list a caller still holds is never touched: the caller keeps a
snapshot, exactly as if it had been copied.

"No caller references it" is read from the reference count, which CPython
keeps exactly. Interpreters that do not (PyPy) or that defer counts for
objects shared between threads (free-threaded builds) always get a copy.
"""

from __future__ import annotations

import sys
import sysconfig
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import BaseMessage

__all__ = ["Handouts", "MessageList"]

_POOL_SIZE = 2  # a chat loop holds one list while it asks for the next


class MessageList(list[BaseMessage]):
    """A plain list of messages that notes whether it was changed after it was handed out.

    It is a ``list`` in every respect (``isinstance(x, list)``, slicing,
    ``+``, JSON, pickling); ``copy()`` and slices give plain lists.
    """

    __slots__ = ("changed",)

    def __init__(self, items: Sequence[BaseMessage] = ()) -> None:
        # Calling __init__ again on a handed-out list refills it: that is a change.
        self.changed = getattr(self, "changed", None) is not None
        super().__init__(items)


def _noting_change(name: str) -> Callable[..., Any]:
    method = getattr(list, name)

    def mutator(self: MessageList, *args: Any, **kwargs: Any) -> Any:
        self.changed = True
        return method(self, *args, **kwargs)

    mutator.__name__ = mutator.__qualname__ = name
    mutator.__doc__ = method.__doc__
    return mutator


for _name in (
    "__setitem__",
    "__delitem__",
    "__iadd__",
    "__imul__",
    "append",
    "extend",
    "insert",
    "pop",
    "remove",
    "clear",
    "sort",
    "reverse",
):
    setattr(MessageList, _name, _noting_change(_name))


class _Handout:
    __slots__ = ("generation", "items", "length", "stored")

    def __init__(self, items: MessageList, generation: int, stored: int) -> None:
        self.items = items
        self.generation = generation
        self.stored = stored  # how many leading items came from the stored context
        self.length = len(items)

    def intact(self, context: list[BaseMessage]) -> bool:
        """Whether the list still holds what it was given, as far as cheap checks tell.

        ``changed`` catches changes through the list's methods; C code (such
        as ``heapq``) bypasses them, so the length and a few items are checked
        as well.
        """
        items, stored = self.items, self.stored
        if items.changed or len(items) != self.length:
            return False
        return not stored or (
            items[0] is context[0]
            and items[stored // 2] is context[stored // 2]
            and items[stored - 1] is context[stored - 1]
        )


def _references(handout: _Handout) -> int:
    return sys.getrefcount(handout.items)


def _own_references() -> int | None:
    """References to a pooled list when no caller holds it, measured on this interpreter."""
    if not hasattr(sys, "getrefcount") or sysconfig.get_config_var("Py_GIL_DISABLED"):
        return None
    return _references(_Handout(MessageList(), 0, 0))


_OWN_REFERENCES = _own_references()


class Handouts:
    """Hands out ``context + injected`` as lists, recycling those no caller holds.

    ``context`` only grows between calls, unless ``generation`` changes (the
    stored context was reloaded or replaced). Not thread-safe: the history
    calls it under its lock.
    """

    def __init__(self) -> None:
        self._pool: list[_Handout] = []

    def handout(
        self, context: list[BaseMessage], generation: int, injected: Sequence[BaseMessage]
    ) -> MessageList:
        """A list equal to ``context + injected`` that no one else holds."""
        for handout in self._pool:
            if self._reusable(handout, generation, context):
                _catch_up(handout, context, injected)
                return handout.items
        items = MessageList([*context, *injected])
        if _OWN_REFERENCES is not None:
            self._pool = [*self._pool[1 - _POOL_SIZE :], _Handout(items, generation, len(context))]
        return items

    @staticmethod
    def _reusable(handout: _Handout, generation: int, context: list[BaseMessage]) -> bool:
        return (
            handout.generation == generation
            and handout.stored <= len(context)
            and _references(handout) <= (_OWN_REFERENCES or 0)
            and handout.intact(context)
        )


def _catch_up(
    handout: _Handout, context: list[BaseMessage], injected: Sequence[BaseMessage]
) -> None:
    # The base list's own methods: these changes are ours, not a caller's.
    items = handout.items
    list.__delitem__(items, slice(handout.stored, None))
    list.extend(items, context[handout.stored :])
    list.extend(items, injected)
    handout.stored = len(context)
    handout.length = len(items)
