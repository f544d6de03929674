"""Shared test set-up: crabtalk's fixture files and the hypothesis profile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import settings

# The repo is cloned beside shared/, on developer machines and in CI alike.
SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures" / "crabtalk"
FIXTURE_FILES = sorted(FIXTURES.glob("*.jsonl"))

if not FIXTURE_FILES:
    raise RuntimeError(f"crabtalk fixtures not found in {FIXTURES}: clone the repo beside shared/")

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
