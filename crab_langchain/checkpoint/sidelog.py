"""The side log: everything of a thread's checkpoints but its conversation.

It lives beside the thread's session, as a companion log
(``<session file>.checkpoints``; the same hash tag on Redis), and is
append-only JSONL. Its first line says whose it is; every other line is one
record, a JSON object with one key:

- ``{"checkpoint": {"ns", "id", "parent", "metadata", "state", "values"}}``:
  one checkpoint. ``state`` is the checkpoint without its channel values,
  ``values`` the ``[channel, version, value]`` of the channels it gave new
  versions (as the saver's ``new_versions`` said). The root namespace's
  ``messages`` is kept not as a value but as a place in the session,
  ``{"session": [epoch, line]}``: the working context as it stood at that
  line of that epoch. ``"unseen": [id, ...]`` names messages in it that
  another door appended after LangGraph was told the conversation (the put
  did not hold them): its run never removed them.
- ``{"writes": {"ns", "checkpoint", "task", "path", "items": [[idx, channel, value]]}}``:
  one ``put_writes`` call.
- ``{"intent": {"epoch", "first", "last", "checkpoint", "digest"}}``: a
  ``put`` is about to append these lines to the session; the record of
  checkpoint ``checkpoint`` follows them and finishes it. Written first, so
  lines no checkpoint refers to yet are told apart: a put under way (or
  killed) wrote them, not a chat history continuing the session. ``digest``
  (of the lines' bytes) tells whether a killed put's lines landed: the next
  put removes them if so, and keeps every line another writer appended.
  (An intent of an older release has neither key; any root checkpoint
  finishes it.) ``"carried": [line, ...]``: lines among them that hold
  another door's messages written again by a rewrite, still not the put's.
  A put whose session moved before its conditional append announces its
  lines again; the last intent of a checkpoint is the one that landed.
- ``{"archive": {"epoch", "first", "lines"}}``: the session's lines as they
  were before a rewrite replaced them (epoch ``n`` is the session between the
  ``n``-th and the next rewrite; the session file holds the newest). With
  ``"base": b`` (a fork that kept the first lines), only the lines after
  ``b`` are here: the lines up to ``b`` are the next epoch's, byte for byte.
- ``{"blobs": {"ns", "values": [[channel, version, value]]}}``: values kept
  when the checkpoints that stored them were deleted.
- ``{"snapshot": {"epoch", "bases", "pending", "written", "values"}}``:
  what a reader of the records after it needs of those before it, to read
  the newest checkpoint without them (see :meth:`SideIndex.resumed`): the
  session's epoch, the archived epochs' ``bases`` (``[epoch, base]``), the
  put intents of this epoch not finished yet, the last line a finished put
  of this epoch wrote, and the root namespace's channel values that the
  checkpoint put with it does not give again (``[channel, version, value]``).
  A put writes one before its root checkpoint's record when the last is
  ``SNAPSHOT_EVERY`` lines back.
- ``{"written": {"epoch", "last", "spans"}}``: session lines ``spans``
  (``[first, last]`` pairs) of ``epoch`` were written by puts, ``last`` the
  newest (what their intents said, kept when pruning drops the intents):
  every other line another writer appended. Without ``spans`` (an older
  release), every line up to ``last``.

A value is ``{"json": ...}`` where JSON holds it as it is, ``{"messages":
[...]}`` for a list of messages (their session lines' objects) and
``{"typed": [type, base64]}`` (the saver's serializer) otherwise;
``{"empty": true}`` says a channel has no value at that version (LangGraph
gave it a new version and left it empty), so a reader does not look further
back for one.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.checkpoint.base import WRITES_IDX_MAP, writes_sort_key
from langgraph.checkpoint.serde.base import SerializerProtocol

from crab_langchain.convert import decode_line, encode, is_auto_injected
from crab_langchain.log import NumberedLines, SessionLog
from crab_langchain.models import SessionFormatError
from crab_langchain.storage import owner_of

__all__ = [
    "EMPTY",
    "SIDE_KIND",
    "BadRecordWarning",
    "Intent",
    "Kept",
    "Record",
    "SideIndex",
    "archive_record",
    "blobs_record",
    "check_side_header",
    "checkpoint_record",
    "decode_value",
    "encode_value",
    "intent_record",
    "lines_digest",
    "side_header",
    "snapshot_record",
    "writes_record",
    "written_record",
]

SIDE_KIND = "checkpoints"
"""The companion kind of the side log: ``<session file>.checkpoints``."""

_FORMAT = 1
BlobKey = tuple[str, str, Any]
"""``(namespace, channel, version)``: where a channel's value at a version is kept."""
EMPTY = {"empty": True}
"""The value of a channel that has none at its version."""
Kept = set[tuple[str, str]]
"""``(namespace, checkpoint id)`` of the checkpoints a pruned side log keeps."""

# Exactly these classes: a list of them reads back equal from its session lines.
_LINE_CLASSES = (HumanMessage, AIMessage, SystemMessage, ToolMessage)


def _dumps(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def side_header(session: str, identity: str) -> bytes:
    """The first line of the side log of session log ``session`` (its header's ``identity``)."""
    return _dumps({"crab_checkpoints": _FORMAT, "session": session, "identity": identity})


def check_side_header(log: SessionLog, header: bytes) -> str | None:
    """The identity of the session the side log ``log`` belongs to (None: an older release's).

    Raises:
        SessionFormatError: ``header`` is not a side log's, or names another session.
    """
    try:
        fields = json.loads(header)
        if not isinstance(fields, dict) or fields.get("crab_checkpoints") != _FORMAT:
            raise ValueError("no crab_checkpoints format 1")
    except ValueError as error:
        reason = f"not a checkpointer's side log ({str(error)[:100]})"
        raise log.error(SessionFormatError(reason), 1) from None
    owner = owner_of(log.name)
    if owner is not None and fields.get("session") != owner[0]:
        reason = f"the side log of another session ({str(fields.get('session'))[:100]!r})"
        raise log.error(SessionFormatError(reason), 1)
    identity = fields.get("identity")
    return identity if isinstance(identity, str) else None


# --- values ------------------------------------------------------------------------


def encode_value(serde: SerializerProtocol, value: Any, *, readable: bool = True) -> dict[str, Any]:
    """``value`` as the side log keeps it: readable JSON where it can be (and ``readable``).

    Not ``readable``: always the serializer's encoding (an encrypting one's).
    """
    if readable and _is_json(value):
        return {"json": value}
    if readable and isinstance(value, list) and value and all(_as_line(item) for item in value):
        try:
            return {"messages": [json.loads(encode(m).line) for m in value]}
        except TypeError:
            pass  # not JSON all through: the serializer's encoding below
    kind, data = serde.dumps_typed(value)
    return {"typed": [kind, base64.b64encode(data).decode("ascii")]}


def _as_line(item: Any) -> bool:
    """Whether ``item`` reads back equal from its line (a line drops the auto-injected mark)."""
    return type(item) in _LINE_CLASSES and not is_auto_injected(item)


def decode_value(serde: SerializerProtocol, encoded: Mapping[str, Any]) -> Any:
    """The value :func:`encode_value` encoded: a new object, which callers may change.

    Raises:
        ValueError: ``encoded`` is not one of the side log's value forms.
    """
    if "json" in encoded:
        return copy.deepcopy(encoded["json"])  # LangGraph changes checkpoints it is given
    if "messages" in encoded:
        return [_message(item) for item in encoded["messages"]]
    kind, data = encoded["typed"]
    return serde.loads_typed((kind, base64.b64decode(data)))


def _message(item: Any) -> BaseMessage:
    message = decode_line(_dumps(item))
    if not isinstance(message, BaseMessage):
        raise SessionFormatError("a value's message is a marker or an event")
    return message


def _is_json(value: Any) -> bool:
    """Whether JSON gives ``value`` back equal and of the same types (no tuples, no subclasses)."""
    kind = type(value)
    if value is None or kind is bool or kind is int:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is str:
        return _utf8(value)
    if kind is list:
        return all(_is_json(item) for item in value)
    if kind is dict:
        return all(type(k) is str and _utf8(k) and _is_json(v) for k, v in value.items())
    return False


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- records -------------------------------------------------------------------------


def checkpoint_record(  # noqa: PLR0917 - the record's fields, in its order
    ns: str,
    checkpoint_id: str,
    parent: str | None,
    metadata: dict[str, Any],
    state: dict[str, Any],
    values: list[list[Any]],
) -> bytes:
    """The line of one checkpoint: ``values`` are ``[channel, version, encoded value]``."""
    body = {"ns": ns, "id": checkpoint_id, "parent": parent, "metadata": metadata}
    return _dumps({"checkpoint": {**body, "state": state, "values": values}})


SNAPSHOT_EVERY = 64
"""Side-log lines between snapshots, at least: what a cold read of the newest checkpoint
reads, about (its writer puts one when the last is this far back)."""
SNAPSHOT_PREFIX = b'{"snapshot":'

WRITES_PREFIX = b'{"writes":'
"""How every :func:`writes_record` line starts: pending writes, which bear on no put's decision."""


def writes_record(
    ns: str, checkpoint_id: str, task_id: str, task_path: str, items: list[list[Any]]
) -> bytes:
    """The line of one ``put_writes`` call: ``items`` are ``[idx, channel, encoded value]``."""
    body = {"ns": ns, "checkpoint": checkpoint_id, "task": task_id, "path": task_path}
    return _dumps({"writes": {**body, "items": items}})


def snapshot_record(
    epoch: int,
    bases: Mapping[int, int],
    pending: Sequence[Intent],
    written: int,
    values: Sequence[tuple[str, Any, Any]],
) -> bytes:
    """The line of a snapshot (see the module's docstring): ``pending`` of ``epoch`` only."""
    intents = [
        [i.epoch, i.first, i.last, i.checkpoint, i.digest, list(i.carried)]
        for i in pending
        if i.epoch == epoch
    ]
    body = {
        "epoch": epoch,
        "bases": [[older, base] for older, base in sorted(bases.items())],
        "pending": intents,
        "written": written,
        "values": [list(value) for value in values],
    }
    return _dumps({"snapshot": body})


def archive_record(epoch: int, body: NumberedLines, base: int | None = None) -> bytes:
    """The line keeping the session's body lines ``body`` of ``epoch``, byte for byte.

    The lines are embedded as they are (each is one JSON object), so the
    record reads as the session did. ``base``: ``body`` holds only the lines
    after it; the lines up to it stay, as they are, in the next epoch.
    """
    numbers = [number for number, _ in body]
    first = numbers[0] if numbers else (base or 1) + 1
    head: dict[str, Any] = {"epoch": epoch, "first": first}
    if base is not None:
        head["base"] = base
    if numbers != list(range(first, first + len(numbers))):
        head["numbers"] = numbers  # blank lines were left out between them
    opened = _dumps({"archive": head})[:-2]  # without the closing braces
    return opened + b',"lines":[' + b",".join(line for _, line in body) + b"]}}"


def intent_record(
    epoch: int,
    first: int,
    lines: Sequence[bytes],
    checkpoint_id: str,
    carried: Sequence[int] = (),
) -> bytes:
    """The line announcing ``lines`` as lines ``first``.. of ``epoch``, for a checkpoint.

    ``carried``: the numbers of those lines that hold another door's
    messages, written again by a rewrite: still not a put's own.
    """
    body = {"epoch": epoch, "first": first, "last": first + len(lines) - 1}
    extra = {"checkpoint": checkpoint_id, "digest": lines_digest(lines)}
    more = {"carried": list(carried)} if carried else {}
    return _dumps({"intent": {**body, **extra, **more}})


def lines_digest(lines: Iterable[bytes]) -> str:
    """A short digest of session lines' bytes: whether the lines an intent announced landed."""
    digest = hashlib.blake2b(digest_size=12)
    for line in lines:
        digest.update(line + b"\n")
    return digest.hexdigest()


def written_record(epoch: int, spans: Sequence[tuple[int, int]]) -> bytes:
    """The line saying that puts wrote session lines ``spans`` (``(first, last)``) of ``epoch``."""
    pairs: list[list[int]] = []
    for first, last in sorted(spans):
        if pairs and first <= pairs[-1][1] + 1:  # adjacent: one span
            pairs[-1][1] = max(pairs[-1][1], last)
        else:
            pairs.append([first, last])
    last = pairs[-1][1] if pairs else 0
    return _dumps({"written": {"epoch": epoch, "last": last, "spans": pairs}})


def blobs_record(values: Iterable[tuple[BlobKey, Any]]) -> bytes:
    """The line keeping encoded values ``(key, value)`` whose checkpoints were deleted."""
    return _dumps({"blobs": {"values": [[ns, ch, version, v] for (ns, ch, version), v in values]}})


# --- reading ---------------------------------------------------------------------------


class BadRecordWarning(UserWarning):
    """A side-log line is not a record: skipped, and kept as it is."""


@dataclass
class StoredWrite:
    """One pending write as stored: its task, channel, encoded value and task path."""

    task_id: str
    channel: str
    value: Any
    path: str


# Every record is written with its keys in one order, so the namespace and the
# checkpoint id are read off the start of its line, and the rest is parsed only
# when asked for: a cold read of the newest checkpoint parses a few records,
# not every one. A line these do not match (one edited by hand) is parsed whole.
_JSON_STRING = rb'"(?:[^"\\]|\\.)*"'
_CHECKPOINT_START = re.compile(
    rb'\{"checkpoint":\{"ns":(' + _JSON_STRING + rb'),"id":(' + _JSON_STRING + rb")"
)
_WRITES_START = re.compile(
    rb'\{"writes":\{"ns":(' + _JSON_STRING + rb'),"checkpoint":(' + _JSON_STRING + rb")"
)
_INTENT = re.compile(
    rb'\{"intent":\{"epoch":(\d+),"first":(\d+),"last":(\d+)'
    rb'(?:,"checkpoint":(' + _JSON_STRING + rb'),"digest":"([0-9a-f]+)")?\}\}'
)


@dataclass(frozen=True)
class Intent:
    """Session lines ``first``..``last`` of ``epoch`` that a put announced and has not finished."""

    epoch: int
    first: int
    last: int
    checkpoint: str | None = None
    """The checkpoint whose record finishes it (None: an older release's, finished by any)."""
    digest: str | None = None
    carried: tuple[int, ...] = ()
    """Lines among them that hold another door's messages: not the put's own."""

    def own(self) -> list[tuple[int, int]]:
        """The lines ``(first, last)`` that are the put's own (the carried ones left out)."""
        spans, start = [], self.first
        for number in sorted(n for n in self.carried if self.first <= n <= self.last):
            if number > start:
                spans.append((start, number - 1))
            start = number + 1
        if start <= self.last:
            spans.append((start, self.last))
        return spans


class Record:
    """One line of the side log, parsed the first time its body is asked for."""

    __slots__ = ("_body", "kind", "line", "number")

    def __init__(self, number: int, line: bytes, kind: str) -> None:
        self.number, self.line, self.kind = number, line, kind
        self._body: dict[str, Any] | None = None

    def body(self, log: SessionLog) -> dict[str, Any]:
        """The record's object (under its one key).

        Raises:
            SessionFormatError: the line is not such a record (naming it).
        """
        if self._body is None:
            self._body = _parsed(log, self.number, self.line)[1]
        return self._body


def _parsed(log: SessionLog, number: int, line: bytes) -> tuple[str, dict[str, Any]]:
    try:
        record = json.loads(line)
        (kind, body), *others = record.items()
        if others or not isinstance(body, dict):
            raise ValueError(f"not one key holding an object: {sorted(record)}")
    except (ValueError, TypeError, AttributeError) as error:
        raise _not_a_record(log, number, error) from None
    return kind, body


def _failed(log: SessionLog, record: Record, error: Exception) -> SessionFormatError:
    return _not_a_record(log, record.number, error)


def _not_a_record(log: SessionLog, number: int, error: Exception) -> SessionFormatError:
    reason = f"not a checkpoint record ({type(error).__name__}: {str(error)[:100]})"
    return log.error(SessionFormatError(reason), number)


@dataclass
class SideIndex:
    """A side log read so far: where its checkpoints, writes and values are, parsed lazily."""

    log: SessionLog
    checkpoints: dict[str, dict[str, Record]] = field(default_factory=dict)
    writes: dict[tuple[str, str], list[Record]] = field(default_factory=dict)
    archives: dict[int, NumberedLines] = field(default_factory=dict)
    bases: dict[int, int] = field(default_factory=dict)
    """Per archived epoch kept in part: its lines up to this one are the next epoch's."""
    records: list[Record] = field(default_factory=list)
    newest_ids: dict[str, str] = field(default_factory=dict)
    written: dict[int, int] = field(default_factory=dict)
    """Per epoch, the last session line a finished put wrote: lines past it no such put wrote."""
    written_spans: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    """Per epoch, the session lines ``(first, last)`` finished puts wrote: no other door's."""
    pending: list[Intent] = field(default_factory=list)
    """Intents whose checkpoint has not come (yet, or ever: its put was killed), oldest first."""
    bad: list[tuple[int, bytes, SessionFormatError]] = field(default_factory=list)
    """Lines that are not records, and why: kept as they are, read as nothing."""
    _blobs: dict[BlobKey, tuple[Any, tuple[str, str] | None]] = field(default_factory=dict)
    _corrupt: dict[str, list[SessionFormatError]] = field(default_factory=dict)
    """Per namespace, checkpoint records that do not read: a value sought may be in one."""
    _unread: dict[str, list[Record]] = field(default_factory=dict)
    """Per namespace, the checkpoint records whose values are not in ``_blobs`` yet."""
    partial: bool = False
    """Read from a snapshot on (:meth:`resumed`): it knows the newest root checkpoint and
    what reading it needs, nothing older. Anything else reads the side log whole."""
    read_whole: bool = False
    """A partial index that met a line that is not a record: only the whole log tells."""
    snapshot_at: int = 0
    """The line of the last snapshot read (0: none)."""
    _epoch_from: int = 0
    """The epoch a partial index started in (its snapshot's)."""
    floor: str | None = None
    """A partial index's first root checkpoint (the one its snapshot went before): every
    checkpoint of the records before the snapshot is older."""

    @classmethod
    def resumed(cls, log: SessionLog, lines: NumberedLines) -> SideIndex | None:
        """A partial index of the side log's last ``lines``, from a snapshot on.

        The records after a snapshot hold the newest root checkpoint (a put
        writes one only before a root checkpoint newer than every other),
        and the snapshot the rest of what reading it needs. The snapshot is
        the last one with a few root checkpoints after it (so the newest few
        are listed from them too), or the first of ``lines``. None if
        ``lines`` hold no snapshot, or a line that is not a record (the
        whole log then says where).
        """
        start = _resume_from(lines)
        if start is None:
            return None
        number, line = lines[start]
        index = cls(log, partial=True, snapshot_at=number)
        try:
            index._take_snapshot(_parsed(log, number, line)[1])
            with warnings.catch_warnings():
                warnings.simplefilter("error", BadRecordWarning)
                index.take(lines[start + 1 :])
        except (SessionFormatError, BadRecordWarning, ValueError, TypeError, KeyError):
            return None
        return index

    def _take_snapshot(self, body: dict[str, Any]) -> None:
        self._epoch_from = int(body["epoch"])
        self.bases.update((int(older), int(base)) for older, base in body["bases"])
        for epoch, first, last, checkpoint, digest, carried in body["pending"]:
            intent = Intent(int(epoch), int(first), int(last), checkpoint, digest, tuple(carried))
            self.pending.append(intent)
        self.written[self._epoch_from] = int(body["written"])
        for channel, version, value in body["values"]:
            self._blobs[("", channel, _version(version))] = (value, None)

    @property
    def epoch(self) -> int:
        """The session's epoch now: how many times a rewrite replaced it."""
        archived = max(self.archives) + 1 if self.archives else 0
        return max(self._epoch_from, archived)

    def snapshot(self, values: Mapping[str, Any]) -> bytes:
        """A snapshot of this (whole) index, with the root namespace's values ``values``
        (channel to version) where it has them."""
        assert not self.partial  # a partial index does not know what came before it
        kept = []
        for channel, version in values.items():
            found = self.blob(("", channel, version))
            if found is not None:
                kept.append((channel, version, found[0]))
        epoch = self.epoch
        return snapshot_record(epoch, self.bases, self.pending, self.written.get(epoch, 0), kept)

    def snapshot_due(self, lines: int) -> bool:
        """Whether a put's root checkpoint record going after line ``lines`` needs a
        snapshot before it: the last is :data:`SNAPSHOT_EVERY` lines back or more."""
        return not self.partial and lines - max(self.snapshot_at, 1) >= SNAPSHOT_EVERY

    def take(self, lines: NumberedLines) -> None:
        """Add records ``lines`` (body lines of the side log, after its header).

        A line that is not a record hurts only what it held: it is set aside
        with a :class:`BadRecordWarning` naming it (in ``bad``), and a
        checkpoint that needs it raises :class:`SessionFormatError` naming it.
        """
        for number, line in lines:
            try:
                self._take_line(number, line)
            except SessionFormatError as error:
                if self.partial:  # its lines are numbered from its end: the whole read names it
                    self.read_whole = True
                    continue
                self.bad.append((number, line, error))
                warnings.warn(f"skipping {error}", BadRecordWarning, stacklevel=2)

    def _take_line(self, number: int, line: bytes) -> None:
        found = _CHECKPOINT_START.match(line)
        if found:
            self._take_checkpoint(Record(number, line, "checkpoint"), *_strings(found))
            return
        found = _WRITES_START.match(line)
        if found:
            record = Record(number, line, "writes")
            self.writes.setdefault(_strings(found), []).append(record)
            self.records.append(record)
            return
        if line.startswith(SNAPSHOT_PREFIX):  # for a reader from its end: nothing to take here
            self.records.append(Record(number, line, "snapshot"))
            self.snapshot_at = number
            return
        found = _INTENT.fullmatch(line)
        if found:
            epoch, first, last = (int(number) for number in found.groups()[:3])
            checkpoint = _string(found[4]) if found[4] else None
            self.pending.append(Intent(epoch, first, last, checkpoint, _ascii(found[5])))
            self.records.append(Record(number, line, "intent"))
            return
        self._take_whole(number, line)

    def _take_checkpoint(self, record: Record, ns: str, checkpoint_id: str) -> None:
        if self.partial and ns == "" and self.floor is None:
            self.floor = checkpoint_id
        self.checkpoints.setdefault(ns, {})[checkpoint_id] = record
        self._unread.setdefault(ns, []).append(record)
        self.records.append(record)
        if checkpoint_id > self.newest_ids.get(ns, ""):
            self.newest_ids[ns] = checkpoint_id
        if ns == "" and self.pending:
            self._finish(checkpoint_id)

    def _finish(self, checkpoint_id: str) -> None:
        """The intents root checkpoint ``checkpoint_id`` finishes: its own, and older releases'."""
        still, own = [], []
        for intent in self.pending:
            if intent.checkpoint is None:
                self._written(intent.epoch, intent.own())
            elif intent.checkpoint == checkpoint_id:
                own.append(intent)
            else:
                still.append(intent)
        if own:  # announced again when another writer moved the session first: the last landed
            self._written(own[-1].epoch, own[-1].own())
        self.pending = still

    def _written(self, epoch: int, spans: Sequence[tuple[int, int]]) -> None:
        self.written_spans.setdefault(epoch, []).extend(spans)
        self.written[epoch] = max(self.written.get(epoch, 0), 0, *(last for _, last in spans))

    def _take_whole(self, number: int, line: bytes) -> None:
        kind, body = _parsed(self.log, number, line)
        record = Record(number, line, kind)
        try:
            if kind == "checkpoint":
                self._take_checkpoint(record, _text(body["ns"]), _text(body["id"]))
            elif kind == "writes":
                key = (_text(body["ns"]), _text(body["checkpoint"]))
                self.writes.setdefault(key, []).append(record)
            elif kind == "archive":
                first = body["first"]
                numbers = body.get("numbers") or range(first, first + len(body["lines"]))
                self.archives[body["epoch"]] = [
                    (n, _dumps(item)) for n, item in zip(numbers, body["lines"], strict=True)
                ]
                if body.get("base") is not None:
                    self.bases[body["epoch"]] = int(body["base"])
                else:  # a rewrite done again (its session moved): the last archive says
                    self.bases.pop(body["epoch"], None)
            elif kind == "intent":
                epoch, first, last = int(body["epoch"]), int(body["first"]), int(body["last"])
                checkpoint, digest = body.get("checkpoint"), body.get("digest")
                carried = tuple(int(n) for n in body.get("carried", ()))
                self.pending.append(Intent(epoch, first, last, checkpoint, digest, carried))
            elif kind == "written":
                epoch, last = int(body["epoch"]), int(body["last"])
                spans = body.get("spans")
                if spans is None:  # an older release: every line up to it
                    spans = [[1, last]]
                self._written(epoch, [(int(first), int(end)) for first, end in spans])
            elif kind == "blobs":
                for ns, channel, version, value in body["values"]:
                    self._blobs[(ns, channel, _version(version))] = (value, None)
            elif kind == "snapshot":
                self.snapshot_at = number  # what it says, the records before it say too
            else:
                raise ValueError(f"unknown record {kind!r}")
        except (ValueError, TypeError, KeyError) as error:
            raise _failed(self.log, record, error) from None
        if kind != "checkpoint":  # _take_checkpoint keeps those
            self.records.append(record)

    # --- asking -------------------------------------------------------------------

    def newest(self, ns: str) -> str | None:
        """The newest checkpoint id of namespace ``ns``, if it has one."""
        return self.newest_ids.get(ns)

    def checkpoint(self, ns: str, checkpoint_id: str) -> dict[str, Any] | None:
        """The checkpoint record's object; None if there is none."""
        record = self.checkpoints.get(ns, {}).get(checkpoint_id)
        return None if record is None else record.body(self.log)

    def blob(self, key: BlobKey) -> tuple[Any, tuple[str, str] | None] | None:
        """The encoded value at ``(ns, channel, version)`` and the checkpoint that stored it.

        Records are parsed from the newest back, each once, until it is found:
        a channel's current value was almost always stored lately.
        """
        unread = self._unread.get(key[0], [])
        while key not in self._blobs and unread:
            record = unread.pop()
            try:
                body = record.body(self.log)
                for channel, version, value in body["values"]:
                    found = (key[0], channel, _version(version))
                    self._blobs.setdefault(found, (value, (key[0], body["id"])))
            except SessionFormatError as error:
                self._corrupt.setdefault(key[0], []).append(error)
            except (ValueError, TypeError, KeyError) as error:
                self._corrupt.setdefault(key[0], []).append(_failed(self.log, record, error))
        if key not in self._blobs and self._corrupt.get(key[0]):
            raise self._corrupt[key[0]][0]  # the value may be in the record that does not read
        return self._blobs.get(key)

    def ordered_writes(self, ns: str, checkpoint_id: str) -> list[StoredWrite]:
        """The checkpoint's pending writes in LangGraph's order (``writes_sort_key``).

        A task's write to a channel is kept once, as first written; a special
        channel's (an error, an interrupt) as last written: LangGraph's rule.
        """
        stored: dict[tuple[str, int], StoredWrite] = {}
        for record in self.writes.get((ns, checkpoint_id), []):
            body = record.body(self.log)
            try:
                task_id, path = body["task"], body["path"]
                for idx, channel, value in body["items"]:
                    key = (task_id, WRITES_IDX_MAP.get(channel, idx))
                    if key[1] >= 0 and key in stored:
                        continue
                    stored[key] = StoredWrite(task_id, channel, value, path)
            except (ValueError, TypeError, KeyError) as error:
                raise _failed(self.log, record, error) from None
        return [
            stored[key] for key in sorted(stored, key=lambda k: writes_sort_key(stored[k].path, *k))
        ]

    def put_lines(self, epoch: int) -> list[tuple[int, int]]:
        """The session lines ``(first, last)`` of ``epoch`` that puts announced, finished or not."""
        spans = []
        for record in self.records:
            if record.kind == "intent":
                body = record.body(self.log)
                if body.get("epoch") == epoch:
                    spans.append((int(body["first"]), int(body["last"])))
        return spans

    def messages_place(self, checkpoint_id: str, serde: SerializerProtocol) -> list[int] | None:
        """``[epoch, line]`` where root checkpoint ``checkpoint_id``'s messages end in the session.

        None if it keeps them otherwise (or has none).
        """
        found = self.messages_value(checkpoint_id, serde)
        if not isinstance(found, dict) or "session" not in found or "after" in found:
            return None
        return [int(number) for number in found["session"]]

    def messages_value(self, checkpoint_id: str, serde: SerializerProtocol) -> Any:
        """Root checkpoint ``checkpoint_id``'s messages as stored (encoded); None if none."""
        record = self.checkpoint("", checkpoint_id)
        if record is None:
            return None
        version = decode_value(serde, record["state"])["channel_versions"].get("messages")
        found = None if version is None else self.blob(("", "messages", version))
        return None if found is None else found[0]

    # --- pruning ------------------------------------------------------------------

    def newest_of_each(self) -> Kept:
        """The newest checkpoint of each namespace."""
        return set(self.newest_ids.items())

    def not_of_runs(self, run_ids: set[str], serde: SerializerProtocol) -> Kept:
        """The checkpoints whose metadata names no run of ``run_ids``."""
        return {
            (ns, checkpoint_id)
            for ns, records in self.checkpoints.items()
            for checkpoint_id, record in records.items()
            if decode_value(serde, record.body(self.log)["metadata"]).get("run_id") not in run_ids
        }

    def kept_lines(self, kept: Kept, serde: SerializerProtocol) -> list[bytes]:
        """The records of a side log keeping only checkpoints ``kept`` (its header aside).

        Their writes and archives stay; so does every value a kept checkpoint
        uses that a dropped one stored (in one ``blobs`` record).
        """
        needed = []
        for ns, checkpoint_id in sorted(kept):
            record = self.checkpoint(ns, checkpoint_id)
            assert record is not None
            state = decode_value(serde, record["state"])
            for channel, version in state["channel_versions"].items():
                found = self.blob((ns, channel, version))
                if found is not None and found[1] is not None and found[1] not in kept:
                    needed.append(((ns, channel, version), found[0]))
        lines = [blobs_record(needed)] if needed else []
        pending = {(i.epoch, i.first, i.last, i.checkpoint) for i in self.pending}
        lines += [written_record(e, spans) for e, spans in sorted(self.written_spans.items())]
        lines += [line for _, line, _ in self.bad]  # not ours to judge: kept as they are
        for record_ in self.records:
            try:
                body = record_.body(self.log)
            except SessionFormatError:
                lines.append(record_.line)
                continue
            if record_.kind == "snapshot":
                continue  # of records as they were: the next put writes one anew
            if record_.kind == "intent":
                announced = (body["epoch"], body["first"], body["last"], body.get("checkpoint"))
                if announced not in pending:
                    continue  # its checkpoint followed: it says nothing any more
            if record_.kind == "checkpoint" and (body["ns"], body["id"]) not in kept:
                continue
            if record_.kind == "writes" and (body["ns"], body["checkpoint"]) not in kept:
                continue
            lines.append(record_.line)
        return lines


_ROOT_CHECKPOINT = b'{"checkpoint":{"ns":"",'
_LISTED_AHEAD = 16
"""Root checkpoints a partial index holds, at least, where its lines allow: the newest
few of ``get_state_history`` are read from them too."""


def _resume_from(lines: NumberedLines) -> int | None:
    """Where in ``lines`` a partial index starts: the last snapshot with
    :data:`_LISTED_AHEAD` root checkpoints after it, or else the first one."""
    after = 0
    first = None
    for at in range(len(lines) - 1, -1, -1):
        line = lines[at][1]
        if line.startswith(_ROOT_CHECKPOINT):
            after += 1
        elif line.startswith(SNAPSHOT_PREFIX):
            first = at
            if after >= _LISTED_AHEAD:
                return at
    return first


def _strings(found: re.Match[bytes]) -> tuple[str, str]:
    return _string(found[1]), _string(found[2])


def _string(quoted: bytes) -> str:
    """The text of a JSON string (quotes included); only one with escapes needs the parser."""
    if b"\\" in quoted:
        return str(json.loads(quoted))
    return quoted[1:-1].decode("utf-8")


def _ascii(found: bytes | None) -> str | None:
    return None if found is None else found.decode("ascii")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a string, not {type(value).__name__}")
    return value


def _version(version: Any) -> Any:
    """A channel version as a dict key (JSON keeps str, int and float apart)."""
    if isinstance(version, (str, int, float)) and not isinstance(version, bool):
        return version
    raise TypeError(f"a channel version is a str, int or float, not {type(version).__name__}")
