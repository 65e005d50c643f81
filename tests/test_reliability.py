"""Hardening of issue 13: pretrained defaults, partial evaluation, CPU fallback, stale temporaries, headers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from biggait.data.shards import decode_image, image_size, write_shards
from biggait.errors import ConfigError, CorruptDataError
from biggait.eval import evaluate_checkpoint
from biggait.evaluation import evaluate_detailed
from biggait.models.backbone import DinoV2Backbone
from biggait.train import check_accelerator, train
from test_train import TINY

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PAPER = ["biggait_ccpg", "biggait_casiab", "biggait_sustech1k"]
# test_train's CPU-sized model and loop, for 3 steps (checkpoints at 2 and 3) without panels or a logger
RUN = [
    *TINY,
    "data.steps_per_epoch=3",
    "logger=none",
    "callbacks.feature_maps.every_n_steps=0",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "trainer.max_steps=3",
    "trainer.val_check_interval=1000",
]


def _compose(config_name: str, overrides: list[str], out: Path | None = None, root: Path | None = None):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name=config_name, overrides=overrides)
    with open_dict(cfg):
        if out is not None:
            cfg.paths.output_dir = str(out)
        if root is not None:
            cfg.data.root = str(root)
    return cfg


# --- 2: the paper recipes get real DINOv2 weights, or stop with one line --------------------------------
@pytest.mark.parametrize("experiment", PAPER)
def test_paper_recipes_ask_for_real_dinov2_weights(experiment: str) -> None:
    cfg = _compose("train", [f"experiment={experiment}"])
    assert cfg.model.net.pretrained == "hub"


def test_random_features_only_by_name(tiny_shards: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for by name: no "NO pretrained weights" warning
        DinoV2Backbone(preset="tiny", image_size=(112, 56), pretrained="random")
    cfg = _compose("train", [*RUN, "model.net.pretrained=null"], tmp_path, tiny_shards)
    with pytest.raises(ConfigError, match=r"model\.net\.pretrained is null.*random"):
        train(cfg)


def test_hub_weights_that_cannot_be_had_are_one_line_naming_the_local_file(tmp_path: Path) -> None:
    """Offline with an empty Hugging Face cache (a fresh process, so the hub library reads this environment)."""
    code = (
        "from biggait.models.backbone import DinoV2Backbone\n"
        "from biggait.errors import exit_on_error\n"
        "with exit_on_error():\n"
        "    DinoV2Backbone(preset='vits14', pretrained='hub')\n"
    )
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_CACHE": str(tmp_path / "hf"),
    }
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "model.net.pretrained=/path/dinov2_vits14_pretrain.pth" in lines[0]


# --- 10: the default run and evaluation without a GPU -------------------------------------------------------
def test_train_without_experiment_is_the_cpu_synthetic_default() -> None:
    plain, synthetic = _compose("train", []), _compose("train", ["experiment=synthetic"])
    assert (
        plain.trainer == synthetic.trainer and plain.data == synthetic.data and plain.model == synthetic.model
    )
    assert plain.trainer.max_steps == 600 and plain.data.frames_per_sequence == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour on a machine without a GPU")
def test_gpu_recipes_without_a_gpu_evaluate_on_cpu_and_refuse_to_train(tmp_path: Path) -> None:
    ecfg = _compose("eval", ["experiment=biggait_ccpg", "ckpt_path=x.ckpt"], tmp_path)
    check_accelerator(ecfg, cpu_fallback=True)
    assert (ecfg.trainer.accelerator, ecfg.trainer.devices, ecfg.trainer.strategy) == ("cpu", 1, "auto")
    import hydra

    trainer = hydra.utils.instantiate(ecfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.accelerator.__class__.__name__ == "CPUAccelerator"
    with pytest.raises(ConfigError, match="no GPU is visible.*trainer=cpu"):
        check_accelerator(_compose("train", ["experiment=biggait_ccpg"]), cpu_fallback=False)


# --- 6: evaluation results carry their counts and say when they are partial --------------------------------
def test_evaluation_counts_per_condition() -> None:
    rng = np.random.default_rng(0)
    grid = [
        (f"{s:03d}", t, f"{v}_x")
        for s in range(4)
        for t in ("U0_D0", "U1_D1", "U0_D0_BG", "U3_D3", "U0_D3", "U1_D0")
        for v in range(2)
    ]
    subjects, types, views = (list(x) for x in zip(*grid))
    result = evaluate_detailed("ccpg", torch.as_tensor(rng.normal(size=(48, 8, 2))), subjects, types, views)
    assert result.counts["sequences"] == 48 and result.counts["identities"] == 4
    assert result.counts["conditions"]["CL"] == {"probes": 16, "gallery": 16, "identities": 4}
    assert result.counts["conditions"]["UP"] == {"probes": 8, "gallery": 8, "identities": 4}
    assert not result.partial and not result.unscored
    # a partial evaluation leaves the conditions it cannot score out instead of failing
    keep = [i for i, t in enumerate(types) if t not in ("U1_D1", "U3_D3")]
    partial = evaluate_detailed(
        "ccpg",
        torch.as_tensor(rng.normal(size=(len(keep), 8, 2))),
        [subjects[i] for i in keep],
        [types[i] for i in keep],
        [views[i] for i in keep],
        partial=["limit_test_batches=2"],
    )
    assert partial.unscored == ["CL", "UP", "DN"] and set(partial.metrics) >= {"BG", "reid/BG/mAP"}
    assert "CL" not in partial.metrics and partial.counts["conditions"]["CL"]["gallery"] == 0


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_shards: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt_run")
    train(_compose("train", [*RUN, "test_after_fit=false"], out, tiny_shards))
    return out / "checkpoints" / "last.ckpt"


def _eval(tiny_shards: Path, ckpt: Path, out: Path, *overrides: str) -> dict:
    cfg = _compose(
        "eval",
        [
            "experiment=synthetic",
            "data.eval_batch_size=4",
            "data.num_workers=0",
            f"ckpt_path={ckpt}",
            *overrides,
        ],
        out,
        tiny_shards,
    )
    evaluate_checkpoint(cfg)
    return json.loads(next((out / "evaluation").glob("test-step*/results.json")).read_text())


def test_full_evaluation_reports_counts_checkpoint_and_step(
    tiny_shards: Path, tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    results = _eval(tiny_shards, tiny_checkpoint, tmp_path)
    assert results["partial"] is False and results["partial_reasons"] == []
    assert results["checkpoint"] == str(tiny_checkpoint) and results["step"] == 3
    counts = results["counts"]
    assert counts["sequences"] == counts["sequences_expected"] == 56 and counts["sequences_skipped"] == 0
    assert counts["identities"] == 4 and counts["conditions"]["CL"]["probes"] == 16
    assert "PARTIAL" not in capsys.readouterr().out


def test_limited_evaluation_is_marked_partial_everywhere(
    tiny_shards: Path, tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    results = _eval(tiny_shards, tiny_checkpoint, tmp_path, "+trainer.limit_test_batches=3")
    assert results["partial"] is True
    assert "limit_test_batches=3" in results["partial_reasons"]
    assert results["counts"]["sequences"] == 12 and results["counts"]["sequences_expected"] == 56
    assert "12 of 56 sequences evaluated" in results["partial_reasons"]
    printed = capsys.readouterr().out
    assert "PARTIAL EVALUATION" in printed and "12 sequences of 56" in printed
    md = next((tmp_path / "evaluation").glob("test-step*/results.md")).read_text()
    assert md.startswith("PARTIAL EVALUATION")


def test_fast_dev_run_works_and_is_partial(tiny_shards: Path, tmp_path: Path) -> None:
    cfg = _compose("train", [*RUN, "+trainer.fast_dev_run=1"], tmp_path, tiny_shards)
    metrics = train(cfg)
    assert metrics["test/partial"] == 1.0
    results = json.loads(next((tmp_path / "evaluation").glob("test-step*/results.json")).read_text())
    assert results["partial"] and "fast_dev_run" in results["partial_reasons"]


# --- 3: image headers are read before decoding ------------------------------------------------------------
def test_image_header_is_checked_before_decoding() -> None:
    image = np.zeros((64, 32, 3), np.uint8)
    for ext in (".png", ".jpg"):
        buf = cv2.imencode(ext, image)[1].tobytes()
        assert image_size(buf) == (64, 32)
        assert decode_image(buf, colour=True, size=(64, 32)).shape == (64, 32, 3)
        with pytest.raises(CorruptDataError, match="header says 64x32, expected 128x64"):
            decode_image(buf, colour=True, size=(128, 64))
    with pytest.raises(CorruptDataError, match="neither a PNG nor a JPEG"):
        decode_image(b"GIF89a....", colour=True, size=(64, 32))


# --- 11: a killed `make data` leaves temporaries that the next run removes ----------------------------------
def _record(spec):
    from biggait.data import SequenceRecord

    subject, k = spec
    rng = np.random.default_rng(k)
    return SequenceRecord(
        f"{subject:03d}",
        f"nm-{k:02d}",
        "000",
        rng.integers(0, 255, (2, 16, 8, 3), dtype=np.uint8),
        np.full(2, 0.5, np.float32),
    )


def test_next_shard_build_removes_temporaries_of_a_killed_one(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    split = tmp_path / "train"
    split.mkdir()
    stale = split / f".toy-train-000000.tar.tmp-{int(dead.stdout)}"
    stale.write_bytes(b"\0" * 4096)
    write_shards(
        [(s, k) for s in range(2) for k in range(2)],
        _record,
        tmp_path,
        dataset="toy",
        split="train",
        progress=False,
    )
    assert not stale.exists()
    assert not [p for p in split.iterdir() if p.name.startswith(".")]


def test_partial_evaluation_is_marked_in_wandb(
    tiny_shards: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    try:
        _eval(tiny_shards, tiny_checkpoint, tmp_path, "+trainer.limit_test_batches=3", "logger=wandb")
        # the run's summary: the partial flag next to the metrics, the reasons and the checkpoint
        summary = dict(wandb.run.summary)
    finally:
        wandb.finish()
    assert summary["test/partial"] == 1 and summary["test/sequences_evaluated"] == 12
    assert "limit_test_batches=3" in summary["test/partial_reasons"]
    assert summary["test/checkpoint"] == str(tiny_checkpoint)
