"""Shared test set-up: crabtalk's fixture files and the hypothesis profile."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import settings
from postgres_servers import PostgresServer, postgres_missing
from redis_servers import (
    RedisClusterServers,
    RedisServer,
    redis_binaries_missing,
    redis_py_missing,
)


def _missing(*modules: str) -> bool:
    try:
        return any(importlib.util.find_spec(module) is None for module in modules)
    except ModuleNotFoundError:  # a parent package is missing
        return True


# The checkpointer's tests need the langgraph extra; those with real agents and graphs also
# need langgraph and langchain (the dev extra; langchain needs Python 3.11).
collect_ignore: list[str] = []
if _missing("langgraph.checkpoint.base", "langgraph.checkpoint.conformance"):
    collect_ignore += [
        "test_saver.py",
        "test_sidelog.py",
        "test_thread.py",
        "test_checkpoint_cli.py",
        "test_checkpoint_conformance.py",
        "test_checkpoint_listing.py",
    ]
AGENTS_MISSING = _missing("langgraph.checkpoint.base", "langgraph.graph", "langchain.agents")
"""Whether real agents cannot run here (tests elsewhere skip what needs them)."""
if AGENTS_MISSING:
    collect_ignore += [
        "test_checkpoint_agents.py",
        "test_checkpoint_durability.py",
        "test_sealed.py",
        "test_middleware.py",
        "test_saver_conventions.py",
        "test_session_truth.py",
        "test_side_end.py",
        "test_moving.py",
    ]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full-stress",
        action="store_true",
        default=False,
        help="run the long stress loops at full length (CRAB_FULL_STRESS=1 does too; CI does)",
    )


@pytest.fixture(scope="session")
def stress(pytestconfig: pytest.Config) -> Callable[[int], int]:
    """A stress loop's length: as given with --full-stress, else a third of it.

    The short loops still run every path (several writers interleaving, every
    kind of line); the full ones make a rare interleaving likelier.
    """
    full = pytestconfig.getoption("full_stress") or os.environ.get("CRAB_FULL_STRESS") == "1"
    return lambda length: length if full else max(length // 3, 1)


# crabtalk's own session files, byte for byte, kept in the repo: a clone tests on its own.
FIXTURE_ROOT = Path(__file__).resolve().parent / "fixtures"
FIXTURES = FIXTURE_ROOT / "crabtalk"
FIXTURE_FILES = sorted(FIXTURES.glob("*.jsonl"))
ERA_FILES = sorted((FIXTURE_ROOT / "crabtalk-eras").glob("*/*.jsonl"))

if not FIXTURE_FILES or not ERA_FILES:
    raise RuntimeError(f"crabtalk fixtures not found in {FIXTURE_ROOT}")

# CI runs are reproducible; local runs explore new examples each time.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def run_python(code: str, *args: str) -> str:
    """Run ``code`` in a new Python process (this interpreter); return its output."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_threads(work: Callable[[int], object], count: int = 4) -> None:
    """Run ``work(0..count-1)`` in threads released together; assert none failed or hung."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            work(index)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []


# The Redis servers started so far: redis_prefix cleans only those, never starting one itself.
_LIVE_REDIS: list[RedisServer | RedisClusterServers] = []
Servers = TypeVar("Servers", RedisServer, RedisClusterServers)


@pytest.fixture(scope="session")
def redis_available() -> None:
    """Skip without redis-server, redis-cli or redis-py; in CI (``CI`` set) fail instead."""
    binaries = redis_binaries_missing()
    module = redis_py_missing()
    if binaries is None and module is None:
        return
    if binaries is not None:
        reason = (
            f"redis-server not installed: {binaries}; install Debian's redis-server and redis-tools"
        )
    else:
        reason = f"{module}; install redis-py (the Redis backend's extra)"
    if os.environ.get("CI"):
        # CI must exercise the Redis backend: a silent skip there would hide a broken install.
        pytest.fail(f"CI is set, so the Redis tests may not skip: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server(
    redis_available: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    """One standalone redis-server for the session; its log stays in pytest's temp dir."""
    yield from _live(RedisServer(tmp_path_factory.mktemp("redis")))


@pytest.fixture(scope="session")
def redis_cluster(
    redis_available: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisClusterServers]:
    """A 3-node Redis cluster (all slots, no replicas) for the session."""
    yield from _live(RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")))


def _live(servers: Servers) -> Iterator[Servers]:
    """``servers`` while a fixture lends them: known to redis_prefix's clean-up, then stopped."""
    with servers:
        _LIVE_REDIS.append(servers)
        try:
            yield servers
        finally:
            _LIVE_REDIS.remove(servers)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's database-0 URL, e.g. ``redis://127.0.0.1:41234/0``."""
    return redis_server.url


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    """The session cluster's first-node URL, e.g. ``redis://127.0.0.1:41235``."""
    return redis_cluster.url


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards from the live servers."""
    prefix = "t" + uuid.uuid4().hex[:12]
    yield prefix
    for servers in _LIVE_REDIS:
        delete_prefixed(servers, prefix)


def delete_prefixed(servers: RedisServer | RedisClusterServers, prefix: str) -> None:
    """Delete ``prefix*`` node by node, one key per command, so cluster slots never mix."""
    nodes = servers.nodes if isinstance(servers, RedisClusterServers) else [servers]
    for node in nodes:
        with node.client() as client, client.pipeline(transaction=False) as pipe:
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                pipe.unlink(key)
            pipe.execute()


# --- PostgreSQL: one private server for the session, a schema per test ------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL for the session; skipped where none can start (failed under CI)."""
    reason = postgres_missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the PostgreSQL tests may not skip: {reason}", pytrace=False)
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The session server's URL (the test user, trusted on loopback)."""
    return postgres_server.url


@pytest.fixture
def postgres_schema(postgres_server: PostgresServer) -> Iterator[str]:
    """A schema no other test uses, set up; dropped afterwards."""
    from crab_langchain.storage.postgres import PostgresStorage

    schema = "t" + uuid.uuid4().hex[:12]
    storage = PostgresStorage.from_url(postgres_server.url, schema=schema)
    try:
        storage.setup()
    finally:
        storage.close()
    yield schema
    postgres_server.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# Every backend's behaviour suite: a test taking `backend` runs on each (see backends.py).
from backends import backend  # noqa: E402, F401
