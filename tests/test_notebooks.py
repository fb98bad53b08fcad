"""Every notebook in notebooks/ executes top to bottom at tiny sizes (LATENTJAX_TINY=1)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


# The quick-start notebook runs by default; the others (1-3 min each on 2 cores) are `slow`.
PARAMS = [
    pytest.param(p, id=p.stem, marks=() if p.stem == "quickstart" else pytest.mark.slow)
    for p in NOTEBOOKS
]


@pytest.mark.parametrize("path", PARAMS)
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("LATENTJAX_TINY", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "notebooks are stored without outputs"
    )
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": path.parent}}
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
