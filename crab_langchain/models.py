"""The crabtalk session model and its line codec.

One session file is UTF-8 JSONL: a header line (:class:`SessionMeta`), then one
line per entry: a :class:`CrabMessage`, a :class:`CompactMarker` or a
:class:`RunEvent`. Lines are written exactly as crabtalk's serde serializer
writes them: compact, keys in declaration order, empty fields omitted,
non-ASCII as raw UTF-8. pydantic-core serializes with serde_json too, so its
escaping is crabtalk's.

crabtalk wrote JSONL in several shapes from 2026-03-23 to 2026-04-09 (see
the spec's "crabtalk's JSONL eras"). Every one of them is read: flat message
lines (``{"role":…}``) and nested ones (``{"agent":…,"message":{…}}``, from
2026-04-08), markers with a ``title`` and ``archived_at``, and run-trace
``{"event":…}`` lines, which are not messages. A line is classified as
crabtalk's last JSONL reader does: a marker, else an event, else a message.
A message read from a nested line remembers that (:class:`NestedLine`) and is
written back nested, byte for byte; new messages are written flat.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "SPEC_FIELDS",
    "TEXT_FIELDS",
    "CompactMarker",
    "CrabMessage",
    "Entry",
    "FunctionCall",
    "NestedLine",
    "RunEvent",
    "Session",
    "SessionFormatError",
    "SessionMeta",
    "ToolCall",
    "entry_of",
    "format_rfc3339",
    "parse_entry",
    "parse_object",
    "parse_rfc3339",
]


class SessionFormatError(ValueError):
    """A session file, or one line of it, is not in the crabtalk format.

    ``path`` and ``line`` (1-based) say where, when known; ``reason`` says what.
    """

    def __init__(self, reason: str, *, path: str | Path | None = None, line: int | None = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        self.line = line
        where = ":".join(str(part) for part in (self.path, line) if part is not None)
        super().__init__(f"{where}: {reason}" if where else reason)

    def at(self, path: str | Path | None, line: int | None) -> SessionFormatError:
        """The same error, located at ``path`` line ``line``."""
        return SessionFormatError(self.reason, path=path, line=line)


def _empty(value: Any) -> bool:
    return not value


def _absent(value: Any) -> bool:
    return value is None


class FunctionCall(BaseModel):
    """The function a tool call invokes. ``arguments`` is JSON *text*, kept verbatim.

    ``arguments`` is None when the line had no such key: crabtalk's own flat
    writer left it out for a call without arguments. Calls converted from
    LangChain always carry it (``"{}"`` for none), because every flat-line
    crabtalk reader requires it.
    """

    model_config = ConfigDict(extra="allow")

    name: str = Field(default="", exclude_if=_empty)
    arguments: str | None = Field(default=None, exclude_if=_absent)


class ToolCall(BaseModel):
    """One tool call of an assistant message, as crabtalk writes it."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(default="", exclude_if=_empty)
    type: str = "function"
    function: FunctionCall = Field(default_factory=FunctionCall)
    # crabtalk keeps a streaming index in memory and never writes it.
    index: int | None = Field(default=None, exclude=True)


class NestedLine(BaseModel):
    """How a nested line (crabtalk 2026-04-08/09) spelled a message beyond its fields.

    ``{"agent":G,"message":{"role":…,"content":…,"tool_calls":[{"index":n,…}],…}}``:
    the guest agent ``G`` is the message's ``agent``, and what else the line
    held is kept here, so that the message is written back as the same bytes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    null_content: bool = False
    """``"content":null`` (crabtalk's tool-call turns without text), rather than a string."""
    indexes: tuple[int | None, ...] = ()
    """Each tool call's streaming ``index``, in order (None where it had none)."""
    outer: dict[str, Any] = Field(default_factory=dict)
    """Keys beside ``agent`` and ``message`` (crabtalk writes none)."""


class CrabMessage(BaseModel):
    """One crabtalk message.

    The field order is the key order of newer crabtalk's serializer. ``sender``
    and ``auto_injected`` live in memory only and are never written or read.
    ``langchain`` is this package's extension key: what a LangChain message
    carries beyond the spec, so that it reads back equal (crabtalk ignores it).
    Unknown keys of newer crabtalk versions are kept and written back.
    """

    model_config = ConfigDict(extra="allow")

    role: str
    content: str = Field(default="", exclude_if=_empty)
    reasoning_content: str = Field(default="", exclude_if=_empty)
    name: str = Field(default="", exclude_if=_empty)
    tool_call_id: str = Field(default="", exclude_if=_empty)
    tool_calls: list[ToolCall] = Field(default_factory=list, exclude_if=_empty)
    agent: str = Field(default="", exclude_if=_empty)
    langchain: dict[str, Any] | None = Field(default=None, exclude_if=_empty)
    sender: str = Field(default="", exclude=True)
    auto_injected: bool = Field(default=False, exclude=True)
    nested: NestedLine | None = Field(default=None, exclude=True)
    """Set when read from a nested line: the message is then written back nested."""

    @field_validator("role")
    @classmethod
    def _role_not_empty(cls, role: str) -> str:
        if not role:
            raise ValueError("role must be a non-empty string")
        return role

    def to_line(self) -> str:
        """The JSON line crabtalk would write for this message, without the newline."""
        return self.to_line_bytes().decode("utf-8")

    def to_line_bytes(self) -> bytes:
        """:meth:`to_line` as UTF-8 bytes, straight from the serializer.

        Raises ``ValueError`` for text that is not UTF-8, and for an unknown
        key that would make crabtalk read the line as something else.
        """
        if self.nested is not None:
            return _nested_line(self, self.nested)
        extra = self.model_extra
        if extra and not _OTHER_KINDS.keys().isdisjoint(extra):
            key = min(_OTHER_KINDS.keys() & extra.keys())
            raise ValueError(
                f"cannot write CrabMessage: its unknown key {key!r} would make crabtalk "
                f"read the line as a {_OTHER_KINDS[key]}, not a message"
            )
        return _dump_bytes(self)

    @classmethod
    def from_line(cls, line: str | bytes) -> CrabMessage:
        """Parse one message line; raise :class:`SessionFormatError` if it is not one."""
        entry = parse_entry(line)
        if not isinstance(entry, CrabMessage):
            kind = "compact marker" if isinstance(entry, CompactMarker) else "run event"
            raise SessionFormatError(f"a {kind}, not a message")
        return entry


class CompactMarker(BaseModel):
    """``{"compact": "<summary>"}``: everything before it is archived history.

    The working context after it starts with the summary as a user message.
    crabtalk (2026-04-03 on) adds ``title`` (the summary's first sentence) and
    ``archived_at`` (when it was written); other keys are kept too.
    """

    model_config = ConfigDict(extra="allow")

    compact: str
    title: str = Field(default="", exclude_if=_empty)
    archived_at: str = Field(default="", exclude_if=_empty)

    def to_line(self) -> str:
        """The marker's JSON line, without the newline."""
        return _dump(self)

    def to_line_bytes(self) -> bytes:
        """:meth:`to_line` as UTF-8 bytes."""
        return _dump_bytes(self)


class RunEvent(BaseModel):
    """``{"event":"done",…}``: one line of a run's trace (crabtalk 2026-04-07 to 04-09).

    Not a message: readers skip it, and it stays in the file as written.
    crabtalk's names are ``tool_start``, ``tool_result``, ``user_steered`` and
    ``done``; any other name is read the same way. Its other keys are in
    ``model_extra``.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    event: str

    def to_line_bytes(self) -> bytes:
        """The event's JSON line, without the newline."""
        return _dump_bytes(self)


Entry = CrabMessage | CompactMarker | RunEvent
_M = TypeVar("_M", bound=BaseModel)

# Keys that make crabtalk read a line as something other than a message
# (its last reader tries a marker, then an event, then a nested message).
_OTHER_KINDS = {"compact": "compact marker", "event": "run event", "message": "nested message"}


def _dump(model: BaseModel) -> str:
    return _dump_bytes(model).decode("utf-8")


def _dump_bytes(model: BaseModel) -> bytes:
    try:
        return model.model_dump_json().encode("utf-8")
    except pydantic_core.PydanticSerializationError as error:
        raise ValueError(f"cannot write {type(model).__name__} as JSON: {error}") from None


# What a line holds, derived from CrabMessage's fields (so a new field is never
# missed): the keys a line can have, those with text, and the rest.
_FIELDS = CrabMessage.model_fields
_WRITTEN = tuple(name for name, info in _FIELDS.items() if not info.exclude)
_MEMORY_ONLY = tuple(name for name, info in _FIELDS.items() if info.exclude and name != "nested")
SPEC_FIELDS = tuple(name for name in _WRITTEN if name not in ("role", "langchain"))
"""The spec's keys of a message line besides ``role`` (what crabtalk reads)."""
TEXT_FIELDS = tuple(name for name in _WRITTEN if _FIELDS[name].annotation is str)
"""The message fields that hold text."""
# A message is text-only when every field that shapes its line, but role and
# content, is at its default ("nested" is not a key, but makes the line nested).
_BEYOND_TEXT = tuple(name for name in (*_WRITTEN, "nested") if name not in ("role", "content"))
_beyond_text = operator.attrgetter(*_BEYOND_TEXT)
_TEXT_ONLY = tuple(_FIELDS[name].get_default(call_default_factory=True) for name in _BEYOND_TEXT)


def is_text_only(message: CrabMessage) -> bool:
    """Whether ``message`` writes a role and a text only (every other field empty).

    Its written fields besides those two are read and compared in one step.
    """
    return not message.model_extra and _beyond_text(message) == _TEXT_ONLY


def parse_entry(line: str | bytes) -> Entry:
    """Parse one non-header line into a message, a compact marker or a run event.

    Raises :class:`SessionFormatError` (without a location; callers add it).
    """
    return _entry(parse_object(line))


def parse_object(line: str | bytes) -> dict[str, Any]:
    """The JSON object of line ``line``, parsed once (see :func:`entry_of`).

    Raises :class:`SessionFormatError` (without a location) if it is none.
    """
    return _json_object(line)


def entry_of(data: dict[str, Any]) -> Entry:
    """:func:`parse_entry` of the line whose object :func:`parse_object` gave (it is consumed)."""
    return _entry(data)


def _entry(data: dict[str, Any]) -> Entry:
    """The message, marker or event a parsed line's object stands for.

    In crabtalk's last reader's order: a string ``compact`` makes a marker, a
    string ``event`` an event, ``message`` without ``role`` a nested message.
    """
    if isinstance(data.get("compact"), str):
        return _validated(CompactMarker, data, "bad compact marker")
    if isinstance(data.get("event"), str):
        return _validated(RunEvent, data, "bad run event")
    if "role" in data:
        _drop_indexes(data)
        return _message(data, None)
    if "message" in data:
        return _nested_message(data)
    if "compact" in data:
        return _validated(CompactMarker, data, "bad compact marker")  # says what is wrong
    if "event" in data:
        raise SessionFormatError("run event line: 'event' is not a string")
    raise SessionFormatError("message line has no 'role'")


def _message(data: dict[str, Any], nested: NestedLine | None) -> CrabMessage:
    # In-memory only: crabtalk never reads them from a file, neither do we.
    for key in _MEMORY_ONLY:
        data.pop(key, None)
    if nested is not None:
        data["nested"] = nested
    return _validated(CrabMessage, data, "not a crabtalk message")


def _drop_indexes(data: dict[str, Any]) -> None:
    """Drop the tool calls' streaming ``index``: crabtalk's flat lines never carry one."""
    calls = data.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            if isinstance(call, dict):
                call.pop("index", None)


_NESTED_OPTIONAL = ("tool_calls", "tool_call_id", "name", "reasoning_content")


def _nested_message(data: dict[str, Any]) -> CrabMessage:
    """``{"agent":G,"message":M}`` as a message that remembers its form."""
    inner = data["message"]
    if not isinstance(inner, dict):
        raise SessionFormatError(f"nested line: 'message' is a {_json_type(inner)}, not an object")
    if "agent" in inner:
        raise SessionFormatError("nested line: 'agent' belongs beside 'message', not in it")
    content = inner.get("content")
    for key in _NESTED_OPTIONAL:  # crabtalk's Option fields: null is the same as absent
        if key in inner and inner[key] is None:
            del inner[key]
    if content is None:
        inner.pop("content", None)
    calls = inner.get("tool_calls")
    calls = calls if isinstance(calls, list) else []
    indexes = [call.pop("index", None) if isinstance(call, dict) else None for call in calls]
    form = {
        "null_content": content is None,
        "indexes": tuple(indexes) if any(i is not None for i in indexes) else (),
        "outer": {key: value for key, value in data.items() if key not in ("agent", "message")},
    }
    if data.get("agent") is not None:
        inner["agent"] = data["agent"]
    return _message(inner, _validated(NestedLine, form, "bad nested line"))


def _validated(model: type[_M], data: dict[str, Any], what: str) -> _M:
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as error:
        raise SessionFormatError(f"{what}: {_first(error)}") from None


def _nested_line(message: CrabMessage, form: NestedLine) -> bytes:
    """The nested line of ``message``, keys in crabtalk's order (2026-04-08/09)."""
    null = form.null_content and not message.content
    inner: dict[str, Any] = {"role": message.role, "content": None if null else message.content}
    calls = message.tool_calls
    if calls:
        indexes = (*form.indexes, *[None] * len(calls))[: len(calls)]
        inner["tool_calls"] = [_nested_call(c, i) for c, i in zip(calls, indexes, strict=True)]
    for key in ("tool_call_id", "name", "reasoning_content"):
        if getattr(message, key):
            inner[key] = getattr(message, key)
    if message.langchain:
        inner["langchain"] = message.langchain
    inner.update(message.model_extra or {})
    line: dict[str, Any] = {"agent": message.agent} if message.agent else {}
    line["message"] = inner
    line.update(form.outer)
    try:
        return pydantic_core.to_json(line)
    except pydantic_core.PydanticSerializationError as error:
        raise ValueError(f"cannot write CrabMessage as JSON: {error}") from None


def _nested_call(call: ToolCall, index: int | None) -> dict[str, Any]:
    """A tool call as a nested line has it: ``id``, ``name`` and ``arguments`` always."""
    function = call.function
    written: dict[str, Any] = {} if index is None else {"index": index}
    written["id"] = call.id
    written["type"] = call.type
    written["function"] = {
        "name": function.name,
        "arguments": function.arguments or "",
        **(function.model_extra or {}),
    }
    written.update(call.model_extra or {})
    return written


def _json_object(line: str | bytes) -> dict[str, Any]:
    try:
        data = pydantic_core.from_json(line, allow_inf_nan=False)
    except ValueError as error:
        raise SessionFormatError(_why_not_json(line, error)) from None
    if not isinstance(data, dict):
        raise SessionFormatError(f"expected a JSON object, got {type(data).__name__}")
    return data


_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _why_not_json(line: str | bytes, error: ValueError) -> str:
    """Why ``line`` is not JSON, as the parser says it (never quoting the line)."""
    data = line.encode("utf-8", "surrogatepass") if isinstance(line, str) else line
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not UTF-8 (byte {bad.start})"
    if _LONE_SURROGATE.search(data):
        return "not JSON: a lone surrogate escape is not a Unicode character"
    reason = str(error).replace("line 1 column", "column")
    column = re.search(r"column (\d+)$", reason)
    if column and data[int(column[1]) - 1 :].startswith((b"NaN", b"Infinity", b"-Infinity")):
        return f"not JSON: NaN and Infinity are not JSON numbers (column {column[1]})"
    return f"not JSON: {reason}"


def _first(error: ValidationError) -> str:
    detail = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in detail["loc"]) or "line"
    return f"{where}: {detail['msg']}"


# --- time stamps -------------------------------------------------------------

_RFC3339 = re.compile(  # ASCII digits only: \d would take other scripts' digits too
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 time stamp into a tz-aware datetime.

    Accepts any number of fractional digits (chrono prints up to nine);
    digits past microseconds are dropped.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time stamp: {text!r}")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    return datetime(
        int(year),
        int(month),
        int(day),
        int(hour),
        int(minute),
        int(second),
        micros,
        tzinfo=_zone(offset),
    )


def _zone(offset: str) -> timezone:
    if offset in ("Z", "z"):
        return timezone.utc
    sign = -1 if offset[0] == "-" else 1
    hours, minutes = int(offset[1:3]), int(offset[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def format_rfc3339(moment: datetime) -> str:
    """Format as chrono's ``to_rfc3339`` does for a UTC time: 0, 3 or 6 fraction digits."""
    if moment.tzinfo is None:
        raise ValueError("created_at must be timezone-aware")
    utc = moment.astimezone(timezone.utc)
    micros = utc.microsecond
    if micros == 0:
        fraction = ""
    elif micros % 1000 == 0:
        fraction = f".{micros // 1000:03d}"
    else:
        fraction = f".{micros:06d}"
    return f"{utc.replace(microsecond=0, tzinfo=None).isoformat()}{fraction}+00:00"


# --- the header --------------------------------------------------------------

_HEADER_KEYS = ("agent", "created_by", "created_at")


class SessionMeta(BaseModel):
    """The header line: ``{"agent":…,"created_by":…,"created_at":…}``.

    Unknown keys of newer crabtalk (``title``, ``uptime_secs``, …) are kept in
    ``extra`` and written back after the three spec keys. The time stamp's text
    as read is kept, so an unchanged header is written back byte for byte.
    """

    model_config = ConfigDict(frozen=True)

    agent: str
    created_by: str
    created_at: datetime
    extra: dict[str, Any] = Field(default_factory=dict)
    created_at_text: str = Field(default="", repr=False)

    @field_validator("created_at")
    @classmethod
    def _aware(cls, moment: datetime) -> datetime:
        if moment.tzinfo is None:
            raise ValueError("created_at must be timezone-aware")
        return moment

    def _stamp(self) -> str:
        text = self.created_at_text
        if text and _same_moment(text, self.created_at):
            return text
        return format_rfc3339(self.created_at)

    def to_line(self) -> str:
        """The header's JSON line, without the newline."""
        data: dict[str, Any] = {
            "agent": self.agent,
            "created_by": self.created_by,
            "created_at": self._stamp(),
        }
        data.update((k, v) for k, v in self.extra.items() if k not in _HEADER_KEYS)
        return pydantic_core.to_json(data).decode("utf-8")

    @classmethod
    def from_line(cls, line: str | bytes) -> SessionMeta:
        """Parse a header line; raise :class:`SessionFormatError` if it is not one."""
        data = _json_object(line)
        for key in _HEADER_KEYS:
            if not isinstance(data.get(key), str):
                found = "none" if key not in data else f"a {_json_type(data[key])}"
                raise SessionFormatError(f"header needs a string {key!r}, found {found}")
        try:
            created_at = parse_rfc3339(data["created_at"])
        except ValueError:
            raise SessionFormatError("header: created_at is not an RFC 3339 time stamp") from None
        extra = {k: v for k, v in data.items() if k not in _HEADER_KEYS}
        return cls(
            agent=data["agent"],
            created_by=data["created_by"],
            created_at=created_at,
            extra=extra,
            created_at_text=data["created_at"],
        )


def _same_moment(text: str, moment: datetime) -> bool:
    try:
        return parse_rfc3339(text) == moment
    except ValueError:
        return False


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


class Session(BaseModel):
    """A conversation bound to one agent, as crabtalk models it.

    ``history`` is the working context held in memory (after the last compact
    marker, the summary as a user message first). ``id`` is a string: LangChain
    hands out string session ids. ``extra`` holds unknown header keys.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    id: str
    agent: str
    history: list[CrabMessage] = Field(default_factory=list)
    created_by: str = "user"
    created_at: datetime
    file_path: Path | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_meta(
        cls,
        session_id: str,
        meta: SessionMeta,
        *,
        file_path: Path | None = None,
        history: Sequence[CrabMessage] = (),
    ) -> Session:
        """The session whose header is ``meta`` (a new object, its ``extra`` a copy)."""
        return cls(
            id=session_id,
            agent=meta.agent,
            created_by=meta.created_by,
            created_at=meta.created_at,
            extra=dict(meta.extra),
            file_path=file_path,
            history=list(history),
        )

    def meta(self) -> SessionMeta:
        """The header that describes this session."""
        return SessionMeta(
            agent=self.agent,
            created_by=self.created_by,
            created_at=self.created_at,
            extra=self.extra,
        )
