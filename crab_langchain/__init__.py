"""crab_langchain: a LangChain chat message history on crabtalk JSONL sessions.

Quick start::

    from crab_langchain import SessionStore
    store = SessionStore("./sessions")              # or SessionStore.from_url("redis://...")
    chain = RunnableWithMessageHistory(prompt | model, store.get_session_history, ...)
"""

from typing import TYPE_CHECKING, Any

from crab_langchain.convert import (
    AUTO_INJECTED_KEY,
    NESTED_LINE_KEY,
    from_crab_message,
    is_auto_injected,
    mark_auto_injected,
    to_crab_message,
)
from crab_langchain.hooks import (
    CrabHookSpecs,
    DefaultPlugin,
    hookimpl,
    hookspec,
    make_plugin_manager,
)
from crab_langchain.models import (
    CompactMarker,
    CrabMessage,
    FunctionCall,
    NestedLine,
    RunEvent,
    Session,
    SessionFormatError,
    SessionMeta,
    ToolCall,
)
from crab_langchain.storage import (
    DirectoryStorage,
    SessionStorage,
    StorageUnavailableError,
    TornTailWarning,
    open_storage,
)
from crab_langchain.store import SessionInfo, SessionStore, default_root
from crab_langchain.transfer import CopyResult, SessionConflictError, copy_session, copy_sessions
from crab_langchain.verify import FileReport, LogReport, verify_file, verify_log

if TYPE_CHECKING:
    from crab_langchain.history import (
        COMPACT_MARKER_KEY,
        COMPACT_SUMMARY_KEY,
        CrabChatMessageHistory,
    )

__version__ = "0.1.0"

# The chat history is LangChain's deprecated door (BaseChatMessageHistory goes in
# langchain-core 2.0): loaded on first use, so the v1 doors never load it.
_FROM_HISTORY = ("COMPACT_MARKER_KEY", "COMPACT_SUMMARY_KEY", "CrabChatMessageHistory")


def __getattr__(name: str) -> Any:
    if name in _FROM_HISTORY:
        from crab_langchain import history  # noqa: PLC0415 - see above

        return getattr(history, name)
    raise AttributeError(f"module 'crab_langchain' has no attribute {name!r}")


__all__ = [
    "AUTO_INJECTED_KEY",
    "COMPACT_MARKER_KEY",
    "COMPACT_SUMMARY_KEY",
    "NESTED_LINE_KEY",
    "CompactMarker",
    "CopyResult",
    "CrabChatMessageHistory",
    "CrabHookSpecs",
    "CrabMessage",
    "DefaultPlugin",
    "DirectoryStorage",
    "FileReport",
    "FunctionCall",
    "LogReport",
    "NestedLine",
    "RunEvent",
    "Session",
    "SessionConflictError",
    "SessionFormatError",
    "SessionInfo",
    "SessionMeta",
    "SessionStorage",
    "SessionStore",
    "StorageUnavailableError",
    "ToolCall",
    "TornTailWarning",
    "__version__",
    "copy_session",
    "copy_sessions",
    "default_root",
    "from_crab_message",
    "hookimpl",
    "hookspec",
    "is_auto_injected",
    "make_plugin_manager",
    "mark_auto_injected",
    "open_storage",
    "to_crab_message",
    "verify_file",
    "verify_log",
]
