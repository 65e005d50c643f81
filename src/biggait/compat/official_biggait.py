"""Official OpenGait BigGait state dicts (`opengait/modeling/models/BigGait.py`) -> BigGait options and our
names. Kept apart from the import CLI (`biggait.compat.opengait`) so `biggait.checkpoint` can use it without
importing the CLI, which itself reads files through `biggait.checkpoint`."""

from __future__ import annotations

import re
from typing import Any

import torch

from biggait.compat.names import official_to_ours
from biggait.errors import BiggaitError
from biggait.models.backbone import BACKBONE_PRESETS

__all__ = ["OpenGaitCheckpointError", "infer_config", "map_official_state"]


class OpenGaitCheckpointError(BiggaitError, ValueError):
    """An official checkpoint that does not map onto BigGait."""


def _shape(state: dict[str, torch.Tensor], key: str) -> torch.Size:
    if key not in state:
        raise OpenGaitCheckpointError(f"checkpoint lacks {key!r}: not an OpenGait BigGait state dict")
    if not isinstance(state[key], torch.Tensor):
        raise OpenGaitCheckpointError(
            f"checkpoint entry {key!r} is a {type(state[key]).__name__}, not a tensor"
        )
    return state[key].shape


def infer_config(state: dict[str, torch.Tensor], *, num_heads: int | None = None) -> dict[str, Any]:
    """BigGait constructor kwargs read from the tensor shapes of an official state dict.

    The number of attention heads is not visible in the shapes: known (width, depth) pairs use their
    preset, other widths assume 16-dim heads unless `num_heads` is given.
    """
    width = _shape(state, "backbone.cls_token")[-1]
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"backbone\.blocks\.(\d+)\.", k))})
    hidden = _shape(state, "backbone.blocks.0.mlp.fc1.weight")[0]
    preset = next((n for n, p in BACKBONE_PRESETS.items() if (p.embed_dim, p.depth) == (width, depth)), None)
    cfg: dict[str, Any] = {"backbone": preset}
    if preset is None or num_heads is not None:
        cfg.update(
            backbone_width=width, backbone_depth=depth, backbone_heads=num_heads or max(1, width // 16)
        )
    if hidden != 4 * width:
        cfg["backbone_mlp_ratio"] = hidden / width
    c0 = _shape(state, "gait_net.pre_part.forward_block.conv1.conv.weight")[0]
    fusion_hidden = _shape(state, "gait_net.fusion.conv.forward_block.0.weight")[0]
    fcs = _shape(state, "gait_net.FCs.fc_bin")
    cfg.update(
        num_classes=_shape(state, "gait_net.BNNecks.fc_bin")[2],
        denoising_dim=_shape(state, "Denoising_Branch.down_sampling.3.weight")[0],
        denoising_hidden=_shape(state, "Denoising_Branch.down_sampling.0.weight")[0],
        appearance_dim=_shape(state, "Appearance_Branch.down_sampling.weight")[0],
        channels=tuple(
            [c0]
            + [
                _shape(state, f"gait_net.post_backbone.forward_block.layer{i}.0.conv1.weight")[0]
                for i in (2, 3, 4)
            ]
        ),
        fusion_squeeze=max(1, c0 // fusion_hidden),
        embed_dim=fcs[2],
        parts=fcs[0],
    )
    return cfg


def map_official_state(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official state dict -> ours by name only (unknown names kept, so a strict load reports them)."""
    return {official_to_ours(k) or k: v for k, v in official.items()}
