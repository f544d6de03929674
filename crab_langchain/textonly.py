"""The text-only shortcut: lines and messages holding a role and a text, nothing else.

Most lines of a chat are ``{"role":"user","content":"…"}``. Reading and
writing those without a :class:`~crab_langchain.models.CrabMessage` between
the line and the LangChain message is the library's one speed-motivated
path, and it lives here. Each function has a long way (the codec in
:mod:`~crab_langchain.models`, the conversion in :mod:`~crab_langchain.convert`)
that the tests hold it equal to, bytes, types and fields-set alike.

Why it is worth it, measured with ``benchmarks/shortcut.py`` on the
benchmark's 2-core machine (Python 3.11, pydantic 2.14, langchain-core 1.8):
a text line read the long way (``parse_entry``, then ``from_crab_message``)
takes 7.3 µs and through :func:`parse_text_line` and :func:`text_message`
3.9 µs: 0.34 s of a cold load of 100,000 messages. A text message written
the long way (``to_crab_message``, ``to_line_bytes``, then reading the line
back for the history's cache) takes 16.3 µs, and through
:func:`text_only_role`, :func:`text_line` and :func:`text_message` 6.7 µs:
0.96 s of a bulk add of 100,000. Most of what remains is LangChain's own
constructor (about 3 µs a message), which both ways call.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import pydantic_core
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

__all__ = ["parse_text_line", "text_line", "text_message", "text_only_role"]

_CLASS_OF_ROLE: dict[str, type[BaseMessage]] = {
    "user": HumanMessage,
    "assistant": AIMessage,
    "system": SystemMessage,
}
_ROLE_OF_CLASS = {cls: role for role, cls in _CLASS_OF_ROLE.items()}
_TEXT_KEYS = frozenset(("role", "content"))


def parse_text_line(line: bytes) -> tuple[str, str] | None:
    """``(role, content)`` of a line holding those two keys only; None for any other line.

    What ``parse_entry(line)`` reads as ``CrabMessage(role=role,
    content=content)``; a line this returns None for (another key, a marker,
    a malformed line) is the long way's to read or to explain.
    """
    try:
        data = pydantic_core.from_json(line, allow_inf_nan=False)
    except ValueError:
        return None
    if type(data) is not dict or not data.keys() <= _TEXT_KEYS:
        return None
    role, content = data.get("role"), data.get("content", "")
    if type(role) is str and role and type(content) is str:
        return role, content
    return None


def text_message(role: str, content: str) -> BaseMessage | None:
    """The LangChain message of a text-only line; None for roles other than user, assistant, system.

    What ``from_crab_message(CrabMessage(role=role, content=content))`` gives.
    """
    cls = _CLASS_OF_ROLE.get(role)
    return None if cls is None else cls(content=content)


def text_line(role: str, content: str) -> bytes:
    """The line of a message holding only ``role`` and ``content``.

    The same bytes as ``CrabMessage(role=role, content=content).to_line_bytes()``.

    Raises:
        ValueError: the text is not UTF-8 (a lone surrogate).
    """
    try:
        return pydantic_core.to_json(
            {"role": role, "content": content} if content else {"role": role}
        )
    except pydantic_core.PydanticSerializationError as error:
        raise ValueError(f"cannot write CrabMessage as JSON: {error}") from None


def text_only_role(message: BaseMessage) -> str | None:
    """The role of a message holding its text and nothing else; None for any other.

    Such a message converts to ``CrabMessage(role=role, content=message.content)``.
    Every field but the text is compared with its default in one step.
    """
    role = _ROLE_OF_CLASS.get(type(message))
    content = message.content
    if role is None or type(content) is not str or message.model_extra:
        return None
    values, defaults = _beyond_text(type(message))
    return role if values(message) == defaults else None


@functools.cache
def _beyond_text(cls: type[BaseMessage]) -> tuple[Callable[[BaseMessage], Any], tuple[Any, ...]]:
    """A getter of every field of ``cls`` but ``content`` and ``type``, and their defaults."""
    fields = {
        name: info.get_default(call_default_factory=True)
        for name, info in cls.model_fields.items()
        if name not in ("type", "content")
    }
    getter = operator.attrgetter(*fields)
    if len(fields) == 1:  # attrgetter of one name gives the value, not a tuple
        return (lambda message: (getter(message),)), tuple(fields.values())
    return getter, tuple(fields.values())
