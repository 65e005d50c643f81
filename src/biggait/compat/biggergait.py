"""Official OpenGait BiggerGait state dicts (`BiggerGait_DINOv2.py`, HF transformers 4.x names) <-> ours.

The official backbone is HF transformers' `Dinov2Model` (separate query/key/value; ours is timm's fused qkv),
and the shared GaitBase heads are saved twice: once as `Gait_Net.real_gait.<head>` and once per layer group as
`Gait_Net.Gait_List.<group>` (the same modules, `Baseline_Share`). Import checks both copies are equal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from biggait.compat.names import branch_key_to_ours, ours_to_official
from biggait.errors import BiggaitError
from biggait.models.backbone import BACKBONE_PRESETS
from biggait.models.biggergait import head_of_group

__all__ = [
    "BiggerGaitCheckpointError",
    "export_official_state",
    "infer_biggergait_config",
    "map_official_biggergait_state",
    "official_biggergait_state",
]

_QKV = ("query", "key", "value")
# (official prefix, our prefix) of a backbone block, HF Dinov2Layer -> timm Block
_BLOCK = [
    ("norm1.", "norm1."),
    ("attention.output.dense.", "attn.proj."),
    ("layer_scale1.lambda1", "ls1.gamma"),
    ("norm2.", "norm2."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
    ("layer_scale2.lambda1", "ls2.gamma"),
]
_BACKBONE = [
    ("Backbone.embeddings.cls_token", "backbone.vit.cls_token"),
    ("Backbone.embeddings.mask_token", "backbone.mask_token"),
    ("Backbone.embeddings.position_embeddings", "backbone.pos_embed"),
    ("Backbone.embeddings.patch_embeddings.projection.", "backbone.vit.patch_embed.proj."),
    ("Backbone.layernorm.", "backbone.vit.norm."),
]
# HumanSpace_Conv.<g>.<index in the official nn.Sequential> -> our HumanSpaceConv names
_HUMAN_SPACE = {"0": "bn_in", "1": "reduce", "2": "bn_hidden", "4": "project", "6": "bn_out"}
# one GaitBase head, official Baseline_Single -> our GaitBaseSingle
_HEAD = [
    ("pre_rgb.forward_block.conv1.conv.", "stem.conv1."),
    ("pre_rgb.forward_block.", "stem."),
    ("post_backbone.forward_block.", "body."),
    ("FCs.fc_bin", "fcs.weight"),
    ("BNNecks.fc_bin", "bnneck.weight"),
    ("BNNecks.bn1d.", "bnneck.bn."),
]


class BiggerGaitCheckpointError(BiggaitError, ValueError):
    """An official BiggerGait checkpoint that does not map onto our BiggerGait."""


def _rename(key: str, table: list[tuple[str, str]]) -> str | None:
    return next((dst + key[len(src) :] for src, dst in table if key.startswith(src)), None)


def _indices(state: Mapping[str, Any], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})


def _shape(state: Mapping[str, torch.Tensor], key: str) -> torch.Size:
    if key not in state or not isinstance(state[key], torch.Tensor):
        raise BiggerGaitCheckpointError(
            f"checkpoint lacks tensor {key!r}: not an OpenGait BiggerGait state dict"
        )
    return state[key].shape


def infer_biggergait_config(
    state: Mapping[str, torch.Tensor], *, num_heads: int | None = None
) -> dict[str, Any]:
    """BiggerGait constructor kwargs read from the tensor shapes of an official state dict (layers, groups,
    heads, widths, parts, classes). Attention heads are not in the shapes: known (width, depth) pairs use their
    preset, other widths 16-dim heads unless `num_heads` is given (as for BigGait)."""
    width = _shape(state, "Backbone.embeddings.cls_token")[-1]
    depth = len(_indices(state, r"Backbone\.encoder\.layer\.(\d+)\."))
    groups = len(_indices(state, r"HumanSpace_Conv\.(\d+)\."))
    heads = len(_indices(state, r"Gait_Net\.real_gait\.(\d+)\."))
    if depth < 1 or groups < 1 or heads < 1 or depth % groups or groups % heads:
        raise BiggerGaitCheckpointError(
            f"checkpoint has {depth} backbone layers, {groups} HumanSpace convs and {heads} GaitBase heads: "
            "not a BiggerGait (layers must split into groups, groups into heads)"
        )
    preset = next((n for n, p in BACKBONE_PRESETS.items() if (p.embed_dim, p.depth) == (width, depth)), None)
    cfg: dict[str, Any] = {"backbone": preset}
    if preset is None or num_heads is not None:
        cfg.update(
            backbone_width=width, backbone_depth=depth, backbone_heads=num_heads or max(1, width // 16)
        )
    hidden = _shape(state, "Backbone.encoder.layer.0.mlp.fc1.weight")[0]
    if hidden != 4 * width:
        cfg["backbone_mlp_ratio"] = hidden / width
    head = "Gait_Net.real_gait.0."
    fcs = _shape(state, head + "FCs.fc_bin")
    cfg.update(
        num_classes=_shape(state, head + "BNNecks.fc_bin")[2],
        layers_per_group=depth // groups,
        gait_heads=heads,
        humanspace_dim=_shape(state, "HumanSpace_Conv.0.4.weight")[0],
        channels=tuple(
            [_shape(state, head + "pre_rgb.forward_block.conv1.conv.weight")[0]]
            + [
                _shape(state, f"{head}post_backbone.forward_block.layer{i}.0.conv1.weight")[0]
                for i in (2, 3, 4)
            ]
        ),
        embed_dim=fcs[2],
        parts=fcs[0],
        pretrained=None,
        mask_branch=None,
    )
    return cfg


def _official_to_ours(key: str) -> str | None:
    """One official name -> ours (None for the backbone's query/key/value, fused separately, and unknown names)."""
    if m := re.match(r"Backbone\.encoder\.layer\.(\d+)\.(.*)", key):
        rest = _rename(m.group(2), _BLOCK)
        return None if rest is None else f"backbone.vit.blocks.{m.group(1)}.{rest}"
    if m := re.match(r"HumanSpace_Conv\.(\d+)\.(\d+)\.(.*)", key):
        part = _HUMAN_SPACE.get(m.group(2))
        return None if part is None else f"human_space.{m.group(1)}.{part}.{m.group(3)}"
    if m := re.match(r"Gait_Net\.real_gait\.(\d+)\.(.*)", key):
        rest = _rename(m.group(2), _HEAD)
        return None if rest is None else f"heads.{m.group(1)}.{rest}"
    if key.startswith("Mask_Branch."):
        return "mask_branch." + branch_key_to_ours(key.removeprefix("Mask_Branch."))
    return _rename(key, _BACKBONE)


def _fused_qkv(state: Mapping[str, torch.Tensor], out: dict[str, torch.Tensor], used: set[str]) -> None:
    for layer in _indices(state, r"Backbone\.encoder\.layer\.(\d+)\."):
        for kind in ("weight", "bias"):
            names = [f"Backbone.encoder.layer.{layer}.attention.attention.{q}.{kind}" for q in _QKV]
            if all(n in state for n in names):
                out[f"backbone.vit.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([state[n] for n in names])
                used.update(names)


def _check_shared_heads(state: Mapping[str, torch.Tensor], head_of_group: list[int], used: set[str]) -> None:
    """Every `Gait_List.<g>` tensor must be the same as `real_gait.<head of g>` (they are one module)."""
    for key, value in state.items():
        if not (m := re.match(r"Gait_Net\.Gait_List\.(\d+)\.(.*)", key)):
            continue
        group = int(m.group(1))
        twin = (
            f"Gait_Net.real_gait.{head_of_group[group]}.{m.group(2)}" if group < len(head_of_group) else None
        )
        if twin is None or twin not in state:
            raise BiggerGaitCheckpointError(f"{key} has no counterpart {twin} among the shared heads")
        if value.shape != state[twin].shape or not torch.equal(value, state[twin]):
            raise BiggerGaitCheckpointError(
                f"{key} differs from {twin}: the heads shared over layer groups must be saved twice alike"
            )
        used.add(key)


def map_official_biggergait_state(
    state: Mapping[str, torch.Tensor], head_of_group: list[int]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our state dict, official names left unmapped); shared heads' second copies checked, then dropped."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    _fused_qkv(state, out, used)
    _check_shared_heads(state, head_of_group, used)
    for key, value in state.items():
        if key in used:
            continue
        name = _official_to_ours(key)
        if name is not None:
            out[name] = value
            used.add(key)
    return out, sorted(set(state) - used)


def _ours_to_official(key: str) -> list[str]:
    """Our name -> its official name(s) (the query/key/value split is done by the caller)."""
    if m := re.match(r"backbone\.vit\.blocks\.(\d+)\.(.*)", key):
        rest = _rename(m.group(2), [(b, a) for a, b in _BLOCK])
        return [f"Backbone.encoder.layer.{m.group(1)}.{rest}"] if rest else []
    if m := re.match(r"human_space\.(\d+)\.(\w+)\.(.*)", key):
        index = {v: k for k, v in _HUMAN_SPACE.items()}.get(m.group(2))
        return [f"HumanSpace_Conv.{m.group(1)}.{index}.{m.group(3)}"] if index else []
    if m := re.match(r"heads\.(\d+)\.(.*)", key):
        rest = _rename(m.group(2), [(b, a) for a, b in _HEAD])
        return [f"Gait_Net.real_gait.{m.group(1)}.{rest}"] if rest else []
    if key.startswith("mask_branch."):
        name = ours_to_official(key)  # the BigGait table: the same infoDistillation module
        return [name] if name else []
    name = _rename(key, [(b, a) for a, b in _BACKBONE])
    return [name] if name else []


def export_official_state(
    state: Mapping[str, torch.Tensor], head_of_group: list[int]
) -> dict[str, torch.Tensor]:
    """Our BiggerGait state dict under the official names: query/key/value split, shared heads saved twice."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := re.match(r"backbone\.vit\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key):
            for name, part in zip(_QKV, value.detach().clone().chunk(3), strict=True):
                out[f"Backbone.encoder.layer.{m.group(1)}.attention.attention.{name}.{m.group(2)}"] = part
            continue
        names = _ours_to_official(key)
        if not names:
            raise BiggerGaitCheckpointError(f"no official name for {key!r}")
        out[names[0]] = value.detach().clone()
    for group, head in enumerate(head_of_group):
        prefix = f"Gait_Net.real_gait.{head}."
        for key in [k for k in out if k.startswith(prefix)]:
            out[f"Gait_Net.Gait_List.{group}.{key.removeprefix(prefix)}"] = out[key].clone()
    return out


def official_biggergait_state(
    state: Mapping[str, torch.Tensor], *, num_heads: int | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(BiggerGait options inferred from the shapes, our state dict) of an official state dict; tensors that map
    onto nothing keep their official names, so a strict load lists them as unexpected."""
    cfg = infer_biggergait_config(state, num_heads=num_heads)
    groups = len(_indices(state, r"HumanSpace_Conv\.(\d+)\."))
    ours, left = map_official_biggergait_state(state, head_of_group(groups, cfg["gait_heads"]))
    return cfg, {**ours, **{k: state[k] for k in left}}
