"""Transcripts for people: plain text (``repr``, the command line) and HTML (Jupyter).

``CrabChatMessageHistory.__repr__`` and ``_repr_html_`` and
``SessionStore._repr_html_`` delegate here. Everything shown is escaped: a
message holding ``<script>`` is shown as text, never run. Displaying never
raises: a history whose file is missing or malformed renders as a header
naming the problem (debuggers, loggers and pytest call ``repr``).
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from crab_langchain.convert import is_auto_injected, reasoning_text
from crab_langchain.models import RunEvent

if TYPE_CHECKING:
    from crab_langchain.context import WorkingContext


class ShownHistory(Protocol):
    """What a transcript needs of a history (:class:`~crab_langchain.CrabChatMessageHistory`)."""

    @property
    def session_id(self) -> str: ...
    @property
    def location(self) -> str | None: ...
    @property
    def file_path(self) -> Path | None: ...
    def snapshot(self) -> WorkingContext: ...


class ShownSession(Protocol):
    """What a row of the sessions table needs (:class:`~crab_langchain.SessionInfo`)."""

    @property
    def agent(self) -> str: ...
    @property
    def session_id(self) -> str: ...
    @property
    def created_by(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def size(self) -> int | None: ...
    @property
    def name(self) -> str: ...
    @property
    def title(self) -> str | None: ...


class ShownStore(Protocol):
    """What the sessions table needs of a store (:class:`~crab_langchain.SessionStore`)."""

    @property
    def storage(self) -> Any: ...
    def list_sessions(
        self, *, agent: str | None = None, created_by: str | None = None
    ) -> Sequence[ShownSession]: ...


__all__ = [
    "DEFAULT_LIMIT",
    "STORE_LIMIT",
    "compact_line",
    "event_line",
    "hidden_line",
    "history_html",
    "history_text",
    "human_size",
    "message_line",
    "one_line",
    "store_html",
    "tool_names_started",
]

DEFAULT_LIMIT = 50
"""Messages a transcript shows by default: the last ones."""

STORE_LIMIT = 100
"""Sessions a store's table shows by default: the newest ones."""

INJECTED = "injected, not stored"
_REPR_WIDTH = 200  # per message line of a repr: logs and debuggers want it short
_HTML_CHARS = 10_000  # per text of a message in HTML: a notebook stays usable
# Content blocks that repeat what tool_calls already show (Anthropic's tool_use).
_TOOL_BLOCKS = frozenset({"tool_use", "tool_call", "tool_call_chunk", "server_tool_call"})
_REASONING_BLOCKS = frozenset({"reasoning", "thinking"})
_PLACEHOLDERS = {"image": "image", "image_url": "image", "file": "file", "audio": "audio"}


# --- what a message holds, for both renderings ---------------------------------


@dataclass
class _Segment:
    """A piece of content: text, or a placeholder for a block that is not text."""

    text: str
    placeholder: bool = False


def _segments(content: str | list[str | dict[str, Any]]) -> list[_Segment]:
    if isinstance(content, str):
        return [_Segment(content)] if content else []
    segments = []
    for block in content:
        if isinstance(block, str):
            segments.append(_Segment(block))
            continue
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            segments.append(_Segment(block["text"]))
        elif kind not in _REASONING_BLOCKS and kind not in _TOOL_BLOCKS:
            label = _PLACEHOLDERS.get(str(kind), f"{kind} block")
            segments.append(_Segment(f"[{label}]", placeholder=True))
    return segments


def _role(message: BaseMessage) -> str:
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, SystemMessage):
        developer = message.additional_kwargs.get("__openai_role__") == "developer"
        return "developer" if developer else "system"
    if isinstance(message, ChatMessage):
        return message.role
    return message.type  # "tool", "function"


def _tool_calls(message: BaseMessage) -> tuple[list[Any], list[Any]]:
    if isinstance(message, AIMessage):
        return list(message.tool_calls), list(message.invalid_tool_calls)
    return [], []


def _json(value: Any, *, indent: int | None = None) -> str:
    # default=str: injected messages may hold values JSON cannot; show them anyway.
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


# --- plain text -----------------------------------------------------------------


def one_line(text: str) -> str:
    """``text`` on one line, control characters escaped (safe for a terminal)."""
    out = []
    for char in text:
        code = ord(char)
        if char in "\n\r\t":
            out.append(repr(char)[1:-1])
        elif code < 0x20 or 0x7F <= code < 0xA0 or char in "\u2028\u2029":
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def message_line(message: BaseMessage, *, width: int | None = None) -> str:
    """One line for ``message``: ``user: hello``, ``assistant: [tool call f(a=1) id=c1]``.

    Control characters are escaped; ``width`` cuts the line to that many characters.
    """
    parts = []
    reasoning = reasoning_text(message)
    if reasoning:
        parts.append(f"[reasoning: {reasoning}]")
    parts += [segment.text for segment in _segments(message.content)]
    valid, invalid = _tool_calls(message)
    parts += [_call_text(call) for call in valid]
    parts += [_invalid_call_text(call) for call in invalid]
    line = one_line(f"{_label_text(message)}: {' '.join(p for p in parts if p)}".rstrip())
    if width is not None and len(line) > width:
        return line[: width - 1] + "…"
    return line


def _label_text(message: BaseMessage) -> str:
    label = _role(message)
    if message.name:  # a guest agent that spoke, or the function a tool result answers
        label += f" {message.name}"
    if isinstance(message, ToolMessage):
        label += f" id={message.tool_call_id}"
        if message.status == "error":
            label += " (error)"
    if is_auto_injected(message):
        label += f" ({INJECTED})"
    return label


def _call_text(call: Any) -> str:
    args = call.get("args")
    shown = (
        ", ".join(f"{key}={_json(value)}" for key, value in args.items())
        if isinstance(args, dict)
        else _json(args)
    )
    return f"[tool call {call.get('name') or '?'}({shown}) id={call.get('id') or '-'}]"


def _invalid_call_text(call: Any) -> str:
    name, call_id = call.get("name") or "?", call.get("id") or "-"
    return f"[invalid tool call {name}({call.get('args') or ''}) id={call_id}: {call.get('error')}]"


def compact_line(summary: str, title: str = "") -> str:
    """The line for a compaction marker: what follows starts from ``summary``."""
    titled = f" ({title})" if title else ""
    return one_line(f"--- compacted{titled}; the context continues from: {summary}")


def event_line(event: RunEvent, tool_names: Mapping[str, str]) -> str:
    """A short note for a run's trace event: a tool that ran and how long, a finished run.

    ``tool_names`` maps call ids to the names their ``tool_start`` gave.
    Any value may be missing or odd (the line is only known to be an event).
    """
    fields = event.model_extra or {}
    kind = event.event
    if kind == "tool_start":
        calls = [c for c in _as_list(fields.get("calls")) if isinstance(c, dict)]
        started = ", ".join(
            f"{_text(c.get('name'))}({_text(c.get('arguments', ''))})" for c in calls
        )
        note = f"tool call{'s' if len(calls) != 1 else ''} started: {started}"
    elif kind == "tool_result":
        call_id = _text(fields.get("call_id"))
        name = tool_names.get(call_id, "a tool")
        note = f"{name} returned after {_text(fields.get('duration_ms'))} ms (id={call_id})"
    elif kind == "user_steered":
        note = f"user steered the run: {_text(fields.get('content'))}"
    elif kind == "done":
        note = _done_note(fields)
    else:
        note = f"event {kind!r}"
    return one_line(f"· {note}")


def tool_names_started(event: RunEvent) -> dict[str, str]:
    """Call id -> tool name for the calls a ``tool_start`` event started (else empty)."""
    if event.event != "tool_start":
        return {}
    calls = _as_list((event.model_extra or {}).get("calls"))
    return {
        call["id"]: call["name"]
        for call in calls
        if isinstance(call, dict)
        and isinstance(call.get("id"), str)
        and isinstance(call.get("name"), str)
    }


def _done_note(fields: Mapping[str, Any]) -> str:
    iterations = fields.get("iterations")
    facts = [_text(fields.get("model")), f"{_text(iterations)} iteration{_s(iterations)}"]
    facts.append(_text(fields.get("stop_reason")))
    usage = fields.get("usage")
    if isinstance(usage, dict):
        tokens = (
            f"tokens {_text(usage.get('prompt_tokens'))} in, "
            f"{_text(usage.get('completion_tokens'))} out"
        )
        if "prompt_cache_hit_tokens" in usage:
            tokens += f" ({_text(usage['prompt_cache_hit_tokens'])} in from cache)"
        facts.append(tokens)
    return f"run done: {', '.join(facts)}"


def _s(count: Any) -> str:
    return "" if count == 1 else "s"


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    if value is None:
        return "?"
    return value if isinstance(value, str) else _json(value)


def hidden_line(count: int) -> str:
    """The note that ``count`` earlier messages are not shown."""
    return f"… {count} earlier message{'s' if count != 1 else ''} hidden"


def history_text(history: ShownHistory, *, limit: int | None = DEFAULT_LIMIT) -> str:
    """A plain-text transcript: a header line, then one line per message (the last ``limit``).

    Never raises: a missing or malformed file gives a header naming the problem.
    """
    view = _view(history)
    lines = [_text_header(view)]
    shown, hidden = _last(view.messages, limit)
    if hidden:
        lines.append(hidden_line(hidden))
    lines += [message_line(message, width=_REPR_WIDTH) for message in shown]
    return "\n".join(lines)


def _text_header(view: _View) -> str:
    fields = [f"session_id={view.session_id!r}"]
    if view.agent:
        fields.append(f"agent={view.agent!r}")
    if view.path is not None:
        fields.append(f"file={str(view.path)!r}")
    elif view.location is not None:
        fields.append(f"at={view.location!r}")
    if view.error:
        fields.append(f"error: {view.error}")
    elif view.location is None:
        fields.append("not written yet")
    else:
        fields.append(_count(view.messages))
    return one_line(f"CrabChatMessageHistory({', '.join(fields)})")


def _count(messages: Sequence[BaseMessage]) -> str:
    injected = sum(1 for message in messages if is_auto_injected(message))
    text = f"{len(messages)} message{'s' if len(messages) != 1 else ''}"
    return f"{text}, {injected} {INJECTED}" if injected else text


# --- gathering what a history shows, without raising ---------------------------


@dataclass
class _View:
    session_id: str
    path: Path | None = None
    location: str | None = None
    messages: list[BaseMessage] = field(default_factory=list)
    agent: str = ""
    created_by: str = ""
    created_at: str = ""
    title: str = ""
    error: str = ""


def _view(history: ShownHistory) -> _View:
    view = _View(session_id=str(history.session_id))
    try:
        view.location = history.location
        if view.location is None:
            return view
        view.path = history.file_path
        context = history.snapshot()  # no plugin hook runs for a repr
        view.messages = context.messages
        if context.meta is not None:
            meta = context.meta
            view.agent, view.created_by = meta.agent, meta.created_by
            view.created_at = meta.created_at.isoformat()
            title = meta.extra.get("title")
            view.title = title if isinstance(title, str) else ""
    except Exception as error:  # a repr must never raise
        view.error = one_line(f"{type(error).__name__}: {error}")
    return view


def _last(items: list[Any], limit: int | None) -> tuple[list[Any], int]:
    if limit is None or len(items) <= limit:
        return items, 0
    shown = items[-limit:] if limit > 0 else []
    return shown, len(items) - len(shown)


# --- HTML -----------------------------------------------------------------------
# Inline styles only (a <style> block may be stripped by notebook viewers), and
# colours that read on light and dark themes: text inherits, greys are
# translucent, accents are mid-tones.

_BOX = "font-family:inherit;font-size:13px;line-height:1.4;color:inherit;max-width:100%"
_HEAD = "padding:4px 0 6px 0;border-bottom:1px solid rgba(127,127,127,.35);margin-bottom:6px"
_DIM = "opacity:.7;font-size:.9em"
_PRE = "white-space:pre-wrap;word-break:break-word;margin:2px 0;font-family:inherit"
_CODE_PRE = "white-space:pre-wrap;word-break:break-word;margin:2px 0 2px 12px;font-size:.92em"
_BADGE = "display:inline-block;padding:0 5px;margin-left:6px;border:1px solid {c};border-radius:4px;font-size:.8em;color:{c}"  # noqa: E501
_ACCENTS = {
    "user": "#3b82f6",
    "assistant": "#22a06b",
    "tool": "#d97706",
    "function": "#d97706",
    "system": "#8a8a8a",
    "developer": "#8a8a8a",
}
_OTHER_ACCENT = "#a855f7"
_INJECTED_ACCENT = "#e0a000"
_ERROR_ACCENT = "#e5484d"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _clip(text: str, limit: int = _HTML_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… ({len(text) - limit} more characters)"


def _badge(text: str, color: str) -> str:
    return f'<span style="{_BADGE.format(c=color)}">{_e(text)}</span>'


def history_html(history: ShownHistory, *, limit: int | None = DEFAULT_LIMIT) -> str:
    """The transcript as HTML (the last ``limit`` messages), for Jupyter. Never raises."""
    view = _view(history)
    parts = [_html_header(view)]
    shown, hidden = _last(view.messages, limit)
    if hidden:
        parts.append(f'<div style="{_DIM};margin:4px 0">{_e(hidden_line(hidden))}</div>')
    parts += [_message_html(message) for message in shown]
    if not view.messages and not view.error:
        note = "not written yet" if view.location is None else "no messages"
        parts.append(f'<div style="{_DIM}">{note}</div>')
    return f'<div class="crab-history" style="{_BOX}">{"".join(parts)}</div>'


def _html_header(view: _View) -> str:
    facts = [f"session <code>{_e(view.session_id)}</code>"]
    if view.agent:
        facts.append(f"agent <code>{_e(view.agent)}</code>")
    if view.created_by:
        facts.append(f"created by <code>{_e(view.created_by)}</code>")
    if view.created_at:
        facts.append(_e(view.created_at))
    if view.location is not None and not view.error:
        facts.append(_e(_count(view.messages)))
    title = f"<b>{_e(view.title)}</b> · " if view.title else ""
    head = f"{title}<b>CrabChatMessageHistory</b> · {' · '.join(facts)}"
    where = _e(view.location) if view.location is not None else "not written yet"
    lines = [head, f'<div style="{_DIM}">{where}</div>']
    if view.error:
        lines.append(f'<div style="color:{_ERROR_ACCENT}">error: {_e(view.error)}</div>')
    return f'<div style="{_HEAD}">{"".join(lines)}</div>'


def _message_html(message: BaseMessage) -> str:
    injected = is_auto_injected(message)
    accent = _INJECTED_ACCENT if injected else _ACCENTS.get(_role(message), _OTHER_ACCENT)
    border = "dashed" if injected else "solid"
    body = [_label_html(message, injected)]
    reasoning = reasoning_text(message)
    if reasoning:
        body.append(
            f'<details><summary style="{_DIM};cursor:pointer">reasoning</summary>'
            f'<pre style="{_PRE};{_DIM}">{_e(_clip(reasoning))}</pre></details>'
        )
    body.append(_content_html(message))
    valid, invalid = _tool_calls(message)
    body += [_call_html(call) for call in valid]
    body += [_invalid_call_html(call) for call in invalid]
    style = (
        f"border-left:3px {border} {accent};padding:3px 8px;margin:4px 0;"
        "background:rgba(127,127,127,.06)"
    )
    return f'<div class="crab-message" style="{style}">{"".join(body)}</div>'


def _label_html(message: BaseMessage, injected: bool) -> str:
    role = _role(message)
    label = [f'<b style="color:{_ACCENTS.get(role, _OTHER_ACCENT)}">{_e(role)}</b>']
    if message.name:
        label.append(f" <code>{_e(message.name)}</code>")
    if isinstance(message, ToolMessage):
        label.append(f' <span style="{_DIM}">answers {_e(message.tool_call_id)}</span>')
        if message.status == "error":
            label.append(_badge("error", _ERROR_ACCENT))
    if injected:
        label.append(_badge(INJECTED, _INJECTED_ACCENT))
    return f"<div>{''.join(label)}</div>"


def _content_html(message: BaseMessage) -> str:
    pieces = []
    for segment in _segments(message.content):
        if segment.placeholder:
            pieces.append(f'<span style="{_DIM}">{_e(segment.text)}</span>')
        else:
            pieces.append(_e(_clip(segment.text)))
    return f'<pre style="{_PRE}">{"".join(pieces)}</pre>' if pieces else ""


def _call_html(call: Any) -> str:
    return (
        _call_head("tool call", call)
        + f'<pre style="{_CODE_PRE}">{_e(_clip(_json(call.get("args"), indent=2)))}</pre></div>'
    )


def _invalid_call_html(call: Any) -> str:
    return (
        _call_head("invalid tool call", call)
        + _badge("invalid", _ERROR_ACCENT)
        + f'<pre style="{_CODE_PRE}">{_e(_clip(str(call.get("args") or "")))}</pre>'
        + f'<div style="{_DIM};margin-left:12px">{_e(call.get("error") or "")}</div></div>'
    )


def _call_head(label: str, call: Any) -> str:
    """The opening of a tool call's block: what it is, its name and id (the caller closes it)."""
    name, call_id = call.get("name") or "?", call.get("id") or "-"
    return (
        f'<div style="margin-top:3px">{label} <code>{_e(name)}</code>'
        f' <span style="{_DIM}">id {_e(call_id)}</span>'
    )


# --- the store ------------------------------------------------------------------

_CELL = "padding:2px 8px;text-align:left;border-bottom:1px solid rgba(127,127,127,.25)"
_STORE_COLUMNS = ("agent", "session id", "created by", "created at", "title", "size", "file")


def human_size(size: int | None) -> str:
    """``1064`` -> ``"1.0 KiB"``; None (unknown) -> ``"?"``."""
    if size is None:
        return "?"
    amount = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


def store_html(store: ShownStore, *, limit: int | None = STORE_LIMIT) -> str:
    """The store's sessions as an HTML table, newest first (the first ``limit``)."""
    head = f"<b>SessionStore</b> <code>{_e(store.storage.describe())}</code>"
    try:
        infos = store.list_sessions()
    except Exception as error:  # a repr must never raise
        message = _e(one_line(f"{type(error).__name__}: {error}"))
        return f'<div style="{_BOX}">{head}<div style="color:{_ERROR_ACCENT}">{message}</div></div>'
    shown = infos if limit is None else infos[: max(limit, 0)]
    hidden = len(infos) - len(shown)
    rows = [_store_row(info) for info in shown]
    count = f"{len(infos)} session{'s' if len(infos) != 1 else ''}"
    if hidden:
        count += f", the newest {len(shown)} shown ({hidden} older hidden)"
    header = "".join(f'<th style="{_CELL}">{name}</th>' for name in _STORE_COLUMNS)
    table = (
        f'<table class="crab-store" style="border-collapse:collapse;margin-top:4px">'
        f"<thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    return f'<div style="{_BOX}">{head} · {count}{table}</div>'


def _store_row(info: ShownSession) -> str:
    cells = (
        info.agent,
        info.session_id,
        info.created_by,
        info.created_at.isoformat(),
        info.title or "",
        human_size(info.size),
        info.name,
    )
    return "<tr>" + "".join(f'<td style="{_CELL}">{_e(cell)}</td>' for cell in cells) + "</tr>"
