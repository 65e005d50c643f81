"""Input preparation: resize, batched padding-resize, valid-region mask (OpenGait `BigGait.py`, `padding_resize`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from biggait.models.input import padding_resize, prepare_images, valid_region_mask


def loop_padding_resize(
    x: torch.Tensor, ratios: torch.Tensor, size: tuple[int, int], crop: str
) -> torch.Tensor:
    """The per-frame Python loop of the official code, written from the spec."""
    th, tw = size
    out = []
    for i in range(x.shape[0]):
        need_w = int(th * float(ratios[i]))
        y = F.interpolate(x[i : i + 1], (th, need_w), mode="bilinear", align_corners=False)
        if need_w < tw:
            left = (tw - need_w) // 2
            y = F.pad(y, (left, tw - need_w - left))
        else:
            start = 0 if crop == "left" else abs((tw - need_w) // 2)
            y = y[..., start : start + tw]
        out.append(y)
    return torch.cat(out)


@pytest.mark.parametrize("crop", ["left", "center"])
@pytest.mark.parametrize("in_size", [(128, 128), (64, 64), (96, 40)])
def test_batched_padding_resize_equals_per_frame_loop(crop: str, in_size: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, *in_size, generator=g)
    ratios = torch.tensor([0.2, 0.35, 0.49, 0.5, 0.51, 0.62, 0.9])  # pad, exact fit and crop paths
    ours = padding_resize(x, ratios, (256, 128), crop=crop)
    torch.testing.assert_close(ours, loop_padding_resize(x, ratios, (256, 128), crop), rtol=1e-4, atol=1e-4)


def test_left_and_center_crop_differ_only_on_wide_frames() -> None:
    x = torch.randn(2, 3, 64, 64)
    ratios = torch.tensor([0.4, 0.8])
    left = padding_resize(x, ratios, (256, 128), crop="left")
    center = padding_resize(x, ratios, (256, 128), crop="center")
    torch.testing.assert_close(left[0], center[0])
    assert (left[1] - center[1]).abs().max() > 1e-2


def test_padding_is_zero_and_central() -> None:
    x = torch.ones(1, 3, 64, 64)
    y = padding_resize(x, torch.tensor([0.25]), (256, 128))  # 64 columns, 32 on each side
    assert bool((y[..., :32] == 0).all()) and bool((y[..., 96:] == 0).all())
    torch.testing.assert_close(y[..., 32:96], torch.ones(1, 3, 256, 64))


def test_zero_ratio_gives_an_empty_frame_not_an_error() -> None:
    y = padding_resize(torch.randn(1, 3, 64, 64), torch.tensor([0.0]), (256, 128))
    assert bool((y == 0).all())


def test_prepare_images_paths() -> None:
    x = torch.randn(2, 3, 256, 128)
    ratios = torch.tensor([0.3, 0.4])
    direct = prepare_images(x, ratios, image_size=(448, 224))
    torch.testing.assert_close(
        direct, F.interpolate(x, size=(448, 224), mode="bilinear", align_corners=False)
    )
    sq = torch.randn(2, 3, 128, 128)
    padded = prepare_images(sq, ratios, image_size=(448, 224))
    expected = F.interpolate(padding_resize(sq, ratios, (256, 128)), size=(448, 224), mode="bilinear")
    torch.testing.assert_close(padded, expected)


@pytest.mark.parametrize(
    ("ratio", "columns", "left"), [(0.25, 16, 8), (0.3, 19, 6), (0.5, 32, 0), (0.9, 32, 0)]
)
def test_valid_region_mask(ratio: float, columns: int, left: int) -> None:
    mask = valid_region_mask(torch.tensor([ratio]), (64, 32))
    assert mask.shape == (1, 1, 64, 32) and mask.dtype == torch.float32
    cols = mask[0, 0, 0].nonzero().squeeze(1)
    assert len(cols) == columns and int(cols[0]) == left
    assert bool((mask[0, 0] == mask[0, 0, :1]).all())  # the same columns in every row


def test_valid_mask_equals_padding_resize_of_ones() -> None:
    ratios = torch.tensor([0.1, 0.33, 0.47, 0.55])
    ones = padding_resize(torch.ones(4, 1, 64, 32), ratios, (64, 32))
    torch.testing.assert_close(valid_region_mask(ratios, (64, 32)), ones)
