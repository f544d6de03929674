"""Session file names: ``{agent}_{unix_seconds}_{id}.jsonl``, made safe.

Agent names and ids are percent-encoded (RFC 3986 unreserved characters stay
as they are), so a name never leaves the directory and crabtalk's own names
(``crab_1774253211_7.jsonl``) are unchanged. Agent names and ids may hold
``_`` and digits: a name is only ever parsed knowing its agent (from the
header), and the unix seconds are the digits right after that agent's prefix,
so ``my_agent_2`` / ``x_1`` and ``my`` / ``agent_2_x_1`` never meet. An id too
long for a file name is shortened with a hash of it; the header's
``session_id`` key holds the id itself.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

if TYPE_CHECKING:
    from crab_langchain.models import SessionMeta

__all__ = [
    "SESSION_ID_KEY",
    "SUFFIX",
    "check_agent",
    "file_name",
    "id_suffix",
    "names_id",
    "parse_file_name",
    "session_id_of",
]

SESSION_ID_KEY = "session_id"
"""Header key holding the session's id (crabtalk ignores unknown header keys)."""

SUFFIX = ".jsonl"
_MAX_AGENT = 100
_MAX_ID = 120


def _encode(text: str, what: str) -> str:
    try:
        return quote(text, safe="", errors="strict")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {text!r} is not valid Unicode text") from None


def check_agent(agent: str) -> str:
    """Return the encoded agent name, or raise ``ValueError`` if it cannot name a file."""
    if not isinstance(agent, str) or not agent:
        raise ValueError(f"agent must be a non-empty string, not {agent!r}")
    encoded = _encode(agent, "agent")
    if len(encoded) > _MAX_AGENT:
        raise ValueError(f"agent name longer than {_MAX_AGENT} characters once encoded: {agent!r}")
    return encoded


def _id_part(session_id: str) -> str:
    encoded = _encode(session_id, "session id")
    if len(encoded) <= _MAX_ID:
        return encoded
    digest = hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:32]
    return f"{encoded[:80]}~{digest}"


def file_name(agent: str, unix_seconds: int, session_id: str) -> str:
    """The file name of a session created at ``unix_seconds``."""
    return f"{check_agent(agent)}_{unix_seconds}_{_id_part(session_id)}{SUFFIX}"


def id_suffix(session_id: str) -> str:
    """How every file name of session ``session_id`` ends, whatever its agent and time."""
    return f"_{_id_part(session_id)}{SUFFIX}"


def parse_file_name(name: str, agent: str) -> tuple[int, str] | None:
    """``(unix_seconds, session id)`` of ``name`` if it is a file name of ``agent``.

    The id of a shortened (hashed) name is the shortened text; the header's
    ``session_id`` says the full one.
    """
    prefix = check_agent(agent) + "_"
    if not (name.startswith(prefix) and name.endswith(SUFFIX)):
        return None
    seconds, sep, id_part = name[len(prefix) : -len(SUFFIX)].partition("_")
    if not sep or not (seconds.isascii() and seconds.isdigit()):
        return None
    return int(seconds), unquote(id_part, errors="replace")


def names_id(name: str, agent: str, session_id: str) -> bool:
    """Whether ``name`` may be the file of ``(agent, session_id)`` (the header decides)."""
    parsed = parse_file_name(name, agent)
    return parsed is not None and name == file_name(agent, parsed[0], session_id)


def session_id_of(name: str, meta: SessionMeta) -> str:
    """The id of the session in file ``name``: the header's, else the file name's."""
    claimed = meta.extra.get(SESSION_ID_KEY)
    if isinstance(claimed, str):
        return claimed
    parsed = parse_file_name(name, meta.agent)
    return parsed[1] if parsed else name.removesuffix(SUFFIX)
