"""notebooks/feature_maps.ipynb executes headless on the tiny random model and every figure cell draws."""

from __future__ import annotations

import json
import os
import subprocess
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


def _run_notebook_script(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, str(NOTEBOOK_DIR.parent / "scripts" / "run_notebook.py"), *args]
    env = {**os.environ, "PYTHONPATH": str(NOTEBOOK_DIR.parent / "src")}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def test_make_notebook_parameters_go_after_the_parameters_cell(tmp_path):
    jupytext = pytest.importorskip("jupytext")
    sys.path.insert(0, str(NOTEBOOK_DIR.parent / "scripts"))
    try:
        from run_notebook import with_parameters
    finally:
        sys.path.remove(str(NOTEBOOK_DIR.parent / "scripts"))
    nb = with_parameters(
        jupytext.read(NOTEBOOK_DIR / "feature_maps.py"), {"SEQUENCE": "1/a/0", "MAX_FRAMES": 4}
    )
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nb.cells[index + 1]
    assert injected.metadata["tags"] == ["injected-parameters"]
    assert "SEQUENCE = '1/a/0'\nMAX_FRAMES = 4\n" in injected.source
    namespace: dict = {}
    exec(nb.cells[index].source + "\n" + injected.source, namespace)  # the injected values win
    assert namespace["SEQUENCE"] == "1/a/0" and namespace["MAX_FRAMES"] == 4


def test_make_notebook_rejects_a_missing_checkpoint(tmp_path):
    done = _run_notebook_script("--checkpoint", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "out"))
    assert done.returncode != 0 and "checkpoint not found" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_make_notebook_runs_headless_on_a_checkpoint_and_saves_figures(tiny_shards, tmp_path):
    from biggait.train import train
    from biggait.viz.io import read_labels
    from test_train import compose_train, steps

    train(compose_train(tmp_path / "run", tiny_shards, *steps(2, 2), "logger=csv", "test_after_fit=false"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    subject, seq_type, view = read_labels(tiny_shards, split="test")[-1]
    label = f"{subject}/{seq_type}/{view}"
    out = tmp_path / "figures"
    common = ["--checkpoint", str(ckpt), "--shards", str(tiny_shards), "--max-frames", "4", "--out", str(out)]
    done = _run_notebook_script(*common, "--sequence", label)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = sorted(p.name for p in out.glob("*.png"))
    assert "sequence.png" in figures and "comparison.png" in figures
    assert any(name.startswith("rank1_") for name in figures)
    assert all((out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in figures)
    executed = (out / "feature_maps.ipynb").read_text()
    assert "Loaded " in executed and f"first panel: {subject} {seq_type} {view}" in executed
    # a sequence the split lacks: one error line naming some it has, non-zero exit
    done = _run_notebook_script(*common, "--sequence", "nobody/none/0")
    assert done.returncode == 1 and "no sequence 'nobody/none/0'" in done.stderr
