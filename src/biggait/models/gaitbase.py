"""GaitBase head of BigGait: two stems, attention fusion, ResNet stages, pooling, BNNeck (OpenGait `BigGait_utils/BigGait_GaitBase.py`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

__all__ = [
    "AttentionFusion",
    "GaitBaseHead",
    "GaitBaseSingle",
    "SeparateBNNeck",
    "SeparateFCs",
    "horizontal_pooling",
    "temporal_max",
]


def _stage(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
        )
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride=stride, downsample=downsample))


class Stem(nn.Module):
    """Conv3x3 -> BN -> ReLU -> BasicBlock, no max-pool (the official `Pre_ResNet9`)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(self.relu(self.bn1(self.conv1(x))))


class Body(nn.Module):
    """Shared ResNet stages 2-4 (the official `Post_ResNet9`)."""

    def __init__(
        self, channels: tuple[int, int, int, int], strides: tuple[int, int, int] = (2, 2, 1)
    ) -> None:
        super().__init__()
        self.layer2 = _stage(channels[0], channels[1], strides[0])
        self.layer3 = _stage(channels[1], channels[2], strides[1])
        self.layer4 = _stage(channels[2], channels[3], strides[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(x)))


class AttentionFusion(nn.Module):
    """Per-pixel softmax weights over the denoising and appearance features (OpenGait `BigGait_utils/BigGait_GaitBase.py`)."""

    def __init__(self, channels: int, *, squeeze_ratio: int = 16, num_inputs: int = 2) -> None:
        super().__init__()
        hidden = int(channels / squeeze_ratio)
        if hidden < 1:
            raise ValueError(
                f"fusion_squeeze {squeeze_ratio} leaves no hidden channel for {channels} channels"
            )
        self.num_inputs = num_inputs
        self.score = nn.Sequential(
            nn.Conv2d(channels * num_inputs, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels * num_inputs, 1, bias=False),
        )

    def forward(self, *feats: torch.Tensor) -> torch.Tensor:
        score = self.score(torch.cat(feats, dim=1))
        b, _, h, w = score.shape
        # OpenGait `BigGait_utils/BigGait_GaitBase.py`: channel index = num_inputs*c + d (interleaved), softmax over d
        score = F.softmax(score.view(b, -1, self.num_inputs, h, w), dim=2)
        return sum(f * score[:, :, i] for i, f in enumerate(feats))


def temporal_max(x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Max over frames of [n, s, ...]; with `lengths` [n] only the first lengths[i] frames count."""
    if lengths is None:
        return x.max(dim=1).values
    s = x.shape[1]
    lengths = lengths.to(x.device)
    if bool((lengths < 1).any()) or bool((lengths > s).any()):
        raise ValueError(f"lengths must lie in [1, {s}], got {lengths.tolist()}")
    pad = torch.arange(s, device=x.device)[None, :] >= lengths[:, None]
    pad = pad.view(*pad.shape, *(1,) * (x.dim() - 2))
    return x.masked_fill(pad, float("-inf")).max(dim=1).values


def horizontal_pooling(x: torch.Tensor, bins: int = 16) -> torch.Tensor:
    """[n, c, h, w] -> [n, c, bins]: mean + max over a view of the flattened h*w (official HPP).

    The max is `max(-1).values`, not `amax`: among tied maxima the official pooling (OpenGait
    `opengait/modeling/modules.py`, `HorizontalPoolingPyramid`, `max(-1)[0]`) sends the whole gradient to one
    index, where `amax` splits it evenly (docs/fidelity.md).
    """
    n, c = x.shape[:2]
    if (x.shape[2] * x.shape[3]) % bins:
        raise ValueError(f"feature map {tuple(x.shape[2:])} cannot be split into {bins} parts")
    z = x.reshape(n, c, bins, -1)
    return z.mean(-1) + z.max(-1).values


class SeparateFCs(nn.Module):
    """One bias-free linear map per part: [n, c_in, p] -> [n, c_out, p]."""

    def __init__(self, parts: int, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(parts, in_ch, out_ch)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(2, 0, 1).matmul(self.weight).permute(1, 2, 0)


class SeparateBNNeck(nn.Module):
    """BN1d over the flattened embedding then a per-part cosine classifier (OpenGait `SeparateBNNecks`)."""

    def __init__(self, parts: int, in_ch: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(in_ch * parts)
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(parts, in_ch, num_classes)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, p = x.shape
        feat = self.bn(x.reshape(n, -1)).view(n, c, p).permute(2, 0, 1)
        feat = F.normalize(feat, dim=-1)
        logits = feat.matmul(F.normalize(self.weight, dim=1))
        return feat.permute(1, 2, 0), logits.permute(1, 2, 0)


class GaitBaseHead(nn.Module):
    """The modified GaitBase of BigGait (OpenGait `BigGait_utils/BigGait_GaitBase.py`)."""

    def __init__(
        self,
        *,
        denoising_dim: int = 16,
        appearance_dim: int = 16,
        channels: tuple[int, int, int, int] = (64, 128, 256, 512),
        fusion_squeeze: int = 16,
        embed_dim: int = 256,
        parts: int = 16,
        num_classes: int = 100,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.parts = parts
        self.channels_last = channels_last
        self.denoising_stem = Stem(denoising_dim, channels[0])
        self.appearance_stem = Stem(appearance_dim, channels[0])
        self.fusion = AttentionFusion(channels[0], squeeze_ratio=fusion_squeeze)
        self.body = Body(channels)
        self.fcs = SeparateFCs(parts, channels[3], embed_dim)
        self.bnneck = SeparateBNNeck(parts, embed_dim, num_classes)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def frame_maps(self, denoising: torch.Tensor, appearance: torch.Tensor) -> torch.Tensor:
        """[n, s, C, h, w] denoising and appearance maps -> per-frame feature maps [n, s, C', h', w'] (before
        the temporal max; frame by frame, so long sequences can be processed in chunks in eval mode)."""
        n, s = denoising.shape[:2]
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        den = self.denoising_stem(denoising.flatten(0, 1).contiguous(memory_format=fmt))
        app = self.appearance_stem(appearance.flatten(0, 1).contiguous(memory_format=fmt))
        x = self.body(self.fusion(den, app))
        return x.view(n, s, *x.shape[1:])

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """Temporally pooled maps [n, C', h', w'] -> embeddings [n, E, p] (horizontal pooling, separate FCs)."""
        return self.fcs(horizontal_pooling(pooled, self.parts))

    def forward(
        self, denoising: torch.Tensor, appearance: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """[n, s, C, h, w] denoising and appearance maps -> embeddings [n, E, p] and logits [n, K, p]."""
        embeddings = self.embed(temporal_max(self.frame_maps(denoising, appearance), lengths))
        _, logits = self.bnneck(embeddings)
        return {"embeddings": embeddings, "logits": logits}


class GaitBaseSingle(nn.Module):
    """One-input GaitBase of BiggerGait: stem, ResNet stages, pooling, BNNeck (OpenGait `BigGait_utils/BigGait_GaitBase.py`, `Baseline_Single`)."""

    def __init__(
        self,
        *,
        in_dim: int = 16,
        channels: tuple[int, int, int, int] = (64, 128, 256, 512),
        strides: tuple[int, int, int] = (2, 1, 1),
        embed_dim: int = 256,
        parts: int = 32,
        num_classes: int = 100,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.parts = parts
        self.channels_last = channels_last
        self.stem = Stem(in_dim, channels[0])
        self.body = Body(channels, strides)
        self.fcs = SeparateFCs(parts, channels[3], embed_dim)
        self.bnneck = SeparateBNNeck(parts, embed_dim, num_classes)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def frame_maps(self, x: torch.Tensor) -> torch.Tensor:
        """[n, s, C, h, w] maps -> per-frame feature maps [n, s, C', h', w'] (before the temporal max)."""
        n, s = x.shape[:2]
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        y = self.body(self.stem(x.flatten(0, 1).contiguous(memory_format=fmt)))
        return y.view(n, s, *y.shape[1:])

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """Temporally pooled maps [n, C', h', w'] -> embeddings [n, E, p] (horizontal pooling, separate FCs)."""
        return self.fcs(horizontal_pooling(pooled, self.parts))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """[n, s, C, h, w] maps -> embeddings [n, E, p] and logits [n, K, p]."""
        embeddings = self.embed(temporal_max(self.frame_maps(x), lengths))
        _, logits = self.bnneck(embeddings)
        return {"embeddings": embeddings, "logits": logits}
