"""What a new user meets first (issue #22): the Makefile's CPU-only install and one-line refusals, `make eval`
without data, documentation that agrees with the code, and training runs without W&B warnings."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from biggait.compat.opengait import export_lightning_checkpoint
from test_checkpoint import tiny_model

ROOT = Path(__file__).resolve().parents[1]


def make(*args: str) -> subprocess.CompletedProcess:
    """`make -n` (print, never run: the venv is not rebuilt) in the repository."""
    return subprocess.run(["make", "-n", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60)


def test_cpu_only_install_takes_the_pinned_pair_from_the_cpu_wheel_index() -> None:
    cpu = make("-W", "pyproject.toml", "venv", "TORCH_CPU=1").stdout
    default = make("-W", "pyproject.toml", "venv").stdout
    pinned = re.search(r"^TORCH_SPEC \?= (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert f"--index-url https://download.pytorch.org/whl/cpu {pinned}" in cpu
    assert pinned in default and "index-url" not in default  # the default install is unchanged
    assert "TORCH_CPU=1" in (ROOT / "docs" / "0_get_started.md").read_text()


def test_an_unknown_dataset_is_one_make_line_naming_the_choices() -> None:
    proc = make("train", "DATASET=cppg")
    assert proc.returncode == 2 and "biggait.train" not in proc.stdout
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "unknown DATASET=cppg; choose one of: synthetic" in proc.stderr and "ccpg" in proc.stderr
    assert make("eval", "CKPT=x.ckpt", "DATASET=cppg").returncode == 2
    assert make("train", "DATASET=ccpg").returncode == 0


def test_make_embed_and_identify_keep_paths_with_spaces_whole() -> None:
    embed = make("embed", "MODEL=my model.ckpt", "INPUT=walks", "OUT=my gallery.npz").stdout
    assert '"my model.ckpt" walks --out "my gallery.npz"' in embed
    identify = make("identify", "GALLERY=a b.npz", "PROBES=c d.npz").stdout
    assert '"a b.npz" "c d.npz"' in identify


def test_make_help_names_no_issue_numbers() -> None:
    text = subprocess.run(["make", "-C", str(ROOT), "help"], capture_output=True, text=True).stdout
    assert not re.search(r"issue #?\d+", text), text


def test_eval_without_data_is_one_line_and_leaves_no_run_directory(tmp_path: Path) -> None:
    ckpt = export_lightning_checkpoint(tiny_model(), tmp_path / "m.ckpt")
    run_dir = tmp_path / "outputs" / "eval" / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "biggait.eval",
            "experiment=biggait_ccpg",
            f"ckpt_path={ckpt}",
            f"data.root={tmp_path / 'no_ccpg'}",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=os.environ | {"WANDB_MODE": "disabled"},
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout + proc.stderr
    assert lines[0].startswith("error: dataset root") and "build it with `make data DATASET=" in lines[0]
    assert not (tmp_path / "outputs").exists()  # nor its now-empty parents


# ------------------------------------------------------------------------------------------ docs vs code
def test_docs_agree_with_the_code() -> None:
    training = (ROOT / "docs" / "2_training.md").read_text()
    assert "pending" not in training  # the seed spread is measured (README)
    viz = (ROOT / "docs" / "6_visualisation.md").read_text()
    every = yaml.safe_load((ROOT / "conf" / "experiment" / "synthetic.yaml").read_text())["callbacks"]
    steps = every["feature_maps"]["every_n_steps"]
    assert f"`callbacks.feature_maps.every_n_steps`, {steps} for the" in viz
    assert "--checkpoint outputs/train/synthetic/<date>/checkpoints/last.ckpt" in viz


def test_model_page_examples_run_without_warnings() -> None:
    page = (ROOT / "docs" / "4_model.md").read_text()
    first = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the page's BigGait(..., pretrained=None) warned about random weights
        exec(compile(first, "docs/4_model.md", "exec"), {})


@pytest.mark.slow
def test_a_training_run_logs_its_images_to_wandb_without_size_warnings(tmp_path, monkeypatch, caplog) -> None:
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    from test_feature_map_logger import _fit

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="biggait-test")
    with caplog.at_level(logging.WARNING):
        try:
            _fit(tmp_path, logger=logger)
        finally:
            wandb.finish()
    assert "Images sizes do not match" not in caplog.text
    media = next((tmp_path / "wandb").glob("offline-run-*")) / "files" / "media" / "images" / "feature_maps"
    assert {p.name.split("_")[0] for p in media.rglob("*.png")} == {"sequence", "comparison"}


# ------------------------------------------------------------------------------------------ Hydra overrides
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("experiment=biggait_cppg", "no such experiment; did you mean 'biggait_ccpg'?"),
        ("data=ccgp", "no such data; did you mean 'ccpg'?"),
        ("model.net.backbon=vits14", "model.net has no option 'backbon'; did you mean 'backbone'?"),
        ("modle.net.backbone=vits14", "there is no 'modle.net' in the configuration; did you mean 'model'?"),
    ],
)
def test_typos_in_overrides_are_one_line_with_a_suggestion(override: str, message: str) -> None:
    from biggait.errors import ConfigError
    from biggait.overrides import check_overrides

    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        check_overrides("train", ["trainer.max_steps=5", override])
    assert "\n" not in str(info.value)
    check_overrides(
        "train", ["experiment=synthetic", "model.net.backbone=tiny", "+model.net.mask_dropout=0.1"]
    )
    check_overrides("eval", ["ckpt_path=x.ckpt", "seed=3"])  # keys whose value is null are keys too


def test_train_with_a_typo_is_one_error_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "biggait.train", "experiment=biggait_cppg"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: experiment=biggait_cppg: no such experiment; did you mean 'biggait_ccpg'? choose one of"
    ), proc.stderr
