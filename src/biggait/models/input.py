"""In-model input preparation: resize, padding-resize by the per-frame ratio, valid-region mask (OpenGait `BigGait.py`, `padding_resize`)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["padding_resize", "prepare_images", "valid_region_mask"]

Crop = Literal["left", "center"]


def _need_width(ratios: torch.Tensor, height: int) -> torch.Tensor:
    # int(h * ratio) of the official code: float32 product, truncated
    return (height * ratios.float()).clamp(min=0).to(torch.int64)


def _bilinear_weights(
    in_size: int, out_size: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch bilinear (align_corners=False) source indices/weights for output `positions` of `out_size`."""
    scale = in_size / out_size.clamp(min=1).double()
    src = ((positions.double() + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    w1 = src - i0.double()
    return i0, i1, 1 - w1, w1


def padding_resize(
    x: torch.Tensor, ratios: torch.Tensor, size: tuple[int, int], *, crop: Crop = "left"
) -> torch.Tensor:
    """Resize each frame to (h, int(h*ratio)) and pad centrally (or crop) to width w, batched (OpenGait `BigGait.py`, `padding_resize`).

    `crop="left"` keeps the authors' bug (the left w columns when the resized frame is too wide);
    `crop="center"` is the PR #307 fix. Padding is 0 in the input's value space.
    """
    if crop not in ("left", "center"):
        raise ValueError(f"padding_resize_crop must be 'left' or 'center', got {crop!r}")
    b, _, h_in, w_in = x.shape
    th, tw = size
    need_w = _need_width(ratios.reshape(b), th).to(x.device)
    # Rows: one shared bilinear matrix [th, h_in].
    rows = torch.arange(th, device=x.device)
    r0, r1, rw0, rw1 = _bilinear_weights(h_in, torch.tensor(th, device=x.device), rows)
    row_mat = torch.zeros(th, h_in, dtype=torch.float64, device=x.device)
    row_mat.index_put_((rows, r0), rw0, accumulate=True)
    row_mat.index_put_((rows, r1), rw1, accumulate=True)
    # Columns: one matrix per frame [b, tw, w_in] mapping output column -> resized column k.
    cols = torch.arange(tw, device=x.device).expand(b, tw)
    pad = need_w < tw
    left = torch.where(pad, (tw - need_w) // 2, torch.zeros_like(need_w))
    if crop == "center":
        left = torch.where(pad, left, -((tw - need_w) // 2).abs())
    k = cols - left[:, None]
    inside = (k >= 0) & (k < need_w[:, None])
    c0, c1, cw0, cw1 = _bilinear_weights(w_in, need_w[:, None], k.clamp(min=0))
    col_mat = torch.zeros(b, tw, w_in, dtype=torch.float64, device=x.device)
    col_mat.scatter_add_(2, c0[..., None], (cw0 * inside)[..., None])
    col_mat.scatter_add_(2, c1[..., None], (cw1 * inside)[..., None])
    # fp32 like the official F.interpolate path, even under autocast
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.einsum("hH,bcHW,bwW->bchw", row_mat.to(x.dtype), x, col_mat.to(x.dtype))


def prepare_images(
    frames: torch.Tensor, ratios: torch.Tensor, *, image_size: tuple[int, int], crop: Crop = "left"
) -> torch.Tensor:
    """[B, 3, H, W] normalised frames -> [B, 3, *image_size] backbone input (OpenGait `BigGait.py`, `padding_resize`)."""
    h, w = frames.shape[-2:]
    if h != 2 * w:
        # squashed crops: restore the aspect ratio on a 256x128 canvas first
        frames = padding_resize(frames, ratios, (256, 128), crop=crop)
    return F.interpolate(frames, size=image_size, mode="bilinear", align_corners=False)


def valid_region_mask(ratios: torch.Tensor, map_size: tuple[int, int]) -> torch.Tensor:
    """[B] ratios -> [B, 1, h, w] float mask of the non-padding pixels: padding_resize of ones (OpenGait `BigGait.py`, `padding_resize`)."""
    h, w = map_size
    ratios = ratios.reshape(-1)
    need_w = _need_width(ratios, h)
    left = torch.where(need_w < w, (w - need_w) // 2, torch.zeros_like(need_w))
    cols = torch.arange(w, device=ratios.device)
    valid = (cols >= left[:, None]) & (cols < (left + need_w)[:, None])
    return valid[:, None, None, :].expand(-1, 1, h, w).to(torch.float32)
