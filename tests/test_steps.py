"""``steps.py``: work written once as the storage calls it yields, run sync or async."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from crab_langchain.log import SessionLog
from crab_langchain.steps import Append, Blocking, Read, Steps, arun, run
from crab_langchain.storage import DirectoryStorage

HEADER = b'{"agent":"crab","created_by":"user","created_at":"2026-03-23T08:06:51.482913+00:00"}'


@pytest.fixture
def log(tmp_path: Path) -> SessionLog:
    made = SessionLog(DirectoryStorage(tmp_path), "crab_1774253211_7.jsonl")
    made.create(HEADER)
    return made


def work(log: SessionLog) -> Steps[list[Any]]:
    """Append a line, read it back, and recover from a read of a log that is not there."""
    yield Append(log, [b'{"role":"user","content":"a"}'], None)
    chunk = yield Read(log, None)
    try:
        yield Read(SessionLog(log.storage, "missing.jsonl"), None)
    except FileNotFoundError:
        recovered = True
    where = yield Blocking(threading.get_ident)
    return [[line for _, line in chunk.lines], recovered, where]


def test_run_does_each_call_and_throws_its_error_into_the_work(log: SessionLog):
    lines, recovered, where = run(work(log))
    assert lines == [HEADER, b'{"role":"user","content":"a"}']
    assert recovered
    assert where == threading.get_ident()  # sync: in the caller's thread


async def test_arun_does_the_same_work_and_blocking_calls_leave_the_loop(log: SessionLog):
    lines, recovered, where = await arun(work(log))
    assert lines == [HEADER, b'{"role":"user","content":"a"}']
    assert recovered
    assert where != threading.get_ident()  # async: a worker thread, never the loop's


def test_an_error_the_work_does_not_catch_reaches_the_caller(log: SessionLog):
    def failing() -> Steps[None]:
        yield Read(SessionLog(log.storage, "missing.jsonl"), None)

    with pytest.raises(FileNotFoundError):
        run(failing())
    with pytest.raises(FileNotFoundError):
        asyncio.run(arun(failing()))
