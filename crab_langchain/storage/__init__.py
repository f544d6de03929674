"""Where session bytes live, behind one small interface (:class:`SessionStorage`)."""

from crab_langchain.storage.base import Chunk, Cursor, SessionStorage, TornTailWarning
from crab_langchain.storage.directory import DirectoryStorage, Durability

__all__ = [
    "Chunk",
    "Cursor",
    "DirectoryStorage",
    "Durability",
    "SessionStorage",
    "TornTailWarning",
]
