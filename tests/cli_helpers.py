"""Running ``crab-sessions`` as a real process, for the CLI tests of every backend."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from importlib.util import find_spec
from pathlib import Path
from typing import IO

import pytest
from conftest import FIXTURE_FILES

WAIT = 20  # seconds a --follow test waits for a line before failing


def crab(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m crab_langchain ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "crab_langchain", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@pytest.fixture(autouse=True)
def isolated(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No test without click (but the one about its absence) nor on the user's sessions."""
    if find_spec("click") is None and "without_click" not in request.node.name:
        pytest.skip("needs the 'cli' extra (click)")
    # The default root is $CRABTALK_HOME/sessions: never the user's real one.
    monkeypatch.setenv("CRABTALK_HOME", str(tmp_path / "home"))


@pytest.fixture
def sessions(tmp_path: Path) -> Path:
    """A sessions directory holding writable copies of crabtalk's fixtures."""
    directory = tmp_path / "sessions"
    directory.mkdir()
    for source in FIXTURE_FILES:
        (directory / source.name).write_bytes(source.read_bytes())
    return directory


def assert_one_line_error(done: subprocess.CompletedProcess[str], *parts: str) -> str:
    """``done`` failed with one ``crab-sessions: error:`` line holding ``parts``; that line."""
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("crab-sessions: error: ")
    for part in parts:
        assert part in line
    return line


class Follower:
    """``crab-sessions ARGS`` left running (``show --follow``), its output read as it comes."""

    def __init__(self, *args: str | Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "crab_langchain", *map(str, args)],
            # As at a terminal: a test run in the background inherits SIGINT ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        streams = ((self.process.stdout, self.out), (self.process.stderr, self.err))
        for stream, sink in streams:
            threading.Thread(target=_read_lines, args=(stream, sink), daemon=True).start()

    def stop(self) -> tuple[str, str]:
        """Ctrl-C, as a person would; what it printed after that (stdout, stderr)."""
        self.process.send_signal(signal.SIGINT)
        return self.process.communicate(timeout=WAIT)

    def kill(self) -> None:
        self.process.kill()

    @property
    def returncode(self) -> int | None:
        return self.process.returncode


def _read_lines(stream: IO[str], sink: queue.Queue[str]) -> None:
    for line in stream:
        sink.put(line.rstrip("\n"))


def lines_until(sink: queue.Queue[str], wanted: str) -> list[str]:
    """Lines from ``sink`` up to and including one containing ``wanted``."""
    lines = []
    while True:
        try:
            line = sink.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no line containing {wanted!r} within {WAIT} s")
        lines.append(line)
        if wanted in line:
            return lines
