"""``SessionStore``: a directory of crabtalk sessions, by (agent, session id)."""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
from pydantic import BaseModel, ConfigDict

from crab_langchain.forksafe import ForkSafeLock
from crab_langchain.hooks import make_plugin_manager
from crab_langchain.log import meta_of
from crab_langchain.models import Session, SessionFormatError, SessionMeta
from crab_langchain.naming import (
    SESSION_ID_KEY,
    check_agent,
    crabtalk_names,
    file_name,
    lookup_suffixes,
    names_id,
    parse_file_name,
    session_id_of,
)
from crab_langchain.storage import (
    COMPANION_KINDS,
    DirectoryStorage,
    Durability,
    SessionStorage,
    companion_name,
    open_storage,
)

if TYPE_CHECKING:
    from crab_langchain.history import CrabChatMessageHistory

__all__ = ["SessionInfo", "SessionStore", "default_root"]

_MAX_NAME_TRIES = 1000
_LATEST_PAGE = 200  # headers read per round when looking for the latest session


def default_root() -> Path:
    """``$CRABTALK_HOME/sessions``, or ``~/.crabtalk/sessions`` as crabtalk uses."""
    home = os.environ.get("CRABTALK_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".crabtalk"
    return base / "sessions"


class SessionInfo(BaseModel):
    """One session as listed: read from its header alone."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    agent: str
    created_by: str
    created_at: datetime
    path: Path | None
    name: str
    extra: dict[str, Any] = {}
    size: int | None = None
    """Bytes of the session's lines as a file holds them, with the logs kept beside it (a
    checkpointer's side log); None if the storage cannot say."""

    @property
    def title(self) -> str | None:
        """The ``title`` newer crabtalk writes in the header, if any."""
        title = self.extra.get("title")
        return title if isinstance(title, str) else None


class SessionStore:
    """Sessions by (agent, session id), in crabtalk's layout and names.

    By default a directory of session files (``root``, else
    :func:`default_root`); ``backend`` puts them elsewhere, such as a
    :class:`~crab_langchain.storage.redis.RedisStorage` (see
    :meth:`from_url`). ``store.get_session_history`` is a ready
    ``get_session_history`` factory for ``RunnableWithMessageHistory``.
    ``plugins`` are registered for every history the store hands out, after
    the ``crab_langchain`` entry points (``entry_points=False`` skips those).
    ``durability`` is ``"flush"`` (each write reaches the OS) or ``"fsync"``
    (each write reaches the disk) for a directory; ``strict`` writes only the
    spec's keys.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        plugins: Iterable[object] | None = None,
        *,
        strict: bool = False,
        durability: Durability = "flush",
        entry_points: bool = True,
        backend: SessionStorage | None = None,
    ) -> None:
        if backend is not None and root is not None:
            raise ValueError("give a root directory or a backend, not both")
        if backend is None:
            self.root: Path | None = Path(root).expanduser() if root is not None else default_root()
            backend = DirectoryStorage(self.root, durability=durability)
        else:
            self.root = backend.root if isinstance(backend, DirectoryStorage) else None
        self.storage: SessionStorage = backend
        self._plugins = list(plugins or ())
        # Registered now, so a bad plugin fails here; the entry points are scanned (an I/O
        # walk of every installed package) on first use, off the event loop in async code.
        manager = make_plugin_manager(self._plugins, entry_points=False)
        self._manager: pluggy.PluginManager | None = None if entry_points else manager
        self._manager_lock = ForkSafeLock()
        self.strict = strict

    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        """The store's plugins: the default one, the entry points' and those given, in order.

        The ``crab_langchain`` entry points are loaded on first use (async
        doors load them off the event loop: :meth:`aready`).
        """
        if self._manager is None:
            with self._manager_lock:
                if self._manager is None:
                    self._manager = make_plugin_manager(self._plugins, entry_points=True)
        return self._manager

    async def aready(self) -> None:
        """Do off the event loop what the store does on first use (load its entry points)."""
        if self._manager is None:
            await asyncio.to_thread(lambda: self.plugin_manager)

    @classmethod
    def from_url(
        cls,
        url: str | os.PathLike[str],
        plugins: Iterable[object] | None = None,
        *,
        prefix: str | None = None,
        ttl: float | timedelta | None = None,
        strict: bool = False,
        entry_points: bool = True,
        **options: Any,
    ) -> SessionStore:
        """A store at ``url``: ``redis://``, ``rediss://``, ``unix://``, ``postgresql://``
        or a directory.

        A Redis URL opens a :class:`~crab_langchain.storage.redis.RedisStorage`
        (the ``redis`` extra), on a single server or a Redis Cluster (asked of
        the server; ``cluster=True`` or ``False`` says so). ``prefix`` starts
        its keys (``"crab"`` by default); ``ttl`` (seconds) expires a session that long after its
        last write. A PostgreSQL URL opens a
        :class:`~crab_langchain.storage.postgres.PostgresStorage` (the
        ``postgres`` extra) whose tables live in schema ``prefix`` (``"crab"``
        by default): run :meth:`setup` once. A path or ``file://`` URL opens a
        directory. Other ``options`` go to the backend (redis-py's client
        options, psycopg's connection options, or ``durability`` for a
        directory).
        """
        backend = open_storage(url, prefix=prefix, ttl=ttl, **options)
        try:
            return cls(plugins=plugins, strict=strict, entry_points=entry_points, backend=backend)
        except BaseException:
            backend.close()  # bad plugins: leave no connection open behind the error
            raise

    def __repr__(self) -> str:
        return f"SessionStore({self.storage.describe()!r})"

    @classmethod
    async def afrom_url(
        cls, url: str | os.PathLike[str], plugins: Iterable[object] | None = None, **options: Any
    ) -> SessionStore:
        """Async :meth:`from_url`: connecting and loading plugins happen off the event loop.

        Args:
            url: as for :meth:`from_url`.
            plugins: as for :meth:`from_url`.
            **options: as for :meth:`from_url`.

        Returns:
            The store, ready: its first use does no blocking I/O for them.

        Raises:
            StorageUnavailableError: the server cannot be reached.
        """

        def opened() -> SessionStore:
            store = cls.from_url(url, plugins, **options)
            _ = store.plugin_manager  # the entry points, loaded here
            return store

        return await asyncio.to_thread(opened)

    def setup(self) -> None:
        """Make what the backend needs before first use: PostgreSQL's schema and tables.

        Idempotent, and safe from many processes at once; a directory and
        Redis need nothing. Run it once per database (and schema), as
        LangGraph's savers ask of theirs.

        Raises:
            StorageUnavailableError: the server cannot be reached.
        """
        self.storage.setup()

    async def asetup(self) -> None:
        """Async :meth:`setup`."""
        await self.storage.asetup()

    def close(self) -> None:
        """Release what the storage holds open (descriptors, connections); reopened when used."""
        self.storage.close()

    async def aclose(self) -> None:
        """Async :meth:`close`: the async client of the running loop too, where there is one."""
        closing = getattr(self.storage, "aclose", None)
        if closing is not None:
            await closing()
        await asyncio.to_thread(self.storage.close)

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> SessionStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _repr_html_(self) -> str:
        """The sessions as an HTML table, for Jupyter."""
        from crab_langchain.display import store_html  # noqa: PLC0415 - display is optional

        return store_html(self)

    # --- histories ----------------------------------------------------------

    def get_session_history(
        self, session_id: str, agent: str = "crab", created_by: str = "user"
    ) -> CrabChatMessageHistory:
        """The history of ``(agent, session_id)``, created on its first write.

        A ready factory for ``RunnableWithMessageHistory``, which calls it on
        every run (also inside ``ainvoke``): it does no I/O. The session is
        found on the history's first read or write (off the event loop in
        async calls).

        Args:
            session_id: any string (crabtalk's integer ids work too).
            agent: the agent the session belongs to.
            created_by: who starts the session, for a new one; an existing
                session keeps the ``created_by`` of its header.

        Returns:
            The session's history.

        Raises:
            TypeError: ``session_id`` is not a string.
            ValueError: ``agent`` cannot be part of a file name.
        """
        return self._history(_new_session(session_id, agent, created_by))

    def create_session(
        self, session_id: str, agent: str = "crab", created_by: str = "user"
    ) -> CrabChatMessageHistory:
        """Create the empty session ``(agent, session_id)`` now; ``FileExistsError`` if it exists.

        For importers: unlike :meth:`get_session_history`, which continues a
        session that another process created meanwhile, this never adds to
        an existing one.
        """
        session = _new_session(session_id, agent, created_by)
        with self.storage.creation_lock():
            existing = self.find(session.id, agent)
            if existing is not None:
                raise FileExistsError(
                    f"session {session.id!r} of agent {agent!r} already exists: "
                    f"{self.storage.location(existing)}"
                )
            name = self._create_locked(session)
        return self._history(session, name)

    def session_name(
        self,
        session_id: str,
        agent: str = "crab",
        created_by: str = "user",
        *,
        create: bool = False,
    ) -> str | None:
        """The name of the log holding ``(agent, session_id)``; None if there is none.

        With ``create``, a session not there yet is created (its header
        written, ``crab_session_created`` told) and its name returned.

        Raises:
            TypeError: ``session_id`` is not a string.
            ValueError: ``agent`` cannot be part of a file name.
        """
        session = _new_session(session_id, agent, created_by)
        found = self.find(session.id, agent)
        return found if found is not None or not create else self.create_log(session)

    def _history(self, session: Session, name: str | None = None) -> CrabChatMessageHistory:
        """A history of ``session``, on log ``name`` or, without it, found when first used.

        The history is LangChain's deprecated door: its module (and LangChain's
        ``BaseChatMessageHistory``) is loaded only when one is asked for, so
        the v1 doors stand without it.
        """
        from crab_langchain.history import history_of  # noqa: PLC0415 - see above

        return history_of(self, session, name)

    def find(self, session_id: str, agent: str = "crab") -> str | None:
        """The file name holding ``(agent, session_id)``, or None.

        If several files claim it (two writers raced before locking existed),
        the oldest wins, always the same one.
        """
        session_id = _as_id(session_id)
        candidates = self._named(session_id, agent)
        return next(
            (
                name
                for name, meta in self._metas(candidates, strict=True)
                if meta.agent == agent and session_id_of(name, meta) == session_id
            ),
            None,
        )

    def _named(self, session_id: str, agent: str) -> list[str]:
        """The names that could hold ``(agent, session_id)``, oldest first (headers unread).

        Our names first, then crabtalk's. Storages with a name index answer
        this without listing every log.
        """
        theirs = crabtalk_names(agent, session_id)
        names = {
            name
            for suffix in lookup_suffixes(session_id, theirs)
            for name in self.storage.names(suffix=suffix)
        }
        ours = [n for n in names if names_id(n, agent, session_id)]
        ours.sort(key=lambda n: (parse_file_name(n, agent) or (0, ""))[0])
        return ours + [n for n in theirs if n in names and n not in ours]

    def _metas(
        self, names: Sequence[str], *, strict: bool = False
    ) -> Iterable[tuple[str, SessionMeta]]:
        """``(name, header)`` of each log still there, in order.

        A malformed header raises :class:`SessionFormatError` if ``strict``,
        else is skipped with a warning.
        """
        for name, header in zip(names, self.storage.read_headers(names), strict=True):
            if isinstance(header, FileNotFoundError):
                continue  # deleted (or expired) since it was listed
            try:
                yield name, meta_of(self.storage, name, header)
            except (SessionFormatError, OSError) as error:
                if strict:
                    raise
                where, reason = self.storage.location(name), str(error)
                shown = reason if where in reason else f"{where}: {reason}"
                warnings.warn(f"skipping {shown}", stacklevel=4)

    def create_log(self, session: Session) -> str:
        """The name of the log of ``session``: found, or created now (plugins told so).

        Args:
            session: the session's id, agent and creator.

        Returns:
            The log's name in :attr:`storage`.
        """
        with self.storage.creation_lock():
            existing = self.find(session.id, session.agent)
            return existing if existing is not None else self._create_locked(session)

    def _create_locked(self, session: Session) -> str:
        """Create the file of ``session`` (the creation lock held); return its name."""
        session.extra[SESSION_ID_KEY] = session.id
        header = session.meta().to_line().encode()
        seconds = int(session.created_at.timestamp())
        for attempt in range(_MAX_NAME_TRIES):
            name = file_name(session.agent, seconds + attempt, session.id)
            try:
                self.storage.create(name, header, created=session.created_at.timestamp())
            except FileExistsError:
                continue  # another session's name reads the same; move one second on
            self.plugin_manager.hook.crab_session_created(session=session)
            return name
        raise FileExistsError(
            f"no free file name for session {session.id!r} in {self.storage.describe()}"
        )

    # --- listing ------------------------------------------------------------

    def list_sessions(
        self, *, agent: str | None = None, created_by: str | None = None
    ) -> list[SessionInfo]:
        """All sessions in the directory, newest ``created_at`` first.

        Reads only each file's header, so it costs the same however long the
        sessions are. Files that are not sessions are skipped with a warning.
        """
        found = [
            (name, meta)
            for name, meta in self._metas(self.storage.names())
            if (agent is None or meta.agent == agent)
            and (created_by is None or meta.created_by == created_by)
        ]
        sizes = self._sizes([name for name, _ in found])
        infos = [
            self._info(name, meta, size) for (name, meta), size in zip(found, sizes, strict=True)
        ]
        infos.sort(key=lambda info: (info.created_at, info.name), reverse=True)
        return infos

    def _info(self, name: str, meta: SessionMeta, size: int | None = None) -> SessionInfo:
        return SessionInfo(
            size=size,
            session_id=session_id_of(name, meta),
            agent=meta.agent,
            created_by=meta.created_by,
            created_at=meta.created_at,
            path=self.storage.path(name),
            name=name,
            extra=dict(meta.extra),
        )

    def latest_session(self, agent: str = "crab", created_by: str = "user") -> SessionInfo | None:
        """The newest session of ``agent`` created by ``created_by``, or None.

        A storage with an index by creation time (Redis) is read newest
        first, a page of headers at a time, until one matches.
        """
        names = self.storage.names()
        newest: tuple[datetime, str, SessionMeta] | None = None
        for start in range(0, len(names), _LATEST_PAGE):
            matches = [
                (meta.created_at, name, meta)
                for name, meta in self._metas(names[start : start + _LATEST_PAGE])
                if meta.agent == agent and meta.created_by == created_by
            ]
            newest = max(
                [*matches, *([newest] if newest else [])], key=lambda m: m[:2], default=None
            )
            if newest is not None and self.storage.names_newest_first:
                break
        if newest is None:
            return None
        _, name, meta = newest
        return self._info(name, meta, self._sizes([name])[0])

    def _sizes(self, names: list[str]) -> list[int | None]:
        """Each session's bytes with the logs kept beside it (None: the session is gone)."""
        kinds = len(COMPANION_KINDS)
        companions = [companion_name(name, kind) for name in names for kind in COMPANION_KINDS]
        found = self.storage.sizes([*names, *companions])
        beside = found[len(names) :]
        return [
            None
            if size is None
            else size + sum(s or 0 for s in beside[i * kinds : (i + 1) * kinds])
            for i, size in enumerate(found[: len(names)])
        ]

    def delete_session(self, session_id: str, agent: str = "crab") -> bool:
        """Delete the session's file, and the logs kept beside it; False if there was none.

        A session whose header no longer reads is deleted too, found by its
        name. A checkpointer's side log goes first, so no side log is left
        without its session.
        """
        try:
            name = self.find(session_id, agent)
        except SessionFormatError:
            name = next(iter(self._named(session_id, agent)), None)
        if name is None:
            return False
        for kind in COMPANION_KINDS:
            self.storage.delete(companion_name(name, kind))
        return self.storage.delete(name)


def _new_session(session_id: Any, agent: str, created_by: str) -> Session:
    """A session not read from storage yet; ``TypeError``/``ValueError`` for a bad id or agent."""
    session_id = _as_id(session_id)
    check_agent(agent)
    return Session(
        id=session_id,
        agent=agent,
        created_by=created_by,
        created_at=datetime.now(timezone.utc),
    )


def _as_id(session_id: Any) -> str:
    if isinstance(session_id, str):
        return session_id
    if isinstance(session_id, int) and not isinstance(session_id, bool):
        return str(session_id)  # crabtalk's own ids are integers
    raise TypeError(f"session id must be a str, not {type(session_id).__name__}")
