"""BiggerGait: every DINOv2 layer, grouped, each group through its own HumanSpace conv and a shared GaitBase head
(NeurIPS 2025, arXiv 2505.18132; OpenGait `opengait/modeling/models/BiggerGait_DINOv2.py`, `BiggerGait__DINOv2`)."""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from biggait.errors import ConfigError
from biggait.models.backbone import DinoV2Backbone, PosEmbedInterpolation, backbone_autocast
from biggait.models.biggait import _official_init
from biggait.models.gaitbase import GaitBaseSingle, temporal_max
from biggait.models.gre import DistillationBranch, channel1_is_foreground, upsample_maps
from biggait.models.mask_branch import load_mask_branch_state

__all__ = ["BiggerGait", "HumanSpaceConv", "head_of_group"]

LAYER_NORM_EPS = 1e-6  # OpenGait `BiggerGait_DINOv2.py`: partial(nn.LayerNorm, eps=1e-6), no affine
MASK_BRANCH_HELP = (
    "pass model.net.mask_branch=<file>: a BigGait checkpoint of the same backbone (ours, e.g. "
    "outputs/<run>/checkpoints/last.ckpt of `make train`, or an official OpenGait BigGait .pt), or the "
    "authors' MaskBranch_vits14.pt (docs/4_model.md); mask_branch=random for an untrained one"
)


def head_of_group(num_groups: int, num_heads: int) -> list[int]:
    """The GaitBase head each layer group uses: consecutive groups share one (OpenGait `Baseline_Share.Gait_List`)."""
    if num_heads < 1 or num_groups % num_heads:
        raise ConfigError(f"gait_heads={num_heads} must divide the number of layer groups {num_groups}")
    return [g // (num_groups // num_heads) for g in range(num_groups)]


class HumanSpaceConv(nn.Module):
    """BN, 1x1 conv, BN, GELU, 1x1 conv, resize to the map size, BN, sigmoid (OpenGait `BiggerGait_DINOv2.py`, `HumanSpace_Conv`)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, *, map_size: tuple[int, int]) -> None:
        super().__init__()
        self.map_size = tuple(map_size)
        self.bn_in = nn.BatchNorm2d(in_dim, affine=False)
        self.reduce = nn.Conv2d(in_dim, hidden_dim, 1)
        self.bn_hidden = nn.BatchNorm2d(hidden_dim, affine=False)
        self.project = nn.Conv2d(hidden_dim, out_dim, 1)
        self.bn_out = nn.BatchNorm2d(out_dim, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_dim, h, w] token maps -> [B, out_dim, *map_size] maps in (0, 1)."""
        x = self.project(F.gelu(self.bn_hidden(self.reduce(self.bn_in(x)))))
        return torch.sigmoid(self.bn_out(upsample_maps(x, self.map_size)))


def _recorded_config(arguments: dict[str, Any]) -> dict[str, Any]:
    """The constructor's arguments (from its `locals()`), so `BiggerGait(**model.config)` rebuilds the model."""
    names = list(inspect.signature(BiggerGait.__init__).parameters)[1:]
    config = {name: arguments[name] for name in names}
    for key in ("image_size", "map_size", "channels", "frame_size"):
        config[key] = tuple(int(v) for v in config[key])
    if config["mask_statistics"] not in ("official", "frozen"):
        raise ConfigError(
            f"mask_statistics must be 'official' or 'frozen', got {config['mask_statistics']!r}"
        )
    if config["mask_foreground"] not in ("channel1", "border"):
        raise ConfigError(
            f"mask_foreground must be 'channel1' or 'border', got {config['mask_foreground']!r}"
        )
    if config["eval_precision"] not in (None, "fp32"):
        raise ConfigError(f"eval_precision must be null or 'fp32', got {config['eval_precision']!r}")
    return config


class BiggerGait(nn.Module):
    """BiggerGait (NeurIPS 2025) gait model; the paper's full model (12 groups of 1 layer, 12 heads) by default."""

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
        mask_branch: str | None = None,
        image_size: tuple[int, int] = (448, 224),
        map_size: tuple[int, int] = (64, 32),
        layers_per_group: int = 1,
        gait_heads: int = 12,
        humanspace_dim: int = 16,
        channels: tuple[int, int, int, int] = (64, 128, 256, 512),
        embed_dim: int = 256,
        parts: int = 32,
        mask_statistics: Literal["official", "frozen"] = "official",
        mask_foreground: Literal["channel1", "border"] = "channel1",
        pos_embed_interpolation: PosEmbedInterpolation = "hf",
        frame_size: tuple[int, int] = (256, 128),
        backbone_precision: Literal["bf16", "fp16", "fp32"] | None = None,
        eval_precision: Literal["fp32"] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = _recorded_config(locals())
        self.image_size, self.map_size = self.config["image_size"], self.config["map_size"]
        self.frame_size = self.config["frame_size"]
        self.backbone_precision, self.eval_precision = backbone_precision, eval_precision
        # "official": OpenGait's `model.train()` puts the frozen mask branch back in training mode, so its
        # BatchNorm normalises with batch statistics and updates its running ones (docs/fidelity.md)
        self.mask_statistics = mask_statistics
        # "channel1": OpenGait takes channel 1 as the foreground, true of MaskBranch_vits14.pt but not of every
        # BigGait run's branch (BigGait decides per frame); "border": BigGait's per-frame rule (docs/fidelity.md)
        self.mask_foreground = mask_foreground
        self.backbone = DinoV2Backbone(
            preset=backbone,
            embed_dim=backbone_width,
            depth=backbone_depth,
            num_heads=backbone_heads,
            mlp_ratio=backbone_mlp_ratio,
            image_size=self.image_size,
            pretrained=pretrained,
            pos_embed_interpolation=pos_embed_interpolation,
        )
        self._build_groups_and_heads(layers_per_group=layers_per_group, gait_heads=gait_heads)
        for module in (self.mask_branch, self.human_space, self.heads):
            _official_init(module)
        self._load_mask_branch(mask_branch)
        self.backbone.requires_grad_(False)
        self.mask_branch.requires_grad_(False)
        self.train()

    def _build_groups_and_heads(self, *, layers_per_group: int, gait_heads: int) -> None:
        """The mask branch, one HumanSpace conv per layer group and the GaitBase heads shared over the groups."""
        cfg = self.config
        width, depth = self.backbone.embed_dim, self.backbone.depth
        if layers_per_group < 1 or depth % layers_per_group:
            raise ConfigError(f"layers_per_group={layers_per_group} must divide the backbone depth {depth}")
        self.num_groups = depth // layers_per_group
        self.layers_per_group = layers_per_group
        self.head_of_group = head_of_group(self.num_groups, gait_heads)
        self.humanspace_dim = cfg["humanspace_dim"]
        self.mask_branch = DistillationBranch(width, 2, dropout=0.0, reconstruct=True)
        self.human_space = nn.ModuleList(
            HumanSpaceConv(width * layers_per_group, width // 2, self.humanspace_dim, map_size=self.map_size)
            for _ in range(self.num_groups)
        )
        self.heads = nn.ModuleList(
            GaitBaseSingle(
                in_dim=self.humanspace_dim,
                channels=cfg["channels"],
                embed_dim=cfg["embed_dim"],
                parts=cfg["parts"],
                num_classes=cfg["num_classes"],
                channels_last=cfg["channels_last"],
            )
            for _ in range(gait_heads)
        )

    def _load_mask_branch(self, source: str | None) -> None:
        """The frozen, pretrained mask branch (OpenGait `BiggerGait__DINOv2.init_Mask_Branch`)."""
        state = load_mask_branch_state(source, module=self.mask_branch, help_text=MASK_BRANCH_HELP)
        if state is not None:
            self.mask_branch.load_state_dict(state, strict=True)

    # ----------------------------------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> BiggerGait:
        super().train(mode)
        self.backbone.eval()  # frozen (OpenGait `BiggerGait__DINOv2.init_parameters`); no dropout either way
        if self.mask_statistics == "frozen":
            self.mask_branch.eval()
        return self

    @property
    def mask_branch_frozen(self) -> bool:
        """Always: BiggerGait's mask branch is pretrained and never trained (no gradients, not in the optimizer)."""
        return True

    def freeze_mask_branch(self) -> list[nn.Parameter]:
        """Nothing to do (the branch is frozen from the start); the same call as `BigGait.freeze_mask_branch`."""
        return []

    def _backbone_autocast(self, device: torch.device) -> AbstractContextManager:
        return backbone_autocast(self.backbone_precision, device)

    def trainable_autocast(self, device: torch.device) -> AbstractContextManager:
        """The HumanSpace convs' and heads' precision: fp32 in eval mode under `eval_precision="fp32"`."""
        if self.eval_precision == "fp32" and not self.training:
            return torch.autocast(device.type, enabled=False)
        return nullcontext()

    # -------------------------------------------------------------------------------------- forward
    def _tokens(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] frames -> (all layers' tokens jointly normalised [B, L*C, h, w], foreground [B, 1, *map])."""
        # stretched to image_size whatever the aspect ratio (OpenGait `BiggerGait__DINOv2.preprocess`)
        images = F.interpolate(frames, size=self.image_size, mode="bilinear", align_corners=False)
        with self._backbone_autocast(images.device):
            blocks = self.backbone.forward_blocks(images)
        blocks = [b.to(frames.dtype) for b in blocks]
        c = blocks[0].shape[-1]
        # ONE parameter-free LayerNorm over the L*C values of each token, not one per layer
        tokens = F.layer_norm(torch.cat(blocks, dim=-1), (c * len(blocks),), eps=LAYER_NORM_EPS)[:, 1:]
        mask_probs = self._mask_probs(blocks[-1])
        return self.backbone._to_map(tokens), mask_probs

    def _mask_probs(self, last: torch.Tensor) -> torch.Tensor:
        """Last block's tokens [B, 1 + h*w, C] -> mask-branch probabilities [B, 2, h, w] (parameter-free LayerNorm first)."""
        c = last.shape[-1]
        tokens = F.layer_norm(last, (c,), eps=LAYER_NORM_EPS)[:, 1:]
        probs, _ = self.mask_branch(tokens.reshape(-1, c))
        b, h, w = tokens.shape[0], *self.backbone.grid
        return probs.view(b, h, w, 2).permute(0, 3, 1, 2)

    def foreground(self, mask_probs: torch.Tensor) -> torch.Tensor:
        """[B, 2, h, w] -> the map-size foreground {0, 1} [B, 1, *map_size]: the foreground channel > 0.5, resized,
        > 0.5; that channel is 1 (official) or, with `mask_foreground="border"`, the one BigGait's rule picks."""
        probs = mask_probs[:, 1:2]
        if self.mask_foreground == "border":  # the rule reads the map-size probabilities, as BigGait's does
            use_c1 = channel1_is_foreground(upsample_maps(mask_probs, self.map_size))
            probs = torch.where(use_c1[:, None, None, None], probs, mask_probs[:, 0:1])
        patch = (probs > 0.5).to(mask_probs.dtype)
        return (upsample_maps(patch, self.map_size) > 0.5).to(mask_probs.dtype)

    def forward_features(
        self, frames: torch.Tensor, ratios: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """frames [n, s, 3, H, W] (ImageNet-normalised) -> per-frame maps [n, s, C, h, w].

        `ratios` are accepted for the same call as `BigGait.forward_features` and unused: BiggerGait stretches
        every frame (OpenGait `configs/biggergait/*.yaml`, `data_in_use: [True, False]`).
        """
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be [n, s, 3, H, W], got {tuple(frames.shape)}")
        n, s = frames.shape[:2]
        with torch.no_grad():  # backbone and mask branch are frozen (OpenGait `BiggerGait__DINOv2.forward`)
            tokens, mask_probs = self._tokens(frames.flatten(0, 1))
            foreground = self.foreground(mask_probs)
        groups = tokens.split(tokens.shape[1] // self.num_groups, dim=1)
        with self.trainable_autocast(frames.device):
            maps = torch.cat([conv(g) for conv, g in zip(self.human_space, groups, strict=True)], dim=1)
            maps = maps * foreground.to(maps.dtype)

        def per_seq(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, s, *t.shape[1:])

        return {
            "mask_probs": per_seq(mask_probs),
            "foreground": per_seq(foreground),
            "humanspace": per_seq(maps),
        }

    def group_maps(self, humanspace: torch.Tensor) -> list[torch.Tensor]:
        """[n, s, G*U, h, w] masked HumanSpace maps -> per group [n, s, U, h, w]."""
        return list(humanspace.split(self.humanspace_dim, dim=2))

    def frame_maps(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per layer group, its head's per-frame feature maps [n, s, C', h', w'] (before the temporal max)."""
        groups = self.group_maps(features["humanspace"])
        return [self.heads[h].frame_maps(x) for h, x in zip(self.head_of_group, groups, strict=True)]

    def embed(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        """Per group, temporally pooled maps [n, C', h', w'] -> embeddings of all groups [n, E, G*p]."""
        return torch.cat(
            [self.heads[h].embed(x) for h, x in zip(self.head_of_group, pooled, strict=True)], -1
        )

    def forward_head(
        self, features: dict[str, torch.Tensor], lengths: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Each group through its head; {"embeddings": [n, E, G*p], "logits": [n, K, G*p]} concatenated over groups
        (OpenGait `Baseline_Share.test_2`); `lengths` masks zero-padded frames."""
        with self.trainable_autocast(features["humanspace"].device):
            embeddings = self.embed([temporal_max(m, lengths) for m in self.frame_maps(features)])
            parts = embeddings.shape[-1] // self.num_groups
            logits = [
                self.heads[h].bnneck(embeddings[..., g * parts : (g + 1) * parts])[1]
                for g, h in enumerate(self.head_of_group)
            ]
        return {"embeddings": embeddings, "logits": torch.cat(logits, dim=-1)}

    def forward(
        self, frames: torch.Tensor, ratios: torch.Tensor | None = None, lengths: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(frames, ratios), lengths)
