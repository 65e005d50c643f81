"""BigGait: frozen DINOv2 -> Gait Representation Extractor -> GaitBase head (paper Sec. 3; OpenGait `opengait/modeling/models/BigGait.py`)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from biggait.compat.names import branch_key_to_ours
from biggait.errors import BiggaitError, ConfigError
from biggait.models.backbone import DinoV2Backbone, backbone_autocast
from biggait.models.gaitbase import GaitBaseHead
from biggait.models.gre import (
    GRE_ABLATIONS,
    GRE_LOSS_WEIGHTS,
    DistillationBranch,
    black_da,
    diversity_loss,
    gather_pixels,
    scatter_pixels,
    select_foreground,
    shape_connect_loss,
    sobel_connect_loss,
    upsample_maps,
)
from biggait.models.input import prepare_images, valid_region_mask
from biggait.models.state import state_diff

__all__ = ["BigGait", "MaskBranchFileError"]


class MaskBranchFileError(BiggaitError, ValueError):
    """A pretrained mask-branch file that does not fit this model."""


def _official_init(module: nn.Module) -> None:
    # OpenGait's BaseModel init: xavier for conv/linear, zero bias, affine BN weight ~ N(1, 0.02)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _check_options(config: dict[str, Any]) -> None:
    frame_size, backbone_precision = config["frame_size"], config["backbone_precision"]
    if len(frame_size) != 2 or min(int(v) for v in frame_size) < 1:
        raise ConfigError(f"frame_size must be (H, W) of positive ints, got {frame_size!r}")
    if backbone_precision not in (None, "bf16", "fp16", "fp32"):
        raise ConfigError(
            f"backbone_precision must be null (follow the trainer), 'bf16', 'fp16' or 'fp32', got {backbone_precision!r}"
        )
    if config["eval_precision"] not in (None, "fp32"):
        raise ConfigError(
            f"eval_precision must be null (follow the trainer) or 'fp32', got {config['eval_precision']!r}"
        )
    if config["shape_connect_layout"] not in ("faithful", "fixed"):
        raise ConfigError(
            f"shape_connect_layout must be 'faithful' or 'fixed', got {config['shape_connect_layout']!r}"
        )
    if config["padding_resize_crop"] not in ("left", "center"):
        raise ConfigError(
            f"padding_resize_crop must be 'left' or 'center', got {config['padding_resize_crop']!r}"
        )
    _check_ablations(config["ablations"])


def _check_ablations(ablations: Sequence[str]) -> None:
    if isinstance(ablations, str):
        raise ConfigError(
            f"ablations must be a list of names, got the string {ablations!r}: write [{ablations}]"
        )
    unknown = [a for a in ablations if a not in GRE_ABLATIONS]
    if unknown:
        raise ConfigError(f"unknown ablations {unknown}: choose among {list(GRE_ABLATIONS)}")
    if {"denoising_branch", "appearance_branch"} <= set(ablations):
        raise ConfigError(
            "ablations removes both the denoising and the appearance branch: GaitBase would get no input; "
            "keep at least one of them"
        )


def _recorded_config(arguments: dict[str, Any]) -> dict[str, Any]:
    """The constructor's arguments (from its `locals()`), checked, so `BigGait(**model.config)` rebuilds the model."""
    names = list(inspect.signature(BigGait.__init__).parameters)[1:]
    config = {name: arguments[name] for name in names}
    _check_options(config)
    for key in ("image_size", "map_size", "channels", "ablations"):
        config[key] = tuple(config[key])
    config["frame_size"] = tuple(int(v) for v in config["frame_size"])
    return config


def _absent_branch(like: torch.Tensor, selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An ablated GRE branch's output: a 0-channel map [B, 0, h, w] and a zero reconstruction MSE."""
    b, _, h, w = selected.shape
    return like.new_zeros(b, 0, h, w), like.new_zeros(())


def _foreground(mask_probs: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(foreground probability, selected pixels); without a mask branch every valid pixel is foreground."""
    if mask_probs.shape[1] == 0:  # ablations=[mask_branch]: the background is kept
        return valid.to(mask_probs.dtype), valid
    return select_foreground(mask_probs.detach())


class BigGait(nn.Module):
    """BigGait (CVPR 2024) gait model; paper values are the defaults."""

    def __init__(
        self,
        backbone: str | None = "vits14",
        num_classes: int = 100,
        *,
        backbone_width: int | None = None,
        backbone_depth: int | None = None,
        backbone_heads: int | None = None,
        backbone_mlp_ratio: float | None = None,
        pretrained: str | None = None,
        backbone_trainable: bool = False,
        image_size: tuple[int, int] = (448, 224),
        map_size: tuple[int, int] = (64, 32),
        mask_dropout: float = 0.5,
        denoising_dim: int = 16,
        appearance_dim: int = 16,
        denoising_hidden: int | None = None,
        channels: tuple[int, int, int, int] = (64, 128, 256, 512),
        fusion_squeeze: int = 16,
        embed_dim: int = 256,
        parts: int = 16,
        shape_connect_layout: Literal["faithful", "fixed"] = "faithful",
        padding_resize_crop: Literal["left", "center"] = "left",
        frame_size: tuple[int, int] = (256, 128),
        static_shapes: bool = True,
        backbone_precision: Literal["bf16", "fp16", "fp32"] | None = None,
        eval_precision: Literal["fp32"] | None = None,
        channels_last: bool = False,
        ablations: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = _recorded_config(locals())
        self._set_options(self.config)
        self.backbone = DinoV2Backbone(
            preset=backbone,
            embed_dim=backbone_width,
            depth=backbone_depth,
            num_heads=backbone_heads,
            mlp_ratio=backbone_mlp_ratio,
            image_size=self.image_size,
            pretrained=pretrained,
        )
        self._build_branches(
            mask_dropout=mask_dropout,
            denoising_dim=denoising_dim,
            appearance_dim=appearance_dim,
            denoising_hidden=denoising_hidden,
        )
        self.head = GaitBaseHead(
            denoising_dim=denoising_dim if self.denoising_branch is not None else 0,
            appearance_dim=appearance_dim if self.appearance_branch is not None else 0,
            channels=self.config["channels"],
            fusion_squeeze=fusion_squeeze,
            embed_dim=embed_dim,
            parts=parts,
            num_classes=num_classes,
            channels_last=channels_last,
        )
        self._initialise()

    def _set_options(self, config: dict[str, Any]) -> None:
        """The options the forward passes read, as attributes."""
        self.image_size, self.map_size = config["image_size"], config["map_size"]
        self.shape_connect_layout = config["shape_connect_layout"]
        self.padding_resize_crop = config["padding_resize_crop"]
        # The stored frame size the model is trained on (the converters' pad-and-resize canvas, e.g. 256x128 for
        # CCPG, 128x64 for the synthetic world); inference prepares new person crops to it (biggait.preprocess).
        self.frame_size = config["frame_size"]
        # eval mode: GRE branches on every pixel, then masked (docs/export.md); training always gathers
        self.static_shapes = config["static_shapes"]
        self.fuse_gre_upsampling = True  # the dense form's upsampling order (bench/bench_export.py)
        self.backbone_trainable = config["backbone_trainable"]
        self.backbone_precision = config["backbone_precision"]
        # "fp32": in eval mode the GRE and GaitBase leave the surrounding autocast (docs/performance.md)
        self.eval_precision = config["eval_precision"]
        # The paper's ablations (GRE_ABLATIONS): absent branches, and the auxiliary losses that are then zero
        self.ablations = config["ablations"]
        off = {name for name in self.ablations if name in GRE_LOSS_WEIGHTS}
        if "mask_branch" in self.ablations:
            off |= {"shape_mse", "shape_connect"}
        if "denoising_branch" in self.ablations:
            off |= {"part_connect", "part_diversity"}
        self.disabled_losses = frozenset(off)

    def _initialise(self) -> None:
        """OpenGait's initialisation of everything but the backbone, which is frozen unless trainable."""
        for module in (self.mask_branch, self.denoising_branch, self.appearance_branch, self.head):
            if module is not None:
                _official_init(module)
        self._mask_branch_frozen = False
        if not self.backbone_trainable:
            self.backbone.requires_grad_(False)
        self.train()

    def _build_branches(
        self, *, mask_dropout: float, denoising_dim: int, appearance_dim: int, denoising_hidden: int | None
    ) -> None:
        """The three GRE branches over the backbone's f_last (mask) and f_mid4 (denoising, appearance); None
        for a branch in `ablations`."""
        c_last, c_mid4 = self.backbone.embed_dim, self.backbone.mid4_dim
        kept = {name: f"{name}_branch" not in self.ablations for name in ("mask", "denoising", "appearance")}
        self.mask_branch = (
            DistillationBranch(c_last, 2, dropout=mask_dropout, reconstruct=True) if kept["mask"] else None
        )
        self.denoising_branch = (
            DistillationBranch(c_mid4, denoising_dim, hidden_dim=denoising_hidden or c_mid4 // 2)
            if kept["denoising"]
            else None
        )
        self.appearance_branch = (
            DistillationBranch(c_mid4, appearance_dim, softmax=False) if kept["appearance"] else None
        )

    # ----------------------------------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> BigGait:
        super().train(mode)
        if not self.backbone_trainable:
            self.backbone.eval()  # frozen, as OpenGait `BigGait__Dinov2_Gaitbase.init_parameters`
        if self._mask_branch_frozen and self.mask_branch is not None:
            self.mask_branch.eval()  # OpenGait `BigGait__Dinov2_Gaitbase.forward`, iteration 500: dropout off, running BN stats after the freeze
        return self

    @property
    def mask_branch_frozen(self) -> bool:
        """Whether the mask branch is frozen (eval, no gradients), OpenGait `BigGait__Dinov2_Gaitbase.forward`, iteration 500."""
        return self._mask_branch_frozen

    def freeze_mask_branch(self) -> list[nn.Parameter]:
        """Freeze the mask branch (OpenGait `BigGait__Dinov2_Gaitbase.forward`, iteration 500); returns its parameters so the optimizer can drop them."""
        self._mask_branch_frozen = True
        if self.mask_branch is None:  # ablated: nothing to freeze
            return []
        self.mask_branch.requires_grad_(False)
        self.mask_branch.eval()
        return list(self.mask_branch.parameters())

    def load_mask_branch(self, path: str | Path, *, freeze: bool = True) -> list[nn.Parameter]:
        """Load a `{'model': state_dict}` file such as MaskBranch_vits14.pt strictly (official names)."""
        path = Path(path)
        if self.mask_branch is None:
            raise ConfigError(
                f"cannot load {path}: this model has no mask branch (ablations={list(self.ablations)})"
            )
        if not path.is_file():
            raise FileNotFoundError(f"mask-branch file not found: {path}")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or "model" not in blob:
            raise MaskBranchFileError(
                f"{path}: expected a dict with key 'model' (MaskBranch_vits14.pt format)"
            )
        state = {branch_key_to_ours(k.removeprefix("Mask_Branch.")): v for k, v in blob["model"].items()}
        diff = state_diff(self.mask_branch.state_dict(), state)
        if diff:
            shapes = [f"{k}: {given} vs {expected}" for k, given, expected in diff.shapes]
            raise MaskBranchFileError(
                f"{path} does not fit this mask branch (backbone width {self.backbone.embed_dim}): "
                f"missing {diff.missing}, unexpected {diff.unexpected}, shape mismatches {shapes}"
            )
        self.mask_branch.load_state_dict(state, strict=True)
        return self.freeze_mask_branch() if freeze else []

    @property
    def uses_dense_gre(self) -> bool:
        """Whether `forward_features` runs the GRE branches densely: `static_shapes` and no branch training."""
        branches = (self.mask_branch, self.denoising_branch, self.appearance_branch)
        return self.static_shapes and not any(b is not None and b.training for b in branches)

    # -------------------------------------------------------------------------------------- forward
    def _backbone_autocast(self, device: torch.device) -> AbstractContextManager:
        """The backbone's own precision (docs/performance.md): None follows the surrounding autocast."""
        return backbone_autocast(self.backbone_precision, device)

    def trainable_autocast(self, device: torch.device) -> AbstractContextManager:
        """The GRE's and GaitBase's precision: fp32 in eval mode under `eval_precision="fp32"`, else the surrounding."""
        if self.eval_precision == "fp32" and not self.training:
            return torch.autocast(device.type, enabled=False)
        return nullcontext()

    def forward_features(self, frames: torch.Tensor, ratios: torch.Tensor) -> dict[str, torch.Tensor]:
        """frames [n, s, 3, H, W] (ImageNet-normalised), ratios [n, s] (w/h) -> per-frame maps [n, s, C, h, w]."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be [n, s, 3, H, W], got {tuple(frames.shape)}")
        if tuple(ratios.shape) != tuple(frames.shape[:2]):
            raise ValueError(f"ratios must be [n, s] = {tuple(frames.shape[:2])}, got {tuple(ratios.shape)}")
        n, s = frames.shape[:2]
        x = frames.flatten(0, 1)
        r = ratios.reshape(-1).to(frames.device)
        with torch.set_grad_enabled(self.backbone_trainable and torch.is_grad_enabled()):
            images = prepare_images(x, r, image_size=self.image_size, crop=self.padding_resize_crop)
            with self._backbone_autocast(images.device):
                f_last, f_mid4 = self.backbone(images)
            f_last, f_mid4 = f_last.to(frames.dtype), f_mid4.to(frames.dtype)
        valid = valid_region_mask(r, self.map_size).to(frames.device) > 0
        with self.trainable_autocast(frames.device):
            maps = self._forward_gre(f_last, f_mid4, valid)

        def per_seq(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, s, *t.shape[1:])

        features = {"f_last": f_last, "f_mid4": f_mid4, "valid": valid.to(frames.dtype), **maps}
        features["foreground"] = features["foreground"].to(frames.dtype)
        return {k: v if k == "shape_mse" else per_seq(v) for k, v in features.items()}

    def _forward_gre(
        self, f_last: torch.Tensor, f_mid4: torch.Tensor, valid: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The GRE on the backbone's token grids of B frames -> its maps [B, C, h, w] and the shape MSE."""
        if self.uses_dense_gre:  # static shapes: every pixel, then masked (docs/export.md)
            fuse = self.fuse_gre_upsampling

            def run(branch: DistillationBranch | None, tokens: torch.Tensor, selected: torch.Tensor) -> Any:
                if branch is None:
                    return _absent_branch(tokens, selected)
                return branch.forward_dense(tokens, selected, fuse_upsampling=fuse)

            mask_probs, shape_mse = run(self.mask_branch, f_last, valid)
            foreground_prob, foreground = _foreground(mask_probs, valid)
            denoising = run(self.denoising_branch, f_mid4, foreground)[0]
            appearance = run(self.appearance_branch, f_mid4, foreground)[0]
        else:
            with torch.set_grad_enabled(self.backbone_trainable and torch.is_grad_enabled()):
                last_map = upsample_maps(f_last, self.map_size)
                mid4_map = upsample_maps(f_mid4, self.map_size)

            def run(branch: DistillationBranch | None, maps: torch.Tensor, selected: torch.Tensor) -> Any:
                if branch is None:
                    return _absent_branch(maps, selected)
                out, mse = branch(gather_pixels(maps, selected))
                return scatter_pixels(out, selected), mse

            # mask branch on the valid pixels (paper Sec. 3; OpenGait `BigGait.py`)
            mask_probs, shape_mse = run(self.mask_branch, last_map, valid)
            foreground_prob, foreground = _foreground(mask_probs, valid)
            # denoising and appearance branches on the foreground pixels only
            denoising = run(self.denoising_branch, mid4_map, foreground)[0]
            appearance = run(self.appearance_branch, mid4_map, foreground)[0]
        return {
            "mask_probs": mask_probs,
            "foreground_prob": foreground_prob,
            "foreground": foreground,
            "denoising": denoising,
            "appearance": appearance,
            "shape_mse": shape_mse,
        }

    def gre_losses(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The four weighted GRE auxiliary losses (OpenGait `BigGait__Dinov2_Gaitbase.forward`)."""
        denoising = features["denoising"].flatten(0, 1)
        losses = {
            "shape_mse": lambda: features["shape_mse"],
            "shape_connect": lambda: shape_connect_loss(
                features["mask_probs"].flatten(0, 1), layout=self.shape_connect_layout
            ),
            # OpenGait `connect_loss` on the denoising map: last channel dropped
            "part_connect": lambda: sobel_connect_loss(denoising[:, :-1]),
            "part_diversity": lambda: diversity_loss(denoising),
        }
        # an ablated constraint (or one of an ablated branch) is a constant zero: no term, no gradient
        zero = denoising.new_zeros(())
        return {
            k: zero if k in self.disabled_losses else v() * GRE_LOSS_WEIGHTS[k] for k, v in losses.items()
        }

    def black_da(
        self,
        features: dict[str, torch.Tensor],
        *,
        rate: float = 0.2,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Black DA (OpenGait `BigGait__Dinov2_Gaitbase.forward`), out of place: returns a new features dict.

        It blanks one of the two maps so the head relies on both; with a branch ablated there is nothing to
        balance (it would blank whole sequences), so it is off.
        """
        if features["denoising"].shape[2] == 0 or features["appearance"].shape[2] == 0:
            return features
        denoising, appearance = black_da(
            features["denoising"], features["appearance"], rate=rate, generator=generator
        )
        return {**features, "denoising": denoising, "appearance": appearance}

    def frame_maps(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The head's per-frame feature maps [[n, s, C', h', w']] (before the temporal max): the same call as
        `BiggerGait.frame_maps`, one map here, one per layer group there (biggait.inference pools either)."""
        return [self.head.frame_maps(features["denoising"], features["appearance"])]

    def embed(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        """[temporally pooled maps [n, C', h', w']] -> embeddings [n, E, p] (the same call as `BiggerGait.embed`)."""
        (maps,) = pooled
        return self.head.embed(maps)

    def forward_head(
        self, features: dict[str, torch.Tensor], lengths: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """GaitBase head: {"embeddings": [n, E, p], "logits": [n, K, p]}; `lengths` masks zero-padded frames."""
        with self.trainable_autocast(features["denoising"].device):
            return self.head(features["denoising"], features["appearance"], lengths)

    def forward(
        self, frames: torch.Tensor, ratios: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(frames, ratios), lengths)
