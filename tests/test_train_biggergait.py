"""A few real training steps of BiggerGait through the training entry point (Hydra config -> Trainer.fit/test):
triplet + CE only (no GRE losses, no Black DA: OpenGait `BiggerGait__DINOv2.forward`), frozen backbone and
mask branch, and a checkpoint that loads back as a BiggerGait."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from biggait.checkpoint import load_model
from biggait.models import BiggerGait
from biggait.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"

TINY = [
    "model=biggergait_tiny",
    "model.net.image_size=[112,56]",
    "model.net.map_size=[32,16]",
    "model.net.channels=[8,16,32,64]",
    "model.net.embed_dim=16",
    "model.net.parts=8",
    "model.net.humanspace_dim=4",
    "data.frames_per_sequence=4",
    "data.ids_per_batch=3",
    "data.seqs_per_id=2",
    "data.eval_batch_size=4",
    "data.num_workers=0",
    "data.shuffle_buffer=16",
    "data_prep=none",
    "callbacks.progress_bar.refresh_rate=0",
    "callbacks.throughput.window=1",
    "trainer.log_every_n_steps=1",
    "trainer.max_steps=3",
    "data.steps_per_epoch=3",
    "trainer.val_check_interval=3",
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "logger=csv",
]


def test_a_few_training_steps(tiny_shards: Path, tmp_path: Path) -> None:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="train", overrides=TINY)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.data.root = str(tiny_shards)
    metrics = train(cfg)
    assert "test/CL" in metrics and "test/foreground_iou" in metrics

    csv = next((tmp_path / "csv").rglob("metrics.csv")).read_text().splitlines()[0]
    for key in ("train/triplet", "train/ce", "train/accuracy", "train/lr", "train/foreground_fraction"):
        assert key in csv, key
    assert "train/shape_mse" not in csv and "train/part_diversity" not in csv  # no GRE losses

    trained = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert isinstance(trained, BiggerGait)
    first = load_model(tmp_path / "checkpoints" / "step000001.ckpt").state_dict()
    last = trained.state_dict()
    changed = {k for k, v in last.items() if not torch.equal(v, first[k])}
    assert any(k.startswith("human_space.") and k.endswith("weight") for k in changed)
    assert any(k.startswith("heads.") and k.endswith("weight") for k in changed)
    assert not any(k.startswith("backbone.") for k in changed), "the frozen backbone moved"
    # the mask branch gets no gradient; its BatchNorm statistics follow the batches, as in the official run
    assert not any(k.startswith(("mask_branch.down.", "mask_branch.up.")) for k in changed)
    assert "mask_branch.bn_in.running_mean" in changed
