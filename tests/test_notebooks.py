"""The notebooks in notebooks/ run top to bottom, and are committed without outputs.

Each notebook asserts what it shows, so running it checks its content; a cell
that raises fails its test, naming the cell. Outputs are not committed: they
would go stale, and a diff of a notebook should show only its source.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = [
    "agent_memory.ipynb",
    "crabtalk_interop.ipynb",
    "performance.ipynb",
    "quickstart.ipynb",
]
CELL_TIMEOUT = 600  # seconds; generous, so a slow CI machine fails on errors only
_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def _load(name: str) -> dict[str, Any]:
    # Plain JSON, so the no-outputs check needs nothing beyond the standard library.
    notebook: dict[str, Any] = json.loads((NOTEBOOKS_DIR / name).read_text(encoding="utf-8"))
    return notebook


def _code_cells(notebook: Any) -> list[tuple[int, Any]]:
    return [(i, cell) for i, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "code"]


def _failed_cell(notebook: Any) -> str:
    """Which cell raised (its index in the notebook), from the error output nbclient recorded."""
    for index, cell in _code_cells(notebook):
        if any(output["output_type"] == "error" for output in cell.get("outputs", [])):
            return f"cell {index} failed"
    return "a cell failed"


def test_every_notebook_is_executed_by_these_tests() -> None:
    assert sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb")) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_no_outputs(name: str) -> None:
    notebook = _load(name)
    assert notebook["nbformat"] == 4
    cells = _code_cells(notebook)
    assert cells, f"{name} has no code cells"
    for index, cell in cells:
        assert cell["outputs"] == [], f"{name}: cell {index} has outputs (strip them)"
        assert cell["execution_count"] is None, f"{name}: cell {index} has an execution count"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name: str) -> None:
    nbformat = pytest.importorskip("nbformat", reason="needs the [notebooks] extra")
    nbclient = pytest.importorskip("nbclient", reason="needs the [notebooks] extra")
    notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    nbformat.validate(notebook)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    failure = None
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        # nbclient's message holds the cell's source and the traceback, in terminal colours.
        failure = f"{name}: {_failed_cell(notebook)}:\n{_ANSI_COLOUR.sub('', str(error))}"
    if failure is not None:
        pytest.fail(failure, pytrace=False)  # outside `except`: the report once, not chained

    for index, cell in _code_cells(notebook):
        assert cell["execution_count"] is not None, f"{name}: cell {index} did not run"
        # Warnings a user would see are failures too (deprecations, torn tails, ...).
        stderr = [o["text"] for o in cell["outputs"] if o.get("name") == "stderr"]
        assert not stderr, f"{name}: cell {index} wrote to stderr:\n{''.join(stderr)}"
