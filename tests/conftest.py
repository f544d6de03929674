"""Shared test set-up: crabtalk's fixture files and the hypothesis profile."""

from __future__ import annotations

import os
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
