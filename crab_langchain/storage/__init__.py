"""Where session bytes live, behind one small interface (:class:`SessionStorage`).

:class:`DirectoryStorage` keeps them as crabtalk's JSONL files;
:class:`~crab_langchain.storage.redis.RedisStorage` (the ``redis`` extra) in
Redis or Redis Cluster, one list of the same lines per session.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from crab_langchain.storage.base import (
    COMPANION_KINDS,
    Change,
    Chunk,
    Committed,
    Cursor,
    SessionStorage,
    StorageUnavailableError,
    Tail,
    TornTailWarning,
    check_name,
    companion_name,
    owner_of,
    public_url,
    url_scheme,
)
from crab_langchain.storage.directory import DirectoryStorage, Durability

__all__ = [
    "COMPANION_KINDS",
    "POSTGRES_SCHEMES",
    "REDIS_SCHEMES",
    "Change",
    "Chunk",
    "Committed",
    "Cursor",
    "DirectoryStorage",
    "Durability",
    "SessionStorage",
    "StorageUnavailableError",
    "Tail",
    "TornTailWarning",
    "check_name",
    "companion_name",
    "open_storage",
    "owner_of",
    "public_url",
]

REDIS_SCHEMES = ("redis", "rediss", "unix")
"""URL schemes that :func:`open_storage` opens as Redis."""

POSTGRES_SCHEMES = ("postgresql", "postgres")
"""URL schemes that :func:`open_storage` opens as PostgreSQL."""


def open_storage(
    url: str | os.PathLike[str],
    *,
    prefix: str | None = None,
    ttl: float | timedelta | None = None,
    **options: Any,
) -> SessionStorage:
    """The storage at ``url``: a Redis or PostgreSQL URL, a ``file://`` URL or a directory path.

    ``prefix`` (default ``"crab"``) starts a Redis store's keys and names a
    PostgreSQL store's schema; it and ``ttl`` are refused for a directory.
    Other ``options`` go to
    :meth:`RedisStorage.from_url <crab_langchain.storage.redis.RedisStorage.from_url>`,
    :meth:`PostgresStorage.from_url <crab_langchain.storage.postgres.PostgresStorage.from_url>`
    or :class:`DirectoryStorage` (``durability``).
    """
    text = os.fspath(url)
    scheme = url_scheme(text)
    if scheme in POSTGRES_SCHEMES:
        try:
            from crab_langchain.storage.postgres import PostgresStorage  # noqa: PLC0415
        except ImportError as error:
            raise ImportError(
                f"{public_url(text)}: PostgreSQL needs the 'postgres' extra: "
                "pip install 'crab-langchain[postgres]'"
            ) from error
        if prefix is not None:
            options["schema"] = prefix
        return PostgresStorage.from_url(text, ttl=ttl, **options)
    if scheme in REDIS_SCHEMES:
        try:
            from crab_langchain.storage.redis import RedisStorage  # noqa: PLC0415 - an extra
        except ImportError as error:
            raise ImportError(
                f"{public_url(text)}: Redis needs the 'redis' extra: "
                "pip install 'crab-langchain[redis]'"
            ) from error
        return RedisStorage.from_url(text, prefix=prefix or "crab", ttl=ttl, **options)
    if scheme not in ("", "file"):
        raise ValueError(f"unsupported URL scheme {scheme!r}: {SUPPORTED}")
    if "://" in text and not scheme:
        raise ValueError(f"not a directory path or a URL with a scheme: {SUPPORTED}")
    if prefix is not None or ttl is not None:
        raise ValueError(
            f"{public_url(text)}: prefix and ttl are for Redis and PostgreSQL; "
            "a directory has neither"
        )
    if scheme == "file":
        text = unquote(urlsplit(text).path)
    return DirectoryStorage(Path(text).expanduser(), **options)


SUPPORTED = (
    "give a directory path, file://, redis://, rediss://, unix:// or postgresql:// "
    "(for Redis Sentinel or another client, pass RedisStorage(client) as the backend)"
)
