"""Transcripts for people: plain text and HTML for Jupyter (placeholder, being written)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crab_langchain.history import CrabChatMessageHistory
    from crab_langchain.store import SessionStore


def history_text(history: CrabChatMessageHistory) -> str:
    return f"CrabChatMessageHistory(session_id={history.session_id!r})"


def history_html(history: CrabChatMessageHistory) -> str:
    return history_text(history)


def store_html(store: SessionStore) -> str:
    return repr(store)
