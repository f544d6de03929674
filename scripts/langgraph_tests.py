"""Run LangGraph's own checkpointer tests with CrabSaver beside InMemorySaver.

LangGraph's test suite (the sdist of the installed ``langgraph``) takes its
checkpointers from two fixtures, ``sync_checkpointer`` and
``async_checkpointer``; this script redefines them to give each test
InMemorySaver, CrabSaver on a directory and CrabSaver on a private
``redis-server``, runs the tests that use them, and lists every test that
passes with InMemorySaver and not with CrabSaver. It needs the test tools
LangGraph's suite imports (installed into the running environment by
``--install``)::

    .venv/bin/python scripts/langgraph_tests.py --install
    .venv/bin/python scripts/langgraph_tests.py -k time_travel   # a part of it

Exit status 1 if some test passes with InMemorySaver only. CI runs it (about
three minutes on 2 cores); the README quotes its run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

# What LangGraph's tests import beyond what crab-langchain's dev extra installs.
TEST_TOOLS = [
    "pytest-mock",
    "pytest-timeout",
    "syrupy",
    "pytest-repeat",
    "pytest-dotenv",
    "langgraph-checkpoint-postgres",
    "psycopg[binary]",
    "psycopg-pool",
    "pycryptodome",
]
SAVERS = ["memory", "crab_directory", "crab_redis"]  # test ids name them so (snapshots too)

# Appended to LangGraph's tests/conftest.py: later fixtures of one name replace earlier ones.
FIXTURES = """

# --- crab-langchain: CrabSaver beside InMemorySaver (scripts/langgraph_tests.py) ---
import tempfile as _tempfile

from crab_langchain import SessionStore as _SessionStore
from crab_langchain.checkpoint import CrabSaver as _CrabSaver


def _crab(name, root):
    if name == "crab_directory":
        return _SessionStore(root, entry_points=False)
    return _SessionStore.from_url(
        # Not uuid4: some tests replace it with a counter, and count on every draw.
        os.environ["CRAB_REDIS_URL"], prefix=os.urandom(6).hex(), entry_points=False
    )


@pytest.fixture(scope="function", params=["memory", "crab_directory", "crab_redis"])
def sync_checkpointer(request):
    if request.param == "memory":
        with _checkpointer_memory() as checkpointer:
            yield checkpointer
        return
    with _tempfile.TemporaryDirectory() as root:
        store = _crab(request.param, root)
        yield _CrabSaver(store)
        store.close()


@pytest.fixture(scope="function", params=["memory", "crab_directory", "crab_redis"])
async def async_checkpointer(request):
    if request.param == "memory":
        with _checkpointer_memory() as checkpointer:
            yield checkpointer
        return
    with _tempfile.TemporaryDirectory() as root:
        store = _crab(request.param, root)
        yield _CrabSaver(store)
        await store.aclose()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="install the suite's tools first")
    parser.add_argument("-k", default=None, help="only tests matching this pytest expression")
    parser.add_argument("--workers", default="2", help="pytest-xdist workers (default 2)")
    parser.add_argument("--timeout", default="120", help="seconds a test may take (default 120)")
    args = parser.parse_args()
    if args.install:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *TEST_TOOLS], check=True)
    work = Path(tempfile.mkdtemp(prefix="langgraph-tests-"))
    suite = unpacked_suite(work)
    (suite / "tests" / "conftest.py").open("a").write(FIXTURES)
    files = [
        str(path.relative_to(suite))
        for path in sorted((suite / "tests").glob("test_*.py"))
        if re.search(r"\b(a?sync)_checkpointer\b", path.read_text())
    ]
    with redis_server(work) as url:
        report = work / "report.xml"
        command = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", args.workers,
            f"--timeout={args.timeout}", f"--junitxml={report}", "-o", "addopts=", *files,
        ]  # fmt: skip
        if args.k:
            command += ["-k", args.k]
        env = {**os.environ, "NO_DOCKER": "true", "CRAB_REDIS_URL": url}
        log = work / "pytest.log"  # LangGraph's own summary counts every saver's failures:
        with log.open("w") as output:  # the comparison below is what tells
            subprocess.run(command, cwd=suite, env=env, check=False, stdout=output, stderr=output)
    print(f"LangGraph's suite ran; its output: {log}")
    return compare(report)


def unpacked_suite(work: Path) -> Path:
    """LangGraph's sdist of the installed version, unpacked in ``work``."""
    version = importlib.metadata.version("langgraph")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         f"langgraph=={version}", "-d", str(work)],
        check=True,
    )  # fmt: skip
    with tarfile.open(next(work.glob("langgraph-*.tar.gz"))) as archive:
        archive.extractall(work, filter="data")
    return work / f"langgraph-{version}"


class redis_server:  # noqa: N801 - a context manager used as a function
    """A private ``redis-server`` on a free loopback port, stopped afterwards."""

    def __init__(self, work: Path) -> None:
        self.work = work

    def __enter__(self) -> str:
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server is needed (apt-get install redis-server)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.work)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(100):
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    return f"redis://127.0.0.1:{port}/0"
            time.sleep(0.05)
        raise SystemExit("redis-server did not start")

    def __exit__(self, *exc_info: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def compare(report: Path) -> int:
    """Print, per saver, how many tests passed; list what passes with InMemorySaver only.

    A test's id names its checkpointer among its other parameters (a cache may
    be "memory" too): each CrabSaver test is set against the id with
    "memory" in its checkpointer's place.
    """
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        name = f"{case.get('classname')}::{case.get('name')}"
        outcomes[name] = "failed" if failed else "skipped" if skipped else "passed"
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    twins: set[str] = set()
    missed = []
    for name, outcome in sorted(outcomes.items()):
        found = re.fullmatch(r"(.*)\[(.*)\]", name)
        tokens = found[2].split("-") if found else []
        for place, token in enumerate(tokens):
            if token not in SAVERS[1:]:
                continue
            twin = f"{found[1]}[{'-'.join([*tokens[:place], SAVERS[0], *tokens[place + 1 :]])}]"
            counted = [(token, outcome)] + (
                [] if twin in twins else [(SAVERS[0], outcomes.get(twin))]
            )
            twins.add(twin)
            for saver, seen in counted:
                counts[saver][0] += seen == "passed"
                counts[saver][1] += 1
            if outcomes.get(twin) == "passed" and outcome != "passed":
                missed.append(f"{name}: {outcome}")
    for saver in SAVERS:
        passed, seen = counts[saver]
        print(f"{saver}: {passed} passed of {seen}")
    print("\n".join(["passing with InMemorySaver only:", *missed] if missed else ["none missed"]))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
