"""`pip install .` into a fresh venv, then the console scripts from another directory (configs included)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    run = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{cmd}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    return run


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A wheel built from a copy of the sources, installed (offline, --no-deps) into a new venv that reuses the
    test environment's third-party packages through a .pth line (their own .pth hooks, e.g. an editable
    biggait, are not run)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src_copy"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "conf", src / "conf")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    wheels = tmp / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(src),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
        ],
        tmp,
        env,
    )
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    py = venv / "bin" / "python"
    site = Path(
        _run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env
        ).stdout.strip()
    )
    (site / "_reuse_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("biggait-*.whl"))
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        tmp,
        env,
    )
    return venv / "bin", env


def test_console_scripts_work_from_another_directory(installed, tmp_path: Path) -> None:
    bin_dir, env = installed
    where = tmp_path / "elsewhere"
    where.mkdir()
    # the installed package, not the checkout, is what runs
    origin = _run(
        [str(bin_dir / "python"), "-c", "import biggait.paths as p; print(p.__file__, p.conf_dir())"],
        where,
        env,
    )
    assert str(REPO) not in origin.stdout and "site-packages/biggait/conf" in origin.stdout
    assert "experiment" in _run([str(bin_dir / "biggait"), "train", "--help"], where, env).stdout
    assert "ckpt_path" in _run([str(bin_dir / "biggait"), "eval", "--cfg", "job"], where, env).stdout
    for command, flag in (
        ("embed", "--tracks"),
        ("identify", "--threshold"),
        ("data", "synthetic"),
        ("import-opengait", "--image-size"),
    ):
        assert flag in _run([str(bin_dir / "biggait"), command, "--help"], where, env).stdout, command

    # embed + identify with a tiny model
    from biggait.compat.opengait import export_lightning_checkpoint
    from biggait.models import BigGait

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BigGait("tiny", num_classes=3, image_size=(112, 56), map_size=(32, 16), channels=(8, 16, 32, 64),
                        embed_dim=16, fusion_squeeze=4, frame_size=(64, 32))  # fmt: skip
    ckpt = export_lightning_checkpoint(model, tmp_path / "m.ckpt")
    rng = np.random.default_rng(0)
    for person in ("anna", "ben"):
        folder = tmp_path / "people" / person / "walk" / "cam1"
        folder.mkdir(parents=True)
        for t in range(3):
            cv2.imwrite(str(folder / f"{t}.png"), rng.integers(0, 256, (90, 40, 3), dtype=np.uint8))
    _run(
        [str(bin_dir / "biggait"), "embed", str(ckpt), str(tmp_path / "people"), "--out", "g.npz"], where, env
    )
    probe = str(tmp_path / "people" / "ben" / "walk" / "cam1")
    _run([str(bin_dir / "biggait"), "embed", str(ckpt), probe, "--out", "p.npz"], where, env)
    out = _run(
        [str(bin_dir / "biggait"), "identify", "g.npz", "p.npz", "--top-k", "1", "--json", "r.json"],
        where,
        env,
    )
    assert "ben/walk/cam1" in out.stdout and (where / "r.json").is_file()
