"""Array helpers that turn BigGait feature maps into RGB images and scores (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from biggait.evaluation.foreground import (
    MapInputError,
    as_cpu_tensor,
    check_maps,
)
from biggait.preprocess import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PART_PALETTE",
    "PCABasis",
    "VizInputError",
    "denormalize_frames",
    "fit_pca",
    "part_colors",
    "pca_rgb",
    "resize_mask",
]


# 16 well separated colours (Kelly's list, minus white/black): part k always gets colour k, so a part keeps
# its colour across frames, sequences and people. Background is black.
PART_PALETTE = np.array(
    [
        [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
        [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255],
        [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195],
    ],
    dtype=np.float32,
) / 255.0  # fmt: skip

# The error of every helper here: the metric's own (`biggait.evaluation.foreground`), under the viz name.
VizInputError = MapInputError


def resize_mask(mask: torch.Tensor | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Resize a [T, 1, h, w] mask to `size` (area average then >= 0.5 when shrinking, nearest otherwise)."""
    m = as_cpu_tensor(mask, "mask").float()
    check_maps(m, "mask")
    if tuple(m.shape[-2:]) == tuple(size):
        return m > 0.5
    shrink = size[0] <= m.shape[-2] and size[1] <= m.shape[-1]
    m = F.interpolate(m, size=size, mode="area" if shrink else "nearest")
    return m >= 0.5


@dataclass(frozen=True)
class PCABasis:
    """Mean, 3 principal directions and per-component display range of a set of feature vectors."""

    mean: torch.Tensor  # [C]
    components: torch.Tensor  # [C, 3]
    low: torch.Tensor  # [3] 1st percentile of the projections
    high: torch.Tensor  # [3] 99th percentile of the projections


def _pixels(maps: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    x = maps.float().permute(0, 2, 3, 1)  # [T, h, w, C]
    if mask is None:
        return x.reshape(-1, x.shape[-1])
    return x[resize_mask(mask, tuple(maps.shape[-2:]))[:, 0]]


def fit_pca(
    maps: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray | None = None,
    *,
    max_pixels: int = 20_000,
) -> PCABasis | None:
    """Fit 3 principal directions jointly over all frames' (foreground) pixels; None when none are selected."""
    maps = as_cpu_tensor(maps, "maps")
    check_maps(maps, "maps")
    x = _pixels(maps, None if mask is None else as_cpu_tensor(mask, "mask"))
    if x.shape[0] < 2:
        return None
    if x.shape[0] > max_pixels:  # an even stride keeps the fit deterministic and cheap
        x = x[torch.linspace(0, x.shape[0] - 1, max_pixels).long()]
    mean = x.mean(0)
    xc = x - mean
    # Exact PCA (no random projection) so the colours are reproducible: eigenvectors of the smaller Gram side.
    if xc.shape[1] <= xc.shape[0]:
        _, vecs = torch.linalg.eigh((xc.T @ xc).double())
        comps = vecs.flip(-1)[:, :3].float()
    else:
        _, vecs = torch.linalg.eigh((xc @ xc.T).double())
        comps = F.normalize(xc.T @ vecs.flip(-1)[:, :3].float(), dim=0)
    if comps.shape[1] < 3:  # fewer than 3 channels: pad with zero directions (those colours stay constant)
        comps = torch.cat([comps, comps.new_zeros(comps.shape[0], 3 - comps.shape[1])], dim=1)
    # Sign stabilisation: the projections' third moment is made positive, so the bulk of the pixels sits at the
    # dark end and a re-fit on similar data gives the same colours instead of an arbitrary flip.
    proj = xc @ comps
    sign = torch.where((proj.double() ** 3).mean(0) < 0, -1.0, 1.0).to(comps)
    comps, proj = comps * sign, proj * sign
    low = torch.quantile(proj, 0.01, dim=0)
    high = torch.quantile(proj, 0.99, dim=0)
    return PCABasis(mean=mean, components=comps, low=low, high=high)


def pca_rgb(
    maps: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray | None = None,
    *,
    basis: PCABasis | None = None,
) -> np.ndarray:
    """PCA (3 components -> RGB in [0, 1]) of [T, C, h, w] maps -> float32 [T, h, w, 3], black off the mask.

    The basis is fitted jointly over every frame's masked pixels (or passed in, to share colours between
    sequences), so a colour means the same feature direction in every frame.
    """
    maps = as_cpu_tensor(maps, "maps")
    check_maps(maps, "maps")
    t, _, h, w = maps.shape
    if basis is None:
        basis = fit_pca(maps, mask)
    out = np.zeros((t, h, w, 3), dtype=np.float32)
    if basis is None:
        return out
    if basis.mean.shape[0] != maps.shape[1]:
        raise VizInputError(f"basis was fitted on {basis.mean.shape[0]} channels, maps have {maps.shape[1]}")
    x = maps.float().permute(0, 2, 3, 1)
    rgb = ((x - basis.mean) @ basis.components - basis.low) / (basis.high - basis.low).clamp_min(1e-8)
    rgb = rgb.clamp(0.0, 1.0)
    if mask is not None:
        rgb = rgb * resize_mask(as_cpu_tensor(mask, "mask"), (h, w)).permute(0, 2, 3, 1)
    out[:] = rgb.numpy()
    return out


def part_colors(
    denoising: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray | None = None
) -> np.ndarray:
    """Argmax part of each pixel coloured with the fixed `PART_PALETTE` -> float32 [T, h, w, 3].

    Pixels whose denoising vector is all zero (off the foreground, OpenGait `BigGait__Dinov2_Gaitbase.forward`) or outside `mask` are black.
    """
    d = as_cpu_tensor(denoising, "denoising").float()
    check_maps(d, "denoising")
    if d.shape[1] > len(PART_PALETTE):
        raise VizInputError(
            f"denoising has {d.shape[1]} channels; the palette has {len(PART_PALETTE)} colours"
        )
    if d.shape[1] == 0:  # no denoising branch (BigGait ablations=[denoising_branch]): nothing to colour
        return np.zeros((d.shape[0], *d.shape[2:], 3), np.float32)
    parts = d.argmax(1).numpy()
    rgb = PART_PALETTE[parts]
    on = (d.abs().sum(1) > 0).numpy()
    if mask is not None:
        on &= resize_mask(as_cpu_tensor(mask, "mask"), tuple(d.shape[-2:]))[:, 0].numpy()
    return (rgb * on[..., None]).astype(np.float32)


def denormalize_frames(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """Frames [T, 3, H, W] (ImageNet-normalised floats, or uint8) -> displayable float32 [T, H, W, 3] in [0, 1]."""
    f = as_cpu_tensor(frames, "frames")
    if f.dim() != 4 or f.shape[1] != 3:
        raise VizInputError(f"frames must be [T, 3, H, W], got shape {tuple(f.shape)}")
    if f.dtype == torch.uint8:
        f = f.float() / 255.0
    else:
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        f = f.float() * std + mean
    return f.clamp(0, 1).permute(0, 2, 3, 1).numpy().astype(np.float32)
