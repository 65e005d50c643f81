"""Gait Representation Extractor: mask / denoising / appearance branches, foreground, losses (paper Sec. 3; OpenGait `BigGait.py`)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GRE_ABLATIONS",
    "GRE_BRANCHES",
    "GRE_LOSS_WEIGHTS",
    "DistillationBranch",
    "black_da",
    "diversity_loss",
    "scatter_pixels",
    "channel1_is_foreground",
    "select_foreground",
    "shape_connect_loss",
    "sobel_connect_loss",
    "upsample_maps",
]

# Weights as OpenGait `BigGait__Dinov2_Gaitbase.forward` hands them to `opengait/modeling/loss_aggregator.py`
GRE_LOSS_WEIGHTS = {"shape_mse": 1.0, "shape_connect": 0.02, "part_connect": 0.01, "part_diversity": 5.0}
# The components the paper's ablation study removes (BigGait, CVPR 2024, Sec. 4): the three GRE branches and the four auxiliary
# constraints, named as the losses above (shape_mse: the mask branch's auto-encoder reconstruction; shape_connect /
# part_connect: the smoothness of the mask / denoising map; part_diversity: the denoising channels' diversity).
GRE_BRANCHES = ("mask_branch", "denoising_branch", "appearance_branch")
GRE_ABLATIONS = GRE_BRANCHES + tuple(GRE_LOSS_WEIGHTS)
BORDER_ROWS = 5  # OpenGait `BigGait__Dinov2_Gaitbase.get_body`: rows inspected at the top and at the bottom to decide the polarity


class DistillationBranch(nn.Module):
    """Per-pixel MLP over selected pixels (the official `infoDistillation`, paper Sec. 3; OpenGait `BigGait.py`)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        dropout: float = 0.0,
        softmax: bool = True,
        hidden_dim: int | None = None,
        reconstruct: bool = False,
    ) -> None:
        super().__init__()
        self.softmax = softmax
        self.dropout = nn.Dropout(dropout)
        self.bn_in = nn.BatchNorm1d(in_dim, affine=False)
        if hidden_dim is None:
            self.down = nn.Linear(in_dim, out_dim)
        else:
            self.down = nn.Sequential(
                nn.Linear(in_dim, hidden_dim),
                nn.BatchNorm1d(hidden_dim, affine=False),
                nn.GELU(),
                nn.Linear(hidden_dim, out_dim),
            )
        self.bn_out = nn.BatchNorm1d(out_dim, affine=False)  # used by the sigmoid branch only
        self.up = nn.Linear(out_dim, in_dim) if reconstruct else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [N, in_dim] -> (out [N, out_dim], reconstruction MSE against the raw x or None)."""
        if x.shape[0] == 0:  # no selected pixel in the whole batch: BN cannot run
            out = x.new_zeros(0, self.bn_out.num_features)
            return out, (x.new_zeros(()) if self.up is not None else None)
        d = self.down(self.bn_in(self.dropout(x)))
        out = F.softmax(d, dim=1) if self.softmax else torch.sigmoid(self.bn_out(d))
        mse = F.mse_loss(self.up(out), x) if self.up is not None else None
        return out, mse

    def forward_dense(
        self, tokens: torch.Tensor, selected: torch.Tensor, *, fuse_upsampling: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eval form with static shapes: the branch on every pixel, zero where not `selected` (docs/export.md).

        tokens [B, in_dim, h, w] (token grid), selected bool [B, 1, H, W] -> (out [B, out_dim, H, W], MSE).
        Equal to `forward` on the selected pixels of the bilinear upsampling of `tokens` to (H, W): with
        running BatchNorm statistics every step is per pixel. `fuse_upsampling` runs the affine steps
        (BatchNorm, Linear [, BatchNorm]) on the token grid before the upsampling, which commutes with them
        (bilinear weights sum to 1), so the wide Linear sees h*w tokens instead of H*W pixels.
        """
        if self.training:
            raise RuntimeError(
                "DistillationBranch.forward_dense needs eval mode: in training BatchNorm normalises with the "
                "statistics of the selected pixels only, which the dense form cannot reproduce"
            )
        size = tuple(selected.shape[-2:])
        if fuse_upsampling:
            z = _upsample_rows(_per_pixel(self._affine, tokens.permute(0, 2, 3, 1)), size)
        else:
            z = _per_pixel(self._affine, _upsample_rows(tokens.permute(0, 2, 3, 1), size))
        out = _per_pixel(self._rest, z).permute(0, 3, 1, 2)
        out = torch.where(selected, out, out.new_zeros(())).contiguous()
        if self.up is None:
            return out, None
        # reconstruction MSE over the selected pixels only, as `forward` computes it on the gathered ones
        x = _upsample_rows(tokens.permute(0, 2, 3, 1), size).permute(0, 3, 1, 2)
        err = (F.linear(out.permute(0, 2, 3, 1), self.up.weight, self.up.bias).permute(0, 3, 1, 2) - x) ** 2
        count = selected.sum() * x.shape[1]
        return out, torch.where(selected, err, err.new_zeros(())).sum() / count.clamp(min=1)

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        # the affine prefix of the branch (eval mode): BN_in, Linear [, BN_hidden] or [, BN_out]
        x = self.bn_in(x)
        if isinstance(self.down, nn.Sequential):
            return self.down[1](self.down[0](x))
        d = self.down(x)
        return d if self.softmax else self.bn_out(d)

    def _rest(self, z: torch.Tensor) -> torch.Tensor:
        # the per-pixel rest after `_affine` (`forward` = _rest(_affine(x)) in eval mode)
        if isinstance(self.down, nn.Sequential):
            z = self.down[3](self.down[2](z))
            if not self.softmax:
                z = self.bn_out(z)
        return F.softmax(z, dim=1) if self.softmax else torch.sigmoid(z)


def _per_pixel(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a row-wise `fn` ([N, C] -> [N, D]) to a channels-last [B, h, w, C] map -> [B, h, w, D]."""
    b, h, w, c = x.shape
    return fn(x.reshape(b * h * w, c)).view(b, h, w, -1)


def _upsample_rows(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of a channels-last [B, h, w, C] map -> [B, H, W, C] (no copy back to NCHW)."""
    return upsample_maps(x.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1)


def upsample_maps(x: torch.Tensor, size: tuple[int, int], *, max_elements: int = 2**31 - 1) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of [N, C, h, w] maps, in frame chunks below CUDA's INT_MAX limit.

    While exporting or compiling the batch size is symbolic: one call, no chunks (static graph).
    """
    per_frame = x.shape[1] * size[0] * size[1]
    chunk = max(1, max_elements // per_frame)
    if torch.compiler.is_compiling():
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    parts = [F.interpolate(c, size=size, mode="bilinear", align_corners=False) for c in x.split(chunk)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def scatter_pixels(values: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Scatter [N, C] values of the selected pixels back into a zero [B, C, h, w] map (out of place)."""
    b, _, h, w = selected.shape
    index = selected.permute(0, 2, 3, 1).reshape(-1).nonzero().squeeze(1)
    flat = values.new_zeros(b * h * w, values.shape[1]).index_put((index,), values)
    # contiguous NCHW: channels-last maps take other CPU conv/BN kernels, measurably less accurate in fp32
    return flat.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()


def gather_pixels(maps: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] maps -> [N, C] at the selected pixels, row-major over (frame, row, column)."""
    return maps.permute(0, 2, 3, 1)[selected[:, 0]]


def channel1_is_foreground(mask_probs: torch.Tensor) -> torch.Tensor:
    """[B, 2, h, w] mask probabilities -> [B] bool: BigGait's per-frame polarity rule, channel 0 is the background
    when its rounded map covers more than half of the top and bottom border rows (OpenGait
    `BigGait__Dinov2_Gaitbase.get_body`)."""
    w = mask_probs.shape[-1]
    c0 = torch.round(mask_probs[:, 0])  # half-to-even: 0.5 -> 0
    border = c0[:, :BORDER_ROWS].sum((1, 2)) + c0[:, -BORDER_ROWS:].sum((1, 2))
    return border > BORDER_ROWS * w


def select_foreground(mask_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 2, h, w] mask probabilities (0 at padding) -> (foreground_prob p, selected pixels), OpenGait `BigGait__Dinov2_Gaitbase.get_body`, `get_edge`."""
    use_c1 = channel1_is_foreground(mask_probs)
    p = torch.where(use_c1[:, None, None], mask_probs[:, 1], mask_probs[:, 0])[:, None]
    binary = torch.round(p)
    # kornia dilation 3x3 then erosion 5x5 with geodesic borders: max-pool pads with -inf
    dilated = F.max_pool2d(binary, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-dilated, 5, stride=1, padding=2)
    # value = (D xor E)*p + E, selected where value != 0 (OpenGait `BigGait__Dinov2_Gaitbase.get_body`, `get_edge`)
    selected = (eroded > 0) | ((dilated > 0) & (p != 0))
    return p, selected


def sobel_connect_loss(x: torch.Tensor) -> torch.Tensor:
    """Sobel smoothness, responses summed over channels before abs, / x.numel() (OpenGait `BigGait__Dinov2_Gaitbase.connect_loss`)."""
    c = x.shape[1]
    kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=x.dtype, device=x.device)
    weight = torch.stack([kx, kx.t()])[:, None].expand(2, c, 3, 3)  # kx.t() is Ky
    grad = F.conv2d(x, weight, padding=1)
    return grad.abs().sum() / x.numel()


def shape_connect_loss(
    mask_probs: torch.Tensor, *, layout: Literal["faithful", "fixed"] = "faithful"
) -> torch.Tensor:
    """Sobel loss on the 2-channel mask probabilities [B, 2, h, w] (OpenGait `BigGait__Dinov2_Gaitbase.connect_loss`)."""
    if layout == "faithful":
        # quirk of OpenGait `BigGait__Dinov2_Gaitbase.connect_loss` (docs/fidelity.md): the pixel-major [B*h*w, 2] buffer is viewed as [B, 2, h, w] without a permute
        b, c, h, w = mask_probs.shape
        mask_probs = mask_probs.permute(0, 2, 3, 1).reshape(b, c, h, w)
    elif layout != "fixed":
        raise ValueError(f"shape_connect_layout must be 'faithful' or 'fixed', got {layout!r}")
    return sobel_connect_loss(mask_probs)


def diversity_loss(denoising: torch.Tensor) -> torch.Tensor:
    """Entropy deficit of the per-frame channel usage of the [B, C, h, w] denoising map (OpenGait `BigGait__Dinov2_Gaitbase.diversity_loss`)."""
    c = denoising.shape[1]
    usage = denoising.sum((2, 3))
    q = usage / (usage.sum(1, keepdim=True) + 1e-6)
    entropy = -(q * torch.log2(q + 1e-6)).sum(1)
    return (math.log2(c) - entropy).mean()


def black_da(
    denoising: torch.Tensor,
    appearance: torch.Tensor,
    *,
    rate: float = 0.2,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the whole denoising or appearance map of round(rate*n) random sequences (Black DA of OpenGait `BigGait__Dinov2_Gaitbase.forward`).

    Maps are [n, ...]; out of place (the official in-place version breaks fp32 autograd, docs/fidelity.md).
    """
    n = denoising.shape[0]
    count = round(rate * n)
    keep_den = torch.ones(n, dtype=denoising.dtype)
    keep_app = torch.ones(n, dtype=appearance.dtype)
    if count > 0:
        chosen = torch.randperm(n, generator=generator)[:count]
        which = torch.randint(0, 2, (count,), generator=generator)
        keep_den[chosen[which == 0]] = 0
        keep_app[chosen[which == 1]] = 0
    shape = (n,) + (1,) * (denoising.dim() - 1)
    return (
        denoising * keep_den.to(denoising.device).view(shape),
        appearance * keep_app.to(appearance.device).view(shape),
    )
