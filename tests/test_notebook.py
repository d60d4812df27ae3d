"""The Colab notebook runs top to bottom in its tiny mode."""

import os

import nbformat
import pytest

# The whole notebook in a kernel: in `-m slow` (CI runs it).
pytestmark = pytest.mark.slow

nbclient = pytest.importorskip("nbclient")

NOTEBOOK = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "ddpm_flowers.ipynb")


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_KERAS_NOTEBOOK_SMOKE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel draws inline
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    # The plotting callback and the sampling cell showed pictures inline.
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 8
    assert (tmp_path / "checkpoints" / "notebook-tiny" / "denoising.gif").exists()
    assert (tmp_path / "checkpoints" / "notebook-tiny" / "model.keras").exists()
    assert (tmp_path / "checkpoints" / "notebook-tiny" / "samples" / "epoch_0001.png").exists()
    # The classifier-guidance section trained and saved its noise-aware classifier.
    assert (tmp_path / "checkpoints" / "notebook-tiny" / "classifier.keras").exists()
    # The class-conditional section trained on labelled data and drew one row per class.
    conditional = tmp_path / "checkpoints" / "notebook-tiny_cond"
    assert (conditional / "samples" / "epoch_0001.png").exists() and (conditional / "model.keras").exists()
