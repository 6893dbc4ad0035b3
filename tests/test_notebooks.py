"""The notebooks: stored without outputs, and each one runs headless, top to bottom, on a tiny synthetic
corpus (CTXEMO_NB_* parameters read in their first cells). 02 and 03 share one small demo run folder."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from ctxemo.explore import ensure_run

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_data_exploration.ipynb", "02_isolated_vs_contextual.ipynb", "03_error_analysis.ipynb"]
# Tiny but complete: 3 folds, so every fold's inner split still has callers to validate on.
N_CALLS = 12
OVERRIDES = ["train.epochs=3", "train.patience=3", "cv.folds=3", "train.device=cpu"]
CELL_TIMEOUT_S = 120


def test_notebooks_are_all_listed():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for k, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: cell {k} has stored outputs"
        assert "attachments" not in cell or not cell.attachments, f"{name}: cell {k} has attachments"


@pytest.fixture(scope="session")
def notebook_out(tmp_path_factory) -> Path:
    """A folder holding the demo run the notebooks read (OUT/demo, with its corpus in OUT/demo/corpus)."""
    out = tmp_path_factory.mktemp("notebooks")
    ensure_run(out / "demo", n_calls=N_CALLS, overrides=OVERRIDES, log=lambda message: None)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_headless(name, notebook_out, monkeypatch):
    from nbclient import NotebookClient

    # The kernel inherits this environment: the notebooks' parameters, and one thread (2 shared cores).
    monkeypatch.setenv("CTXEMO_NB_OUT", str(notebook_out))
    monkeypatch.setenv("CTXEMO_NB_CALLS", str(N_CALLS))
    monkeypatch.setenv("CTXEMO_NB_OVERRIDES", " ".join(OVERRIDES))
    monkeypatch.setenv("CTXEMO_NB_HEADLESS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    stored = (NOTEBOOKS / name).read_bytes()
    nb = nbformat.reads(stored.decode("utf-8"), as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook_out)}})
    client.execute()  # raises CellExecutionError naming the cell on any failure
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{name}: no figure was rendered"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    assert (NOTEBOOKS / name).read_bytes() == stored  # executed in memory: the stored file stays output-free
