"""Where session bytes live, behind one small interface (:class:`SessionStorage`)."""

from crab_langchain.storage.base import Appended, Chunk, Cursor, SessionStorage, TornTailWarning
from crab_langchain.storage.directory import DirectoryStorage, Durability

__all__ = [
    "Appended",
    "Chunk",
    "Cursor",
    "DirectoryStorage",
    "Durability",
    "SessionStorage",
    "TornTailWarning",
]
