"""LangChain messages <-> crabtalk messages.

The spec's keys carry what crabtalk understands (role, readable text,
reasoning, tool calls). Everything else a LangChain message holds is written
under one extension key, ``langchain``, holding only the fields that the
spec's keys cannot reproduce. So a message that came from a plain crabtalk
line goes back to the same line, and any other message reads back equal to
the one written. ``strict=True`` writes the spec's keys only.

Where LangChain has no field for a spec key (``agent`` on a user message,
``name`` on an assistant message, keys of newer crabtalk versions), the value
travels in ``additional_kwargs["crab"]`` and is written back as that key. A
message read from a nested line (crabtalk 2026-04-08/09) carries
``additional_kwargs["crab_nested"]``, so that it is written back nested.
"""

from __future__ import annotations

import functools
import json
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import pydantic_core
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    BaseMessageChunk,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_chunk_to_message,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call
from pydantic import ValidationError

from crab_langchain.models import (
    SPEC_FIELDS,
    TEXT_FIELDS,
    CompactMarker,
    CrabMessage,
    FunctionCall,
    NestedLine,
    RunEvent,
    SessionFormatError,
    ToolCall,
    entry_of,
    is_text_only,
    parse_object,
)

__all__ = [
    "AUTO_INJECTED_KEY",
    "CRAB_FIELDS_KEY",
    "DEVELOPER_ROLE_KEY",
    "NESTED_LINE_KEY",
    "Encoded",
    "ReadBack",
    "check_json",
    "decode_line",
    "encode",
    "from_crab_message",
    "is_auto_injected",
    "mark_auto_injected",
    "reads_back_as_is",
    "reasoning_text",
    "to_crab_message",
]

AUTO_INJECTED_KEY = "crab_auto_injected"
"""``additional_kwargs`` key that marks a LangChain message as auto-injected."""

CRAB_FIELDS_KEY = "crab"
"""``additional_kwargs`` key for spec keys that the LangChain class has no field for."""

NESTED_LINE_KEY = "crab_nested"
"""``additional_kwargs`` key of a message read from a nested line: its
:class:`~crab_langchain.NestedLine`, as a dict (``{}`` when there is nothing more to say)."""

DEVELOPER_ROLE_KEY = "__openai_role__"
"""langchain-openai's mark of a developer message: a SystemMessage with this set to "developer"."""

M = TypeVar("M", bound=BaseMessage)

_CLASS_OF_TYPE: dict[str, type[BaseMessage]] = {
    "human": HumanMessage,
    "ai": AIMessage,
    "system": SystemMessage,
    "tool": ToolMessage,
    "chat": ChatMessage,
    "function": FunctionMessage,
}
_ROLE_OF_TYPE = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
_CLASS_OF_ROLE: dict[str, type[BaseMessage]] = {
    "user": HumanMessage,
    "assistant": AIMessage,
    "system": SystemMessage,
    "developer": SystemMessage,
    "tool": ToolMessage,
}


def mark_auto_injected(message: M) -> M:
    """Mark ``message`` as auto-injected (never persisted, stripped before each run).

    Returns the same message, so it can wrap a constructor call.
    """
    message.additional_kwargs[AUTO_INJECTED_KEY] = True
    return message


def is_auto_injected(message: BaseMessage | CrabMessage) -> bool:
    """Whether a LangChain or crabtalk message is marked auto-injected."""
    if isinstance(message, CrabMessage):
        return message.auto_injected
    return message.additional_kwargs.get(AUTO_INJECTED_KEY) is True


# --- crabtalk -> LangChain ----------------------------------------------------


def from_crab_message(message: CrabMessage) -> BaseMessage:
    """Build the LangChain message that ``message`` stands for.

    Raises :class:`~crab_langchain.SessionFormatError` when its ``langchain``
    extension key does not describe a valid LangChain message.
    """
    try:
        return _from_crab_message(message)
    except (ValidationError, TypeError, ValueError, AttributeError, KeyError) as error:
        raise SessionFormatError(f"bad 'langchain' extension key: {_reason(error)}") from None


def _reason(error: Exception) -> str:
    """What is wrong, without the offending value (it may be anything the file held)."""
    if isinstance(error, ValidationError):
        detail = error.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in detail["loc"]) or "message"
        return f"{where}: {detail['msg']}"
    return f"{type(error).__name__}: {str(error)[:200]}"


def _from_crab_message(message: CrabMessage) -> BaseMessage:
    plain = _plain_message(message)
    if plain is not None:
        return plain  # the shortcut below
    extension = message.langchain or {}
    cls = _class_of(message, extension)
    kwargs = _decoded_kwargs(message, cls)
    kwargs.update((key, value) for key, value in extension.items() if key != "type")
    result = cls(**kwargs)
    if message.auto_injected:
        mark_auto_injected(result)
    return result


def _class_of(message: CrabMessage, extension: Mapping[str, Any]) -> type[BaseMessage]:
    named = extension.get("type")
    if isinstance(named, str) and named in _CLASS_OF_TYPE:
        return _CLASS_OF_TYPE[named]
    return _CLASS_OF_ROLE.get(message.role, ChatMessage)


def _decoded_kwargs(message: CrabMessage, cls: type[BaseMessage]) -> dict[str, Any]:
    """Constructor arguments from the spec's keys alone (what any reader would get)."""
    kwargs: dict[str, Any] = {"content": message.content}
    extra: dict[str, Any] = {}
    leftovers: dict[str, Any] = dict(message.model_extra) if message.model_extra else {}
    if message.reasoning_content:
        extra["reasoning_content"] = message.reasoning_content
    if cls is AIMessage:
        _decode_assistant(message, kwargs, extra, leftovers)
    else:
        if message.name:
            kwargs["name"] = message.name
        if message.agent:
            leftovers["agent"] = message.agent
        if message.tool_calls:
            leftovers["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    if cls is ToolMessage:
        kwargs["tool_call_id"] = message.tool_call_id
    elif message.tool_call_id:
        leftovers["tool_call_id"] = message.tool_call_id
    if cls is ChatMessage:
        kwargs["role"] = message.role
    elif cls is FunctionMessage:
        kwargs["name"] = message.name  # required, even when empty
    elif cls is SystemMessage and message.role == "developer":
        extra[DEVELOPER_ROLE_KEY] = "developer"
    if message.nested is not None:
        extra[NESTED_LINE_KEY] = message.nested.model_dump(mode="json", exclude_defaults=True)
    if leftovers:
        extra[CRAB_FIELDS_KEY] = leftovers
    if extra:
        kwargs["additional_kwargs"] = extra
    return kwargs


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value:
        target[key] = value


def _decode_assistant(
    message: CrabMessage, kwargs: dict[str, Any], extra: dict[str, Any], leftovers: dict[str, Any]
) -> None:
    # A guest agent that spoke is who LangChain calls the message's `name`.
    _put(kwargs, "name", message.agent)
    _put(leftovers, "name", message.name)
    if not message.tool_calls:
        return
    valid, invalid = _parse_tool_calls(message.tool_calls)
    kwargs["tool_calls"] = valid
    kwargs["invalid_tool_calls"] = invalid
    if _derived_tool_calls(valid, invalid) != message.tool_calls:
        # Argument text that compact JSON would not reproduce (spaces, key
        # order, broken JSON between good calls, no arguments key at all):
        # keep it as the OpenAI-style raw calls that langchain-openai also puts here.
        extra["tool_calls"] = [call.model_dump() for call in message.tool_calls]


def _parse_tool_calls(calls: Sequence[ToolCall]) -> tuple[list[Any], list[Any]]:
    valid: list[Any] = []
    invalid: list[Any] = []
    for call in calls:
        text = call.function.arguments or ""
        try:
            args = json.loads(text) if text else {}
        except ValueError as error:
            args, problem = None, f"arguments are not valid JSON: {error}"
        else:
            problem = "" if isinstance(args, dict) else "arguments are not a JSON object"
        if problem or not isinstance(args, dict):
            invalid.append(_invalid_call(call.function.name, text, call.id, problem))
        else:
            valid.append(tool_call(name=call.function.name, args=args, id=call.id or None))
    return valid, invalid


def _invalid_call(name: str, args: str, call_id: str, error: str) -> dict[str, Any]:
    # LangChain's own builders, as AIMessage's validator uses: same keys, same order.
    return dict(invalid_tool_call(name=name or None, args=args, id=call_id or None, error=error))


# --- LangChain -> crabtalk ----------------------------------------------------


def to_crab_message(message: BaseMessage, *, strict: bool = False) -> CrabMessage:
    """Convert a LangChain message to a crabtalk message.

    Chunks are merged into their message first. With ``strict=False`` (the
    default) the result carries what the spec has no key for under
    ``langchain``, so :func:`from_crab_message` gives back an equal message.
    Raises ``TypeError`` for values JSON cannot hold and ``ValueError`` for
    messages that have no place in a history (such as ``RemoveMessage``).
    """
    if isinstance(message, BaseMessageChunk):
        message = message_chunk_to_message(message)
    plain = _plain_crab(message)
    return plain if plain is not None else _general_crab(message, strict)  # the shortcut below


def reads_back_as_is(message: CrabMessage) -> bool:
    """Whether parsing ``message``'s line gives an equal message (so it need not be parsed).

    Its spec fields are validated strings and tool calls; only the extension
    and unknown keys can hold values JSON changes (a tuple, a str subclass),
    and the auto-injected mark is not written.
    """
    return (
        type(message) is CrabMessage
        and message.langchain is None
        and not message.model_extra
        and not message.auto_injected
        and message.nested is None
    )


def _general_crab(message: BaseMessage, strict: bool) -> CrabMessage:
    cls = _CLASS_OF_TYPE.get(message.type)
    if cls is None:
        raise ValueError(f"a {type(message).__name__} cannot be stored in a chat history")
    fields, unknown = _spec_fields(message)
    for key in TEXT_FIELDS:
        text = fields.get(key, "")
        if not text.isascii():  # O(1): CPython knows; only non-ASCII can hold a lone surrogate
            _check_text(text, key)
    injected = is_auto_injected(message)
    if strict:
        return CrabMessage(**fields, auto_injected=injected)
    crab = CrabMessage(**fields, **unknown, auto_injected=injected)
    crab.langchain = _extension(message, cls, crab) or None
    return crab


def _spec_fields(message: BaseMessage) -> tuple[dict[str, Any], dict[str, Any]]:
    fields: dict[str, Any] = {
        "role": _role(message),
        "content": _text(message.content),
        "reasoning_content": reasoning_text(message),
        "nested": _nested_form(message),
    }
    if isinstance(message, AIMessage):
        fields["agent"] = message.name or ""
        fields["tool_calls"] = _encode_tool_calls(message)
    else:
        fields["name"] = message.name or ""
    if isinstance(message, ToolMessage):
        fields["tool_call_id"] = message.tool_call_id
    unknown: dict[str, Any] = {}
    leftovers = message.additional_kwargs.get(CRAB_FIELDS_KEY, {})
    if not isinstance(leftovers, dict):
        raise TypeError(
            f"additional_kwargs.{CRAB_FIELDS_KEY}: a {type(leftovers).__name__}, "
            "not a dict of crabtalk fields"
        )
    for key, value in leftovers.items():
        if key in SPEC_FIELDS:
            fields[key] = fields.get(key) or _spec_value(key, value)
        elif key not in CrabMessage.model_fields:
            unknown[key] = check_json(value, f"additional_kwargs.crab.{key}")
    return fields, unknown


def _nested_form(message: BaseMessage) -> NestedLine | None:
    """The nested-line form ``message`` was read in, if it was."""
    form = message.additional_kwargs.get(NESTED_LINE_KEY)
    if form is None:
        return None
    try:
        return NestedLine.model_validate(form)
    except ValidationError as error:
        raise TypeError(f"additional_kwargs.{NESTED_LINE_KEY}.{_reason(error)}") from None


def _spec_value(key: str, value: Any) -> Any:
    """A crabtalk field kept in ``additional_kwargs["crab"]``, if it is of the field's type."""
    try:
        CrabMessage.model_validate({"role": "user", key: value}, strict=True)
    except ValidationError as error:
        raise TypeError(f"additional_kwargs.{CRAB_FIELDS_KEY}.{_reason(error)}") from None
    return value


def _role(message: BaseMessage) -> str:
    if isinstance(message, ChatMessage):
        return message.role
    if isinstance(message, SystemMessage):
        developer = message.additional_kwargs.get(DEVELOPER_ROLE_KEY) == "developer"
        return "developer" if developer else "system"
    return _ROLE_OF_TYPE.get(message.type, message.type)


def _text(content: str | list[str | dict[str, Any]]) -> str:
    """Readable text of a message's content: its text parts, joined as LangChain does."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
    return "".join(parts)


def reasoning_text(message: BaseMessage) -> str:
    """A message's reasoning text, as written to ``reasoning_content``.

    ``additional_kwargs["reasoning_content"]`` if set, else the text of its
    ``reasoning`` and ``thinking`` content blocks, joined.
    """
    stated = message.additional_kwargs.get("reasoning_content")
    if isinstance(stated, str):
        return stated
    if isinstance(message.content, str):
        return ""
    return "".join(_block_reasoning(block) for block in message.content if isinstance(block, dict))


def _block_reasoning(block: dict[str, Any]) -> str:
    kind = block.get("type")
    if kind == "thinking" and isinstance(block.get("thinking"), str):
        return str(block["thinking"])
    if kind != "reasoning":
        return ""
    if isinstance(block.get("reasoning"), str):
        return str(block["reasoning"])
    summary = block.get("summary")
    if isinstance(summary, list):
        return "".join(str(s.get("text", "")) for s in summary if isinstance(s, dict))
    return ""


def _encode_tool_calls(message: AIMessage) -> list[ToolCall]:
    derived = _derived_tool_calls(message.tool_calls, message.invalid_tool_calls)
    raw = _raw_tool_calls(message.additional_kwargs.get("tool_calls"))
    if raw is not None and _same_calls(raw, message):
        return raw
    return derived


def _derived_tool_calls(valid: Sequence[Any], invalid: Sequence[Any]) -> list[ToolCall]:
    calls = [
        ToolCall(
            id=call.get("id") or "",
            function=FunctionCall(name=call.get("name") or "", arguments=_compact(call["args"])),
        )
        for call in valid
    ]
    calls += [
        ToolCall(
            id=call.get("id") or "",
            function=FunctionCall(name=call.get("name") or "", arguments=call.get("args") or "{}"),
        )
        for call in invalid
    ]
    return calls


def _compact(args: Any) -> str:
    """Arguments as compact JSON text; ``"{}"`` for none, as every crabtalk reader needs a text."""
    check_json(args, "tool call args")
    return pydantic_core.to_json(args).decode("utf-8")


def _raw_tool_calls(raw: Any) -> list[ToolCall] | None:
    """OpenAI-style raw calls from ``additional_kwargs["tool_calls"]``, if well formed."""
    if not isinstance(raw, list):
        return None
    check_json(raw, "additional_kwargs.tool_calls")  # kept as they are: NaN would be null
    try:
        return [ToolCall.model_validate(call, strict=True) for call in raw]
    except ValueError:
        return None


def _same_calls(raw: list[ToolCall], message: AIMessage) -> bool:
    """Do the raw calls say what the message's parsed calls say (same text, same order)?"""
    valid, invalid = _parse_tool_calls(raw)

    def key(calls: Sequence[Any]) -> list[tuple[Any, Any, Any]]:
        return [(c.get("name") or None, c.get("args"), c.get("id") or None) for c in calls]

    return key(valid) == key(message.tool_calls) and key(invalid) == key(message.invalid_tool_calls)


def _extension(message: BaseMessage, cls: type[BaseMessage], crab: CrabMessage) -> dict[str, Any]:
    """The fields of ``message`` that decoding ``crab``'s spec keys would not reproduce.

    What a reader gets from the spec keys is ``cls(**decoded)``. Building that
    message costs more than the rest of the conversion, and its constructor
    keeps the decoded values as they are (they are already of the field's
    type), so each field is compared with its decoded value or its default.
    """
    default_cls = _CLASS_OF_ROLE.get(crab.role, ChatMessage)
    decoded = _decoded_kwargs(crab, cls)
    extension: dict[str, Any] = {} if cls is default_cls else {"type": message.type}
    for field, default in _field_defaults(cls).items():
        value = getattr(message, field)
        if value != decoded.get(field, default):
            extension[field] = check_json(value, field)
    for key, value in (message.model_extra or {}).items():
        extension[key] = check_json(value, key)
    return extension


@functools.cache
def _field_defaults(cls: type[BaseMessage]) -> dict[str, Any]:
    """Each field's default (its factory called once); ``type`` left out."""
    return {
        name: info.get_default(call_default_factory=True)
        for name, info in cls.model_fields.items()
        if name != "type"
    }


def check_json(value: Any, where: str) -> Any:
    """Return ``value`` if JSON can hold it; raise ``TypeError`` naming ``where`` if not.

    (pydantic would write NaN as ``null`` and a tuple as a list without a word.)
    """
    if value is None or isinstance(value, (str, bool, int)):
        if isinstance(value, str):
            _check_text(value, where)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where}: {value!r} is not a JSON number")
        return value
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_json(item, f"{where}[{index}]")
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is not a string")
            check_json(item, f"{where}.{key}")
        return value
    raise TypeError(f"{where}: a {type(value).__name__} is not a JSON value")


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise TypeError(f"{where}: lone surrogate at index {error.start} is not UTF-8") from None


# --- the codec: a line and its LangChain message, a text-only branch -----------------
#
# Most lines of a chat are ``{"role":"user","content":"…"}``. Reading and writing
# those without a CrabMessage between the line and the LangChain message is a
# speed-motivated branch of this codec (the tests hold it equal to the long way,
# bytes, types and fields-set alike), as are the plain lines of an agent
# (``_plain_message_of``) and the message a text line is read back as, built when
# first asked for (``encode``). Measured with
# ``benchmarks/shortcut.py`` on the benchmark's 2-core machine (Python 3.11,
# pydantic 2.14, langchain-core 1.8): a text line read the long way (parse_entry,
# then from_crab_message) takes 7.3 µs and through the branch 3.9 µs: 0.34 s of a
# cold load of 100,000 messages. A text message written the long way (to_crab_message,
# to_line_bytes, then reading the line back for the history's cache) takes 16.3 µs,
# and through the branch 6.7 µs: 0.96 s of a bulk add of 100,000. Most of what
# remains is LangChain's own constructor (about 3 µs a message), which both call.

_TEXT_CLASSES = {role: _CLASS_OF_ROLE[role] for role in ("user", "assistant", "system")}
"""The roles a line of a role and a text alone reads as a message of (the one table's)."""
_PLAIN_CLASSES = {role: _CLASS_OF_ROLE[role] for role in (*_TEXT_CLASSES, "tool")}
"""The roles of a plain line (see ``_plain_message_of``): the one table's, ``developer`` aside."""
_TEXT_KEYS = frozenset(("role", "content"))
_PLAIN_KEYS = frozenset(("role", "content", "name", "tool_call_id", "langchain"))
_TEXT_ROLES = {cls: role for role, cls in _TEXT_CLASSES.items()}


def decode_line(line: bytes) -> BaseMessage | CompactMarker | RunEvent:
    """What body line ``line`` stands for: a message line's LangChain message, else the entry.

    Equal to ``from_crab_message(parse_entry(line))`` for a message line. The
    line is parsed once: a plain line (see :func:`_plain_message_of`) becomes
    its message at once, any other goes on from the same parsed object.

    Raises:
        SessionFormatError: the line is malformed (without a location; callers add it).
    """
    data = parse_object(line)
    message = _plain_message_of(data)
    if message is not None:
        return message
    entry = entry_of(data)
    return from_crab_message(entry) if isinstance(entry, CrabMessage) else entry


def _plain_message_of(data: dict[str, Any]) -> BaseMessage | None:
    """The message of a plain line's object; None for any other (it takes the long way).

    A plain line holds a role of ``_PLAIN_CLASSES``, a text, a name (not an
    assistant's), a tool message's call id, and LangChain's own fields under
    ``langchain`` (an agent's reply carries its ``id`` there): nearly every
    line a chain or an agent writes but those with tool calls. Such a line
    needs no crab message in between: the long way would validate one only
    to take it apart. Measured with
    ``benchmarks/shortcut.py`` (one run on the benchmark's machine): a line of
    an agent's reply takes 13.5 µs this way, 28.2 µs the long way; LangChain's
    constructor, which both call, is most of what remains. The tests hold it
    equal to the long way (the message, its class and its fields set).

    Raises:
        SessionFormatError: the ``langchain`` key holds what no such message takes.
    """
    keys = data.keys()
    if keys <= _TEXT_KEYS:  # a role and a text: most lines of a chat
        role, content = data.get("role"), data.get("content", "")
        if type(role) is str and type(content) is str and role in _TEXT_CLASSES:
            return _TEXT_CLASSES[role](content=content)
    if not keys <= _PLAIN_KEYS:
        return None
    role, content = data.get("role"), data.get("content", "")
    cls = _PLAIN_CLASSES.get(role) if type(role) is str else None
    if cls is None or type(content) is not str:
        return None
    kwargs: dict[str, Any] = {"content": content}
    name = data.get("name", "")
    if type(name) is not str or (name and cls is AIMessage):
        return None  # an assistant's crab name is not LangChain's: the long way keeps it
    if name:
        kwargs["name"] = name
    call_id = data.get("tool_call_id", "")
    if cls is ToolMessage and type(call_id) is str:
        kwargs["tool_call_id"] = call_id
    elif "tool_call_id" in data:
        return None  # the long way keeps it (or says what is wrong with it)
    extension = data.get("langchain")
    if extension is not None:
        if type(extension) is not dict or "type" in extension:
            return None
        kwargs.update(extension)
    try:
        return cls(**kwargs)
    except (ValidationError, TypeError, ValueError, AttributeError, KeyError) as error:
        raise SessionFormatError(f"bad 'langchain' extension key: {_reason(error)}") from None


def text_message(role: str, content: str) -> BaseMessage | None:
    """The LangChain message of a text-only line; None for roles other than user, assistant, system.

    What ``from_crab_message(CrabMessage(role=role, content=content))`` gives.
    """
    cls = _TEXT_CLASSES.get(role)
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
    role = _TEXT_ROLES.get(type(message))
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


def _plain_message(message: CrabMessage) -> BaseMessage | None:
    """:func:`text_message` of a crab message holding a role and text only; None for others."""
    if message.auto_injected or not is_text_only(message):
        return None
    return text_message(message.role, message.content)


ReadBack = BaseMessage | Callable[[], BaseMessage] | None
"""What reading a written line back gives: the message, a call that builds it, or None
(only parsing can tell)."""


class Encoded(NamedTuple):
    """A message ready to store: its line, and what reading that line back gives."""

    line: bytes
    read_back: ReadBack
    """Equal to ``from_crab_message(parse_entry(line))``, or a call building it (the
    text-only branch builds nothing until the message is first read: see :func:`encode`);
    None when only parsing can tell."""
    auto_injected: bool


def encode(message: BaseMessage, *, strict: bool = False) -> Encoded:
    """Convert ``message`` straight to its line (see :func:`to_crab_message`).

    A history needs the line to write and the message a reader of that line
    gets; for text-only messages both come without building a crab message,
    and the message is built only when first read (a call in ``read_back``):
    a bulk add of text spent more than half its time building messages that
    a reader may never ask for (``benchmarks/run.py``'s bulk add, profiled:
    52% in LangChain's constructor). The call keeps the role and the text, not
    ``message``: what the caller does to ``message`` later changes nothing.
    """
    if isinstance(message, BaseMessageChunk):
        message = message_chunk_to_message(message)
    role = _text_only_role(message)
    if role is not None:
        content = str(message.content)
        build = functools.partial(_TEXT_CLASSES[role], content=content)
        return Encoded(text_line(role, content), build, False)
    try:
        crab = _general_crab(message, strict)
        read_back = from_crab_message(crab) if reads_back_as_is(crab) else None
        return Encoded(crab.to_line_bytes(), read_back, crab.auto_injected)
    except RecursionError:
        raise too_deep(f"{type(message).__name__}.{_deepest_field(message)}") from None


def too_deep(where: str) -> ValueError:
    """The error for a value nested past what JSON can be written from (Python's recursion)."""
    return ValueError(f"{where}: a value nested too deeply to store (lists and dicts in depth)")


def nesting(value: Any) -> int:
    """How deep lists, tuples and dicts nest in ``value`` (walked without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, (list, tuple)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _deepest_field(message: BaseMessage) -> str:
    fields = {name: getattr(message, name, None) for name in type(message).model_fields}
    return max(fields, key=lambda name: nesting(fields[name]))


def _plain_crab(message: BaseMessage) -> CrabMessage | None:
    """The crab message of a message holding its text and nothing else; None for any other."""
    role = _text_only_role(message)
    return None if role is None else CrabMessage(role=role, content=str(message.content))


def _text_only_role(message: BaseMessage) -> str | None:
    """:func:`text_only_role`, its text checked to be UTF-8 (``TypeError`` if not)."""
    role = text_only_role(message)
    if role is not None and not str(message.content).isascii():
        _check_text(str(message.content), "content")
    return role


# --- compaction markers -------------------------------------------------------------

_MARKER_TITLE_BYTES = 60


def marker_message(marker: CompactMarker) -> BaseMessage:
    """The message a compaction marker stands for: its summary, as a user message.

    A marker this package wrote for a LangChain message (:func:`marker_line`)
    carries the rest of that message under ``langchain`` (crabtalk ignores
    the key), so the message comes back whole: its id, its kwargs.

    Raises:
        SessionFormatError: the ``langchain`` key does not describe a message.
    """
    extension = (marker.model_extra or {}).get("langchain")
    if not extension:
        return HumanMessage(content=marker.compact)
    if not isinstance(extension, dict):
        raise SessionFormatError("bad 'langchain' key on a compaction marker: not an object")
    return from_crab_message(CrabMessage(role="user", content=marker.compact, langchain=extension))


def marker_line(summary: BaseMessage, archived_at: str, *, titled: str | None = None) -> bytes:
    """The compaction marker for ``summary``, as newer crabtalk writes one, and what else it holds.

    Its ``compact`` is the summary's text, its ``title`` the first sentence of
    that (as crabtalk cuts it) or of ``titled`` (the summary proper, when the
    text opens with words of its own), ``archived_at`` the time given.

    Raises:
        TypeError: the message cannot be written as JSON.
    """
    crab = to_crab_message(summary)
    if crab.role != "user":
        crab.langchain = {"type": summary.type, **(crab.langchain or {})}
    extension = {"langchain": crab.langchain} if crab.langchain else {}
    marker = CompactMarker(
        compact=crab.content,
        title=_marker_title(crab.content if titled is None else titled),
        archived_at=archived_at,
        **extension,
    )
    return marker.to_line_bytes()


def _marker_title(summary: str) -> str:
    """crabtalk's marker title: the summary cut after its first ``.``, ``!`` or ``?``; 60 bytes."""
    cut = min((summary.find(end) + 1 for end in ".!?" if end in summary), default=len(summary))
    title = summary[:cut].encode("utf-8")[:_MARKER_TITLE_BYTES].decode("utf-8", errors="ignore")
    return title.strip()
