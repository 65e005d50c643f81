"""A stand-in LVM for the synthetic world: pretrain the tiny backbone to make the walker its dominant structure.

BigGait relies on one property of DINOv2 (paper Sec. 3; OpenGait `BigGait.py`): in its last-layer features the person is the dominant
structure (their first PCA component separates the foreground, DINOv2 paper Fig. 1), so the *unsupervised*
mask branch finds the person. No pretrained weights exist offline, and a random tiny ViT has no such
property: its mask branch selects about as well as "every pixel" (foreground IoU ~0.3, data_prep/README.md),
so the gait maps carry clothes and background and the cloth-changing condition stays near chance.

This module gives the tiny backbone that property, and nothing BigGait-specific: on the synthetic *train*
identities (the test identities are never seen) it learns to predict, per patch, the walker's silhouette
fraction, plus a term that makes the walker/background split dominate the variance of the last-layer
features. The resulting file (`biggait/assets/synthetic_lvm_tiny.pt`, rebuilt by `make lvm`) is the frozen
backbone of the synthetic default (`model.net.pretrained: synthetic`). The BigGait mask branch still has to discover
the foreground by itself. `python -m biggait.synthetic_lvm --help` lists the knobs.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from biggait.data_prep.synthetic import SyntheticConfig, list_sequences, render_sequence
from biggait.evaluation.foreground import silhouettes_to_map
from biggait.models.backbone import SYNTHETIC_LVM_FILE, DinoV2Backbone
from biggait.models.input import prepare_images
from biggait.preprocess import normalize_frames

__all__ = ["ForegroundPretraining", "foreground_separation_loss", "main", "render_foreground_set"]

log = logging.getLogger(__name__)


def foreground_separation_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - the fraction of the feature variance explained by the foreground/background split.

    features [B, C, h, w]; target [B, 1, h, w] soft foreground fraction per position, in [0, 1]. The split is
    what a 2-cluster (the BigGait mask branch) finds first once this is near 0.
    """
    f = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    w = target.reshape(-1, 1).to(f.dtype)
    total = (f - f.mean(0)).pow(2).sum(1).mean()
    fg, bg = w.sum(), (1 - w).sum()
    if fg <= 0 or bg <= 0:  # a batch without walker or without background: no split to explain
        return f.new_zeros(())
    mean_fg = (w * f).sum(0) / fg
    mean_bg = ((1 - w) * f).sum(0) / bg
    p = w.mean()
    between = p * (1 - p) * (mean_fg - mean_bg).pow(2).sum()
    return 1 - between / total.clamp_min(1e-12)


def render_foreground_set(
    cfg: SyntheticConfig,
    *,
    split: str,
    num_sequences: int,
    frames_per_sequence: int,
    image_size: tuple[int, int],
    grid: tuple[int, int],
    seed: int = 0,
) -> TensorDataset:
    """Model-ready images [N, 3, H, W] and per-patch silhouette fractions [N, 1, *grid] from the generator."""
    specs = list_sequences(cfg, split)
    if num_sequences > len(specs):
        raise ValueError(f"the synthetic {split} split has {len(specs)} sequences, asked for {num_sequences}")
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for i in rng.choice(len(specs), num_sequences, replace=False):
        rec = render_sequence(specs[int(i)], cfg)
        idx = np.linspace(0, len(rec.frames) - 1, frames_per_sequence).astype(int)
        frames = torch.from_numpy(rec.frames[idx]).permute(0, 3, 1, 2)[None]
        ratios = torch.from_numpy(np.asarray(rec.ratios, np.float32)[idx])
        images.append(prepare_images(normalize_frames(frames)[0], ratios, image_size=image_size, crop="left"))
        # the silhouette on a 2x finer map, then the fraction of each patch that is walker
        fine = silhouettes_to_map(rec.silhouettes[idx], (2 * grid[0], 2 * grid[1]), ratios=ratios)
        targets.append(F.avg_pool2d(fine.float(), 2))
    return TensorDataset(torch.cat(images), torch.cat(targets))


class ForegroundPretraining(L.LightningModule):
    """Tiny DINOv2-style ViT trained so that the walker dominates its last-layer features."""

    def __init__(
        self,
        *,
        backbone: str = "tiny",
        image_size: tuple[int, int] = (224, 112),
        lr: float = 3e-3,
        weight_decay: float = 0.01,
        separation_weight: float = 1.0,
        flip_prob: float = 0.5,
        max_steps: int = 2000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        with warnings.catch_warnings():  # random init is the point here
            warnings.filterwarnings("ignore", message="BigGait backbone has NO pretrained weights")
            self.backbone = DinoV2Backbone(preset=backbone, image_size=tuple(image_size))
        self.head = nn.Conv2d(self.backbone.embed_dim, 1, 1)  # per-patch walker fraction (logit)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W] -> (f_last [B, C, h, w], foreground logits [B, 1, h, w])."""
        f_last, _ = self.backbone(images)
        return f_last, self.head(f_last)

    def _losses(self, images: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        f_last, logits = self(images)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        separation = foreground_separation_loss(f_last, target)
        iou_num = ((logits > 0) & (target >= 0.5)).sum()
        iou_den = ((logits > 0) | (target >= 0.5)).sum().clamp_min(1)
        return {"bce": bce, "separation": separation, "iou": iou_num / iou_den}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, target = batch
        flip = torch.rand(images.shape[0], device=images.device) < self.hparams.flip_prob
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        target = torch.where(flip[:, None, None, None], target.flip(-1), target)
        losses = self._losses(images, target)
        loss = losses["bce"] + self.hparams.separation_weight * losses["separation"]
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True)
        return loss

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        losses = self._losses(*batch)
        self.log_dict({f"test/{k}": v for k, v in losses.items()})

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=self.hparams.max_steps, pct_start=0.1
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m biggait.synthetic_lvm", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=SYNTHETIC_LVM_FILE, help="backbone file to write")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--train-sequences", type=int, default=400, help="synthetic train-split sequences to render"
    )
    p.add_argument("--test-sequences", type=int, default=64, help="test-split sequences for the reported IoU")
    p.add_argument("--frames", type=int, default=8, help="frames taken from each sequence")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--separation-weight", type=float, default=1.0)
    p.add_argument("--image-size", type=int, nargs=2, default=(224, 112), metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accelerator", default="auto")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.steps < 1 or args.batch_size < 1:
        raise SystemExit("--steps and --batch-size must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    L.seed_everything(args.seed, workers=True)
    cfg = SyntheticConfig()  # the default world of conf/data_prep/synthetic.yaml
    module = ForegroundPretraining(
        image_size=tuple(args.image_size),
        lr=args.lr,
        separation_weight=args.separation_weight,
        max_steps=args.steps,
    )
    common = {"image_size": tuple(args.image_size), "grid": module.backbone.grid, "seed": args.seed}
    started = time.perf_counter()
    train = render_foreground_set(
        cfg, split="train", num_sequences=args.train_sequences, frames_per_sequence=args.frames, **common
    )
    test = render_foreground_set(
        cfg, split="test", num_sequences=args.test_sequences, frames_per_sequence=args.frames, **common
    )
    log.info(
        "rendered %d train / %d test frames in %.0f s", len(train), len(test), time.perf_counter() - started
    )
    trainer = L.Trainer(
        max_steps=args.steps,
        accelerator=args.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    generator = torch.Generator().manual_seed(args.seed)
    trainer.fit(
        module,
        DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True, generator=generator),
    )
    (scores,) = trainer.test(module, DataLoader(test, batch_size=256), verbose=False)
    info = {
        "steps": args.steps,
        "seed": args.seed,
        "train_sequences": args.train_sequences,
        "frames": args.frames,
        "image_size": list(args.image_size),
        "test_foreground_iou": round(float(scores["test/iou"]), 4),
        "test_separation_loss": round(float(scores["test/separation"]), 4),
        "trained_seconds": round(time.perf_counter() - started),
    }
    path = module.backbone.save(args.out, **info)
    log.info("wrote %s: %s", path, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
