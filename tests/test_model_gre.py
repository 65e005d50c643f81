"""GRE: foreground selection, branches, auxiliary losses on crafted inputs, Black DA (paper Sec. 3; OpenGait `BigGait.py`)."""

from __future__ import annotations

import math

import pytest
import torch

from biggait.models.gre import (
    DistillationBranch,
    black_da,
    diversity_loss,
    gather_pixels,
    scatter_pixels,
    select_foreground,
    shape_connect_loss,
    sobel_connect_loss,
)


def _probs(fg: torch.Tensor, *, fg_channel: int) -> torch.Tensor:
    """[B, h, w] foreground {0,1} -> [B, 2, h, w] confident probabilities, foreground in `fg_channel`."""
    p = 0.1 + 0.8 * fg.float()
    return torch.stack([p, 1 - p] if fg_channel == 0 else [1 - p, p], dim=1)


def test_polarity_is_chosen_from_border_rows() -> None:
    fg = torch.zeros(2, 64, 32)
    fg[:, 20:40, 10:20] = 1
    probs = torch.cat([_probs(fg[:1], fg_channel=0), _probs(fg[1:], fg_channel=1)])
    p, selected = select_foreground(probs)
    # both frames resolve to the same foreground whatever the channel
    torch.testing.assert_close(p[0], p[1])
    assert bool(selected[0].equal(selected[1]))
    assert float(p[0, 0, 30, 15]) == pytest.approx(0.9) and float(p[0, 0, 0, 0]) == pytest.approx(0.1)


def test_border_count_threshold_is_strict_half() -> None:
    # channel 0 rounds to 1 on exactly 160 of the 320 border pixels: not > 160, so channel 0 is kept
    probs = torch.zeros(1, 2, 64, 32)
    probs[0, 0, :5, :16] = 0.9
    probs[0, 0, -5:, :16] = 0.9
    probs[0, 1] = 1 - probs[0, 0]
    p, _ = select_foreground(probs)
    torch.testing.assert_close(p[0, 0], probs[0, 0])
    probs[0, 0, 0, 16] = 0.9  # 161 pixels: now channel 1 is the foreground
    probs[0, 1] = 1 - probs[0, 0]
    p, _ = select_foreground(probs)
    torch.testing.assert_close(p[0, 0], 1 - probs[0, 0])


def test_selection_is_one_pixel_dilation_of_rounded_mask() -> None:
    fg = torch.zeros(1, 64, 32)
    fg[0, 30, 12] = 1  # a single pixel grows into a 3x3 square
    fg[0, 10:20, 20:25] = 1
    _, selected = select_foreground(_probs(fg, fg_channel=0))
    expected = torch.zeros(64, 32, dtype=torch.bool)
    expected[29:32, 11:14] = True
    expected[9:21, 19:26] = True
    assert bool(selected[0, 0].equal(expected))


def test_half_rounds_to_background_and_padding_is_excluded() -> None:
    probs = torch.zeros(1, 2, 64, 32)
    probs[0, 0, :, 8:24] = 0.5  # valid columns 8..23, all exactly 0.5 -> round to 0
    probs[0, 1, :, 8:24] = 0.5
    _, selected = select_foreground(probs)
    assert not bool(selected.any())
    probs[0, 0, 20:30, 8:24] = 0.7  # foreground touching the padding edge at column 8
    probs[0, 1] = torch.where(probs[0, 0] > 0, 1 - probs[0, 0], 0.0)
    _, selected = select_foreground(probs)
    # dilation reaches column 7, but p is 0 there (padding), so it stays unselected
    assert not bool(selected[0, 0, :, :8].any())
    assert bool(selected[0, 0, 19:31, 8:24].all())


def test_geodesic_border_keeps_edge_pixels() -> None:
    fg = torch.zeros(1, 64, 32)
    fg[0, 0:3, 0:3] = 1  # corner blob: outside pixels must be ignored, not treated as background
    _, selected = select_foreground(_probs(fg, fg_channel=0))
    assert bool(selected[0, 0, :4, :4].all()) and int(selected.sum()) == 16


def test_scatter_and_gather_round_trip() -> None:
    selected = torch.rand(3, 1, 8, 4) > 0.5
    values = torch.randn(int(selected.sum()), 5, requires_grad=True)
    maps = scatter_pixels(values, selected)
    assert maps.shape == (3, 5, 8, 4) and maps.is_contiguous()
    assert bool((maps.permute(0, 2, 3, 1)[~selected[:, 0]] == 0).all())
    torch.testing.assert_close(gather_pixels(maps, selected), values)
    maps.sum().backward()
    torch.testing.assert_close(values.grad, torch.ones_like(values))


def test_branches_outputs() -> None:
    x = torch.randn(50, 12)
    mask = DistillationBranch(12, 2, dropout=0.5, reconstruct=True).eval()
    out, mse = mask(x)
    torch.testing.assert_close(out.sum(1), torch.ones(50))
    torch.testing.assert_close(mse, ((mask.up(out) - x) ** 2).mean())
    den, none = DistillationBranch(12, 4, hidden_dim=6)(x)
    assert none is None and den.shape == (50, 4)
    app, _ = DistillationBranch(12, 4, softmax=False)(x)
    assert bool(((app > 0) & (app < 1)).all())
    empty, _ = DistillationBranch(12, 4, softmax=False)(x[:0])
    assert empty.shape == (0, 4)


def test_sobel_connect_loss_known_values() -> None:
    x = torch.zeros(1, 1, 5, 5)
    assert sobel_connect_loss(x).item() == 0.0
    x[0, 0, 2, 2] = 1.0  # |Kx| and |Ky| each sum to 8 around an impulse
    assert sobel_connect_loss(x).item() == pytest.approx(16 / 25)
    # channels are summed before the abs: opposite maps cancel
    two = torch.cat([x, -x], dim=1)
    assert sobel_connect_loss(two).item() == 0.0


def test_shape_connect_faithful_layout_quirk() -> None:
    # with channels p and 1-p the correct layout sums to the constant 1: only the zero-padded border
    # responds, whatever p (no learning signal, docs/fidelity.md); the faithful view does depend on p
    g = torch.Generator().manual_seed(0)
    p = torch.rand(1, 8, 4, generator=g)
    probs = torch.stack([p, 1 - p], dim=1)
    fixed = shape_connect_loss(probs, layout="fixed")
    assert fixed.item() == pytest.approx(sobel_connect_loss(torch.ones(1, 1, 8, 4)).item() / 2)
    faithful = shape_connect_loss(probs, layout="faithful")
    viewed = probs.permute(0, 2, 3, 1).reshape(1, 2, 8, 4)  # channel 0 = rows 0-3, (p, 1-p) interleaved
    torch.testing.assert_close(
        viewed[0, 0, 0], torch.stack([p[0, 0, 0], 1 - p[0, 0, 0], p[0, 0, 1], 1 - p[0, 0, 1]])
    )
    assert faithful.item() == pytest.approx(sobel_connect_loss(viewed).item())
    assert abs(faithful.item() - fixed.item()) > 1e-2
    with pytest.raises(ValueError, match="shape_connect_layout"):
        shape_connect_loss(probs, layout="transposed")


def test_diversity_loss_known_values() -> None:
    uniform = torch.full((2, 16, 4, 4), 1 / 16)
    assert diversity_loss(uniform).item() == pytest.approx(0.0, abs=1e-4)
    one_part = torch.zeros(1, 16, 4, 4)
    one_part[:, 3] = 1.0
    assert diversity_loss(one_part).item() == pytest.approx(math.log2(16), abs=1e-4)
    two_parts = torch.zeros(1, 16, 4, 4)
    two_parts[:, :2] = 0.5
    assert diversity_loss(two_parts).item() == pytest.approx(3.0, abs=1e-4)


def test_black_da_rate_and_out_of_place() -> None:
    g = torch.Generator().manual_seed(0)
    den, app = torch.ones(10, 3, 2, 4, 4), torch.ones(10, 3, 2, 4, 4)
    new_den, new_app = black_da(den, app, rate=0.2, generator=g)
    assert bool((den == 1).all()) and bool((app == 1).all())  # inputs untouched
    zero_den = (new_den.flatten(1) == 0).all(1)
    zero_app = (new_app.flatten(1) == 0).all(1)
    assert int(zero_den.sum() + zero_app.sum()) == 2  # round(0.2 * 10)
    assert not bool((zero_den & zero_app).any())  # one map per chosen sequence
    untouched = ~(zero_den | zero_app)
    assert bool((new_den[untouched] == 1).all()) and bool((new_app[untouched] == 1).all())


def test_black_da_statistics() -> None:
    g = torch.Generator().manual_seed(1)
    den, app = torch.ones(8, 1, 1, 1, 1), torch.ones(8, 1, 1, 1, 1)
    hits = torch.zeros(8)
    den_hits = 0
    for _ in range(400):
        d, a = black_da(den, app, rate=0.2, generator=g)
        hits += (d.flatten(1)[:, 0] == 0).float() + (a.flatten(1)[:, 0] == 0).float()
        den_hits += int((d == 0).sum())
    assert int(hits.sum()) == 400 * 2  # round(1.6) = 2 per call
    assert bool((hits > 50).all())  # every sequence gets chosen
    assert 300 < den_hits < 500  # the map is chosen uniformly
    assert black_da(den, app, rate=0.0)[0].equal(den)
