"""The Agent Server's checkpointer: CrabSaver on the sessions at $CRAB_SESSIONS."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from crab_langchain.checkpoint import CrabSaver


@contextlib.asynccontextmanager
async def crab_saver() -> AsyncIterator[CrabSaver]:
    async with CrabSaver.afrom_conn_string(os.environ["CRAB_SESSIONS"]) as saver:
        yield saver
