"""Import / export of official OpenGait BigGait and BiggerGait checkpoints (`{"model": state_dict, ...}`)."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

import torch

from biggait.checkpoint import load_model, model_skeleton, read_checkpoint
from biggait.compat.biggergait import export_official_state
from biggait.compat.names import branch_key_to_ours, official_to_ours, ours_to_official
from biggait.compat.official_biggait import OpenGaitCheckpointError, infer_config, map_official_state
from biggait.errors import BiggaitError, exit_on_error
from biggait.formats import checkpoint_kind, official_architecture
from biggait.io import atomic_write_bytes, check_writable
from biggait.models import BigGait, BiggerGait, weights_from_checkpoint
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


def _read_official(path: str | Path) -> dict[str, torch.Tensor]:
    blob = read_checkpoint(path)
    if checkpoint_kind(blob) != "opengait":
        raise OpenGaitCheckpointError(
            f"{path}: expected the OpenGait format {{'model': state_dict, ...}} of a BigGait (backbone.* tensors) "
            f"or a BiggerGait (Backbone.* tensors), got top-level keys {sorted(blob)[:6]}"
        )
    return blob["model"]


def load_opengait_checkpoint(
    path: str | Path, *, num_heads: int | None = None, **overrides: Any
) -> BigGait | BiggerGait:
    """Build a BigGait or a BiggerGait (told from the keys) from an official OpenGait checkpoint, every tensor
    mapped strictly; eval mode.

    Sizes are inferred from the tensors; `overrides` set what shapes cannot tell (e.g. `image_size`,
    `map_size`, `frame_size`, the faithful-vs-fixed options). The backbone comes from the checkpoint.
    """
    official = _read_official(path)
    if official_architecture(official) == "biggergait":
        return load_model(path, num_heads=num_heads, **overrides)
    cfg = {**infer_config(official, num_heads=num_heads), **overrides}
    cfg["pretrained"] = None  # every backbone tensor is in the checkpoint
    mapped = _check_and_map(official, model_skeleton(cfg, path))  # before allocating anything
    with weights_from_checkpoint():
        model = BigGait(**cfg)
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def export_opengait_state_dict(model: BigGait | BiggerGait) -> dict[str, torch.Tensor]:
    """Our state dict under the official OpenGait names (the inverse of the import; a BiggerGait's shared heads
    are saved twice, as the official code does)."""
    if isinstance(model, BiggerGait):
        return export_official_state(model.state_dict(), model.head_of_group)
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


def export_lightning_checkpoint(model: BigGait | BiggerGait, out: str | Path) -> Path:
    """Write a Lightning checkpoint for `biggait.lit_module.BigGaitModule` holding `model` (atomic)."""
    out = Path(out)
    architecture = "biggergait" if isinstance(model, BiggerGait) else "biggait"
    ckpt = {
        "state_dict": {f"net.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"net": dict(model.config), "architecture": architecture},
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
        description="Convert an official OpenGait BigGait or BiggerGait checkpoint into a Lightning checkpoint.",
    )
    parser.add_argument(
        "input",
        type=Path,
        help="official checkpoint, e.g. BigGait__Dinov2_Gaitbase_Frame30-40000.pt or a BiggerGait__Dinov2 one",
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
        help="BigGait only: 'left' = the official code's crop of too-wide frames (default), 'center' = OpenGait PR #307",
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
