"""Import / export of official OpenGait BigGait checkpoints (`{"model": state_dict, ...}`)."""

from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path
from typing import Any

import torch

from biggait.compat.names import branch_key_to_ours, official_to_ours, ours_to_official
from biggait.errors import BiggaitError, exit_on_error
from biggait.io import atomic_write_bytes, check_writable
from biggait.models import BACKBONE_PRESETS, BigGait, weights_from_checkpoint
from biggait.models.state import state_diff

__all__ = [
    "OpenGaitCheckpointError",
    "branch_key_to_ours",
    "export_lightning_checkpoint",
    "export_opengait_state_dict",
    "infer_config",
    "load_opengait_checkpoint",
    "main",
    "map_official_state",
    "official_to_ours",
]

LIGHTNING_VERSION = "2.6.6"


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


def _check_and_map(official: dict[str, torch.Tensor], model: BigGait) -> dict[str, torch.Tensor]:
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in official.items():
        name = official_to_ours(key)
        if name is None or name not in ours:
            unknown.append(key)
        else:
            mapped[name] = value
    diff = state_diff(ours, mapped)  # nothing unexpected: unknown names are set aside above
    missing = sorted(ours_to_official(k) or k for k in diff.missing)
    mismatched = [
        f"{ours_to_official(k)}: checkpoint {given} vs model {expected}" for k, given, expected in diff.shapes
    ]
    if unknown or missing or mismatched:
        raise OpenGaitCheckpointError(
            "checkpoint does not match the BigGait architecture: "
            f"missing tensors ({len(missing)}): {missing}; "
            f"unexpected tensors ({len(unknown)}): {sorted(unknown)}; "
            f"shape mismatches ({len(mismatched)}): {mismatched}"
        )
    return mapped


def map_official_state(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official state dict -> ours by name only (unknown names kept, so a strict load reports them)."""
    return {official_to_ours(k) or k: v for k, v in official.items()}


def _read_official(path: str | Path) -> dict[str, torch.Tensor]:
    from biggait.checkpoint import checkpoint_kind, read_checkpoint

    blob = read_checkpoint(path)
    if checkpoint_kind(blob) != "opengait":
        raise OpenGaitCheckpointError(
            f"{path}: expected the OpenGait format {{'model': state_dict, ...}} of a BigGait (backbone.* "
            f"tensors), got top-level keys {sorted(blob)[:6]}"
        )
    return blob["model"]


def load_opengait_checkpoint(path: str | Path, *, num_heads: int | None = None, **overrides: Any) -> BigGait:
    """Build a BigGait from an official OpenGait checkpoint, every tensor mapped strictly; eval mode.

    Sizes are inferred from the tensors; `overrides` set what shapes cannot tell (e.g. `image_size`,
    `map_size`, `frame_size`, the faithful-vs-fixed options). The backbone comes from the checkpoint.
    """
    from biggait.checkpoint import model_skeleton

    official = _read_official(path)
    cfg = {**infer_config(official, num_heads=num_heads), **overrides}
    cfg["pretrained"] = None  # every backbone tensor is in the checkpoint
    mapped = _check_and_map(official, model_skeleton(cfg, path))  # before allocating anything
    with weights_from_checkpoint():
        model = BigGait(**cfg)
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def export_opengait_state_dict(model: BigGait) -> dict[str, torch.Tensor]:
    """Our state dict under the official OpenGait names (the inverse of the import)."""
    out = {}
    for key, value in model.state_dict().items():
        name = ours_to_official(key)
        if name is None:
            raise OpenGaitCheckpointError(f"no official name for {key!r}")
        out[name] = value.detach().clone()
    return out


def _atomic_save(obj: Any, out: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(out, buffer.getvalue())


def export_lightning_checkpoint(model: BigGait, out: str | Path) -> Path:
    """Write a Lightning checkpoint for `biggait.lit_module.BigGaitModule` holding `model` (atomic)."""
    out = Path(out)
    ckpt = {
        "state_dict": {f"net.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"net": dict(model.config)},
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "epoch": 0,
        "global_step": 0,
    }
    _atomic_save(ckpt, out)
    return out


def _pair(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 448x224, got {text!r}") from None
    return h, w


def main(argv: list[str] | None = None, *, prog: str = "python -m biggait.compat.opengait") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert an official OpenGait BigGait checkpoint into a Lightning checkpoint.",
    )
    parser.add_argument(
        "input", type=Path, help="official checkpoint, e.g. BigGait__Dinov2_Gaitbase_Frame30-40000.pt"
    )
    parser.add_argument("output", type=Path, help="Lightning checkpoint to write (.ckpt)")
    parser.add_argument("--num-heads", type=int, default=None, help="backbone heads for non-preset widths")
    parser.add_argument(
        "--image-size", type=_pair, default=None, metavar="HxW", help="backbone input size (default 448x224)"
    )
    parser.add_argument(
        "--map-size", type=_pair, default=None, metavar="HxW", help="GRE feature-map size (default 64x32)"
    )
    parser.add_argument(
        "--frame-size",
        type=_pair,
        default=None,
        metavar="HxW",
        help="stored frame size the model was trained on (default 256x128, CCPG's converter)",
    )
    parser.add_argument(
        "--padding-resize-crop",
        choices=("left", "center"),
        default=None,
        help="'left' = the official code's crop of too-wide frames (default), 'center' = OpenGait PR #307",
    )
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in (
            ("image_size", args.image_size),
            ("map_size", args.map_size),
            ("frame_size", args.frame_size),
            ("padding_resize_crop", args.padding_resize_crop),
        )
        if v is not None
    }
    with exit_on_error():
        check_writable(args.output, "output")  # before any work
        try:
            model = load_opengait_checkpoint(args.input, num_heads=args.num_heads, **overrides)
        except ValueError as err:
            if isinstance(err, BiggaitError):
                raise
            raise OpenGaitCheckpointError(f"{args.input}: {err}") from None
        export_lightning_checkpoint(model, args.output)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output} ({n_params:,} parameters, {model.config['num_classes']} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
