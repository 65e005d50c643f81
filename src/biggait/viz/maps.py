"""Array helpers that turn BigGait feature maps into RGB images and scores (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from biggait.errors import BiggaitError
from biggait.preprocess import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PART_PALETTE",
    "PCABasis",
    "VizInputError",
    "denormalize_frames",
    "fit_pca",
    "foreground_iou",
    "part_colors",
    "pca_rgb",
    "resize_mask",
    "silhouettes_to_map",
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


class VizInputError(BiggaitError, ValueError):
    """A tensor handed to a visualisation helper has the wrong shape or type."""


def _as_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise VizInputError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return x.detach().cpu()


def _check_maps(maps: torch.Tensor, name: str) -> None:
    if maps.dim() != 4:
        raise VizInputError(
            f"{name} must be per-frame maps [T, C, h, w], got shape {tuple(maps.shape)}; "
            "index one sequence of forward_features' [n, s, C, h, w] output, e.g. features[name][0]"
        )


def resize_mask(mask: torch.Tensor | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Resize a [T, 1, h, w] mask to `size` (area average then >= 0.5 when shrinking, nearest otherwise)."""
    m = _as_tensor(mask, "mask").float()
    _check_maps(m, "mask")
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
    maps = _as_tensor(maps, "maps")
    _check_maps(maps, "maps")
    x = _pixels(maps, None if mask is None else _as_tensor(mask, "mask"))
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
    maps = _as_tensor(maps, "maps")
    _check_maps(maps, "maps")
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
        rgb = rgb * resize_mask(_as_tensor(mask, "mask"), (h, w)).permute(0, 2, 3, 1)
    out[:] = rgb.numpy()
    return out


def part_colors(
    denoising: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray | None = None
) -> np.ndarray:
    """Argmax part of each pixel coloured with the fixed `PART_PALETTE` -> float32 [T, h, w, 3].

    Pixels whose denoising vector is all zero (off the foreground, OpenGait `BigGait__Dinov2_Gaitbase.forward`) or outside `mask` are black.
    """
    d = _as_tensor(denoising, "denoising").float()
    _check_maps(d, "denoising")
    if d.shape[1] > len(PART_PALETTE):
        raise VizInputError(
            f"denoising has {d.shape[1]} channels; the palette has {len(PART_PALETTE)} colours"
        )
    parts = d.argmax(1).numpy()
    rgb = PART_PALETTE[parts]
    on = (d.abs().sum(1) > 0).numpy()
    if mask is not None:
        on &= resize_mask(_as_tensor(mask, "mask"), tuple(d.shape[-2:]))[:, 0].numpy()
    return (rgb * on[..., None]).astype(np.float32)


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
    s = _as_tensor(silhouettes, "silhouettes")
    if s.dim() != 3:
        raise VizInputError(f"silhouettes must be [T, H, W], got shape {tuple(s.shape)}")
    s = s.float()
    if s.numel() and s.max() > 1:
        s = s / 255.0
    h, w = size
    if s.shape[1] * w == s.shape[2] * h:
        out = F.interpolate(s[:, None], size=size, mode="area")
    elif ratios is None:
        raise VizInputError(
            f"silhouettes are {s.shape[1]}x{s.shape[2]} but the maps are {h}x{w}: the model padding-resized "
            "these frames (OpenGait `BigGait.py`, `padding_resize`); pass ratios=<the batch's ratios for this sequence>"
        )
    else:
        r = _as_tensor(ratios, "ratios").float().reshape(-1)
        if r.shape[0] != s.shape[0]:
            raise VizInputError(f"ratios has {r.shape[0]} entries for {s.shape[0]} silhouettes")
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
    fg = _as_tensor(foreground, "foreground")
    _check_maps(fg, "foreground")
    sil = silhouettes_to_map(silhouettes, tuple(fg.shape[-2:]), ratios=ratios)
    if sil.shape[0] != fg.shape[0]:
        raise VizInputError(f"foreground has {fg.shape[0]} frames but silhouettes have {sil.shape[0]}")
    fg = fg > 0.5
    union = (fg | sil).sum().item()
    return 1.0 if union == 0 else (fg & sil).sum().item() / union


def denormalize_frames(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """Frames [T, 3, H, W] (ImageNet-normalised floats, or uint8) -> displayable float32 [T, H, W, 3] in [0, 1]."""
    f = _as_tensor(frames, "frames")
    if f.dim() != 4 or f.shape[1] != 3:
        raise VizInputError(f"frames must be [T, 3, H, W], got shape {tuple(f.shape)}")
    if f.dtype == torch.uint8:
        f = f.float() / 255.0
    else:
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        f = f.float() * std + mean
    return f.clamp(0, 1).permute(0, 2, 3, 1).numpy().astype(np.float32)
