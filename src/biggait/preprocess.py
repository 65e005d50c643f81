"""Person crops -> model input, shared by the converters, the DataModule and inference (one implementation).

A model sees what the converters wrote: each RGB person crop resized to the frame height keeping its aspect
ratio and centred on a black canvas of the frame size (or centre-cropped when wider), the crop's own
width / height as the per-frame ratio, and ImageNet normalisation on the device (OpenGait's offline
pretreatment for CCPG and `BaseRgbTransform`, `opengait/data/transform.py`).
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from biggait.errors import CorruptDataError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "crop_ratio",
    "normalize_frames",
    "pad_and_resize",
    "prepare_crops",
]

IMAGENET_MEAN: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)


def pad_and_resize(crop: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize `crop` [h, w(, c)] to height H keeping its aspect ratio, then centre it on black width W (or
    centre-crop it to W). Bilinear for images, nearest for 2-D masks; width `int(w * H / h)` as the official
    converter truncates it."""
    h_out, w_out = size
    h, w = crop.shape[:2]
    if h == 0 or w == 0:
        raise CorruptDataError(f"cannot pad-and-resize an empty crop of shape {crop.shape}")
    new_w = max(1, int(w * h_out / h))
    interp = cv2.INTER_NEAREST if crop.ndim == 2 else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(crop), (new_w, h_out), interpolation=interp)
    if new_w <= w_out:
        out = np.zeros((h_out, w_out, *crop.shape[2:]), crop.dtype)
        left = (w_out - new_w) // 2
        out[:, left : left + new_w] = resized
        return out
    left = (new_w - w_out) // 2
    return np.ascontiguousarray(resized[:, left : left + w_out])


def crop_ratio(crop: np.ndarray) -> float:
    """Width / height of the original crop: the per-frame ratio the model's padding-resize uses."""
    return crop.shape[1] / crop.shape[0]


def prepare_crops(crops: Iterable[np.ndarray], frame_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB crops [h_i, w_i, 3] of any sizes -> frames uint8 [T, H, W, 3] and ratios float32 [T]."""
    frames, ratios = [], []
    for crop in crops:
        if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
            raise CorruptDataError(
                f"a person crop must be uint8 [h, w, 3] RGB, got {crop.dtype} {crop.shape}"
            )
        frames.append(pad_and_resize(crop, frame_size))
        ratios.append(crop_ratio(crop))
    if not frames:
        raise CorruptDataError("no person crops to prepare")
    return np.stack(frames), np.asarray(ratios, np.float32)


def normalize_frames(
    frames: torch.Tensor, lengths: torch.Tensor | None = None, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 [n, s, 3, H, W] -> `(x/255 - mean) / std` in `dtype`; frames past `lengths` (padding) stay exactly 0."""
    mean = torch.tensor(IMAGENET_MEAN, device=frames.device, dtype=dtype).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=frames.device, dtype=dtype).view(1, 1, 3, 1, 1)
    out = (frames.to(dtype) / 255.0 - mean) / std
    if lengths is not None:
        valid = torch.arange(frames.shape[1], device=frames.device)[None] < lengths.to(frames.device)[:, None]
        out = out * valid[:, :, None, None, None]
    return out
