"""A label-free stand-in LVM for the synthetic world: the tiny ViT pretrained by self-distillation, no labels.

BigGait's claim (paper Sec. 1, 3) is that a *task-agnostic*, self-supervised LVM already carries the walker: in
DINOv2's last-layer features the person is the dominant structure. The default stand-in LVM
(`biggait.synthetic_lvm`) is trained on silhouettes, so it cannot show that. This one never sees a silhouette,
an identity or any other label: it is pretrained the way DINOv2 is (its paper, Oquab et al. 2023, Sec. 4),
scaled down: a student ViT matches a momentum teacher's
* image-level prototypes of the other augmented view (DINO; lightly's `DINOLoss`, `DINOProjectionHead`), and
* patch-level prototypes of the patches hidden from it by block masks (iBOT; lightly's `IBOTPatchLoss`),
on synthetic frames only: person crops of walkers over cluttered backgrounds (train-split sequences, their
silhouettes and identities dropped when rendered) and crops of backgrounds with no walker.

`make lvm LVM=label_free` writes `biggait/assets/synthetic_lvm_tiny_label_free.pt` (load it with
`model.net.pretrained=<that path>`), recording its recipe and the first-principal-component foreground IoU of
its last-layer features on test-split frames: the DINOv2 property BigGait relies on, measured.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightly.loss import DINOLoss, IBOTPatchLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import random_block_mask, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.ops import roi_align

from biggait.data_prep.synthetic import SyntheticConfig, background_crop, list_sequences, render_sequence
from biggait.models.backbone import PATCH_SIZE, SYNTHETIC_LVM_FILE, DinoV2Backbone
from biggait.models.input import prepare_images
from biggait.preprocess import normalize_frames

__all__ = [
    "LABEL_FREE_LVM_FILE",
    "SelfDistillation",
    "augment",
    "main",
    "pca_foreground",
    "pca_foreground_iou",
    "render_unlabelled_frames",
]

log = logging.getLogger(__name__)

LABEL_FREE_LVM_FILE = SYNTHETIC_LVM_FILE.with_name("synthetic_lvm_tiny_label_free.pt")
BORDER_ROWS = 2  # token rows at the top and bottom taken as background to orient the first component


def render_unlabelled_frames(
    cfg: SyntheticConfig,
    *,
    num_sequences: int,
    frames_per_sequence: int,
    empty_frames: int,
    image_size: tuple[int, int],
    seed: int = 0,
) -> TensorDataset:
    """Model-ready images [N, 3, H, W] and nothing else: walker crops of train-split sequences, then
    `empty_frames` crops of backgrounds with no walker. No silhouette, identity or label is kept."""
    specs = list_sequences(cfg, "train")
    if num_sequences > len(specs):
        raise ValueError(f"the synthetic train split has {len(specs)} sequences, asked for {num_sequences}")
    rng = np.random.default_rng(seed)
    frames, ratios = [], []
    for i in rng.choice(len(specs), num_sequences, replace=False):
        rec = render_sequence(specs[int(i)], cfg)
        idx = np.linspace(0, len(rec.frames) - 1, frames_per_sequence).astype(int)
        frames.append(rec.frames[idx])
        ratios.append(np.asarray(rec.ratios, np.float32)[idx])
    for i in range(empty_frames):
        frame, ratio = background_crop(cfg, seed=seed * 1_000_003 + i)
        frames.append(frame[None])
        ratios.append(np.asarray([ratio], np.float32))
    x = torch.from_numpy(np.concatenate(frames)).permute(0, 3, 1, 2)[None]
    r = torch.from_numpy(np.concatenate(ratios))
    return TensorDataset(prepare_images(normalize_frames(x)[0], r, image_size=image_size, crop="left"))


def augment(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    min_scale: float = 0.5,
    max_scale: float = 1.0,
    out_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """One random view per image [B, 3, H, W] (normalised): resized crop of `min_scale`-`max_scale` of the
    area, flip, brightness / contrast jitter, channel shuffle (a hue change), grey with p=0.2. Batched; out
    at `out_size` (default: the input's)."""
    b, _, h, w = images.shape
    g = dict(generator=generator)
    area = min_scale + (max_scale - min_scale) * torch.rand(b, **g)
    aspect = torch.exp((torch.rand(b, **g) - 0.5) * 0.6)
    ch = (h * torch.sqrt(area * aspect)).clamp(max=h)
    cw = (w * torch.sqrt(area / aspect)).clamp(max=w)
    y0, x0 = torch.rand(b, **g) * (h - ch), torch.rand(b, **g) * (w - cw)
    boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], 1)
    out = roi_align(images, boxes, out_size or (h, w), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flip = torch.rand(b, **g) < 0.5
    out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    perm = torch.stack([torch.randperm(3, **g) for _ in range(b)])
    out = torch.gather(out, 1, perm[:, :, None, None].expand_as(out))
    mean = out.mean((1, 2, 3), keepdim=True)
    contrast = 0.6 + 0.8 * torch.rand(b, 1, 1, 1, **g)
    out = (out - mean) * contrast + mean + 0.4 * (torch.rand(b, 1, 1, 1, **g) - 0.5)
    grey = torch.rand(b, **g) < 0.2
    return torch.where(grey[:, None, None, None], out.mean(1, keepdim=True).expand_as(out), out)


def pca_foreground(features: torch.Tensor) -> torch.Tensor:
    """features [N, C, h, w] -> bool [N, 1, h, w]: positive side of the first principal component (fitted
    jointly over all frames), oriented so that most tokens of the top and bottom rows are background."""
    n, c, h, w = features.shape
    x = features.permute(0, 2, 3, 1).reshape(-1, c).double()
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    score = (x @ v[0]).view(n, 1, h, w)
    border = torch.cat([score[:, :, :BORDER_ROWS], score[:, :, -BORDER_ROWS:]], 2)
    if (border > 0).float().mean() > 0.5:
        score = -score
    return score > 0


def pca_foreground_iou(features: torch.Tensor, walker_fraction: torch.Tensor) -> float:
    """IoU of `pca_foreground` against the ground truth (patches at least half walker), pooled over frames."""
    fg, truth = pca_foreground(features), walker_fraction >= 0.5
    union = (fg | truth).sum().item()
    return 1.0 if union == 0 else (fg & truth).sum().item() / union


class SelfDistillation(L.LightningModule):
    """Tiny DINOv2-style ViT pretrained by DINO (image) + iBOT (masked patch) self-distillation, no labels."""

    def __init__(
        self,
        *,
        backbone: str = "tiny",
        image_size: tuple[int, int] = (224, 112),
        output_dim: int = 1024,
        lr: float = 1e-3,
        weight_decay: float = 0.04,
        ibot_weight: float = 1.0,
        momentum: tuple[float, float] = (0.99, 1.0),
        max_steps: int = 1500,
        seed: int = 0,
        local_crops: int = 0,
        local_size: tuple[int, int] = (98, 56),
        local_scale: tuple[float, float] = (0.1, 0.4),
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        with warnings.catch_warnings():  # random init is the point here
            warnings.filterwarnings("ignore", message="BigGait backbone has NO pretrained weights")
            self.backbone = DinoV2Backbone(preset=backbone, image_size=tuple(image_size))
        dim = self.backbone.embed_dim

        def head() -> DINOProjectionHead:
            return DINOProjectionHead(dim, 4 * dim, dim, output_dim)

        self.dino_head, self.ibot_head = head(), head()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        # the teacher starts as a copy of the student (heads rebuilt: weight-normed layers cannot be deep-copied)
        self.teacher = nn.ModuleDict(
            {"backbone": copy.deepcopy(self.backbone), "dino_head": head(), "ibot_head": head()}
        )
        for key in ("dino_head", "ibot_head"):
            self.teacher[key].load_state_dict(getattr(self, key).state_dict())
        if local_crops:  # DINO multi-crop: the student also sees small crops, at their own token grid
            if local_size[0] % PATCH_SIZE or local_size[1] % PATCH_SIZE:
                raise ValueError(f"local_size {local_size} must be a multiple of the patch size {PATCH_SIZE}")
            self.backbone.vit.patch_embed.strict_img_size = False
        self.teacher.requires_grad_(False)
        self.dino_loss = DINOLoss(output_dim=output_dim)
        self.ibot_loss = IBOTPatchLoss(output_dim=output_dim)
        self._generator: torch.Generator | None = None

    @staticmethod
    def tokens(backbone: DinoV2Backbone, images: torch.Tensor, mask=None, mask_token=None):
        """(class token [B, C], patch tokens [B, N, C]) of `backbone`'s last layer, patches under `mask`
        [B, h, w] replaced by `mask_token` (DinoV2Backbone.forward's f_last are these patch tokens)."""
        vit = backbone.vit
        x = vit.patch_embed(images)
        if mask is not None:
            x = torch.where(mask.flatten(1)[..., None], mask_token.to(x.dtype), x)
        grid = (images.shape[-2] // PATCH_SIZE, images.shape[-1] // PATCH_SIZE)
        x = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + backbone.grid_pos_embed(grid)
        for block in vit.blocks:
            x = block(x)
        x = vit.norm(x)
        return x[:, 0], x[:, 1:]

    def _views(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.hparams.seed)
        frames = images.cpu()  # the augmentations draw from a CPU generator; moved once, not once per view
        views = [augment(frames, self._generator) for _ in range(2)]
        lo, hi = self.hparams.local_scale
        local = dict(min_scale=lo, max_scale=hi, out_size=tuple(self.hparams.local_size))
        views += [augment(frames, self._generator, **local) for _ in range(self.hparams.local_crops)]
        # local crops after the global views, so that local_crops=0 draws exactly what it always drew
        return [v.to(images.device) for v in views]

    def training_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> torch.Tensor:
        views = self._views(batch[0])
        views, local_views = views[:2], views[2:]
        b, (h, w) = views[0].shape[0], self.backbone.grid
        # DINOv2's block masks on half the views, 10-50 % of the patches (at least one 4-patch block)
        low = max(0.1, 4 / (h * w))
        masks = random_block_mask((2 * b, h, w), min_image_mask_ratio=low, max_image_mask_ratio=max(0.5, low))
        masks = masks.to(self.device).view(2, b, h, w)
        with torch.no_grad():
            teacher = [self.tokens(self.teacher["backbone"], v) for v in views]
        student = [self.tokens(self.backbone, v, m, self.mask_token) for v, m in zip(views, masks)]
        dino = self.dino_loss(
            [self.teacher["dino_head"](cls) for cls, _ in teacher],
            [self.dino_head(cls) for cls, _ in student]
            + [self.dino_head(self.tokens(self.backbone, v)[0]) for v in local_views],
        )  # local views: student only, matched to the teacher's global views (Caron et al. 2021, Sec. 3.1)
        ibot = sum(
            self.ibot_loss(
                self.teacher["ibot_head"](t_patch[m.flatten(1)]), self.ibot_head(s_patch[m.flatten(1)]), m
            )
            for (_, t_patch), (_, s_patch), m in zip(teacher, student, masks)
        ) / len(views)
        loss = dino + self.hparams.ibot_weight * ibot
        self.log_dict({"train/dino": dino, "train/ibot": ibot}, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        m0, m1 = self.hparams.momentum
        m = cosine_schedule(self.global_step, self.hparams.max_steps, m0, m1)
        for key in ("backbone", "dino_head", "ibot_head"):
            update_momentum(getattr(self, key), self.teacher[key], m)

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("teacher.")]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=self.hparams.max_steps, pct_start=0.1
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@torch.no_grad()
def evaluate_backbone(backbone: DinoV2Backbone, test: TensorDataset, batch_size: int = 64) -> float:
    """PCA-1 foreground IoU of `backbone`'s last-layer features on (images, walker fractions) test frames."""
    backbone.eval()
    images, fractions = test.tensors
    feats = torch.cat([backbone(images[i : i + batch_size])[0] for i in range(0, len(images), batch_size)])
    return pca_foreground_iou(feats, fractions)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m biggait.label_free_lvm", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=LABEL_FREE_LVM_FILE, help="backbone file to write")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--train-sequences", type=int, default=300, help="train-split sequences to render")
    p.add_argument("--frames", type=int, default=8, help="frames taken from each sequence")
    p.add_argument("--empty-frames", type=int, default=800, help="background crops with no walker")
    p.add_argument("--test-sequences", type=int, default=64, help="test-split sequences for the reported IoU")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--local-crops", type=int, default=0, help="DINO multi-crop: small crops the student also sees"
    )
    p.add_argument("--image-size", type=int, nargs=2, default=(224, 112), metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=0, help="pretraining seed (frames, augmentations, weights)")
    p.add_argument(
        "--test-seed", type=int, default=0,
        help="seed of the test frames; fixed apart from --seed so that pretraining seeds compare on one test set",
    )  # fmt: skip
    p.add_argument("--accelerator", default="auto")
    return p.parse_args(argv)


def _recorded_info(args: argparse.Namespace, *, iou: float, seconds: float) -> dict[str, object]:
    """What the backbone file records of how it was made: the recipe, every option, the measured IoU."""
    local = f" + {args.local_crops} local crops (DINO multi-crop)" if args.local_crops else ""
    return {
        "recipe": "label-free: DINO (class token) + iBOT (masked patches) self-distillation, lightly 1.6.0 losses"
        f" and heads, 2 augmented views{local}, momentum teacher; synthetic train-split walker crops + background"
        " crops with no walker; no silhouette, identity or label (biggait.label_free_lvm)",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "local_crops": args.local_crops,
        "seed": args.seed,
        "test_seed": args.test_seed,
        "train_sequences": args.train_sequences,
        "frames": args.frames,
        "empty_frames": args.empty_frames,
        "image_size": list(args.image_size),
        "test_pca1_foreground_iou": round(iou, 4),
        "trained_seconds": round(seconds),
    }


def main(argv: Sequence[str] | None = None) -> int:
    from biggait.synthetic_lvm import render_foreground_set  # evaluation only: test frames' silhouettes

    args = _parse(argv)
    if args.steps < 1 or args.batch_size < 2 or min(args.local_crops, args.seed, args.test_seed) < 0:
        raise SystemExit(
            "--steps must be >= 1, --batch-size >= 2, and --local-crops, --seed, --test-seed >= 0"
        )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    L.seed_everything(args.seed, workers=True)
    cfg = SyntheticConfig()  # the default world of conf/data_prep/synthetic.yaml
    size = tuple(args.image_size)
    module = SelfDistillation(
        image_size=size, lr=args.lr, max_steps=args.steps, seed=args.seed, local_crops=args.local_crops
    )
    started = time.perf_counter()
    train = render_unlabelled_frames(
        cfg,
        num_sequences=args.train_sequences,
        frames_per_sequence=args.frames,
        empty_frames=args.empty_frames,
        image_size=size,
        seed=args.seed,
    )
    test = render_foreground_set(
        cfg, split="test", num_sequences=args.test_sequences, frames_per_sequence=4, image_size=size,
        grid=module.backbone.grid, seed=args.test_seed,
    )  # fmt: skip
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
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True, generator=generator)
    trainer.fit(module, loader)
    iou = evaluate_backbone(module.teacher["backbone"], test)
    info = _recorded_info(args, iou=iou, seconds=time.perf_counter() - started)
    path = module.teacher["backbone"].save(args.out, **info)
    log.info("wrote %s: %s", path, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
