"""Sane bounds of model options read from a file, checked before anything is built (issue #22).

A checkpoint's `hyper_parameters` are input like any other: a 2 KB file that claims `backbone_width: 16384`
or `frame_size: [100000, 50000]` must be refused with one line, not allocate gigabytes first. The bounds are far
above every published model (DINOv2 ViT-g/14: width 1536, depth 40; CCPG frames 256x128) and far below what
would exhaust a machine. Options not listed here are left to the model's own constructor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from biggait.errors import ConfigError

__all__ = ["OPTION_BOUNDS", "check_option_bounds"]

_SIDE = 4096  # pixels per side of any image or map a model works on

# option -> (kind, low, high): "int" (a positive integer), "pair" (two ints), "ints" (a tuple of ints), "float"
OPTION_BOUNDS: dict[str, tuple[str, float, float]] = {
    "num_classes": ("int", 1, 1_000_000),
    "backbone_width": ("int", 1, 4096),
    "backbone_depth": ("int", 1, 64),
    "backbone_heads": ("int", 1, 256),
    "backbone_mlp_ratio": ("float", 1e-3, 16),
    "image_size": ("pair", 1, _SIDE),
    "map_size": ("pair", 1, 1024),
    "frame_size": ("pair", 1, _SIDE),
    "mask_dropout": ("float", 0, 1),
    "denoising_dim": ("int", 1, 4096),
    "appearance_dim": ("int", 1, 4096),
    "denoising_hidden": ("int", 1, 8192),
    "channels": ("ints", 1, 8192),
    "fusion_squeeze": ("int", 1, 8192),
    "embed_dim": ("int", 1, 8192),
    "parts": ("int", 1, 1024),
    # BiggerGait (biggait.models.biggergait)
    "layers_per_group": ("int", 1, 64),
    "gait_heads": ("int", 1, 64),
    "humanspace_dim": ("int", 1, 4096),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_one(name: str, value: Any, kind: str, low: float, high: float) -> None:
    if kind == "float":
        ok = _is_int(value) or isinstance(value, float)
        ok = ok and math.isfinite(value) and low <= value <= high
        what = f"a number in [{low:g}, {high:g}]"
    elif kind == "int":
        ok = _is_int(value) and low <= value <= high
        what = f"an integer in [{low:g}, {high:g}]"
    else:
        items = list(value) if isinstance(value, (list, tuple)) else None
        ok = items is not None and (len(items) == 2 if kind == "pair" else 1 <= len(items) <= 16)
        ok = ok and all(_is_int(v) and low <= v <= high for v in items)
        what = f"{'two' if kind == 'pair' else 'a list of'} integers in [{low:g}, {high:g}]"
    if not ok:
        raise ConfigError(f"model option {name} must be {what}, got {str(value)[:60]}")


def check_option_bounds(options: Mapping[str, Any]) -> None:
    """Refuse (`ConfigError`, one line naming the option) a value of a known model option that is of the wrong
    type or out of bounds; `None` passes (the option's default)."""
    for name, (kind, low, high) in OPTION_BOUNDS.items():
        value = options.get(name)
        if value is not None:
            _check_one(name, value, kind, low, high)
