"""biggait.viz: PCA colouring, part colours, foreground IoU and the panels, on generated tensors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from biggait.viz import (
    PART_PALETTE,
    PanelSequence,
    VizInputError,
    comparison_panel,
    denormalize_frames,
    fit_pca,
    foreground_iou,
    part_colors,
    pca_rgb,
    select_sequence,
    sequence_panel,
    silhouettes_to_map,
)


def _rect_mask(t: int, h: int, w: int, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    m = torch.zeros(t, 1, h, w)
    m[:, :, top:bottom, left:right] = 1
    return m


def _features(t: int = 5, *, seed: int = 0, map_size=(32, 16), token=(16, 8)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = map_size
    fg = _rect_mask(t, h, w, 4, 28, 4, 12)
    denoising = torch.softmax(3 * torch.randn(t, 16, h, w, generator=g), dim=1) * fg
    appearance = torch.sigmoid(torch.randn(t, 16, h, w, generator=g)) * fg
    prob = torch.rand(t, 1, h, w, generator=g) * 0.4 + 0.6 * fg
    return {
        "f_last": torch.randn(t, 24, *token, generator=g),
        "f_mid4": torch.randn(t, 40, *token, generator=g),
        "valid": torch.ones(t, 1, h, w),
        "mask_probs": torch.cat([1 - prob, prob], 1),
        "foreground_prob": prob,
        "foreground": fg,
        "denoising": denoising,
        "appearance": appearance,
    }


def _skewed_maps(seed: int = 0, t: int = 4, c: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # a skewed 1-D signal along a fixed direction + weaker independent directions
    base = torch.randn(c, 3, generator=g)
    coeff = torch.stack(
        [
            torch.rand(t, 8, 6, generator=g) ** 3 * 10,
            torch.randn(t, 8, 6, generator=g) * 2,
            torch.rand(t, 8, 6, generator=g) ** 2,
        ]
    )
    maps = torch.einsum("ck,kthw->tchw", base, coeff)
    return maps + 0.01 * torch.randn(maps.shape, generator=g)


def test_pca_rgb_shape_range_and_black_background():
    maps = _skewed_maps()
    mask = _rect_mask(4, 8, 6, 1, 7, 1, 5)
    rgb = pca_rgb(maps, mask)
    assert rgb.shape == (4, 8, 6, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert np.all(rgb[:, 0] == 0) and np.all(rgb[:, :, 0] == 0)
    assert rgb[:, 1:7, 1:5].std() > 0.05  # foreground is coloured, not flat


def test_pca_is_joint_over_frames_so_equal_features_get_equal_colours():
    maps = _skewed_maps()
    maps[3, :, 2, 2] = maps[0, :, 5, 4]  # the same feature vector in two different frames
    rgb = pca_rgb(maps)
    np.testing.assert_allclose(rgb[3, 2, 2], rgb[0, 5, 4], atol=1e-6)


def test_pca_colours_are_sign_and_rotation_stable():
    maps = _skewed_maps()
    rgb = pca_rgb(maps)
    np.testing.assert_allclose(pca_rgb(-maps), rgb, atol=1e-4)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(3)))
    rotated = torch.einsum("dc,tchw->tdhw", q, maps)  # the same data in another channel basis
    np.testing.assert_allclose(pca_rgb(rotated), rgb, atol=1e-3)


def test_fit_pca_finds_the_dominant_direction():
    g = torch.Generator().manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(20, generator=g), dim=0)
    a = torch.randn(3, 1, 10, 10, generator=g) * 5
    maps = a * u.view(1, 20, 1, 1) + 0.05 * torch.randn(3, 20, 10, 10, generator=g)
    basis = fit_pca(maps)
    assert abs(float(basis.components[:, 0] @ u)) > 0.99


def test_pca_mask_resized_to_token_grid_and_empty_mask_is_black():
    maps = _skewed_maps()  # 8 x 6 token grid
    big_mask = _rect_mask(4, 16, 12, 2, 14, 2, 10)  # map-size foreground, twice the grid
    rgb = pca_rgb(maps, big_mask)
    assert np.all(rgb[:, 0] == 0) and rgb[:, 1:7, 1:5].max() > 0
    assert fit_pca(maps, torch.zeros(4, 1, 8, 6)) is None
    assert not pca_rgb(maps, torch.zeros(4, 1, 8, 6)).any()


def test_part_colors_uses_the_fixed_palette_and_black_off_foreground():
    d = torch.zeros(2, 16, 4, 4)
    d[0, 3, 1, 1] = 1.0
    d[1, 15, 2, 3] = 0.9
    d[1, 0, 2, 3] = 0.1
    rgb = part_colors(d)
    np.testing.assert_allclose(rgb[0, 1, 1], PART_PALETTE[3])
    np.testing.assert_allclose(rgb[1, 2, 3], PART_PALETTE[15])
    assert rgb[0, 0, 0].sum() == 0 and rgb[1, 1, 1].sum() == 0
    assert len({tuple(c) for c in PART_PALETTE}) == 16 and PART_PALETTE.sum(1).min() > 0


def test_part_colors_rejects_batched_maps():
    with pytest.raises(VizInputError, match=r"\[T, C, h, w\]"):
        part_colors(torch.zeros(1, 2, 16, 4, 4))


def test_foreground_iou_against_full_resolution_silhouettes():
    fg = _rect_mask(3, 32, 16, 8, 24, 4, 12)[:, :, :, :]
    sil = torch.zeros(3, 128, 64, dtype=torch.uint8)
    sil[:, 32:96, 16:48] = 255  # the same rectangle at 4x resolution
    assert foreground_iou(fg, sil) == pytest.approx(1.0)
    assert foreground_iou(fg, (sil > 0).numpy().astype(np.uint8)) == pytest.approx(1.0)
    shifted = torch.zeros_like(sil)
    shifted[:, 32:96, 32:64] = 255  # 4 of the 8 map columns overlap
    inter, union = 16 * 4, 16 * 12
    assert foreground_iou(fg, shifted) == pytest.approx(inter / union)
    assert foreground_iou(torch.zeros_like(fg), torch.zeros_like(sil)) == 1.0


def test_foreground_iou_errors_are_readable():
    fg = torch.zeros(3, 1, 32, 16)
    with pytest.raises(VizInputError, match="frames"):
        foreground_iou(fg, torch.zeros(2, 128, 64))
    with pytest.raises(VizInputError, match="ratios"):
        foreground_iou(fg, torch.zeros(3, 64, 64))


def test_silhouettes_to_map_follows_the_padding_resize_of_squashed_frames():
    sil = torch.full((2, 64, 64), 255, dtype=torch.uint8)
    m = silhouettes_to_map(sil, (32, 16), ratios=torch.tensor([0.25, 1.0]))
    assert m.shape == (2, 1, 32, 16)
    cols = m[0, 0].any(0)
    assert cols[4:12].all() and not cols[:4].any() and not cols[12:].any()  # central 64 of 128 columns
    assert m[1].all()  # ratio >= 0.5 fills the width


def test_denormalize_frames_inverts_imagenet_normalisation():
    img = torch.rand(2, 3, 8, 4)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    out = denormalize_frames((img - mean) / std)
    np.testing.assert_allclose(out, img.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    np.testing.assert_allclose(denormalize_frames((img * 255).to(torch.uint8)), out, atol=1 / 255 + 1e-6)


def _png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_sequence_panel_layout_and_iou_in_title():
    feats = _features(t=10)
    frames = torch.randn(10, 3, 128, 64)
    sil = torch.zeros(10, 128, 64, dtype=torch.uint8)
    sil[:, 16:112, 16:48] = 255
    fig = sequence_panel(frames, feats, sil, max_frames=4)
    axes = fig.get_axes()
    assert len(axes) == 8 * 4
    expected = 100 * foreground_iou(feats["foreground"], sil)
    assert f"{expected:.1f}%" in fig._suptitle.get_text()
    assert _png_bytes(fig).startswith(b"\x89PNG")
    no_gt = sequence_panel(frames, feats, max_frames=20)
    assert len(no_gt.get_axes()) == 8 * 10 and "IoU" not in no_gt._suptitle.get_text()


def test_sequence_panel_rejects_mismatched_lengths():
    with pytest.raises(VizInputError, match="frames"):
        sequence_panel(torch.randn(4, 3, 128, 64), _features(t=5))


def test_comparison_panel_shares_colours_across_sequences():
    a1, a2, b = _features(seed=0), _features(seed=1), _features(seed=2)
    frames = torch.randn(5, 3, 128, 64)
    seqs = [
        PanelSequence("001 U0_D0", frames, a1),
        PanelSequence("001 U3_D3", frames, a2),
        PanelSequence("002", frames, b),
    ]
    fig = comparison_panel(seqs, frames_per_sequence=2)
    assert len(fig.get_axes()) == 6 * 6
    assert [ax.get_title() for ax in fig.get_axes()[:6:2]] == ["001 U0_D0", "001 U3_D3", "002"]
    assert _png_bytes(fig).startswith(b"\x89PNG")
    with pytest.raises(VizInputError, match="at least 2"):
        comparison_panel(seqs[:1])


def test_select_sequence_slices_one_sequence_to_its_length():
    batched = {k: torch.stack([v, v + 1]) for k, v in _features(t=5).items()}
    one = select_sequence(batched, 1, length=3)
    assert one["denoising"].shape == (3, 16, 32, 16)
    torch.testing.assert_close(one["f_last"], batched["f_last"][1, :3])
    del batched["appearance"]
    with pytest.raises(VizInputError, match="appearance"):
        select_sequence(batched, 0)
