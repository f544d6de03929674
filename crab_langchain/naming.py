"""Session file names: ``{agent}_{unix_seconds}_{id}.jsonl``, made safe; and crabtalk's.

Agent names and ids are percent-encoded (RFC 3986 unreserved characters stay
as they are), so a name never leaves the directory and crabtalk's own names
(``crab_1774253211_7.jsonl``) are unchanged. Agent names and ids may hold
``_`` and digits: a name is only ever parsed knowing its agent (from the
header), and the unix seconds are the digits right after that agent's prefix,
so ``my_agent_2`` / ``x_1`` and ``my`` / ``agent_2_x_1`` never meet. An id too
long for a file name is shortened with a hash of it; the header's
``session_id`` key holds the id itself.

crabtalk named its files differently from 2026-03-24 on: ``{agent}_{sender}.jsonl``,
then ``{agent}_{sender}_{seq}.jsonl``, renamed ``{agent}_{sender}_{seq}_{title}.jsonl``
once titled. No crabtalk writes those files any more (it moved to other
storage on 2026-04-10), so their names are final: such a file's id is its
name without the ``{agent}_`` prefix and ``.jsonl`` (``user_1_lisbon-trip``),
and it is found by that id in one look-up (:func:`crabtalk_names`).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from crab_langchain.storage.base import check_name

if TYPE_CHECKING:
    from crab_langchain.models import SessionMeta

__all__ = [
    "SESSION_ID_KEY",
    "SUFFIX",
    "check_agent",
    "crabtalk_names",
    "file_name",
    "id_suffix",
    "lookup_suffixes",
    "names_id",
    "parse_file_name",
    "session_id_of",
]

SESSION_ID_KEY = "session_id"
"""Header key holding the session's id (crabtalk ignores unknown header keys)."""

SUFFIX = ".jsonl"
_MAX_AGENT = 100
_MAX_ID = 120
_MAX_NAME_BYTES = 255  # what Linux, macOS and Windows file systems hold


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
    """The id of the session in file ``name``: the header's, else the file name's.

    A seed-style name ``{agent}_{unix_seconds}_{id}.jsonl`` gives ``id``; any
    other name (crabtalk's later ones) gives itself without ``.jsonl`` and
    without the header's agent and ``_`` in front.
    """
    claimed = meta.extra.get(SESSION_ID_KEY)
    if isinstance(claimed, str):
        return claimed
    try:
        parsed = parse_file_name(name, meta.agent)
    except ValueError:  # an agent no name of ours could hold (empty, too long)
        parsed = None
    if parsed:
        return parsed[1]
    stem, prefix = name.removesuffix(SUFFIX), f"{meta.agent}_"
    return stem[len(prefix) :] if stem.startswith(prefix) and stem != prefix else stem


def crabtalk_names(agent: str, session_id: str) -> list[str]:
    """The names a file that we did not name has if its id is ``session_id``.

    (See :func:`session_id_of`.) Only names that are plain file names are given.
    """
    names = [f"{agent}_{session_id}{SUFFIX}", f"{session_id}{SUFFIX}"]
    return [name for name in names if _plain(name)]


def lookup_suffixes(session_id: str, crabtalks: list[str]) -> list[str]:
    """The endings that every name of ``session_id`` has one of: ours, and ``crabtalks``'.

    One ending where ours ends with crabtalk's (an id that needs no encoding).
    """
    ours = id_suffix(session_id)
    if not crabtalks:
        return [ours]
    theirs = f"{session_id}{SUFFIX}"
    return [theirs] if ours.endswith(theirs) else [ours, theirs]


def _plain(name: str) -> bool:
    """Whether ``name`` can name a log that file systems hold (hidden names are storage's own)."""
    try:
        check_name(name)
        size = len(name.encode("utf-8"))
    except (ValueError, UnicodeEncodeError):
        return False
    return not name.startswith(".") and size <= _MAX_NAME_BYTES
