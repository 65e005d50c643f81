"""How well the mask branch finds the walker: ground-truth silhouettes in the model's map frame and the
foreground IoU against them (a training/evaluation metric; `biggait.viz` draws it, `BigGaitModule` logs it)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from biggait.errors import BiggaitError

__all__ = ["MapInputError", "as_cpu_tensor", "check_maps", "foreground_iou", "silhouettes_to_map"]


class MapInputError(BiggaitError, ValueError):
    """A map, mask or silhouette tensor handed to a metric or visualisation helper has the wrong shape or type."""


def as_cpu_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """`x` as a detached CPU tensor (numpy arrays are wrapped); anything else is a `MapInputError` naming `name`."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise MapInputError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return x.detach().cpu()


def check_maps(maps: torch.Tensor, name: str) -> None:
    """Per-frame maps must be [T, C, h, w]."""
    if maps.dim() != 4:
        raise MapInputError(
            f"{name} must be per-frame maps [T, C, h, w], got shape {tuple(maps.shape)}; "
            "index one sequence of forward_features' [n, s, C, h, w] output, e.g. features[name][0]"
        )


def _padding_resize_geometry(sil: torch.Tensor, ratio: float, size: tuple[int, int]) -> torch.Tensor:
    # The model's padding-resize (OpenGait `BigGait.py`, `padding_resize`) at its 256 x 128 reference scale, then down to the map size.
    need_w = int(256 * ratio)
    x = F.interpolate(sil[None, None], size=(256, max(need_w, 1)), mode="bilinear", align_corners=False)[0, 0]
    canvas = sil.new_zeros(256, 128)
    if need_w < 128:
        left = (128 - need_w) // 2
        canvas[:, left : left + need_w] = x
    else:
        start = abs((128 - need_w) // 2)
        canvas = x[:, start : start + 128]
    return F.interpolate(canvas[None, None], size=size, mode="area")[0, 0]


def silhouettes_to_map(
    silhouettes: torch.Tensor | np.ndarray,
    size: tuple[int, int],
    *,
    ratios: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Ground-truth silhouettes [T, H, W] (0/255 or 0/1) -> boolean [T, 1, *size] in the model's map frame.

    Frames with the map's aspect ratio (e.g. 256 x 128 for 64 x 32 maps) are resized plainly, as the model
    does; other frames need their `ratios` to reproduce the model's padding-resize (OpenGait `BigGait.py`, `padding_resize`). The resize
    averages areas and the result is thresholded at 0.5 (a map pixel is foreground when at least half of it is).
    """
    s = as_cpu_tensor(silhouettes, "silhouettes")
    if s.dim() != 3:
        raise MapInputError(f"silhouettes must be [T, H, W], got shape {tuple(s.shape)}")
    s = s.float()
    if s.numel() and s.max() > 1:
        s = s / 255.0
    h, w = size
    if s.shape[1] * w == s.shape[2] * h:
        out = F.interpolate(s[:, None], size=size, mode="area")
    elif ratios is None:
        raise MapInputError(
            f"silhouettes are {s.shape[1]}x{s.shape[2]} but the maps are {h}x{w}: the model padding-resized "
            "these frames (OpenGait `BigGait.py`, `padding_resize`); pass ratios=<the batch's ratios for this sequence>"
        )
    else:
        r = as_cpu_tensor(ratios, "ratios").float().reshape(-1)
        if r.shape[0] != s.shape[0]:
            raise MapInputError(f"ratios has {r.shape[0]} entries for {s.shape[0]} silhouettes")
        out = torch.stack([_padding_resize_geometry(s[i], float(r[i]), size) for i in range(s.shape[0])])[
            :, None
        ]
    return out >= 0.5


def foreground_iou(
    foreground: torch.Tensor | np.ndarray,
    silhouettes: torch.Tensor | np.ndarray,
    *,
    ratios: torch.Tensor | np.ndarray | None = None,
) -> float:
    """IoU in [0, 1] of the selected foreground [T, 1, h, w] against ground-truth silhouettes [T, H, W].

    The silhouettes are brought to the map size by `silhouettes_to_map` (area resize, threshold 0.5);
    intersection and union are pooled over all frames. Two empty masks count as a perfect match (1.0).
    """
    fg = as_cpu_tensor(foreground, "foreground")
    check_maps(fg, "foreground")
    sil = silhouettes_to_map(silhouettes, tuple(fg.shape[-2:]), ratios=ratios)
    if sil.shape[0] != fg.shape[0]:
        raise MapInputError(f"foreground has {fg.shape[0]} frames but silhouettes have {sil.shape[0]}")
    fg = fg > 0.5
    union = (fg | sil).sum().item()
    return 1.0 if union == 0 else (fg & sil).sum().item() / union
