"""notebooks/feature_maps.ipynb executes headless on the tiny random model and every figure cell draws."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def _kernel_for_this_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # A kernelspec pointing at the interpreter running the tests (the venv), found first via JUPYTER_PATH,
    # so a system-wide "python3" kernel can never run the notebook with another environment.
    name = "biggait-test"
    spec_dir = tmp_path / "jupyter" / "kernels" / name
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "biggait test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # The kernel imports this checkout's biggait, whatever the venv's editable install points at.
    src = str(NOTEBOOK_DIR.parent / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return name


def test_ipynb_is_the_paired_script_without_outputs():
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.read(NOTEBOOK_DIR / "feature_maps.ipynb")
    script = jupytext.read(NOTEBOOK_DIR / "feature_maps.py")
    assert [c.source for c in nb.cells] == [c.source for c in script.cells], (
        "run `jupytext --sync notebooks/feature_maps.py`"
    )
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip the outputs"


@pytest.mark.slow
def test_notebook_executes_and_every_figure_cell_shows_an_image(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    kernel = _kernel_for_this_python(tmp_path, monkeypatch)
    nb = nbformat.read(NOTEBOOK_DIR / "feature_maps.ipynb", as_version=4)
    run_dir = tmp_path / "run"  # no shards here: the notebook must fall back to its own tiny synthetic set
    run_dir.mkdir()
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name=kernel, resources={"metadata": {"path": str(run_dir)}}
    )
    client.execute()
    figure_cells = [c for c in nb.cells if "figure" in c.metadata.get("tags", [])]
    assert len(figure_cells) >= 3
    for cell in figure_cells:
        images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert images, f"figure cell produced no image:\n{cell.source[:200]}"
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "tiny RANDOM BigGait" in text and "generating a tiny synthetic set" in text
